"""Where parallel work runs: joblib executors (loky, Dask) and torchrun ranks (DESIGN §8).

**Executors** run CPU work (``build-mixtures`` rendering, ``eval`` metric scoring) in worker processes,
selected with ``--jobs N --executor loky|dask [--scheduler ADDR]``:

- ``loky`` (default): joblib's process pool on this machine, ``N`` workers.
- ``dask``: joblib's ``"dask"`` backend on a ``distributed.Client``: the cluster at ``--scheduler ADDR``
  (e.g. ``tcp://10.0.0.5:8786``; its workers must be able to ``import harness``), or without
  ``--scheduler`` a ``LocalCluster`` of ``N`` single-threaded worker processes started for the run and
  closed after it. All the cluster's worker threads are used.

:func:`executor` selects one for the calling thread (a context manager); :func:`parallel` gives the
``joblib.Parallel`` that the call sites use. Work is split into pure tasks whose results come back in
submission order, so the outputs do not depend on the executor or the number of workers. Worker
processes run with one torch/BLAS thread each (:func:`limit_threads`), so ``N`` workers use ``N`` cores.

**Ranks**: under ``torchrun --nproc-per-node N -m harness eval ...`` each process reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (:func:`dist_env`); :func:`distributed` initialises the process group
(NCCL when CUDA is used, else gloo) and yields a :class:`Ranks` with ``barrier`` and ``gather``.
"""

from __future__ import annotations

import _thread
import contextvars
import datetime
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import joblib

from harness.errors import ConfigError, UssBenchError

log = logging.getLogger(__name__)

EXECUTORS = ("loky", "dask")
"""Names accepted by ``--executor``."""

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
"""Environment variables that cap the thread pools of OpenMP, MKL, OpenBLAS, BLIS, Accelerate, numexpr."""

DIST_TIMEOUT_S = float(os.environ.get("USS_BENCH_DIST_TIMEOUT_S", 6 * 3600))
"""How long a rank waits for the others at a barrier (s) [env USS_BENCH_DIST_TIMEOUT_S, 6 h]."""


@dataclass(frozen=True)
class Executor:
    """The executor in use.

    Attributes:
        kind: ``"loky"`` or ``"dask"``.
        jobs: parallel tasks it runs at once (``--jobs`` for loky; the cluster's worker threads for dask).
        scheduler: the Dask scheduler address, or ``None``.
    """

    kind: str = "loky"
    jobs: int = 1
    scheduler: str | None = None

    def describe(self) -> dict[str, Any]:
        """``{"kind", "jobs", "scheduler"}`` for ``run.json``."""
        return {"kind": self.kind, "jobs": self.jobs, "scheduler": self.scheduler}


_ACTIVE: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("uss_bench_executor", default=None)


def check_executor(kind: str, jobs: int, scheduler: str | None) -> None:
    """Validate ``--executor``, ``--jobs`` and ``--scheduler`` before any work starts.

    Raises:
        ConfigError: unknown executor, ``jobs < 1``, or ``--scheduler`` without ``--executor dask``.
    """
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor {kind!r}: choose one of {', '.join(EXECUTORS)}")
    if int(jobs) < 1:
        raise ConfigError(f"--jobs {jobs}: needs at least 1 worker")
    if scheduler and kind != "dask":
        raise ConfigError(f"--scheduler {scheduler} needs --executor dask (got --executor {kind})")


@contextmanager
def executor(kind: str = "loky", jobs: int = 1, scheduler: str | None = None) -> Iterator[Executor]:
    """Run the joblib work of the block on the chosen executor.

    Args:
        kind: ``"loky"`` or ``"dask"``.
        jobs: loky workers; for ``dask`` without ``scheduler``, the ``LocalCluster`` worker processes.
        scheduler: Dask scheduler address (``dask`` only); ``None`` starts a ``LocalCluster``.

    Yields:
        the :class:`Executor` (``jobs`` is the number of tasks it runs at once).

    Raises:
        ConfigError: bad options (:func:`check_executor`), ``distributed`` is not installed, or the
            scheduler cannot be reached (checked with a TCP connection first), or no worker joins within
            :data:`DASK_WAIT_S` s.
        UssBenchError: the cluster lost every worker for :data:`DASK_WAIT_S` s during the block (joblib
            would wait for the lost tasks forever; see :class:`_WorkerWatch`).
    """
    check_executor(kind, jobs, scheduler)
    if kind == "loky":
        ex = Executor("loky", int(jobs))
        token = _ACTIVE.set(ex)
        try:
            # every loky worker starts by watching this process (watch_parent): no orphan after a SIGKILL
            with joblib.parallel_config(backend="loky", n_jobs=ex.jobs, inner_max_num_threads=1,
                                        initializer=watch_parent, initargs=(os.getpid(),)):
                yield ex
        finally:
            _ACTIVE.reset(token)
        return
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError("--executor dask needs the distributed package: pip install 'uss-bench[dask]'") from exc
    cluster = None
    if scheduler:
        _check_scheduler(scheduler)
        try:
            client = distributed.Client(scheduler, timeout=30, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect to the Dask scheduler ({exc}); "
                              "check the address (e.g. tcp://HOST:8786) and that it is running") from None
    else:
        cluster = distributed.LocalCluster(n_workers=int(jobs), threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR,
                                           env={v: "1" for v in THREAD_VARS})
        client = distributed.Client(cluster, set_as_default=False)
    where = f"the Dask scheduler at {scheduler}" if scheduler else "the local Dask cluster"
    try:
        try:
            client.wait_for_workers(1, timeout=DASK_WAIT_S)
        except (TimeoutError, OSError) as exc:
            raise ConfigError(f"{where} has no worker after {DASK_WAIT_S:g} s ({type(exc).__name__}); start "
                              f"workers (dask worker {scheduler or 'ADDR'}) or use --executor loky") from None
        ex = Executor("dask", max(1, sum(client.nthreads().values())), scheduler)
        token = _ACTIVE.set(ex)
        watch = _WorkerWatch(client)
        try:
            with joblib.parallel_config(backend="dask", n_jobs=-1, client=client):
                yield ex
        except (KeyboardInterrupt, TimeoutError) as exc:
            if not watch.lost:
                raise
            raise UssBenchError(f"{where} lost all its workers (none for {DASK_WAIT_S:g} s, "
                                f"{type(exc).__name__}); the rows scored so far are in the run's parts: "
                                "restart the workers and rerun with --resume") from None
        finally:
            watch.stop()
            _ACTIVE.reset(token)
    finally:
        client.close(timeout=10)
        if cluster is not None:
            cluster.close(timeout=10)


DASK_WAIT_S = float(os.environ.get("USS_BENCH_DASK_WAIT_S", 60))
"""How long a Dask run waits for a worker, at start and after losing every worker (s)
[env USS_BENCH_DASK_WAIT_S, 60]."""


def _check_scheduler(address: str) -> None:
    """Refuse a ``--scheduler`` that is not an address or where nothing listens, before any ``Client``
    exists (a ``Client`` that failed in its constructor hangs the interpreter's exit for 60 s).

    Raises:
        ConfigError: not ``[tcp|tls://]HOST:PORT`` (or another Dask comm scheme), or a TCP connection to
            ``HOST:PORT`` is refused or times out (5 s).
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address)
        host, port = parse_host_port(loc) if scheme in ("tcp", "tls") else (None, None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--scheduler {address}: not a Dask scheduler address ({exc}); "
                          "give one as tcp://HOST:8786") from None
    if host is None:
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"--scheduler {address}: cannot connect to the Dask scheduler ({exc}); check the "
                          "address (e.g. tcp://HOST:8786) and that it is running") from None


class _WorkerWatch:
    """Watches a Dask client's workers from a daemon thread (main thread only): when the cluster has had
    no worker for :data:`DASK_WAIT_S` s it sets :attr:`lost` and interrupts the main thread, which joblib
    would otherwise leave waiting forever for the lost tasks (measured: a run whose only worker was
    SIGKILLed hung until killed). :func:`executor` turns that interrupt into a one-line error."""

    POLL_S = 1.0

    def __init__(self, client):
        self.client, self.lost = client, False
        self._stop = threading.Event()
        self._thread = None
        if threading.current_thread() is threading.main_thread():
            self._thread = threading.Thread(target=self._run, name="uss-bench-dask-watch", daemon=True)
            self._thread.start()

    def _workers(self) -> int:
        try:
            return len(self.client.sync(self.client.scheduler.ncores, callback_timeout=5))
        except Exception:  # noqa: BLE001 - a scheduler that does not answer has no usable worker
            return 0

    def _run(self) -> None:
        since = None
        while not self._stop.wait(self.POLL_S):
            if self._workers() > 0:
                since = None
                continue
            since = since if since is not None else time.monotonic()
            if time.monotonic() - since >= DASK_WAIT_S:
                self.lost = True
                _thread.interrupt_main()
                return

    def stop(self) -> None:
        self._stop.set()


def active() -> Executor | None:
    """The executor selected by the innermost :func:`executor` block of this thread, or ``None``."""
    return _ACTIVE.get()


def effective_jobs(jobs: int) -> int:
    """Tasks that run at once: the active executor's, else ``jobs`` (joblib's default loky backend)."""
    ex = active()
    return ex.jobs if ex is not None else max(1, int(jobs))


def parallel(jobs: int, **kwargs: Any) -> joblib.Parallel:
    """``joblib.Parallel`` on the active executor.

    Args:
        jobs: workers wanted (``--jobs``) when no executor is active or it is loky; a Dask executor uses
            all its worker threads.
        kwargs: passed to ``joblib.Parallel`` (``return_as``, ``pre_dispatch``...).
    """
    ex = active()
    n_jobs = -1 if ex is not None and ex.kind == "dask" else max(1, int(jobs))
    return joblib.Parallel(n_jobs=n_jobs, **kwargs)


def limit_threads() -> None:
    """Give this (worker) process one torch/BLAS thread: sets the :data:`THREAD_VARS` and, when torch is
    loaded, ``torch.set_num_threads(1)``. Call it in tasks, never in the main process."""
    for var in THREAD_VARS:
        os.environ[var] = "1"
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


PARENT_POLL_S = 0.5
"""How often a worker checks that its parent is alive (s)."""

_watching: int | None = None


def watch_parent(parent_pid: int | None = None) -> bool:
    """Make this (worker) process exit within :data:`PARENT_POLL_S` s of its parent's death.

    loky keeps its workers alive when the process that started them is SIGKILLed (or dies of SIGINT
    without shutting the pool down): they were measured alive 30+ minutes later, one holding 573 MB
    (issue 15 #15). A daemon thread polls ``os.getppid()``; once it changes (the parent died and the
    worker was re-parented to init or a subreaper) it ends the process with ``os._exit(1)`` — no task of
    a dead run has anyone to report to. A worker whose parent is already gone when it starts (the run was
    killed while loky was starting it) exits at once. Idempotent.

    Args:
        parent_pid: the parent to watch (the loky :func:`executor` passes its own PID as the workers'
            initializer argument); ``None``: the current parent.

    Returns:
        True when this process is (now) watching its parent.
    """
    global _watching
    if _watching is not None:
        return True
    if parent_pid is None:
        parent_pid = os.getppid()
    if parent_pid == os.getpid():
        return False
    if os.getppid() != parent_pid:
        # loky starts its workers as direct children of the run: the run died while this one was starting
        os._exit(1)
    _watching = parent_pid

    def run() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=run, name="uss-bench-parent-watch", daemon=True).start()
    return True


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the same ``finally`` blocks run (rows
    buffered by the eval are flushed to its parts)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread
    instead of ending the process at once: the eval then flushes its buffered rows as on SIGINT, where
    SIGTERM used to lose up to ``PART_SECONDS`` (60 s) of them. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import signal

    def handler(signum, frame):
        raise Terminated(f"signal {signum} (SIGTERM)")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def numerics(batch_size: int) -> dict[str, int]:
    """The settings that a checkpoint system's estimates depend on besides its inputs (issue 15 #14).

    The scorer and the baselines give bit-identical values for any thread count, batch, worker or rank
    (tests/faults/test_determinism.py). A separator's float32 convolutions do not: torch splits their
    reductions by its intra-op thread count (``torch.get_num_threads()``, 1 per rank under torchrun) and
    by the batch, which changed SI-SDR by up to 1.7e-6 dB and PESQ by 5.3e-5 between a 2-rank and a
    one-process run. The eval records these in ``parts/<dataset>/meta.json`` and refuses a ``--resume``
    under other values, so one ``items.parquet`` never mixes them.

    Returns:
        ``{"batch_size": --batch-size, "torch_threads": torch's intra-op threads of this process}``.
    """
    import torch

    return {"batch_size": int(batch_size), "torch_threads": int(torch.get_num_threads())}


# -- torchrun ---------------------------------------------------------------------------------------


@dataclass
class Ranks:
    """This process's place among the torchrun ranks (one process: rank 0 of 1).

    Attributes:
        rank: global rank (``RANK``).
        world_size: number of ranks (``WORLD_SIZE``).
        local_rank: rank on this machine (``LOCAL_RANK``): the CUDA device index.
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (no process group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (it merges the parts and writes ``items.parquet``)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.backend is None:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), indexed by rank, on every rank; ``[obj]`` for one process."""
        if self.backend is None:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def device(self, device: str) -> str:
        """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when CUDA is available and
        there are several ranks; otherwise ``device`` unchanged."""
        if self.world_size > 1 and device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank}"
        return device


def dist_env() -> tuple[int, int, int] | None:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from the torchrun environment, or ``None`` outside torchrun.

    Raises:
        ConfigError: the variables are set but are not integers with ``0 <= RANK < WORLD_SIZE``.
    """
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return None
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (torchrun sets them): {exc}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


@contextmanager
def distributed(device: str = "auto") -> Iterator[Ranks]:
    """Join the torchrun process group for the block (one process: yields ``Ranks()``, does nothing).

    The backend is NCCL when ``device`` allows CUDA and CUDA is available (each rank then uses
    ``cuda:LOCAL_RANK``), else gloo. ``MASTER_ADDR``/``MASTER_PORT`` come from torchrun.

    Raises:
        ConfigError: a bad torchrun environment (:func:`dist_env`).
    """
    env = dist_env()
    if env is None or env[1] == 1:
        yield Ranks(*(env or (0, 1, 0)))
        return
    import torch
    import torch.distributed as dist

    rank, world, local = env
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    try:
        yield Ranks(rank, world, local, backend)
    finally:
        dist.destroy_process_group()
