"""The eval runner: evaluation sets → a separator (or a baseline) → per-item metric rows.

One row per (item, condition) goes to ``<out>/items.parquet`` (DESIGN §7): ids, class, every metric,
``status`` (``ok`` or why the item could not be scored), ``seconds`` spent on it, and provenance. Items
that cannot be scored are kept as rows with a status, never dropped; aggregates skip them and the
report counts them.

Systems plug in through :class:`harness.systems.System` (re-exported here); the corpus, metric and report
code never changes for a new one. Only an oracle system (``System.is_oracle``) is handed the target; every
other one gets ``target=None`` and one :class:`harness.queries.Query` per item.

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
A run holds the folder's lock ``<out>/eval.lock`` (:mod:`harness.runlock`) from before it touches the
parts until ``run.json`` is written, so a second eval into the folder is refused instead of deleting the
first one's parts; holding it, rank 0 removes the temporary files that killed runs left there.
``items.parquet`` is the merge of the parts: rows of the manifest (``--limit``) only, in condition
order then manifest order; a duplicate row that agrees with the first (same metrics and status) is
dropped, keeping the first in part-file order, and logged; duplicates that disagree, a part without a
column of the schema, or a part of another dataset are refused (the error names the part file). ``run.json`` says per dataset how many rows were
resumed, computed and dropped.

**Ranks.** Under ``torchrun`` unit ``k`` goes to rank ``k % WORLD_SIZE`` (blocks for fixed-length
sets, tracks for whole-track sets); each rank writes its own parts; rank 0 waits for all
(``all_gather``), merges and writes ``items.parquet`` and ``run.json``.
"""

from __future__ import annotations

import contextlib
import inspect
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from joblib import delayed

import harness
from harness import musdb_protocols, parallel
from harness.audio import AudioRef
from harness.config import REPO_ROOT, load_dataset_config
from harness.datasets import get_corpus
from harness.datasets.store import (
    EvalSet,
    atomic_write_parquet,
    atomic_write_text,
    built_datasets,
    open_set,
    track_length_status,
)
from harness.errors import ConfigError, UssBenchError, check_choice
from harness.metric_registry import metric_columns
from harness.parallel import Ranks
from harness.queries import Query, ShotBank, display_name
from harness.query_protocols import ABSENT, wrap_system
from harness.scoring import METRIC_STATUS, score_packed, score_task, unscored
from harness.scoring import score as score  # public here too: harness.evaluate.score
from harness.scoring import score_batch as score_batch
from harness.systems import BASELINES as BASELINES  # re-exported: older imports keep working
from harness.systems import MixtureBaseline as MixtureBaseline
from harness.systems import OracleIRM as OracleIRM
from harness.systems import System as System
from harness.systems import describe_system
from harness.tempfiles import remove_stale_temps

log = logging.getLogger(__name__)

def item_columns() -> tuple[str, ...]:
    """The columns of ``items.parquet`` and of part files, in order: ids, every metric column of the
    registry (:func:`harness.metric_registry.metric_columns`, read at call time), the statuses,
    provenance. ``ITEM_COLUMNS`` is this tuple."""
    return ("system", "dataset", "split", "condition", "item_id", "class_id", "label", *metric_columns(),
            "status", "status_detail", METRIC_STATUS, "seconds", "checkpoint_sha256", "harness_version",
            "git_revision", "query_label")


OPTIONAL_PART_COLUMNS = ("status_detail", METRIC_STATUS, "query_label")
"""Columns of :data:`ITEM_COLUMNS` that parts written before they existed may lack (filled with ``""``;
``query_label``, the class queried when it is not the row's ``label`` (absent-query rows,
:mod:`harness.query_protocols`), with null).
A metric column declared after the first schema (``MetricSpec.in_every_part`` false) that a part lacks is
filled with NaN: an older run folder still resumes (issue 11); a part without one of the first eight is
refused (issue 15 #18)."""


def __getattr__(name: str):
    # Derived from the metric registry at each access, so a metric declared after import is a column.
    if name == "ITEM_COLUMNS":
        return item_columns()
    if name == "METRIC_COLUMNS":
        return metric_columns()
    if name == "PART_VALUE_COLUMNS":
        return (*metric_columns(), "status")
    if name == "STRING_COLUMNS":
        return _string_columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fill_missing_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the optional columns it lacks (or holds as null) filled: metric columns NaN,
    ``status_detail``/``metric_status`` ``""``, ``query_label`` null (rows of parts or runs written before those columns)."""
    for c in metric_columns():
        if c not in df.columns:
            df[c] = np.nan
    for c in OPTIONAL_PART_COLUMNS:
        if c == "query_label":
            if c not in df.columns:
                df[c] = None
            continue
        if c not in df.columns:
            df[c] = ""
        elif df[c].isna().any():
            df[c] = df[c].astype(object).where(df[c].notna(), "")
    return df

PART_ITEMS = 256
"""Default rows per part file (``--part-items``): the most work a killed run loses, in items."""

PART_SECONDS = 60.0
"""A part is also written once its first buffered row is this old (s), so a slow run loses at most this."""

PREFETCH = 2
"""Units the reader thread reads ahead of the separation."""


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
        save_estimates: ``none | worst | best | all``: write estimates under ``<out>/estimates``
            (:mod:`harness.estimates`).
        shots: example clips per class for query mode ``audio-shots`` (:class:`harness.queries.ShotBank`).
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
    save_estimates: str = "none"
    shots: int = 3
    extra: dict[str, Any] = field(default_factory=dict)
    query_protocol: str = "present"
    """``present`` (the paper's protocol) or ``absent`` (adds the absent-query rows, :mod:`harness.query_protocols`)."""
    query_modes: list[str] | None = None
    """``eval --query-modes``: the query-mode conditions to run instead of the system's own (``None``: its own)."""
    break_lock: bool = False
    """Remove a stale ``<out>/eval.lock`` of a killed run first (:mod:`harness.runlock`)."""
    metrics: tuple[str, ...] = ()
    """Changes to each dataset's declared metrics: ``+name``/``+group`` adds an opt-in metric (``+bss``),
    ``-name`` drops one (:func:`harness.metric_registry.resolve_metrics`)."""
    aggregate: str | None = None
    """The aggregation of every report column (a name of :data:`harness.aggregations.AGGREGATIONS`);
    ``None``: each column's declared one. Recorded in ``run.json``; ``report`` uses it unless given its own."""
    musdb_protocol: str = "museval"
    """How ``musdb_sdr`` / ``musdb_sdri`` call museval (:mod:`harness.musdb_protocols`)."""

    def check(self) -> None:
        """Raise ConfigError for a batch size, limit or part size below 1, or bad executor options."""
        for name in ("batch_size", "part_items", "shots"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.limit is not None and int(self.limit) < 1:
            raise ConfigError(f"--limit {self.limit}: must be at least 1")
        parallel.check_executor(self.executor, self.jobs, self.scheduler)
        from harness.estimates import SAVE_CHOICES

        check_choice("--save-estimates", self.save_estimates, SAVE_CHOICES)
        from harness.aggregations import aggregation
        from harness.metric_registry import resolve_metrics

        resolve_metrics((), self.metrics)
        if self.aggregate is not None:
            aggregation(self.aggregate)
        musdb_protocols.check_protocol(self.musdb_protocol)


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
    asked = system.absent_labels(evalset.dataset) if condition == ABSENT else {}
    for item_id, class_id, label, m in zip(*columns, strict=True):
        rows.append({"system": system.name, "dataset": evalset.dataset, "split": evalset.split,
                     "condition": condition, "item_id": item_id, "class_id": int(class_id),
                     "label": label, **m, "seconds": per_item, **common, "query_label": asked.get(item_id)})
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


def check_part_schema(path: Path, columns: Iterable[str], dtypes: dict[str, Any] | None = None) -> None:
    """Refuse a part file that lacks a column of :data:`ITEM_COLUMNS` or has a non-numeric metric column.

    A part is trusted by ``--resume`` as rows already scored; without a metric column its rows would
    merge as NaN with status ``ok`` (issue 15 #18).

    Args:
        path: the part file (named in the error).
        columns: its column names.
        dtypes: ``{column: dtype}`` when known (a read frame), to check the metric columns are numeric.

    Raises:
        UssBenchError: names the file and the missing or mistyped columns; says to delete it and resume.
    """
    from harness.metric_registry import METRICS

    metric_cols = metric_columns()
    later = [m for m in metric_cols if not METRICS[m].in_every_part]  # declared after the part may have been written
    missing = [c for c in item_columns() if c not in set(columns) and c not in (*OPTIONAL_PART_COLUMNS, *later)]
    bad = [c for c in metric_cols if dtypes and c in dtypes and not pd.api.types.is_numeric_dtype(dtypes[c])]
    if missing or bad:
        what = (f"lacks column(s) {', '.join(missing)}" if missing else "") + (
            f"{'; ' if missing else ''}non-numeric metric column(s) {', '.join(bad)}" if bad else "")
        raise UssBenchError(f"part file {path} {what}: it was not written by this version of uss-bench eval "
                            "(or was edited); delete it and rerun with --resume to score its items again")


def done_items(out: str | Path, dataset: str, condition: str) -> set[str]:
    """Item ids that already have a row in the parts of (dataset, condition).

    Raises:
        UssBenchError: a part file cannot be read, or lacks a column of the run's schema (names it).
    """
    ids: set[str] = set()
    for path in part_files(parts_dir(out, dataset, condition)):
        try:
            names = pq.read_schema(path).names
        except (OSError, ValueError) as exc:
            raise UssBenchError(f"part file {path} is unreadable ({exc}); delete it and rerun with --resume") from exc
        check_part_schema(path, names)
        ids.update(_read_part(path, ["item_id"])["item_id"])
    return ids


# PART_VALUE_COLUMNS (module __getattr__): (*metric columns, "status"), the columns that two rows of one
# (condition, item) must agree on; ``seconds`` and provenance may differ.


def _conflicting_duplicates(df: pd.DataFrame, rows: np.ndarray, firsts: np.ndarray) -> np.ndarray:
    """Mask over ``rows``: the duplicate row differs from its key's first row in a value column
    (NaN equals NaN; metric values compared exactly, as a rerun of the same item is bit-identical)."""
    differ = np.zeros(len(rows), bool)
    for col in (*metric_columns(), "status"):
        values = df[col].to_numpy()
        a, b = values[rows], values[firsts]
        same = pd.isna(a) & pd.isna(b) | (a == b)
        differ |= ~np.asarray(same, bool)
    return differ


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


def _parts_meta(system: System, evalset: EvalSet, batch_size: int | None = None,
                musdb_protocol: str = musdb_protocols.DEFAULT_PROTOCOL) -> dict[str, Any]:
    meta = {"system": system.name, "checkpoint_sha256": system.checkpoint_sha256, "dataset": evalset.dataset,
            "split": evalset.split, "digest": evalset.build["digest"]}
    if musdb_protocol != musdb_protocols.DEFAULT_PROTOCOL and _musdb_metrics(evalset.dataset):
        meta["musdb_protocol"] = musdb_protocol  # absent for the default: older parts still resume
    if batch_size is not None:  # what a checkpoint's estimates depend on besides the inputs (issue 15 #14)
        meta["numerics"] = parallel.numerics(batch_size)
    return meta


def recorded_batch_size(out: str | Path) -> int | None:
    """The ``--batch-size`` the part files of the run folder ``out`` were written with
    (``parts/<dataset>/meta.json`` → ``numerics.batch_size``), or ``None`` when no part records one."""
    for path in sorted(Path(out).glob("parts/*/meta.json")):
        try:
            size = json.loads(path.read_text()).get("numerics", {}).get("batch_size")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(size, int) and size >= 1:
            return size
    return None


def _check_parts(out: Path, system: System, evalset: EvalSet, batch_size: int | None = None,
                 musdb_protocol: str = musdb_protocols.DEFAULT_PROTOCOL) -> None:
    """Raise UssBenchError when the dataset's parts were written for another system, checkpoint, build or
    MUSDB18 protocol."""
    folder = parts_dir(out, evalset.dataset)
    meta_file = folder / "meta.json"
    want = _parts_meta(system, evalset, batch_size, musdb_protocol)
    if meta_file.is_file():
        try:
            have = json.loads(meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise UssBenchError(f"{meta_file} is unreadable ({exc}); delete {folder} or run without --resume") from exc
    elif folder.is_dir() and any(part_files(d) for d in folder.iterdir() if d.is_dir()):
        have = {}  # parts of unknown origin
    else:
        return  # nothing to resume from
    keys = [*want, *(k for k in ("musdb_protocol",) if k in have and k not in want)]  # sisec18 parts vs default
    diff = [k for k in keys if have.get(k) != want.get(k)]
    if diff:
        raise UssBenchError(
            f"--resume: the parts in {folder} were written for "
            f"{', '.join(f'{k}={have.get(k)!r}' for k in diff)}, but this run has "
            f"{', '.join(f'{k}={want.get(k)!r}' for k in diff)}; use another --out, or run without --resume to "
            "start this dataset over")


def _init_parts(out: Path, system: System, evalset: EvalSet, resume: bool, batch_size: int | None = None,
                musdb_protocol: str = musdb_protocols.DEFAULT_PROTOCOL) -> None:
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
    atomic_write_text(folder / "meta.json",
                      json.dumps(_parts_meta(system, evalset, batch_size, musdb_protocol), indent=2) + "\n")


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
    sys_mix: np.ndarray | None = None  # mixture / target at the system's rate when it is not the set's
    sys_ref: np.ndarray | None = None
    set_rate: int = harness.SAMPLE_RATE
    joint: bool = False  # the rows of one whole track scored together (--musdb-protocol sisec18)
    whole_track: bool = False  # a joint unit holding every row of its track (not cut by --limit)


def _plan(n: int, virtual: bool, batch_size: int, ranks: Ranks) -> list[np.ndarray]:
    """Manifest positions of this rank's units: block ``k`` (``batch_size`` rows, or one track) goes to
    rank ``k % world_size``."""
    size = 1 if virtual else batch_size
    units = [np.arange(s, min(s + size, n)) for s in range(0, n, size)]
    return units[ranks.rank::ranks.world_size]


def _musdb_metrics(dataset: str) -> bool:
    """Whether the dataset's declaration scores the MUSDB18 columns (``--musdb-protocol`` applies)."""
    return "musdb_sdr" in load_dataset_config(dataset)["metrics"]


def _joint(evalset: EvalSet, opts: EvalOptions) -> bool:
    """Whether the set's track rows are scored together (a joint MUSDB18 protocol on a whole-track set)."""
    return (evalset.virtual and opts.musdb_protocol in musdb_protocols.JOINT_PROTOCOLS
            and _musdb_metrics(evalset.dataset))


def _track_units(manifest: pd.DataFrame, ranks: Ranks) -> list[np.ndarray]:
    """This rank's units of a jointly scored whole-track set: the rows of one track (one mixture file) each,
    track ``k`` to rank ``k % world_size``, so a track's stems are separated and scored in one place.

    Raises:
        UssBenchError: a track's rows are not consecutive in the manifest (not a set built by this version).
    """
    files = manifest["mixture_file"].to_numpy()
    starts = [0] + [i for i in range(1, len(files)) if files[i] != files[i - 1]]
    units = [np.arange(a, b) for a, b in zip(starts, [*starts[1:], len(files)], strict=True)] if len(files) else []
    if len({files[u[0]] for u in units}) != len(units):
        raise UssBenchError("the manifest's rows of a track are not consecutive; rebuild the set with "
                            "`uss-bench build-mixtures` (needed for --musdb-protocol sisec18)")
    return units[ranks.rank::ranks.world_size]


def _read_units(evalset: EvalSet, manifest: pd.DataFrame, cfg: dict, plan: list[tuple[np.ndarray, np.ndarray]],
                skip: dict[str, str], system_rate: int | None = None, system_target: bool = True,
                joint: bool = False) -> Iterator[_Unit]:
    """Read the audio of each planned unit (runs in the reader thread). Unscorable items are not read.

    ``unit.mix`` / ``unit.ref`` are at the set's rate (scoring). When ``system_rate`` differs, ``unit.sys_mix``
    / ``unit.sys_ref`` hold the system's input at its rate: whole-file items read from the corpus file at
    that rate (one resampling of the original), fixed-length items resampled from their 32-kHz rows (soxr HQ);
    ``unit.sys_ref`` only with ``system_target`` (an oracle system, or the oracle query mode: what the
    system may see), else ``None``.
    """
    set_rate = int(cfg["sample_rate"])
    other = system_rate is not None and int(system_rate) != set_rate
    corpus = get_corpus(evalset.dataset, evalset.corpus_root) if evalset.virtual else None
    for pos, todo in plan:
        t0 = time.perf_counter()
        items = manifest.iloc[pos]
        unit = _Unit(pos, todo, items, [unscored(skip[i]) if i in skip else None for i in items["item_id"]],
                     set_rate=set_rate, joint=joint)
        if all(s is not None for s in unit.scored):
            pass  # no audio read, no separation
        elif joint:
            _read_track(unit, evalset, corpus, cfg, system_rate if other else None, system_target)
        elif corpus is None:
            unit.mix, unit.ref = evalset.read_rows(pos)
        else:
            row = items.iloc[0]
            evalset.check_track_files(row)  # SetIntegrityError: a corpus file changed since the build
            try:
                mix = corpus.read(AudioRef(evalset.corpus_root / row["mixture_file"]), cfg["sample_rate"])
                ref = corpus.read(AudioRef(evalset.corpus_root / row["target_file"]), cfg["sample_rate"])
            except UssBenchError as exc:
                unit.scored = [{**unscored("read_error"), "status_detail": str(exc)}]
            else:
                unit.scored = [track_length_status(row, mix, ref)]
                unit.mix, unit.ref = mix[None], ref[None]
                if other:
                    smix = corpus.read(AudioRef(evalset.corpus_root / row["mixture_file"]), system_rate)
                    unit.sys_mix = smix[None]
                    if system_target:
                        sref = corpus.read(AudioRef(evalset.corpus_root / row["target_file"]), system_rate)
                        unit.sys_ref = sref[None]
        if other and corpus is None and unit.mix is not None:
            unit.sys_mix = _resample_rows(unit.mix, set_rate, system_rate)
            unit.sys_ref = _resample_rows(unit.ref, set_rate, system_rate) if system_target else None
        unit.seconds = time.perf_counter() - t0
        yield unit


def _read_track(unit: _Unit, evalset: EvalSet, corpus, cfg: dict, system_rate: int | None,
                system_target: bool) -> None:
    """Read a joint unit (the rows of one track): its mixture once, each scorable row's target; ``unit.mix`` holds
    the mixture once per row. A read error makes every row of the track a ``read_error`` row."""
    rows = [unit.items.iloc[k] for k in range(len(unit.items))]
    live = [k for k, s in enumerate(unit.scored) if s is None]
    unit.whole_track = len(rows) == int((evalset.manifest["mixture_file"] == rows[0]["mixture_file"]).sum())
    for k in live:
        evalset.check_track_files(rows[k])

    def read(column: str, row, rate: int) -> np.ndarray:
        return corpus.read(AudioRef(evalset.corpus_root / row[column]), rate)

    try:
        mix = read("mixture_file", rows[live[0]], cfg["sample_rate"])
        refs = {k: read("target_file", rows[k], cfg["sample_rate"]) for k in live}
        smix = None if system_rate is None else read("mixture_file", rows[live[0]], system_rate)
        srefs = {k: read("target_file", rows[k], system_rate) for k in live} \
            if system_rate is not None and system_target else None
    except UssBenchError as exc:
        unit.scored = [s if s is not None else {**unscored("read_error"), "status_detail": str(exc)}
                       for s in unit.scored]
        return
    for k in live:
        unit.scored[k] = track_length_status(rows[k], mix, refs[k])

    def stack(x: np.ndarray, by_row: dict[int, np.ndarray] | None) -> np.ndarray:
        out = np.zeros((len(rows), len(x)), np.float32) if by_row is not None else np.repeat(x[None], len(rows), 0)
        for k, r in (by_row or {}).items():
            if len(r) == len(x):
                out[k] = r
        return out

    unit.mix, unit.ref = stack(mix, None), stack(mix, refs)
    if smix is not None:
        unit.sys_mix = stack(smix, None)
        unit.sys_ref = stack(smix, srefs) if srefs is not None else None


def _resample_rows(x: np.ndarray, orig_sr: int, target_sr: int, length: int | None = None) -> np.ndarray:
    """Resample each row of float32 ``(B, L)`` with soxr HQ (:func:`harness.audio.resample`); with ``length``,
    cut or zero-pad the rows to it. Returns float32 ``(B, L')``."""
    from harness.audio import resample

    rows = [resample(r, orig_sr, target_sr) for r in x]
    n = length if length is not None else max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), n), np.float32)
    for i, r in enumerate(rows):
        out[i, : min(n, len(r))] = r[:n]
    return out


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
        gen = self._par(delayed(score_packed)(pid, tuple(t)) for t in tasks)  # not scattered: see score_packed
        return lambda: list(gen)


def _separate(system: System, unit: _Unit, condition: str, shots: ShotBank | None = None) -> None:
    """Separate the unit's scorable rows (all of them, also rows already done, so that a block's
    estimates never depend on the resume point) into ``unit.est``."""
    keep = np.array([s is None for s in unit.scored])
    if not keep.any():
        return
    t0 = time.perf_counter()
    src_mix, src_ref = (unit.mix, unit.ref) if unit.sys_mix is None else (unit.sys_mix, unit.sys_ref)
    mix, ref, items = (src_mix, src_ref, unit.items) if keep.all() else \
        (src_mix[keep], None if src_ref is None else src_ref[keep], unit.items[keep])
    if unit.joint:  # one whole track per call, as for the per-target protocols: the same estimates
        est = np.concatenate([call_separate(system, mix[k: k + 1], None if ref is None else ref[k: k + 1],
                                            items.iloc[k: k + 1], condition, shots) for k in range(len(mix))])
    else:
        est = call_separate(system, mix, ref, items, condition, shots)
    if unit.sys_mix is not None:  # back to the set's rate (and length) for scoring; metrics resample further
        est = _resample_rows(est, int(system.sample_rate), int(unit.set_rate), unit.mix.shape[1])
    unit.est = est
    unit.est_row = np.cumsum(keep) - 1
    unit.seconds += time.perf_counter() - t0


def make_queries(system: System, items: pd.DataFrame, condition: str, target: np.ndarray | None,
                 shots: ShotBank | None = None) -> list[Query]:
    """One :class:`~harness.queries.Query` per row for ``condition`` (a query mode of ``system``).

    ``embedding`` comes from ``system.average_embeddings`` in mode ``average`` (``None`` for a class without
    one: such items are ``no_query`` rows, :meth:`System.unscorable`); ``oracle_source`` is the row's
    target in mode ``oracle`` only; ``shots`` the class's example clips in mode ``audio-shots``.
    """
    table = system.average_embeddings(items["dataset"].iloc[0]) if condition == "average" else None
    out = []
    for i, (class_id, label) in enumerate(zip(items["class_id"].tolist(), items["label"].tolist(), strict=True)):
        out.append(Query(condition, int(class_id), str(label), display_name(str(label)),
                         embedding=table.get(label) if table is not None else None,
                         oracle_source=target[i] if condition == "oracle" and target is not None else None,
                         shots=shots.shots(label, class_id) if condition == "audio-shots" and shots else None))
    return out


def call_separate(system: System, mix: np.ndarray, ref: np.ndarray | None, items: pd.DataFrame,
                  condition: str, shots: ShotBank | None = None) -> np.ndarray:
    """``system.separate`` on one batch, handing the target to oracle systems only.

    A non-oracle system gets ``target=None``; the oracle query source (mode ``oracle``) travels in its
    queries. A ``separate`` written before queries existed (four parameters) is called without them.

    Returns:
        float32 ``(B, L)``: the estimates, cut or zero-padded to the mixture's length ``L``.
    """
    queries = make_queries(system, items, condition, ref, shots)
    target = ref if system.is_oracle else None
    if _takes_queries(system):
        est = system.separate(mix, target, items, condition, queries=queries)
    else:
        est = system.separate(mix, target, items, condition)
    est = np.asarray(est, dtype=np.float32)
    if est.ndim == 1 and mix.shape[0] == 1:
        est = est[None]
    if est.shape[0] != mix.shape[0]:
        raise UssBenchError(f"system {system.name!r} returned {est.shape[0]} estimate(s) for {mix.shape[0]} "
                            f"mixture(s) (shape {est.shape}; expected (B, L))")
    n = mix.shape[-1]
    if est.shape[-1] != n:
        est = est[:, :n] if est.shape[-1] > n else np.pad(est, ((0, 0), (0, n - est.shape[-1])))
    return est


def _takes_queries(system: System) -> bool:
    try:
        return "queries" in inspect.signature(system.separate).parameters
    except (TypeError, ValueError):
        return False


def _tasks(unit: _Unit, cfg: dict, n_tasks: int) -> list[tuple[np.ndarray, tuple]]:
    """Scoring tasks of a unit: ``(unit rows, task args)``, contiguous row slices, at most ``n_tasks``.

    A joint unit is one task of all its separated rows (also rows already in the parts: the joint score needs
    every target of the track), flagged ``musdb_joint`` when no row of the track is missing."""
    separated = np.array([s is None for s in unit.scored])
    if unit.joint:
        if not (separated & unit.todo).any():
            return []
        rows = np.flatnonzero(separated)
        e = unit.est_row[rows]
        return [(rows, (unit.ref[rows], unit.est[e], unit.mix[rows], {**cfg, "musdb_joint": bool(separated.all() and unit.whole_track)}))]
    need = np.flatnonzero(separated & unit.todo)
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
              plan: list[tuple[np.ndarray, np.ndarray]], pool: _ScorePool, common: dict[str, Any],
              save: Callable[[list[str], np.ndarray], None] | None = None, shots: ShotBank | None = None
              ) -> Iterator[list[dict[str, Any]]]:
    """Rows of each planned unit, in plan order: read ahead ∥ separate unit k+1 ∥ score unit k.
    ``save(item_ids, estimates)`` is called with each unit's separated rows (``--save-estimates``)."""
    if not plan:
        return
    # every row of the planned units, also rows already done: a block is separated as in the first run
    planned = manifest.iloc[np.concatenate([pos for pos, _ in plan])]
    skip = system.unscorable(planned, condition)
    if shots is not None:  # a class without clips in the query split has no audio query: a counted row
        skip.update({i: "no_query" for i, label in zip(planned["item_id"], planned["label"], strict=True)
                     if not shots.groups.get(label) and i not in skip})
    group_size = pool.jobs if evalset.virtual else 1
    score_cfg = {**cfg, "query_protocol": ABSENT} if condition == ABSENT else cfg  # scored against the mixture
    # the target at the system's rate only where the system may see it (is_oracle, or the oracle query)
    joint = evalset.virtual and cfg.get("musdb_protocol") in musdb_protocols.JOINT_PROTOCOLS \
        and "musdb_sdr" in cfg["metrics"]
    reader = _prefetch(_read_units(evalset, manifest, cfg, plan, skip, int(system.sample_rate),
                                   system.is_oracle or condition == "oracle", joint),
                       max(PREFETCH, group_size))
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
                _separate(system, unit, condition, shots)
                if save is not None and unit.est is not None:
                    save(unit.items["item_id"].to_numpy()[[s is None for s in unit.scored]].tolist(), unit.est)
            n_tasks = pool.jobs if len(group) == 1 else 1
            tasks = [_tasks(unit, score_cfg, n_tasks) for unit in group]
            for unit in group:  # the audio now lives in the tasks only
                unit.mix = unit.ref = unit.est = unit.est_row = unit.sys_mix = unit.sys_ref = None
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
    units = _track_units(manifest, ranks) if _joint(evalset, opts) else \
        _plan(len(manifest), evalset.virtual, opts.batch_size, ranks)
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
    cfg = scored_config(evalset.dataset, opts)
    if "musdb_sdr" in cfg["metrics"]:
        cfg = {**cfg, "musdb_protocol": opts.musdb_protocol}  # the metric workers' protocol
    manifest = evalset.manifest.iloc[: opts.limit] if opts.limit else evalset.manifest
    conditions = system.conditions(evalset.dataset)
    if done is None:
        done = {c: done_items(opts.out, evalset.dataset, c) for c in conditions}
    plans = _plans(evalset, manifest, opts, ranks, conditions, done)
    total = sum(int(todo.sum()) for plan in plans.values() for _, todo in plan)
    computed = 0
    from harness.estimates import EstimateSaver

    saver = EstimateSaver(opts.out, opts.save_estimates)
    shots = shot_bank(system, evalset, opts)
    with _ScorePool(opts.jobs) as pool:
        for c in conditions:
            writer = PartWriter(parts_dir(opts.out, evalset.dataset, c), ranks.rank, opts.part_items)
            folder = saver.folder(evalset.dataset, c, conditions)
            save = (lambda ids, est, folder=folder: saver.save(folder, ids, est, cfg["sample_rate"])) \
                if saver.active else None
            try:
                for rows in _pipeline(system, evalset, manifest, cfg, c, plans[c], pool, common, save, shots):
                    writer.add(rows)
                    computed += len(rows)
                    if progress:
                        progress(computed, total)
            finally:
                writer.flush()  # rows already computed survive an error in a later unit
    return {"computed": computed}


def scored_config(dataset: str, opts: EvalOptions) -> dict[str, Any]:
    """The dataset's declaration with ``metrics`` = its declared metrics changed by ``opts.metrics``.

    Raises:
        ConfigError: an unknown metric or group in ``opts.metrics``.
    """
    from harness.metric_registry import resolve_metrics

    cfg = load_dataset_config(dataset)
    return {**cfg, "metrics": resolve_metrics(cfg["metrics"], opts.metrics)}


def _check_part_frames(paths: list[Path], frames: list[pd.DataFrame], dataset: str) -> None:
    """:func:`check_part_schema` on read parts, and that every row is of ``dataset``."""
    for p, f in zip(paths, frames, strict=True):
        check_part_schema(p, f.columns, f.dtypes.to_dict())
        other = f["dataset"][f["dataset"] != dataset]
        if len(other):
            raise UssBenchError(f"part file {p} holds rows of dataset {other.iloc[0]!r}, not {dataset}; "
                                "delete it and rerun with --resume")


def merge_parts(out: str | Path, evalset: EvalSet, conditions: Sequence[str], limit: int | None = None
                ) -> tuple[pd.DataFrame, int]:
    """The rows of one dataset from its parts: manifest items only, condition then manifest order.

    Returns:
        ``(rows, duplicates dropped)``. Duplicates of (condition, item_id) that agree on the metrics and
        status keep the first row in part order (rank, sequence) and are logged.

    Raises:
        UssBenchError: an item of the manifest (first ``limit``) has no row; a part is unreadable, lacks a
            column of :data:`ITEM_COLUMNS` or holds another dataset's rows; duplicate rows disagree on a
            metric or the status (names both part files).
    """
    manifest = evalset.manifest.iloc[:limit] if limit else evalset.manifest
    paths = [p for c in conditions for p in part_files(parts_dir(out, evalset.dataset, c))]
    frames = [_read_part(p) for p in paths]
    _check_part_frames(paths, frames, evalset.dataset)
    source = np.repeat(np.arange(len(frames)), [len(f) for f in frames]).astype(np.int64)
    df = fill_missing_columns(pd.concat(frames, ignore_index=True)) if frames else items_frame([])
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
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    first_of_row = first[inverse.reshape(-1)]
    keys, first = keys[keys >= 0], first[keys >= 0]
    n_dup = int(wanted.sum()) - len(keys)
    if n_dup:
        dup = wanted.copy()
        dup[first] = False
        rows = np.flatnonzero(dup)
        conflict = _conflicting_duplicates(df, rows, first_of_row[rows])
        if conflict.any():
            r = int(rows[np.flatnonzero(conflict)[0]])
            f = int(first_of_row[r])
            raise UssBenchError(
                f"{parts_dir(out, evalset.dataset)}: {int(conflict.sum())} duplicate row(s) disagree with an "
                f"earlier row of the same item (first: condition {df['condition'].iloc[r]}, "
                f"{df['item_id'].iloc[r]} in part file {paths[source[r]]} vs {paths[source[f]]}); the parts are "
                "not from one run: delete the wrong part file(s), or run without --resume to start over")
        log.warning("%s: %d duplicate row(s) in %s (e.g. %s); kept the first of each", evalset.dataset, n_dup,
                    parts_dir(out, evalset.dataset), df["item_id"].iloc[int(np.flatnonzero(dup)[0])])
    expected = n * len(conditions)
    if len(keys) != expected:
        missing = np.setdiff1d(np.arange(expected), keys)
        c, i = divmod(int(missing[0]), n)
        raise UssBenchError(f"{parts_dir(out, evalset.dataset)}: {len(missing)} item(s) have no row "
                            f"(first: condition {conditions[c]}, {manifest['item_id'].iloc[i]}); rerun with --resume")
    df = split_status(df)
    columns = [df.columns.get_loc(c) for c in item_columns()]
    return df.iloc[first, columns].reset_index(drop=True), n_dup


def shot_bank(system: System, evalset: EvalSet, opts: EvalOptions) -> ShotBank | None:
    """The example clips of mode ``audio-shots`` (``opts.shots`` per class from the query split), or ``None``
    when the system does not run that mode on the set."""
    if "audio-shots" not in system.conditions(evalset.dataset):
        return None
    return ShotBank(evalset.dataset, evalset.corpus_root, opts.shots, int(system.sample_rate))


def check_modes(system: System, dataset: str) -> None:
    """Raise ConfigError when a condition of ``system`` on ``dataset`` is not one of its query modes, or is
    ``average`` without average embeddings (after ``prepare``): a mode never yields NaN cells silently."""
    for c in system.conditions(dataset):
        c = system.query_mode(c, dataset)
        check_choice(f"condition of system {system.name!r}", c, system.query_modes)
        if c == "average" and system.average_embeddings(dataset) is None:
            raise ConfigError(f"system {system.name!r} runs query mode 'average' on {dataset} but has no average "
                              "query embeddings for it (average_embeddings returned None after prepare)")


def run_eval(system: System, opts: EvalOptions, progress: Callable[[str, int, int], None] | None = None,
             ranks: Ranks | None = None) -> dict[str, Any] | None:
    """:func:`_run_eval_locked` holding the run folder's lock ``<out>/eval.lock`` (:mod:`harness.runlock`).

    Raises:
        harness.runlock.RunLocked: another eval holds ``opts.out`` (or a stale lock and not
            ``opts.break_lock``); nothing in the folder is touched then.
    """
    from harness.runlock import locked

    opts.check()
    with locked(Path(opts.out), opts.break_lock, ranks or Ranks(), resume=opts.resume) as lock:
        if lock is not None:  # rank 0, holding the folder: any temporary file in it is a killed run's
            remove_run_temps(Path(opts.out))
        return _run_eval_locked(system, opts, progress, ranks)


def remove_run_temps(out: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.tmp-<PID>``) that killed runs left in the run folder and its
    parts (:func:`harness.tempfiles.remove_stale_temps` on each folder: only those whose writer no longer
    runs); called while holding the folder's lock.

    Returns:
        the removed paths (logged).
    """
    folders = [out, *sorted(p for p in out.glob("parts/*") if p.is_dir()),
               *sorted(p for p in out.glob("parts/*/*") if p.is_dir())]
    return [path for folder in folders for path in remove_stale_temps(folder)]


def _run_eval_locked(system: System, opts: EvalOptions, progress: Callable[[str, int, int], None] | None = None,
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
    started_at = _now()
    opts.check()
    ranks = ranks or Ranks()
    out = Path(opts.out)
    common = {"checkpoint_sha256": system.checkpoint_sha256, "harness_version": harness.__version__,
              "git_revision": git_revision()}
    sets = [open_set(opts.workdir, d, opts.split) for d in opts.datasets]
    system = wrap_system(system, opts, sets)  # --query-protocol absent / --query-modes: their conditions
    for evalset in sets:  # fail before any work when, e.g., a query set is missing
        system.prepare(evalset.dataset)
        check_modes(system, evalset.dataset)
        shot_bank(system, evalset, opts)  # the query split can be listed
    if opts.resume:
        for evalset in sets:
            _check_parts(out, system, evalset, opts.batch_size, opts.musdb_protocol)
    if ranks.is_main:
        for evalset in sets:
            _init_parts(out, system, evalset, opts.resume, opts.batch_size, opts.musdb_protocol)
        if not opts.resume:  # estimates of an earlier run in this folder would mix with this run's
            from harness.estimates import EstimateSaver

            for evalset in sets:
                EstimateSaver(out).clear(evalset.dataset)
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
        if opts.save_estimates in ("worst", "best"):
            from harness.estimates import EstimateSaver

            EstimateSaver(out, opts.save_estimates).prune(frame, d, conditions)
        ids = set(frame["item_id"])
        stats[d] = {"rows": len(frame), "resumed": sum(len(done[d][c] & ids) for c in conditions),
                    "computed": sum(g["computed"].get(d, 0) for g in gathered), "duplicates_dropped": n_dup}
    items = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True) if frames else items_frame([])
    del frames
    atomic_write_parquet(stable_types(items), out / "items.parquet")
    seconds = {d: max(g["timings"][d] for g in gathered if d in g["timings"])
               for d in opts.datasets if any(d in g["timings"] for g in gathered)}
    run = {
        "system": system.name,
        "checkpoint_sha256": system.checkpoint_sha256,
        "system_info": describe_system(system),
        "sample_rates": {s.dataset: sample_rates(system, s, opts) for s in sets},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "datasets": opts.datasets,
        "builds": {s.dataset: {"digest": s.build["digest"], "path": str(s.path)} for s in sets},
        "counts": {d: g["status"].value_counts().to_dict() for d, g in items.groupby("dataset")},
        "items": stats,
        "execution": {"ranks": ranks.world_size, "backend": ranks.backend,
                      "executor": gathered[0]["executor"]},
        "timings_s": {**seconds, "total": round(time.perf_counter() - t0, 3)},
        # the separator's fast path (harness.models.fast): fidelity figure, allocator, batch-size choice
        "inference": getattr(getattr(system, "separator", None), "inference_report", None),
        "versions": versions(),
        "git_revision": common["git_revision"],
        "set_items": {s.dataset: len(s.manifest) for s in sets},
        "host": platform.node(),
        "device": str(getattr(system, "device", None) or opts.extra.get("device") or "cpu"),
        "started_at": started_at,
        "finished_at": _now(),
    }
    if hasattr(system, "record"):  # a protocol run: the absent draws and the shots (file lists, digests)
        run["query_protocols"] = system.record()
    atomic_write_text(out / "run.json", json.dumps(run, indent=2, default=str) + "\n")
    from harness.results import write_results

    write_results(out, items, opts.aggregate)
    return run


def _now() -> str:
    """UTC time, ISO 8601 to the second."""
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def sample_rates(system: System, evalset: EvalSet, opts: EvalOptions | None = None) -> dict[str, Any]:
    """The rates (Hz) a run used on a set: the system's input and output, the set's (scoring input, SDR
    family) and each metric's own rate (its registry record's: PESQ and SSNR at 16 kHz)."""
    from harness.metric_registry import metric_spec

    cfg = scored_config(evalset.dataset, opts) if opts is not None else load_dataset_config(evalset.dataset)
    set_rate = int(cfg["sample_rate"])
    metric_rate = {m: metric_spec(m).rate(set_rate, int(system.sample_rate)) for m in cfg["metrics"]}
    return {"system": int(system.sample_rate), "set": set_rate,
            "system_input": "corpus files read at the system rate" if evalset.virtual
            else f"{set_rate}-Hz set rows resampled (soxr HQ)" if int(system.sample_rate) != set_rate
            else f"{set_rate}-Hz set rows",
            "metrics": {m: metric_rate[m] for m in cfg["metrics"] if m in metric_rate}}


def _string_columns() -> tuple[str, ...]:
    """Columns of ``items.parquet`` that are strings (Parquet ``string`` even when every value is null)."""
    return tuple(c for c in item_columns() if c not in (*metric_columns(), "seconds", "class_id"))


def items_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows → the ``items.parquet`` frame with the canonical column order and dtypes (statuses split by
    :func:`split_status`)."""
    df = pd.DataFrame.from_records(rows, columns=list(item_columns()))
    df = fill_missing_columns(df)
    for c in (*metric_columns(), "seconds"):
        df[c] = df[c].astype("float64")
    df["class_id"] = df["class_id"].astype("int64")
    return stable_types(split_status(df))


def split_status(df: pd.DataFrame) -> pd.DataFrame:
    """``status`` reduced to its kind, the rest in ``status_detail`` (``""`` when none).

    A status written as ``"kind: detail"`` (e.g. ``read_error: /data/x.wav is truncated``, as older
    versions wrote it) becomes ``status = "kind"`` and ``status_detail = "detail"``, so that the summary's
    status counts group by kind instead of one status per bad file (issue 15 #19). A status holds no
    ``": "`` otherwise (``ok``, ``ref_silent``, ``pesq_too_long``...).
    """
    status = df["status"].astype(object)
    detail = df["status_detail"] if "status_detail" in df.columns else pd.Series("", index=df.index)
    detail = detail.astype(object).where(detail.notna(), "")
    text = status.where(status.notna(), "").astype(str)
    split = text.str.contains(": ", regex=False)
    if split.any():
        parts = text[split].str.split(": ", n=1)
        status = status.copy()
        status[split] = parts.str[0]
        detail = detail.copy()
        detail[split] = [d if d else rest for d, rest in zip(detail[split], parts.str[1], strict=True)]
    return df.assign(status=status, status_detail=detail.astype(str))


def datasets_without_ok(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The datasets of a run's ``run.json`` ``counts`` of which no row is ``ok`` (every item failed), with
    their status counts; ``eval`` says so, and ``--strict`` makes it fail."""
    return {d: c for d, c in counts.items() if sum(c.values()) and not c.get("ok", 0)}


def stable_types(df: pd.DataFrame) -> pd.DataFrame:
    """A string column whose values are all null (``checkpoint_sha256`` of a baseline, ``git_revision``
    outside git) as pandas ``string``, so that Parquet stores it as ``string``, not ``null``: a folder of runs
    then has one schema (DuckDB ``read_parquet('runs/*/items.parquet')`` needs no options). Returns ``df``."""
    for c in _string_columns():
        if c in df.columns and df[c].dtype == object and df[c].isna().all():
            df[c] = df[c].astype("string")
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
