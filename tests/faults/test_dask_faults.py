"""Issue 15 #16: Dask faults must be one-line errors (exit 2), never a traceback or a hang.

- ``--scheduler notanaddress`` printed the right message, then the interpreter hung 60 s at exit (a
  ``Client`` that failed in its constructor closes itself in ``__del__`` with a 60-s timeout);
- a scheduler with no worker gave a ``TimeoutError`` traceback after 60 s;
- losing every worker mid-run left joblib waiting forever (measured here; the campaign saw a
  ``TimeoutError`` traceback).

The scheduler and worker are real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from joblib import delayed

from harness import parallel
from harness.errors import ConfigError, UssBenchError

pytest.importorskip("distributed")
DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([DASK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_listening(port: int, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"dask scheduler did not listen on {port}")


@pytest.fixture
def scheduler():
    port = free_port()
    proc = start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
    try:
        wait_listening(port)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("address", ["notanaddress", "tcp://127.0.0.1:1"])
def test_a_bad_scheduler_is_a_one_line_error_and_the_process_exits_at_once(address):
    code = textwrap.dedent(f"""
        import sys
        from harness import parallel
        from harness.errors import UssBenchError
        try:
            with parallel.executor("dask", 1, {address!r}):
                pass
        except UssBenchError as exc:
            print("error:", exc)
            sys.exit(2)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "scheduler" in lines[0]
    assert "Traceback" not in proc.stderr
    assert took < 20, f"the process took {took:.0f} s to exit (the failed Client's 60-s close)"


def test_a_scheduler_without_workers_is_a_config_error_after_the_wait(scheduler, monkeypatch):
    monkeypatch.setattr(parallel, "DASK_WAIT_S", 2.0)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="has no worker after 2 s"):
        with parallel.executor("dask", 1, scheduler):
            pass
    assert time.monotonic() - t0 < 30


# ~5 s: a worker starts, scores, is SIGKILLed; the watch gives up after 3 s without workers
def test_losing_every_worker_mid_run_is_an_error_not_a_hang(scheduler, monkeypatch):
    monkeypatch.setattr(parallel, "DASK_WAIT_S", 3.0)
    worker = start("worker", scheduler, "--nthreads", "2", "--no-nanny", "--no-dashboard")
    try:
        with pytest.raises(UssBenchError, match="lost all its workers"):
            with parallel.executor("dask", 1, scheduler) as ex:
                assert ex.jobs == 2
                t0 = time.monotonic()
                out = parallel.parallel(2)(delayed(time.sleep)(0.2) for _ in range(4))
                assert len(out) == 4  # the cluster works before the fault
                os.killpg(worker.pid, signal.SIGKILL)
                parallel.parallel(2)(delayed(time.sleep)(0.5) for _ in range(20))
        assert time.monotonic() - t0 < 60
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from harness.config import REPO_ROOT
    from harness.mixtures import BuildOptions, build_mixtures

    wd = tmp_path_factory.mktemp("wd")
    build_mixtures(REPO_ROOT / "datasets" / "demo" / "fsd50k", wd, BuildOptions("fsd50k"))
    return wd


def eval_cli(wd: Path, out: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", "fsd50k", "--baseline", "mixture",
                           "--workdir", str(wd), "--out", str(out), "--limit", "8", "--quiet", *extra],
                          capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})
    return proc, time.monotonic() - t0


def test_eval_with_scheduler_notanaddress_exits_2_at_once(built, tmp_path):
    proc, took = eval_cli(built, tmp_path / "run", "--jobs", "2", "--executor", "dask", "--scheduler", "notanaddress")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "notanaddress" in lines[0], proc.stderr[-2000:]
    assert took < 30, f"eval took {took:.0f} s to exit"


def test_eval_on_a_scheduler_without_workers_exits_2_with_one_line(built, tmp_path, scheduler):
    proc, took = eval_cli(built, tmp_path / "run", "--jobs", "2", "--executor", "dask", "--scheduler", scheduler,
                          env={"USS_BENCH_DASK_WAIT_S": "2"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "no worker after 2 s" in lines[0], proc.stderr[-2000:]
    assert took < 40


# -- one of two workers SIGKILLed in the middle of a task: the run ends with the serial run's rows ---------

PRELOAD = Path(__file__).with_name("dask_hold_preload.py")
KILL_ARGS = ("--baseline", "oracle-irm", "fsd50k", "--batch-size", "4", "--part-items", "4", "-q")


def _wait_for_workers(address: str, n: int, timeout: float = 180.0) -> None:
    import distributed

    with distributed.Client(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=timeout)


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (a worker, the eval) when it still runs, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


@pytest.mark.slow
def test_a_worker_killed_mid_task_gives_the_serial_rows(fsd50k_workdir, scheduler, tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1; one worker is SIGKILLed
    once it has started a scoring task (it holds the task until then: ``dask_hold_preload.py``), the other
    waits for that start before it scores anything. The scheduler hands the lost tasks to the survivor:
    exit 0 and an ``items.parquet`` identical to a serial run's (every column but the wall-clock
    ``seconds``)."""
    import pandas as pd

    from harness.evaluate import EvalOptions, OracleIRM, run_eval

    serial = tmp_path / "serial"
    run_eval(OracleIRM(), EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=serial, batch_size=4,
                                      part_items=4))
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "USS_FAULT_MARKERS": str(markers), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def worker(role: str) -> subprocess.Popen:
        with open(tmp_path / f"worker-{role}.log", "w") as log:  # kept for a failure's diagnosis
            return subprocess.Popen([DASK, "worker", scheduler, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                     "--preload", str(PRELOAD)], stdout=subprocess.DEVNULL, stderr=log,
                                    start_new_session=True, env={**env, "USS_FAULT_ROLE": role})

    procs = []
    try:
        doomed, survivor = worker("hold"), worker("wait")
        procs += [doomed, survivor]
        _wait_for_workers(scheduler, 2)  # both joined: the eval sees 2 worker threads
        out = tmp_path / "run"
        log = tmp_path / "eval.log"  # a file, not a pipe: nothing blocks the eval while the test waits
        with open(log, "w") as f:
            ev = subprocess.Popen([sys.executable, "-m", "harness", "eval", *KILL_ARGS, "--workdir",
                                   str(fsd50k_workdir), "--out", str(out), "--executor", "dask", "--scheduler",
                                   scheduler], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(ev)
        started = markers / "started"
        t0 = time.monotonic()
        while not started.exists():
            assert ev.poll() is None, "the eval ended before the doomed worker started a task: " + log.read_text()
            assert time.monotonic() - t0 < 240, "the doomed worker never started a task"
            time.sleep(0.1)
        assert int(started.read_text()) == doomed.pid  # this very worker is in the middle of a task
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=60)
        assert ev.wait(timeout=420) == 0, log.read_text()[-5000:]
        assert survivor.poll() is None  # the survivor scored the rest
    finally:
        for proc in reversed(procs):
            _stop(proc)
    items, want = pd.read_parquet(out / "items.parquet"), pd.read_parquet(serial / "items.parquet")
    pd.testing.assert_frame_equal(items.drop(columns="seconds"), want.drop(columns="seconds"), check_exact=True)
    execution = json.loads((out / "run.json").read_text())["execution"]["executor"]
    assert execution["kind"] == "dask" and execution["jobs"] == 2 and execution["scheduler"] == scheduler
