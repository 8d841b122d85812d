"""Estimates on disk: ``eval --save-estimates`` writes them, ``uss-bench score`` scores a folder of them.

Layout (the one :mod:`harness.report_html` reads)::

    <run>/estimates/<dataset>/<item_id>.wav              a system with one condition on the dataset
    <run>/estimates/<dataset>/<condition>/<item_id>.wav  a system with several (AudioSet: oracle, average)

Each file is the estimate exactly as it was scored: mono, 32-bit float WAV at the set's rate
(32 kHz), so ``uss-bench score <run>/estimates/<dataset>[/<condition>] DATASET`` reproduces the run's
numbers bit for bit. Item ids holding ``/`` (MUSDB18 ``track/stem``) become sub-folders.

``score`` accepts ``<item_id>.wav`` or ``<item_id>.flac`` at any sample rate (resampled to the set's rate
with soxr, then cut or zero-padded to the reference's length). A missing file is a ``missing_estimate``
row, an unreadable one (or one with more than one channel) a ``corrupt_estimate`` row: never a crash.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from harness import SAMPLE_RATE
from harness.audio import resample
from harness.errors import UssBenchError, check_choice
from harness.systems import System

log = logging.getLogger(__name__)

SAVE_CHOICES = ("none", "worst", "best", "all")
"""``eval --save-estimates``: nothing, the 5 lowest-SDRi items, the 5 highest, or every item (per dataset
and condition)."""

SAVE_COUNT = 5
"""Items kept per dataset and condition by ``worst`` / ``best``."""

MISSING = "missing_estimate"
CORRUPT = "corrupt_estimate"
EXTENSIONS = (".wav", ".flac")


def estimates_dir(run_dir: str | Path, dataset: str, condition: str | None = None) -> Path:
    """``<run>/estimates/<dataset>[/<condition>]``."""
    d = Path(run_dir) / "estimates" / dataset
    return d / condition if condition else d


def write_estimate(folder: Path, item_id: str, estimate: np.ndarray, sample_rate: int) -> Path:
    """Write ``<folder>/<item_id>.wav``: float32 ``(L,)`` as mono 32-bit float WAV, atomically (temp name,
    then rename). Returns the path."""
    from harness.datasets.store import atomic_write

    path = folder / f"{item_id}.wav"
    atomic_write(path, lambda tmp: sf.write(tmp, np.asarray(estimate, dtype=np.float32), sample_rate,
                                            subtype="FLOAT", format="WAV"))
    return path



def rank_metric(dataset: str) -> str:
    """The metric ``worst``/``best`` rank a dataset's items by: the first improvement column (``…i``) of
    its declared report columns (``musdb_sdri`` on MUSDB18), else ``sdri``."""
    from harness.config import load_dataset_config
    from harness.metric_registry import metric_spec

    cols = [c["metric"] for c in load_dataset_config(dataset)["columns"]]
    return next((m for m in cols if metric_spec(m).improvement), "sdri")

class EstimateSaver:
    """Writes the estimates of one eval run (``--save-estimates``) and prunes them to the best/worst items.

    Args:
        run_dir: the run folder.
        mode: one of :data:`SAVE_CHOICES`.
    """

    def __init__(self, run_dir: str | Path, mode: str = "none"):
        self.run_dir = Path(run_dir)
        self.mode = check_choice("--save-estimates", mode, SAVE_CHOICES)

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def folder(self, dataset: str, condition: str, conditions: Sequence[str]) -> Path:
        """Where (dataset, condition) goes: a sub-folder per condition only when there are several."""
        return estimates_dir(self.run_dir, dataset, condition if len(conditions) > 1 else None)

    def clear(self, dataset: str) -> None:
        """Remove the dataset's estimates of an earlier run (not on resume)."""
        shutil.rmtree(estimates_dir(self.run_dir, dataset), ignore_errors=True)

    def save(self, folder: Path, item_ids: Sequence[str], estimates: np.ndarray, sample_rate: int) -> None:
        """Write each estimate ``(L,)`` of the batch as ``<folder>/<item_id>.wav``."""
        for item_id, est in zip(item_ids, estimates, strict=True):
            write_estimate(folder, item_id, est, sample_rate)

    def prune(self, rows: pd.DataFrame, dataset: str, conditions: Sequence[str]) -> int:
        """``worst`` / ``best``: keep the :data:`SAVE_COUNT` ``ok`` items of lowest / highest SDRi per condition
        (:func:`rank_metric`: ``musdb_sdri`` on MUSDB18; ties by item id), delete the other estimates. Returns files removed."""
        if self.mode not in ("worst", "best"):
            return 0
        metric = rank_metric(dataset)
        removed = 0
        for cond in conditions:
            sub = rows[(rows["condition"] == cond) & (rows["status"] == "ok") & rows[metric].notna()]
            sub = sub.sort_values([metric, "item_id"], ascending=[self.mode == "worst", True], kind="stable")
            keep = set(sub["item_id"].head(SAVE_COUNT))
            folder = self.folder(dataset, cond, conditions)
            for item_id in rows.loc[rows["condition"] == cond, "item_id"]:
                if item_id not in keep:
                    p = folder / f"{item_id}.wav"
                    if p.is_file():
                        p.unlink()
                        removed += 1
                        _remove_empty_parents(p.parent, folder)
        return removed


def _remove_empty_parents(d: Path, stop: Path) -> None:
    """Remove ``d`` and its parents up to (not including) ``stop`` while they are empty (MUSDB18 track folders)."""
    while d != stop and stop in d.parents:
        try:
            d.rmdir()
        except OSError:  # not empty
            return
        d = d.parent


def find_estimate(folder: Path, item_id: str) -> Path | None:
    """``<folder>/<item_id>.wav`` or ``.flac`` (the first that exists), else ``None``."""
    for ext in EXTENSIONS:
        p = folder / f"{item_id}{ext}"
        if p.is_file():
            return p
    return None


def read_estimate(path: Path, sample_rate: int) -> np.ndarray:
    """A mono estimate file as float32 ``(L,)`` at ``sample_rate`` (soxr HQ when the file's rate differs).

    Raises:
        UssBenchError: unreadable, empty, or not mono (names the file).
    """
    try:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise UssBenchError(f"{path}: unreadable estimate ({exc})") from exc
    if x.shape[1] != 1:
        raise UssBenchError(f"{path}: {x.shape[1]} channels; an estimate must be mono")
    if x.shape[0] == 0:
        raise UssBenchError(f"{path}: empty estimate")
    return resample(x[:, 0], sr, sample_rate)


class EstimatesSystem(System):
    """Scores separations made elsewhere: ``separate`` returns the files of a folder (``uss-bench score``).

    Args:
        folder: holds ``<item_id>.wav`` / ``.flac`` (any rate, mono).
        name: the ``system`` column [``estimates:<folder name>``].
        sample_rate: the set's rate, which the files are resampled to (32 kHz).
    """

    description = "separations made elsewhere, read from a folder of <item_id>.wav/.flac files"

    def __init__(self, folder: str | Path, name: str | None = None, sample_rate: int = SAMPLE_RATE):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UssBenchError(f"estimates folder {self.folder} does not exist")
        self.name = name or f"estimates:{self.folder.name}"
        self.sample_rate = int(sample_rate)

    def unscorable(self, items: pd.DataFrame, condition: str) -> dict[str, str]:
        out = {}
        for item_id in items["item_id"]:
            path = find_estimate(self.folder, item_id)
            if path is None:
                out[item_id] = MISSING
                continue
            try:
                read_estimate(path, self.sample_rate)
            except UssBenchError as exc:
                log.warning("%s", exc)
                out[item_id] = CORRUPT
        return out

    def separate(self, mixture, target, items, condition, queries=None):
        n = mixture.shape[1]
        out = np.zeros(mixture.shape, np.float32)
        for i, item_id in enumerate(items["item_id"]):
            x = read_estimate(find_estimate(self.folder, item_id), self.sample_rate)[:n]
            out[i, : len(x)] = x
        return out
