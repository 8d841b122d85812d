"""Per-item metric rows: :func:`score` (one item) and :func:`score_batch` (many, the metric workers' task).

Kept apart from :mod:`harness.evaluate` so that metric workers (loky, Dask) import only NumPy, the
metric code and the audio helpers, not torch and the models: a worker starts in about a second.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness import metrics, parallel
from harness.audio import resample

METRIC_COLUMNS = ("sdr", "sdri", "si_sdr", "si_sdri", "musdb_sdr", "musdb_sdri", "pesq", "ssnr",
                  "residual_db", "false_activation")
"""Metric columns of ``items.parquet`` (dB, except PESQ in MOS-LQO and the 0/1 ``false_activation``); NaN
where a metric does not apply (``residual_db`` / ``false_activation``: absent-query rows only,
:mod:`harness.query_protocols`)."""


def score(ref: np.ndarray, est: np.ndarray, mix: np.ndarray, dataset_cfg: dict) -> dict[str, Any]:
    """All metrics of one item, with its status.

    Args:
        ref, est, mix: float32 ``(L,)`` at ``dataset_cfg["sample_rate"]`` Hz.
        dataset_cfg: the dataset's declaration (its ``metrics`` list says which apply).

    Returns:
        the metric columns (NaN where not applicable or not computable) and ``status``.
    """
    out = unscored("ok")
    status = metrics.check_signals(ref, est)
    if status == "ok":
        status = metrics.check_signals(ref, mix)
    if status != "ok":
        out["status"] = status
        return out
    out["sdr"] = metrics.sdr(ref, est)
    out["sdri"] = out["sdr"] - metrics.sdr(ref, mix)
    out["si_sdr"] = metrics.si_sdr(ref, est)
    out["si_sdri"] = out["si_sdr"] - metrics.si_sdr(ref, mix)
    return _score_rest(out, ref, est, mix, dataset_cfg)


def _score_rest(out: dict[str, Any], ref: np.ndarray, est: np.ndarray, mix: np.ndarray,
                dataset_cfg: dict) -> dict[str, Any]:
    """The metrics after the SDR family (MUSDB SDR, PESQ, SSNR) and the final status of a checked item."""
    wanted = set(dataset_cfg["metrics"])
    sr = dataset_cfg["sample_rate"]
    if "musdb_sdr" in wanted:
        out["musdb_sdr"] = metrics.musdb_sdr(ref, est, sr)
        out["musdb_sdri"] = out["musdb_sdr"] - metrics.musdb_sdr(ref, mix, sr)
    if "pesq" in wanted:
        # PESQ runs here, inside the eval's metric workers, so utterances are already scored in parallel
        # (metrics.pesq_many is the same parallelism for callers outside the eval pipeline).
        # A PESQ failure (too short, too long, crashed helper...) is the item's status; its other metrics
        # are kept (issue 15 #1).
        out["pesq"], pesq_status = metrics.pesq_wb_status(ref, est, sr)
    else:
        pesq_status = "ok"
    if "ssnr" in wanted:
        # SSNR applies to whole Voicebank utterances of different lengths: one call per item.
        speech_sr = dataset_cfg.get("metric_sample_rate", sr)
        out["ssnr"] = metrics.ssnr(resample(ref, sr, speech_sr), resample(est, sr, speech_sr), speech_sr)
    if pesq_status != "ok":
        out["status"] = pesq_status
    else:
        out["status"] = "ok" if all(np.isfinite(out[c]) for c in ("sdr", "sdri")) else "metric_nonfinite"
    return out


def score_batch(refs: Sequence[np.ndarray] | np.ndarray, ests: Sequence[np.ndarray] | np.ndarray,
                mixes: Sequence[np.ndarray] | np.ndarray, dataset_cfg: dict) -> list[dict[str, Any]]:
    """:func:`score` of each item, value for value and status for status, with SDR and SI-SDR vectorised.

    Items that pass the signal checks and share one length are scored together with
    :func:`metrics.sdr_batch` and :func:`metrics.si_sdr_batch` (row-wise reductions equal to the
    per-item functions); other metrics are computed per item.

    Args:
        refs, ests, mixes: ``N`` items each: float32 ``(N, L)`` arrays or sequences of ``(L_i,)``
            arrays, at ``dataset_cfg["sample_rate"]`` Hz.
        dataset_cfg: the dataset's declaration.

    Returns:
        ``N`` dicts as :func:`score` returns them, in order.

    Raises:
        ValueError: the three inputs do not hold the same number of items.
    """
    n = len(refs)
    if len(ests) != n or len(mixes) != n:
        raise ValueError(f"score_batch: {n} refs, {len(ests)} ests and {len(mixes)} mixes; need one of each per item")
    if dataset_cfg.get("query_protocol") == "absent":  # absent-query rows: the output against the mixture only
        from harness.query_protocols import score_absent

        return score_absent(ests, mixes)
    out = [unscored("ok") for _ in range(n)]
    ok = []
    for i in range(n):
        status = metrics.check_signals(refs[i], ests[i])
        if status == "ok":
            status = metrics.check_signals(refs[i], mixes[i])
        if status != "ok":
            out[i]["status"] = status
        else:
            ok.append(i)
    if not ok:
        return out
    shapes = {np.shape(refs[i]) for i in ok}
    if len(shapes) == 1 and len(next(iter(shapes))) == 1:
        r, e, m = (_rows_of(x, ok, n) for x in (refs, ests, mixes))
        # SDRi = sdr_e − sdr_m below, which is what metrics.sdri_batch computes (bit for bit); both SDRs
        # are kept because the SDR column needs sdr_e anyway.
        sdr_e, sdr_m = _sliced(metrics.sdr_batch, r, e), _sliced(metrics.sdr_batch, r, m)
        si_e, si_m = _sliced(metrics.si_sdr_batch, r, e), _sliced(metrics.si_sdr_batch, r, m)
        del r, e, m
    else:
        sdr_e = [metrics.sdr(refs[i], ests[i]) for i in ok]
        sdr_m = [metrics.sdr(refs[i], mixes[i]) for i in ok]
        si_e = [metrics.si_sdr(refs[i], ests[i]) for i in ok]
        si_m = [metrics.si_sdr(refs[i], mixes[i]) for i in ok]
    for j, i in enumerate(ok):
        o = out[i]
        o["sdr"] = float(sdr_e[j])
        o["sdri"] = o["sdr"] - float(sdr_m[j])
        o["si_sdr"] = float(si_e[j])
        o["si_sdri"] = o["si_sdr"] - float(si_m[j])
        _score_rest(o, refs[i], ests[i], mixes[i], dataset_cfg)
    return out


BATCH_SAMPLES = 1 << 14
"""Samples per call of the batched metrics: a batch is cut into slices of ``max(1, BATCH_SAMPLES // L)``
rows. ``metrics.sdr_batch`` and ``metrics.si_sdr_batch`` build temporaries of the whole slice (float32
and float64); past ~100 kB they fall out of the CPU caches, and a batch of 16 half-second or 2-s items in
one call was measured 1.5-2.5 times slower than row by row. The values do not depend on the slicing
(row-wise reductions)."""


def _rows_of(x, ok: list[int], n: int) -> np.ndarray:
    """Rows ``ok`` of ``x`` as one ``(len(ok), L)`` array (no copy when ``x`` is an array and all rows are ok)."""
    if isinstance(x, np.ndarray) and x.ndim == 2 and len(ok) == n:
        return x
    if len(ok) == 1:  # one whole track: a view, not a copy of the track (issue 15 #11)
        return np.asarray(x[ok[0]])[None, :]
    return np.stack([x[i] for i in ok])


def _sliced(fn, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``fn(a, b)`` of a batched row-wise metric, computed about :data:`BATCH_SAMPLES` samples at a time."""
    step = max(1, BATCH_SAMPLES // a.shape[1])
    if step >= len(a):
        return fn(a, b)
    return np.concatenate([fn(a[i: i + step], b[i: i + step]) for i in range(0, len(a), step)])


def unscored(status: str) -> dict[str, Any]:
    """The metric columns (all NaN) and ``status`` of an item that is kept as a row but not scored."""
    return {**{c: float("nan") for c in METRIC_COLUMNS}, "status": status}


def score_task(main_pid: int | None, refs, ests, mixes, cfg: dict) -> tuple[list[dict[str, Any]], float]:
    """A metric worker's task: ``(score_batch(refs, ests, mixes, cfg), seconds it took)``.

    ``main_pid`` is the submitting process: anywhere else (a worker process) the task first limits
    itself to one torch/BLAS thread (:func:`harness.parallel.limit_threads`); ``None`` runs inline.
    """
    t0 = time.perf_counter()
    if main_pid is not None and os.getpid() != main_pid:
        parallel.limit_threads()
    return score_batch(refs, ests, mixes, cfg), time.perf_counter() - t0


def score_packed(main_pid: int, task: tuple) -> tuple[list[dict[str, Any]], float]:
    """``score_task(main_pid, *task)``: a worker task whose arrays travel inside one tuple.

    joblib's Dask backend scatters every large weak-referable argument (a numpy array) to a single
    worker before the task runs; that worker holds the only copy, so when it dies the tasks that need
    it fail (``FutureCancelledError``) and the run with them, although other workers are alive. A tuple
    is sent inside the task itself, which the scheduler keeps and reruns on another worker (issue 15:
    a worker killed mid-run must not change the result). Loky pickles both forms alike.
    """
    return score_task(main_pid, *task)
