"""The eval runner: evaluation sets → a separator (or a baseline) → per-item metric rows.

One row per (item, condition) goes to ``<out>/items.parquet`` (DESIGN §7): ids, class, every metric,
``status`` (``ok`` or why the item could not be scored), ``seconds`` spent on it, and provenance. Items
that cannot be scored are kept as rows with a status, never dropped; aggregates skip them and the
report counts them.

Systems plug in through :class:`System`; the corpus, metric and report code never changes for a new one.
Fixed-length sets are separated in batches of ``batch_size`` 2-s items read straight from
``mixtures.h5``; whole tracks (MUSDB18, Voicebank-Demand) one at a time. Memory is bounded by the batch
size, not by the number of items.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

import harness
from harness import metrics
from harness.audio import AudioRef, resample
from harness.config import REPO_ROOT, load_dataset_config
from harness.datasets import get_corpus
from harness.datasets.store import EvalSet, atomic_write_parquet, atomic_write_text, built_datasets, open_set
from harness.errors import UssBenchError
from harness.models import spectral

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("sdr", "sdri", "si_sdr", "si_sdri", "musdb_sdr", "musdb_sdri", "pesq", "ssnr")
"""Metric columns of ``items.parquet`` (dB, except PESQ in MOS-LQO); NaN where a metric does not apply."""

ITEM_COLUMNS = ("system", "dataset", "split", "condition", "item_id", "class_id", "label", *METRIC_COLUMNS,
                "status", "seconds", "checkpoint_sha256", "harness_version", "git_revision")


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
        mix = torch.from_numpy(np.asarray(mixture, dtype=np.float32))
        tgt = torch.from_numpy(np.asarray(target, dtype=np.float32))
        window = torch.hann_window(self.n_fft, periodic=True)
        m, s = spectral.stft(mix, window, self.hop), spectral.stft(tgt, window, self.hop)
        n = m - s
        ps, pn = s.abs().square(), n.abs().square()
        mask = torch.where(ps + pn > 0, torch.sqrt(ps / (ps + pn).clamp_min(1e-20)), torch.zeros_like(ps))
        est = spectral.istft(m * mask, window, mix.shape[-1], self.hop)
        return est.numpy().astype(np.float32)


BASELINES: dict[str, Callable[[], System]] = {"mixture": MixtureBaseline, "oracle-irm": OracleIRM}


@dataclass
class EvalOptions:
    """Options of one eval run (recorded in ``run.json``)."""

    datasets: list[str]
    workdir: Path
    out: Path
    split: str = "test"
    batch_size: int = 16
    jobs: int = 1
    limit: int | None = None
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the checkout, or ``None`` outside a git tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def score(ref: np.ndarray, est: np.ndarray, mix: np.ndarray, dataset_cfg: dict) -> dict[str, Any]:
    """All metrics of one item, with its status.

    Args:
        ref, est, mix: float32 ``(L,)`` at ``dataset_cfg["sample_rate"]`` Hz.
        dataset_cfg: the dataset's declaration (its ``metrics`` list says which apply).

    Returns:
        the metric columns (NaN where not applicable or not computable) and ``status``.
    """
    out = _unscored("ok")
    status = metrics.check_signals(ref, est)
    if status == "ok":
        status = metrics.check_signals(ref, mix)
    if status != "ok":
        out["status"] = status
        return out
    wanted = set(dataset_cfg["metrics"])
    sr = dataset_cfg["sample_rate"]
    out["sdr"] = metrics.sdr(ref, est)
    out["sdri"] = out["sdr"] - metrics.sdr(ref, mix)
    out["si_sdr"] = metrics.si_sdr(ref, est)
    out["si_sdri"] = out["si_sdr"] - metrics.si_sdr(ref, mix)
    if "musdb_sdr" in wanted:
        out["musdb_sdr"] = metrics.musdb_sdr(ref, est, sr)
        out["musdb_sdri"] = out["musdb_sdr"] - metrics.musdb_sdr(ref, mix, sr)
    if "pesq" in wanted:
        out["pesq"], pesq_status = metrics.pesq_wb_status(ref, est, sr)
        if pesq_status != "ok":
            out["status"] = pesq_status
            return out
    if "ssnr" in wanted:
        speech_sr = dataset_cfg.get("metric_sample_rate", sr)
        out["ssnr"] = metrics.ssnr(resample(ref, sr, speech_sr), resample(est, sr, speech_sr), speech_sr)
    out["status"] = "ok" if all(np.isfinite(out[c]) for c in ("sdr", "sdri")) else "metric_nonfinite"
    return out


def _unscored(status: str) -> dict[str, Any]:
    """The metric columns of an item that is kept as a row but not scored."""
    return {**{c: float("nan") for c in METRIC_COLUMNS}, "status": status}


def _score_many(refs, ests, mixes, cfg, jobs: int) -> list[dict[str, Any]]:
    if jobs <= 1 or len(refs) == 1:
        return [score(r, e, m, cfg) for r, e, m in zip(refs, ests, mixes, strict=True)]
    return Parallel(n_jobs=jobs)(delayed(score)(r, e, m, cfg) for r, e, m in zip(refs, ests, mixes, strict=True))


def _separate_and_score(system: System, mix: np.ndarray, ref: np.ndarray, items: pd.DataFrame, condition: str,
                        cfg: dict, jobs: int) -> list[dict[str, Any]]:
    """Separate and score the items of a batch that the system can separate; the others get their status."""
    skip = system.unscorable(items, condition)
    scored = [_unscored(skip[i]) if i in skip else None for i in items["item_id"]]
    keep = np.array([s is None for s in scored])
    if keep.any():
        est = system.separate(mix[keep], ref[keep], items[keep], condition)
        for j, m in zip(np.flatnonzero(keep), _score_many(list(ref[keep]), list(est), list(mix[keep]), cfg, jobs),
                        strict=True):
            scored[j] = m
    return scored


def _rows(system: System, evalset: EvalSet, items: pd.DataFrame, condition: str,
          scored: list[dict[str, Any]], seconds: float, common: dict[str, Any]) -> list[dict[str, Any]]:
    per_item = seconds / max(len(items), 1)
    rows = []
    for (_, item), m in zip(items.iterrows(), scored, strict=True):
        rows.append({"system": system.name, "dataset": evalset.dataset, "split": evalset.split,
                     "condition": condition, "item_id": item["item_id"], "class_id": int(item["class_id"]),
                     "label": item["label"], **m, "seconds": per_item, **common})
    return rows


def evaluate_set(system: System, evalset: EvalSet, opts: EvalOptions, common: dict[str, Any],
                 progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate one built set under every condition of the system (after ``system.prepare``); returns rows."""
    cfg = load_dataset_config(evalset.dataset)
    manifest = evalset.manifest
    if opts.limit:
        manifest = manifest.iloc[: opts.limit]
    rows: list[dict[str, Any]] = []
    conditions = system.conditions(evalset.dataset)
    total = len(manifest) * len(conditions)
    for condition in conditions:
        if evalset.virtual:
            corpus = get_corpus(evalset.dataset, evalset.corpus_root)
            for i in range(len(manifest)):
                item = manifest.iloc[i: i + 1]
                t0 = time.perf_counter()
                row = item.iloc[0]
                if skip := system.unscorable(item, condition):  # no audio read, no separation
                    scored = [_unscored(skip[row["item_id"]])]
                else:
                    try:
                        mix = corpus.read(AudioRef(evalset.corpus_root / row["mixture_file"]), cfg["sample_rate"])
                        ref = corpus.read(AudioRef(evalset.corpus_root / row["target_file"]), cfg["sample_rate"])
                    except UssBenchError as exc:
                        scored = [_unscored(f"read_error: {exc}")]
                    else:
                        n = min(len(mix), len(ref))
                        scored = _separate_and_score(system, mix[None, :n], ref[None, :n], item, condition, cfg, 1)
                rows += _rows(system, evalset, item, condition, scored, time.perf_counter() - t0, common)
                if progress:
                    progress(len(rows), total)
            continue
        for start in range(0, len(manifest), opts.batch_size):
            items = manifest.iloc[start: start + opts.batch_size]
            t0 = time.perf_counter()
            mix, ref = evalset.read_rows(np.arange(start, start + len(items)))
            scored = _separate_and_score(system, mix, ref, items, condition, cfg, opts.jobs)
            rows += _rows(system, evalset, items, condition, scored, time.perf_counter() - t0, common)
            if progress:
                progress(len(rows), total)
    return rows


def run_eval(system: System, opts: EvalOptions, progress: Callable[[str, int, int], None] | None = None
             ) -> dict[str, Any]:
    """Evaluate ``system`` on every dataset of ``opts`` and write ``items.parquet`` + ``run.json``.

    Each dataset's rows are first written to ``<out>/parts/<dataset>.parquet`` (atomically); with
    ``opts.resume`` a dataset whose part exists is not evaluated again. ``items.parquet`` is the
    concatenation of the parts in Table 2 order.

    Returns:
        the ``run.json`` content.

    Raises:
        UssBenchError: a requested dataset has no built set in the workdir.
    """
    t0 = time.perf_counter()
    out = Path(opts.out)
    parts = out / "parts"
    common = {"checkpoint_sha256": system.checkpoint_sha256, "harness_version": harness.__version__,
              "git_revision": git_revision()}
    sets = [open_set(opts.workdir, d, opts.split) for d in opts.datasets]
    for evalset in sets:  # fail before any work when, e.g., a query set is missing
        system.prepare(evalset.dataset)
    timings = {}
    for evalset in sets:
        part = parts / f"{evalset.dataset}.parquet"
        if opts.resume and part.is_file():
            log.info("resume: %s already evaluated (%s)", evalset.dataset, part)
            continue
        t = time.perf_counter()
        cb = (lambda done, total, d=evalset.dataset: progress(d, done, total)) if progress else None
        rows = evaluate_set(system, evalset, opts, common, cb)
        atomic_write_parquet(items_frame(rows), part)
        timings[evalset.dataset] = round(time.perf_counter() - t, 3)
    frames = [pd.read_parquet(parts / f"{d}.parquet") for d in opts.datasets]
    items = pd.concat(frames, ignore_index=True) if frames else items_frame([])
    atomic_write_parquet(items, out / "items.parquet")
    run = {
        "system": system.name,
        "checkpoint_sha256": system.checkpoint_sha256,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "datasets": opts.datasets,
        "builds": {s.dataset: {"digest": s.build["digest"], "path": str(s.path)} for s in sets},
        "counts": {d: g["status"].value_counts().to_dict() for d, g in items.groupby("dataset")},
        "timings_s": {**timings, "total": round(time.perf_counter() - t0, 3)},
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
