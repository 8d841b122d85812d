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

from harness import metric_registry, metrics, musdb_protocols, parallel
from harness.audio import resample
from harness.errors import UssBenchError


def __getattr__(name: str):
    # METRIC_COLUMNS is read from the registry at each access, so a metric registered after import
    # (one declaration) is a column everywhere.
    if name == "METRIC_COLUMNS":
        return metric_registry.metric_columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METRIC_STATUS = "metric_status"
"""Column of ``items.parquet`` with the per-metric statuses of an item (``"pesq=pesq_too_short"``; ``""``
when every metric is ok), see :mod:`harness.metric_registry`."""


def score(ref: np.ndarray, est: np.ndarray, mix: np.ndarray, dataset_cfg: dict, *,
          interferer: np.ndarray | None = None) -> dict[str, Any]:
    """All metrics of one item, with its status.

    Args:
        ref, est, mix: float32 ``(L,)`` at ``dataset_cfg["sample_rate"]`` Hz.
        dataset_cfg: the dataset's declaration (its ``metrics`` list says which apply).
        interferer: float32 ``(L,)``, the item's interferer, for metrics that need it (``bss_*``).

    Returns:
        the metric columns (NaN where not applicable or not computable), ``status`` and
        ``metric_status``.
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
    return _score_rest(out, ref, est, mix, dataset_cfg, interferer)


CORE = ("sdr", "sdri", "si_sdr", "si_sdri")
"""The SDR family, computed by the scoring core itself (batched in :func:`score_batch`)."""


def _score_rest(out: dict[str, Any], ref: np.ndarray, est: np.ndarray, mix: np.ndarray,
                dataset_cfg: dict, interferer: np.ndarray | None = None) -> dict[str, Any]:
    """The registry metrics after the SDR family and the final statuses of a checked item.

    Each metric function the dataset's ``metrics`` list needs is called once (columns that share a
    function share the call), on the signals at the metric's rate. A function's status other than ``ok``
    (or an exception it raises) marks only its own columns, in ``metric_status``; the row's ``status`` is
    the first such status (as before per-metric statuses), else ``metric_nonfinite`` when SDR or SDRi is
    not finite, else ``ok``.
    """
    wanted = [m for m in metric_registry.metric_columns() if m in set(dataset_cfg["metrics"]) and m not in CORE]
    sr = int(dataset_cfg["sample_rate"])
    calls: dict[str, list[str]] = {}
    for m in wanted:
        spec = metric_registry.metric_spec(m)
        if spec.fn is not None:
            calls.setdefault(spec.fn, []).append(m)
    per_metric: dict[str, str] = {}
    cache: dict[int, tuple] = {}
    for columns in calls.values():
        spec = metric_registry.metric_spec(columns[0])
        rate = sr if spec.resamples_itself else spec.rate(sr)
        if rate not in cache:
            cache[rate] = tuple(None if x is None else resample(x, sr, rate) for x in (ref, est, mix, interferer))
        r, e, x, i = cache[rate]
        if spec.needs_interferer and i is None:
            values, status = {}, next((s for s in spec.statuses if s.endswith("no_interferer")), "no_interferer")
        else:
            try:
                options = {k: dataset_cfg[k] for k in spec.options if k in dataset_cfg}
                values, status = spec.function()(r, e, x, rate, interferer=i, **options)
            except UssBenchError:
                raise
            except Exception:  # a metric's failure is its own status, never the end of the eval
                values, status = {}, next((s for s in spec.statuses if s.endswith(("_failed", "_error"))), "metric_error")
        for c in columns:
            out[c] = float(values.get(c, float("nan"))) if status == "ok" else float("nan")
            if status != "ok":
                per_metric[c] = status
    out[METRIC_STATUS] = metric_registry.format_metric_status(per_metric)
    first = next(iter(per_metric.values()), None)
    if first is not None:
        out["status"] = first
    else:
        out["status"] = "ok" if all(np.isfinite(out[c]) for c in ("sdr", "sdri")) else "metric_nonfinite"
    return out


def musdb_item(ref, est, mix, sample_rate: int, *, interferer=None,
               musdb_protocol: str = musdb_protocols.DEFAULT_PROTOCOL) -> tuple[dict[str, float], str]:
    """``musdb_sdr`` and ``musdb_sdri`` of one item under ``musdb_protocol``
    (:func:`harness.musdb_protocols.item_sdr`; ``museval``: :func:`harness.metrics.musdb_sdr`, museval's order).
    A joint protocol (``sisec18``) returns no values here: :func:`score_batch` scores a track's rows together."""
    if musdb_protocol in musdb_protocols.JOINT_PROTOCOLS:
        return {}, "ok"
    sdr_e, sdr_i = musdb_protocols.item_sdr(ref, est, mix, sample_rate, musdb_protocol)
    return {"musdb_sdr": sdr_e, "musdb_sdri": sdr_i}, "ok"


def pesq_item(ref, est, mix, sample_rate: int, *, interferer=None) -> tuple[dict[str, float], str]:
    """``pesq`` of one item with its status (:func:`harness.metrics.pesq_wb_status`; given the signals at
    the set's rate, it resamples them to 16 kHz itself).

    PESQ runs here, inside the eval's metric workers, so utterances are already scored in parallel
    (:func:`harness.metrics.pesq_many` is the same parallelism for callers outside the eval pipeline).
    """
    value, status = metrics.pesq_wb_status(ref, est, sample_rate)
    return {"pesq": value}, status


def ssnr_item(ref, est, mix, sample_rate: int, *, interferer=None) -> tuple[dict[str, float], str]:
    """``ssnr`` of one whole utterance at ``sample_rate`` (the scoring core resampled it to 16 kHz)."""
    return {"ssnr": metrics.ssnr(ref, est, sample_rate)}, "ok"


def score_batch(refs: Sequence[np.ndarray] | np.ndarray, ests: Sequence[np.ndarray] | np.ndarray,
                mixes: Sequence[np.ndarray] | np.ndarray, dataset_cfg: dict,
                interferers: Sequence[np.ndarray | None] | None = None) -> list[dict[str, Any]]:
    """:func:`score` of each item, value for value and status for status, with SDR and SI-SDR vectorised.

    Items that pass the signal checks and share one length are scored together with
    :func:`metrics.sdr_batch` and :func:`metrics.si_sdr_batch` (row-wise reductions equal to the
    per-item functions); other metrics are computed per item.

    Args:
        refs, ests, mixes: ``N`` items each: float32 ``(N, L)`` arrays or sequences of ``(L_i,)``
            arrays, at ``dataset_cfg["sample_rate"]`` Hz.
        dataset_cfg: the dataset's declaration.
        interferers: ``N`` interferers (or ``None`` entries) for metrics that need one; ``None``: none.

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
        _score_rest(o, refs[i], ests[i], mixes[i], dataset_cfg, None if interferers is None else interferers[i])
    if dataset_cfg.get("musdb_protocol") in musdb_protocols.JOINT_PROTOCOLS and "musdb_sdr" in dataset_cfg["metrics"]:
        _score_joint(out, ok, refs, ests, mixes, dataset_cfg)
    return out


def _score_joint(out: list[dict[str, Any]], ok: list[int], refs, ests, mixes, dataset_cfg: dict) -> None:
    """``musdb_sdr`` / ``musdb_sdri`` of the rows of one track scored together (``--musdb-protocol sisec18``,
    :func:`harness.musdb_protocols.joint_sdr`). The eval hands a track's rows in one task and sets
    ``dataset_cfg["musdb_joint"]`` when no target of the track is missing; otherwise (a target unscorable,
    not separated, or a task that is not one whole track) the columns stay NaN and ``status_detail`` says why."""
    n = len(out)
    same_mix = all(np.array_equal(mixes[i], mixes[0]) for i in range(1, n))
    if dataset_cfg.get("musdb_joint") and len(ok) == n and same_mix:
        sdr, sdri = musdb_protocols.joint_sdr([refs[i] for i in ok], [ests[i] for i in ok], mixes[0],
                                              dataset_cfg["sample_rate"])
        for j, i in enumerate(ok):
            out[i]["musdb_sdr"], out[i]["musdb_sdri"] = float(sdr[j]), float(sdri[j])
        return
    why = ("the rows are not one track's (different mixtures)" if not same_mix else
           f"only {len(ok)} of the track's targets are scorable" if dataset_cfg.get("musdb_joint") else
           "a target of the track was not separated (unscorable or outside --limit)")
    for i in ok:
        out[i]["status_detail"] = f"musdb joint (sisec18) SDR not computed: {why}"


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
    """The metric columns (all NaN), ``status`` and an empty ``metric_status`` of an item that is kept as a
    row but not scored."""
    return {**{c: float("nan") for c in metric_registry.metric_columns()}, "status": status, METRIC_STATUS: ""}


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
