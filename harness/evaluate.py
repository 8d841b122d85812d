"""The eval runner: evaluation sets → a separator (or a baseline) → per-item metric rows.

One row per (item, condition) goes to ``<out>/items.parquet`` (DESIGN §7): ids, class, every metric,
``status`` (``ok`` or why the item could not be scored), ``seconds`` spent on it, and provenance. Items
that cannot be scored are kept as rows with a status, never dropped; aggregates skip them and the
report counts them.

Systems plug in through :class:`System`; the corpus, metric and report code never changes for a new one.

**Pipeline.** Per dataset and condition the work is cut into *units*: a block of ``batch_size``
consecutive manifest rows of a fixed-length set (2-s items read from ``mixtures.h5``), or one whole
track of MUSDB18 / Voicebank-Demand (read from the corpus files). Three stages overlap:

1. a reader thread reads the next units (at most :data:`PREFETCH` ahead, or one scoring group);
2. the main process separates a unit (``System.separate``, batched, on the chosen device; the model is
   built once per process and never sent to workers);
3. the metric workers (``--jobs N --executor loky|dask``, :mod:`harness.parallel`) score the previous
   unit (or group of ``N`` tracks) with :func:`score_batch` while the next one is separated.

With ``--jobs 1`` scoring runs in the main process. A row's ``seconds`` is its unit's reading,
separation and scoring time divided by the unit's items (the stages overlap, so the sum over rows exceeds
the wall time). Every item's metrics are a pure function of its
reference, estimate and mixture, and blocks are the same whatever the ranks or the resume point, so the
metric values are bit-identical for any number of workers, executor, rank count or restart.

**Parts and resume.** Rows are flushed to part files as they complete, so memory is bounded by the
batch size and ``--part-items``, not by the number of items::

    <out>/parts/<dataset>/meta.json                              system, checkpoint, split, set digest
    <out>/parts/<dataset>/<condition>/rank<R>-<SEQ>.parquet      rows in ``items.parquet`` columns

``R`` is the writer's rank (0 without torchrun) and ``SEQ`` a zero-padded counter that continues after
the highest one the rank already has, so a resumed run never overwrites a part. A part holds whole
units and is written when its rows reach ``part_items`` (default :data:`PART_ITEMS`), after
:data:`PART_SECONDS` s, and at the end; each through a temporary name and a rename, so a killed run
leaves only whole parts. With ``resume`` the (dataset, condition, item_id) rows already in the parts
are kept and only the others are evaluated (a unit with some rows done is separated whole, for the same
estimates, and only its missing rows are scored); without it the dataset's parts are removed first.
Resuming into parts written for another system, checkpoint or build raises :class:`UssBenchError`.
``items.parquet`` is the merge of the parts: rows of the manifest (``--limit``) only, in condition
order then manifest order; a duplicate row (e.g. two runs writing into one folder at once) is dropped,
keeping the first in part-file order, and logged. ``run.json`` says per dataset how many rows were
resumed, computed and dropped.

**Ranks.** Under ``torchrun`` unit ``k`` goes to rank ``k % WORLD_SIZE`` (blocks for fixed-length
sets, tracks for whole-track sets); each rank writes its own parts; rank 0 waits for all
(``all_gather``), merges and writes ``items.parquet`` and ``run.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import queue
import re
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from joblib import delayed

import harness
from harness import parallel
from harness.audio import AudioRef
from harness.config import REPO_ROOT, load_dataset_config
from harness.datasets import get_corpus
from harness.datasets.store import EvalSet, atomic_write_parquet, atomic_write_text, built_datasets, open_set
from harness.errors import ConfigError, UssBenchError
from harness.oracle import oracle_irm
from harness.parallel import Ranks
from harness.scoring import METRIC_COLUMNS, score_task, unscored
from harness.scoring import score as score  # public here too: harness.evaluate.score
from harness.scoring import score_batch as score_batch
from harness.tempfiles import remove_stale_temps

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("system", "dataset", "split", "condition", "item_id", "class_id", "label", *METRIC_COLUMNS,
                "status", "seconds", "checkpoint_sha256", "harness_version", "git_revision")

PART_ITEMS = 256
"""Default rows per part file (``--part-items``): the most work a killed run loses, in items."""

PART_SECONDS = 60.0
"""A part is also written once its first buffered row is this old (s), so a slow run loses at most this."""

PREFETCH = 2
"""Units the reader thread reads ahead of the separation."""


class System(ABC):
    """Something that separates: a baseline or a query-conditioned model.

    ``separate`` receives a batch of mixtures with the items' rows; it may use the target only when the
    system is an oracle (e.g. :class:`OracleIRM`) or for ``condition="oracle"`` query embeddings.
    """

    name: str
    """What was evaluated, e.g. ``"baseline:mixture"``; the ``system`` column."""
    checkpoint_sha256: str | None = None

    def conditions(self, dataset: str) -> tuple[str, ...]:
        """Query conditions evaluated on ``dataset`` (``"none"`` for systems without a query)."""
        return ("none",)

    def prepare(self, dataset: str) -> None:
        """Load what evaluating ``dataset`` needs (e.g. its query set); raise UssBenchError if absent."""
        return None

    def unscorable(self, items: pd.DataFrame, condition: str) -> dict[str, str]:
        """``{item_id: status}`` of the items this system cannot separate (e.g. no query for the class)."""
        return {}

    @abstractmethod
    def separate(self, mixture: np.ndarray, target: np.ndarray, items: pd.DataFrame,
                 condition: str) -> np.ndarray:
        """Separate a batch.

        Args:
            mixture, target: float32 ``(B, L)`` at 32 kHz.
            items: the ``B`` manifest rows (``dataset``, ``label``, ``class_id``…).
            condition: one of :meth:`conditions`.

        Returns:
            float32 ``(B, L)`` estimates of the targets.
        """


class MixtureBaseline(System):
    """Returns the mixture: SDRi is 0 dB by construction (a sanity floor)."""

    name = "baseline:mixture"

    def separate(self, mixture, target, items, condition):
        return np.array(mixture, dtype=np.float32, copy=True)


class OracleIRM(System):
    """Ideal ratio mask from the target and the interferer (``mixture − target``): an upper bound.

    ``M = sqrt(|S|² / (|S|² + |N|²))`` on a 2048-point STFT with hop 320 (the separator's own STFT,
    SEMANTICS §3.2), periodic Hann window, applied to the mixture STFT and inverted with ``torch.istft``.
    Time-frequency bins where both are silent get mask 0.
    """

    name = "baseline:oracle-irm"
    n_fft = 2048
    hop = 320

    def separate(self, mixture, target, items, condition):
        return oracle_irm(mixture, target, self.n_fft, self.hop)  # in bounded blocks of frames (issue 15 #11)


BASELINES: dict[str, Callable[[], System]] = {"mixture": MixtureBaseline, "oracle-irm": OracleIRM}


@dataclass
class EvalOptions:
    """Options of one eval run (recorded in ``run.json``).

    Attributes:
        datasets: dataset names, evaluated in this order.
        workdir: the work folder holding the built sets.
        out: the run folder (``items.parquet``, ``run.json``, ``parts/``).
        split: the split of the built sets.
        batch_size: items per separation batch (fixed-length sets): the unit of work and of sharding.
        jobs: metric workers (loky) or LocalCluster workers (dask).
        limit: evaluate only the first ``limit`` items of each set.
        resume: keep the rows already in ``<out>/parts`` and evaluate the rest.
        executor: ``"loky"`` or ``"dask"`` (:mod:`harness.parallel`).
        scheduler: Dask scheduler address (``executor="dask"``); ``None`` starts a LocalCluster.
        part_items: rows per part file (rounded up to whole units).
        extra: anything else to record (condition, device...).
    """

    datasets: list[str]
    workdir: Path
    out: Path
    split: str = "test"
    batch_size: int = 16
    jobs: int = 1
    limit: int | None = None
    resume: bool = False
    executor: str = "loky"
    scheduler: str | None = None
    part_items: int = PART_ITEMS
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ConfigError for a batch size, limit or part size below 1, or bad executor options."""
        for name in ("batch_size", "part_items"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.limit is not None and int(self.limit) < 1:
            raise ConfigError(f"--limit {self.limit}: must be at least 1")
        parallel.check_executor(self.executor, self.jobs, self.scheduler)


def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the checkout, or ``None`` outside a git tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _rows(system: System, evalset: EvalSet, items: pd.DataFrame, condition: str,
          scored: list[dict[str, Any]], per_item: float, common: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    columns = (items["item_id"].tolist(), items["class_id"].tolist(), items["label"].tolist(), scored)
    for item_id, class_id, label, m in zip(*columns, strict=True):
        rows.append({"system": system.name, "dataset": evalset.dataset, "split": evalset.split,
                     "condition": condition, "item_id": item_id, "class_id": int(class_id),
                     "label": label, **m, "seconds": per_item, **common})
    return rows


# -- parts ------------------------------------------------------------------------------------------

_PART_RE = re.compile(r"^rank(\d+)-(\d+)\.parquet$")


def parts_dir(out: str | Path, dataset: str, condition: str | None = None) -> Path:
    """``<out>/parts/<dataset>`` or ``<out>/parts/<dataset>/<condition>``."""
    d = Path(out) / "parts" / dataset
    return d / condition if condition is not None else d


def part_files(folder: Path) -> list[Path]:
    """The part files of one (dataset, condition) folder, by rank then sequence number."""
    if not folder.is_dir():
        return []
    found = [(int(m[1]), int(m[2]), p) for p in folder.iterdir() if (m := _PART_RE.match(p.name))]
    return [p for *_, p in sorted(found)]


def _read_part(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UssBenchError(f"part file {path} is unreadable ({exc}); delete it and rerun with --resume") from exc


def done_items(out: str | Path, dataset: str, condition: str) -> set[str]:
    """Item ids that already have a row in the parts of (dataset, condition).

    Raises:
        UssBenchError: a part file cannot be read (names it).
    """
    ids: set[str] = set()
    for path in part_files(parts_dir(out, dataset, condition)):
        ids.update(_read_part(path, ["item_id"])["item_id"])
    return ids


class PartWriter:
    """Buffers the rows of one (dataset, condition) of one rank and writes them as part files.

    Args:
        folder: ``<out>/parts/<dataset>/<condition>``.
        rank: the writer's rank (file names ``rank<rank>-<seq>.parquet``).
        part_items: write a part once this many rows are buffered.
        part_seconds: or once the oldest buffered row is this old (s).
    """

    def __init__(self, folder: Path, rank: int = 0, part_items: int = PART_ITEMS,
                 part_seconds: float = PART_SECONDS):
        self.folder, self.rank = Path(folder), rank
        self.part_items, self.part_seconds = part_items, part_seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        seqs = [int(m[2]) for p in self.folder.iterdir() if (m := _PART_RE.match(p.name)) and int(m[1]) == rank]
        self.seq = max(seqs, default=-1) + 1
        self.rows: list[dict[str, Any]] = []
        self.since = time.monotonic()
        self.written: list[Path] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Buffer ``rows``; write a part when the buffer is full or old enough."""
        if rows and not self.rows:
            self.since = time.monotonic()
        self.rows += rows
        if len(self.rows) >= self.part_items or (self.rows and time.monotonic() - self.since >= self.part_seconds):
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (if any) as the next part, atomically."""
        if not self.rows:
            return
        path = self.folder / f"rank{self.rank}-{self.seq:06d}.parquet"
        atomic_write_parquet(items_frame(self.rows), path)
        self.written.append(path)
        self.seq += 1
        self.rows = []


def _parts_meta(system: System, evalset: EvalSet, batch_size: int | None = None) -> dict[str, Any]:
    meta = {"system": system.name, "checkpoint_sha256": system.checkpoint_sha256, "dataset": evalset.dataset,
            "split": evalset.split, "digest": evalset.build["digest"]}
    if batch_size is not None:  # what a checkpoint's estimates depend on besides the inputs (issue 15 #14)
        meta["numerics"] = parallel.numerics(batch_size)
    return meta


def _check_parts(out: Path, system: System, evalset: EvalSet, batch_size: int | None = None) -> None:
    """Raise UssBenchError when the dataset's parts were written for another system, checkpoint or build."""
    folder = parts_dir(out, evalset.dataset)
    meta_file = folder / "meta.json"
    want = _parts_meta(system, evalset, batch_size)
    if meta_file.is_file():
        try:
            have = json.loads(meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise UssBenchError(f"{meta_file} is unreadable ({exc}); delete {folder} or run without --resume") from exc
    elif folder.is_dir() and any(part_files(d) for d in folder.iterdir() if d.is_dir()):
        have = {}  # parts of unknown origin
    else:
        return  # nothing to resume from
    diff = [k for k in want if have.get(k) != want[k]]
    if diff:
        raise UssBenchError(
            f"--resume: the parts in {folder} were written for "
            f"{', '.join(f'{k}={have.get(k)!r}' for k in diff)}, but this run has "
            f"{', '.join(f'{k}={want[k]!r}' for k in diff)}; use another --out, or run without --resume to "
            "start this dataset over")


def _init_parts(out: Path, system: System, evalset: EvalSet, resume: bool, batch_size: int | None = None) -> None:
    """Rank 0, before any work: without ``resume`` remove the dataset's parts, with it the temporary files
    of parts that a killed run was writing; write the dataset's ``meta.json``."""
    folder = parts_dir(out, evalset.dataset)
    if not resume and folder.exists():
        shutil.rmtree(folder)
    for stale in folder.glob("*/.rank*.parquet.tmp-*"):
        stale.unlink(missing_ok=True)  # a part being written when a run was killed
    old_layout = Path(out) / "parts" / f"{evalset.dataset}.parquet"
    if resume and old_layout.is_file():
        log.warning("%s is a part of the older per-dataset layout; --resume does not read it", old_layout)
    atomic_write_text(folder / "meta.json", json.dumps(_parts_meta(system, evalset, batch_size), indent=2) + "\n")


# -- the pipeline -----------------------------------------------------------------------------------


@dataclass
class _Unit:
    """One separation call's worth of items: a block of a fixed-length set or one whole track."""

    pos: np.ndarray  # manifest positions
    todo: np.ndarray  # bool per row: not yet in the parts
    items: pd.DataFrame
    scored: list[dict[str, Any] | None]  # preset (unscorable, read error) or None: to separate
    mix: np.ndarray | None = None  # float32 (B, L); None when nothing is separated
    ref: np.ndarray | None = None
    est: np.ndarray | None = None  # the system's output for the separated rows, in row order
    est_row: np.ndarray | None = None  # unit row -> row of ``est``
    seconds: float = 0.0


def _plan(n: int, virtual: bool, batch_size: int, ranks: Ranks) -> list[np.ndarray]:
    """Manifest positions of this rank's units: block ``k`` (``batch_size`` rows, or one track) goes to
    rank ``k % world_size``."""
    size = 1 if virtual else batch_size
    units = [np.arange(s, min(s + size, n)) for s in range(0, n, size)]
    return units[ranks.rank::ranks.world_size]


def _read_units(evalset: EvalSet, manifest: pd.DataFrame, cfg: dict, plan: list[tuple[np.ndarray, np.ndarray]],
                skip: dict[str, str]) -> Iterator[_Unit]:
    """Read the audio of each planned unit (runs in the reader thread). Unscorable items are not read."""
    corpus = get_corpus(evalset.dataset, evalset.corpus_root) if evalset.virtual else None
    for pos, todo in plan:
        t0 = time.perf_counter()
        items = manifest.iloc[pos]
        unit = _Unit(pos, todo, items, [unscored(skip[i]) if i in skip else None for i in items["item_id"]])
        if all(s is not None for s in unit.scored):
            pass  # no audio read, no separation
        elif corpus is None:
            unit.mix, unit.ref = evalset.read_rows(pos)
        else:
            row = items.iloc[0]
            try:
                mix = corpus.read(AudioRef(evalset.corpus_root / row["mixture_file"]), cfg["sample_rate"])
                ref = corpus.read(AudioRef(evalset.corpus_root / row["target_file"]), cfg["sample_rate"])
            except UssBenchError as exc:
                unit.scored = [unscored(f"read_error: {exc}")]
            else:
                n = min(len(mix), len(ref))
                unit.mix, unit.ref = mix[None, :n], ref[None, :n]
        unit.seconds = time.perf_counter() - t0
        yield unit


def _prefetch(source: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead; exceptions re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(msg) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in source:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(("error", exc))

    thread = threading.Thread(target=run, name="uss-bench-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        thread.join(timeout=30)


def _groups(units: Iterable[_Unit], size: int) -> Iterator[list[_Unit]]:
    group: list[_Unit] = []
    for u in units:
        group.append(u)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


class _ScorePool:
    """Scoring on the active executor, one group of tasks in flight; inline when it has one worker."""

    def __init__(self, jobs: int):
        self.jobs = parallel.effective_jobs(jobs)
        self._par = None

    def __enter__(self) -> _ScorePool:
        if self.jobs > 1:
            # max_nbytes=None: arrays go to loky workers through the pipe. joblib's default memmaps them into
            # a temporary folder that a managed Parallel empties only at its exit: /dev/shm would fill up
            # with every item's audio of a dataset.
            self._par = parallel.parallel(self.jobs, return_as="generator", pre_dispatch="all", max_nbytes=None)
            self._par.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._par is not None:
            self._par.__exit__(*exc)

    def submit(self, tasks: list[tuple]) -> Callable[[], list[tuple[list[dict[str, Any]], float]]]:
        """Start ``score_task(*task)`` for each task; returns a callable that waits for the results."""
        if self._par is None or not tasks:
            results = [score_task(None, *t) for t in tasks]
            return lambda: results
        pid = os.getpid()
        gen = self._par(delayed(score_task)(pid, *t) for t in tasks)
        return lambda: list(gen)


def _separate(system: System, unit: _Unit, condition: str) -> None:
    """Separate the unit's scorable rows (all of them, also rows already done, so that a block's
    estimates never depend on the resume point) into ``unit.est``."""
    keep = np.array([s is None for s in unit.scored])
    if not keep.any():
        return
    t0 = time.perf_counter()
    if keep.all():
        unit.est = np.asarray(system.separate(unit.mix, unit.ref, unit.items, condition))
    else:
        unit.est = np.asarray(system.separate(unit.mix[keep], unit.ref[keep], unit.items[keep], condition))
    unit.est_row = np.cumsum(keep) - 1
    unit.seconds += time.perf_counter() - t0


def _tasks(unit: _Unit, cfg: dict, n_tasks: int) -> list[tuple[np.ndarray, tuple]]:
    """Scoring tasks of a unit: ``(unit rows, task args)``, contiguous row slices, at most ``n_tasks``."""
    need = np.flatnonzero(np.array([s is None for s in unit.scored]) & unit.todo)
    if not len(need):
        return []
    out = []
    for rows in np.array_split(need, min(n_tasks, len(need))):
        e = unit.est_row[rows]
        if rows[-1] - rows[0] == len(rows) - 1 and e[-1] - e[0] == len(e) - 1:  # contiguous: views, no copy
            rows_, e = slice(rows[0], rows[-1] + 1), slice(e[0], e[-1] + 1)
        else:
            rows_ = rows
        out.append((rows, (unit.ref[rows_], unit.est[e], unit.mix[rows_], cfg)))
    return out


def _pipeline(system: System, evalset: EvalSet, manifest: pd.DataFrame, cfg: dict, condition: str,
              plan: list[tuple[np.ndarray, np.ndarray]], pool: _ScorePool, common: dict[str, Any]
              ) -> Iterator[list[dict[str, Any]]]:
    """Rows of each planned unit, in plan order: read ahead ∥ separate unit k+1 ∥ score unit k."""
    if not plan:
        return
    # every row of the planned units, also rows already done: a block is separated as in the first run
    skip = system.unscorable(manifest.iloc[np.concatenate([pos for pos, _ in plan])], condition)
    group_size = pool.jobs if evalset.virtual else 1
    reader = _prefetch(_read_units(evalset, manifest, cfg, plan, skip), max(PREFETCH, group_size))
    pending = None

    def finish(pending) -> Iterator[list[dict[str, Any]]]:
        group, tasks, wait = pending
        results = iter(wait())
        for unit, unit_tasks in zip(group, tasks, strict=True):
            for rows, _ in unit_tasks:
                scored, seconds = next(results)
                unit.seconds += seconds
                for r, m in zip(rows, scored, strict=True):
                    unit.scored[r] = m
            todo = np.flatnonzero(unit.todo)
            yield _rows(system, evalset, unit.items.iloc[todo], condition, [unit.scored[r] for r in todo],
                        unit.seconds / max(len(unit.items), 1), common)

    try:
        for group in _groups(reader, group_size):
            for unit in group:
                _separate(system, unit, condition)
            n_tasks = pool.jobs if len(group) == 1 else 1
            tasks = [_tasks(unit, cfg, n_tasks) for unit in group]
            for unit in group:  # the audio now lives in the tasks only
                unit.mix = unit.ref = unit.est = unit.est_row = None
            if pending is not None:
                yield from finish(pending)
            pending = (group, tasks, pool.submit([args for unit_tasks in tasks for _, args in unit_tasks]))
        if pending is not None:
            yield from finish(pending)
    finally:
        reader.close()


def _plans(evalset: EvalSet, manifest: pd.DataFrame, opts: EvalOptions, ranks: Ranks, conditions: Sequence[str],
           done: dict[str, set[str]]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per condition, this rank's units that still have rows to write: ``(positions, todo mask)``."""
    units = _plan(len(manifest), evalset.virtual, opts.batch_size, ranks)
    plans = {}
    for c in conditions:
        todo_all = ~manifest["item_id"].isin(done.get(c, set())).to_numpy()
        plans[c] = [(pos, todo_all[pos]) for pos in units if todo_all[pos].any()]
    return plans


def evaluate_set(system: System, evalset: EvalSet, opts: EvalOptions, common: dict[str, Any],
                 progress: Callable[[int, int], None] | None = None, *, ranks: Ranks | None = None,
                 done: dict[str, set[str]] | None = None) -> dict[str, int]:
    """Evaluate this rank's items of one built set that have no row in its parts yet, under every
    condition of the system (after ``system.prepare``), flushing rows into part files as they complete.

    Args:
        system, evalset, opts: what to evaluate, on which set, how.
        common: provenance columns of every row.
        progress: called as ``progress(rows_done, rows_total)`` for this rank.
        ranks: this process's rank (one process when ``None``).
        done: ``{condition: item ids already in the parts}``; read from the parts when ``None``.

    Returns:
        ``{"computed": rows written}``.
    """
    ranks = ranks or Ranks()
    cfg = load_dataset_config(evalset.dataset)
    manifest = evalset.manifest.iloc[: opts.limit] if opts.limit else evalset.manifest
    conditions = system.conditions(evalset.dataset)
    if done is None:
        done = {c: done_items(opts.out, evalset.dataset, c) for c in conditions}
    plans = _plans(evalset, manifest, opts, ranks, conditions, done)
    total = sum(int(todo.sum()) for plan in plans.values() for _, todo in plan)
    computed = 0
    with _ScorePool(opts.jobs) as pool:
        for c in conditions:
            writer = PartWriter(parts_dir(opts.out, evalset.dataset, c), ranks.rank, opts.part_items)
            try:
                for rows in _pipeline(system, evalset, manifest, cfg, c, plans[c], pool, common):
                    writer.add(rows)
                    computed += len(rows)
                    if progress:
                        progress(computed, total)
            finally:
                writer.flush()  # rows already computed survive an error in a later unit
    return {"computed": computed}


def merge_parts(out: str | Path, evalset: EvalSet, conditions: Sequence[str], limit: int | None = None
                ) -> tuple[pd.DataFrame, int]:
    """The rows of one dataset from its parts: manifest items only, condition then manifest order.

    Returns:
        ``(rows, duplicates dropped)``. Duplicates of (condition, item_id) keep the first row in part
        order (rank, sequence) and are logged.

    Raises:
        UssBenchError: an item of the manifest (first ``limit``) has no row, or a part is unreadable.
    """
    manifest = evalset.manifest.iloc[:limit] if limit else evalset.manifest
    frames = [_read_part(p) for c in conditions for p in part_files(parts_dir(out, evalset.dataset, c))]
    df = pd.concat(frames, ignore_index=True) if frames else items_frame([])
    del frames  # memory: one copy of the rows at a time (peak RSS must not grow with the items, issue 5)
    # Each row's key (condition position × items + manifest position) through two hash lookups, then
    # np.unique: it drops the rows outside this run, keeps the first row of each key in part order
    # (return_index gives first occurrences) and sorts by key, i.e. condition then manifest order.
    n = len(manifest)
    pos = pd.Index(manifest["item_id"]).get_indexer(df["item_id"])
    cond = pd.Index(list(conditions)).get_indexer(df["condition"])
    wanted = (pos >= 0) & (cond >= 0)
    if not wanted.all():  # e.g. a resumed run with a smaller --limit
        log.info("%s: %d row(s) in the parts are outside this run's items; not merged", evalset.dataset,
                 int((~wanted).sum()))
    key = np.where(wanted, cond.astype(np.int64) * n + pos, -1)
    keys, first = np.unique(key, return_index=True)
    keys, first = keys[keys >= 0], first[keys >= 0]
    n_dup = int(wanted.sum()) - len(keys)
    if n_dup:
        dup = wanted.copy()
        dup[first] = False
        log.warning("%s: %d duplicate row(s) in %s (e.g. %s); kept the first of each", evalset.dataset, n_dup,
                    parts_dir(out, evalset.dataset), df["item_id"].iloc[int(np.flatnonzero(dup)[0])])
    expected = n * len(conditions)
    if len(keys) != expected:
        missing = np.setdiff1d(np.arange(expected), keys)
        c, i = divmod(int(missing[0]), n)
        raise UssBenchError(f"{parts_dir(out, evalset.dataset)}: {len(missing)} item(s) have no row "
                            f"(first: condition {conditions[c]}, {manifest['item_id'].iloc[i]}); rerun with --resume")
    columns = [df.columns.get_loc(c) for c in ITEM_COLUMNS]
    return df.iloc[first, columns].reset_index(drop=True), n_dup


def run_eval(system: System, opts: EvalOptions, progress: Callable[[str, int, int], None] | None = None,
             ranks: Ranks | None = None) -> dict[str, Any] | None:
    """Evaluate ``system`` on every dataset of ``opts`` and write ``items.parquet`` + ``run.json``.

    Rows go to part files as they complete (layout and resume rules: module docstring); the final
    ``items.parquet`` is their merge in Table 2 (``opts.datasets``) order, then condition and manifest
    order. Under torchrun (``ranks``) every rank evaluates its units and rank 0 merges.

    Returns:
        the ``run.json`` content on rank 0; ``None`` on the other ranks.

    Raises:
        UssBenchError: a requested dataset has no built set in the workdir, ``--resume`` meets parts of
            another system/checkpoint/build, a part is unreadable, or items are missing at the merge.
        ConfigError: bad options (:meth:`EvalOptions.check`).
    """
    t0 = time.perf_counter()
    opts.check()
    ranks = ranks or Ranks()
    out = Path(opts.out)
    common = {"checkpoint_sha256": system.checkpoint_sha256, "harness_version": harness.__version__,
              "git_revision": git_revision()}
    sets = [open_set(opts.workdir, d, opts.split) for d in opts.datasets]
    for evalset in sets:  # fail before any work when, e.g., a query set is missing
        system.prepare(evalset.dataset)
    if opts.resume:
        for evalset in sets:
            _check_parts(out, system, evalset, opts.batch_size)
    if ranks.is_main:
        remove_stale_temps(out)  # .items.parquet.tmp-PID etc. of runs that were killed
        for evalset in sets:
            _init_parts(out, system, evalset, opts.resume, opts.batch_size)
    ranks.barrier()  # parts cleared before anyone scans or writes
    done = {s.dataset: {c: done_items(out, s.dataset, c) for c in system.conditions(s.dataset)} for s in sets}
    ranks.barrier()  # everyone has scanned before anyone writes: "resumed" counts only older rows
    timings, computed = {}, {}
    ex_info = {**parallel.Executor(opts.executor, opts.jobs, opts.scheduler).describe(), "started": False}
    with contextlib.ExitStack() as stack:
        stack.enter_context(parallel.sigterm_as_interrupt())  # SIGTERM flushes the rows as SIGINT does
        for evalset in sets:
            d = evalset.dataset
            manifest = evalset.manifest.iloc[: opts.limit] if opts.limit else evalset.manifest
            if not any(_plans(evalset, manifest, opts, ranks, system.conditions(d), done[d]).values()):
                log.info("resume: rank %d has nothing left to evaluate in %s", ranks.rank, d)
                computed[d] = 0
                continue
            if parallel.active() is None:
                ex = stack.enter_context(parallel.executor(opts.executor, opts.jobs, opts.scheduler))
                ex_info = {**ex.describe(), "started": True}
            t = time.perf_counter()
            cb = (lambda done_, total, d=d: progress(d, done_, total)) if progress else None
            computed[d] = evaluate_set(system, evalset, opts, common, cb, ranks=ranks, done=done[d])["computed"]
            timings[d] = round(time.perf_counter() - t, 3)
    gathered = ranks.gather({"computed": computed, "timings": timings, "executor": ex_info})  # waits for all
    if not ranks.is_main:
        return None
    frames, stats = [], {}
    for evalset in sets:
        d = evalset.dataset
        conditions = system.conditions(d)
        frame, n_dup = merge_parts(out, evalset, conditions, opts.limit)
        frames.append(frame)
        ids = set(frame["item_id"])
        stats[d] = {"rows": len(frame), "resumed": sum(len(done[d][c] & ids) for c in conditions),
                    "computed": sum(g["computed"].get(d, 0) for g in gathered), "duplicates_dropped": n_dup}
    items = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True) if frames else items_frame([])
    del frames
    atomic_write_parquet(items, out / "items.parquet")
    seconds = {d: max(g["timings"][d] for g in gathered if d in g["timings"])
               for d in opts.datasets if any(d in g["timings"] for g in gathered)}
    run = {
        "system": system.name,
        "checkpoint_sha256": system.checkpoint_sha256,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "datasets": opts.datasets,
        "builds": {s.dataset: {"digest": s.build["digest"], "path": str(s.path)} for s in sets},
        "counts": {d: g["status"].value_counts().to_dict() for d, g in items.groupby("dataset")},
        "items": stats,
        "execution": {"ranks": ranks.world_size, "backend": ranks.backend,
                      "executor": gathered[0]["executor"]},
        "timings_s": {**seconds, "total": round(time.perf_counter() - t0, 3)},
        "versions": versions(),
        "git_revision": common["git_revision"],
    }
    atomic_write_text(out / "run.json", json.dumps(run, indent=2, default=str) + "\n")
    return run


def items_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows → the ``items.parquet`` frame with the canonical column order and dtypes."""
    df = pd.DataFrame.from_records(rows, columns=list(ITEM_COLUMNS))
    for c in (*METRIC_COLUMNS, "seconds"):
        df[c] = df[c].astype("float64")
    df["class_id"] = df["class_id"].astype("int64")
    return df


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "harness": harness.__version__}
    for pkg in ("numpy", "torch", "soxr", "soundfile", "pesq", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def resolve_datasets(names: list[str], all_: bool, workdir: Path, split: str = "test") -> tuple[list[str], list[str]]:
    """The datasets to evaluate and, with ``--all``, those that are absent from the workdir.

    Raises:
        UssBenchError: neither names nor ``--all``; or ``--all`` finds nothing built.
    """
    from harness.config import DATASET_NAMES

    if all_:
        built = built_datasets(workdir, split)
        absent = [d for d in DATASET_NAMES if d not in built]
        if not built:
            raise UssBenchError(f"--all: no evaluation set is built under {workdir}/mixtures; run build-mixtures")
        return built, absent
    if not names:
        raise UssBenchError("name the datasets to evaluate, or pass --all")
    for n in names:
        load_dataset_config(n)
    return list(names), []
