"""MUSDB18 SDR protocols (``eval --musdb-protocol``): which museval call the ``musdb_sdr`` / ``musdb_sdri``
columns reproduce.

All three are museval 0.4 BSSEval v4 image SDR on 1-s windows and hops, median over the non-silent frames
(:func:`harness.metrics.musdb_sdr_frames`, equal to museval to < 1e-9 dB); they differ in the call:

``museval`` (default; the numbers of every earlier run)
    per target, museval's argument order: ``museval.evaluate(references=target, estimates=estimate)``;
    SDRi baseline ``evaluate(references=target, estimates=mixture)``. A frame is skipped when the target
    or the estimate is silent in it.
``sisec18``
    the four targets of a track jointly, as ``museval.eval_mus_track`` (SiSEC 2018) calls
    ``museval.evaluate(references=[vocals, drums, bass, other], estimates=[their four estimates])``:
    museval's ``bss_eval`` marks a frame NaN for *every* target when any of the references or any of the
    estimates is silent in it (``_any_source_silent`` on the frame's reference and estimate stacks). The
    v4 image SDR of one target does not depend on the other targets' signals otherwise (museval's
    ``_bss_decomp_mtifilt`` returns error terms that add up to ``estimate − target`` whatever the other
    references are), so it is the per-target framewise SDR under the joint silence mask. SDRi baseline:
    the same joint call with the mixture as every target's estimate (the "MIX" baseline of SiSEC 2018).
    museval itself raises ``ValueError`` when a whole reference or estimate of the track is silent; here
    every frame is then skipped and the values are NaN.
``uss-code``
    the released bytedance/uss evaluation code (``evaluation/separate_and_evaluate.py``,
    ``calculate_metrics``, snapshot c19e2c5a): ``museval.evaluate(references=estimate,
    estimates=target)`` on mono signals, ``np.nanmedian`` of the frames, and for SDRi
    ``evaluate(references=estimate, estimates=mixture)``: the *estimate* is the reference of both calls,
    so the baseline scores the mixture against the estimate. Earlier versions of that repository used
    museval's order; the paper's column may be either (issue 11).

Nothing here imports museval (``import museval`` needs ffmpeg on PATH); it is the tests' oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness import metrics
from harness.errors import check_choice

__all__ = ["PROTOCOLS", "DEFAULT_PROTOCOL", "PROTOCOL_LABELS", "JOINT_PROTOCOLS", "check_protocol",
           "item_sdr", "joint_sdr", "silent_frames", "describe"]

PROTOCOLS = ("museval", "sisec18", "uss-code")
"""Values of ``--musdb-protocol``."""

DEFAULT_PROTOCOL = "museval"

JOINT_PROTOCOLS = frozenset({"sisec18"})
"""Protocols that score the four targets of a track together (the eval groups a track's rows)."""

PROTOCOL_LABELS = {
    "museval": "museval per target (references = target, estimates = estimate)",
    "sisec18": "SiSEC18 joint (museval.eval_mus_track: the 4 targets of a track together, a frame silent "
               "in any target dropped for all)",
    "uss-code": "uss released code (references = estimate, estimates = target; SDRi baseline scores the "
                "mixture against the estimate)",
}
"""One line per protocol, for the reports next to the MUSDB columns."""


def check_protocol(name: str) -> str:
    """``name`` when it is one of :data:`PROTOCOLS`.

    Raises:
        ConfigError: unknown protocol (names the closest one and the choices).
    """
    return check_choice("--musdb-protocol", name, PROTOCOLS)


def describe(name: str) -> str:
    """``"MUSDB18 protocol: <name> — <what it is>"`` for a report."""
    return f"MUSDB18 protocol: {name} — {PROTOCOL_LABELS.get(name, 'unknown')}"


def item_sdr(ref, est, mix, sample_rate: int, protocol: str = DEFAULT_PROTOCOL) -> tuple[float, float]:
    """``(musdb_sdr, musdb_sdri)`` of one target under a per-target protocol.

    Args:
        ref, est, mix: ``(L,)`` or ``(L, C)`` target, estimate and mixture (same shape), float samples.
        sample_rate: Hz (window = hop = ``sample_rate`` samples).
        protocol: ``"museval"`` or ``"uss-code"``.

    Returns:
        dB, dB; NaN where every frame is skipped (see :func:`harness.metrics.musdb_sdr`).

    Raises:
        ValueError: a joint protocol (use :func:`joint_sdr`), an unknown one, or bad shapes.
    """
    if protocol == "museval":
        sdr = metrics.musdb_sdr(ref, est, sample_rate)
        return sdr, sdr - metrics.musdb_sdr(ref, mix, sample_rate)
    if protocol == "uss-code":
        sdr = metrics.musdb_sdr(est, ref, sample_rate)  # references = estimate, estimates = target
        return sdr, sdr - metrics.musdb_sdr(est, mix, sample_rate)  # references = estimate, estimates = mixture
    raise ValueError(f"item_sdr: protocol {protocol!r} is not a per-target protocol (choose museval or uss-code)")


def silent_frames(x, sample_rate: int) -> np.ndarray:
    """museval's silent-frame test per 1-s frame: the channel sum is exactly 0 at every sample of the frame.

    Framing as :func:`harness.metrics.musdb_sdr_frames` (``floor(L / sample_rate)`` whole frames, or one
    frame of the whole signal when ``L <= sample_rate``).

    Returns:
        bool ``(n_frames,)``.
    """
    sr = metrics._sample_rate(sample_rate)
    a = metrics._as_image(x, "x")
    length = a.shape[0]
    n = length if length <= sr else sr
    n_frames = 1 if length <= sr else length // sr
    frames = a[: n * n_frames].reshape(n_frames, n, a.shape[1]).astype(np.float64)
    return ~frames.sum(axis=2).any(axis=1)


def joint_sdr(refs: Sequence, ests: Sequence, mix, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """SiSEC18 joint evaluation of the targets of one track: ``(musdb_sdr, musdb_sdri)`` per target.

    Args:
        refs: the ``n`` targets of the track (MUSDB18: vocals, drums, bass, other), each ``(L,)`` or
            ``(L, C)``, one shape for all.
        ests: their estimates, in the same order and shape.
        mix: the track's mixture, same shape.
        sample_rate: Hz.

    Returns:
        two float64 ``(n,)`` arrays, dB: the median over the frames in which no target and no estimate is
        silent of each target's v4 image SDR, and that minus the same joint median with the mixture as
        every target's estimate (frames where no target and the mixture are non-silent). NaN where no frame
        is left.

    Raises:
        ValueError: no targets, ``refs`` and ``ests`` of different counts, or shapes that differ.

    Source: museval 0.4 ``eval_mus_track`` → ``evaluate(references, estimates, win=hop=rate)`` →
    ``metrics.bss_eval(..., bsseval_sources_version=False)``; checked against it in
    tests/harness/test_musdb_protocols.py.
    """
    if not len(refs) or len(refs) != len(ests):
        raise ValueError(f"joint_sdr: {len(refs)} targets and {len(ests)} estimates; need the same number, ≥ 1")
    shapes = {np.shape(x) for x in (*refs, *ests, mix)}
    if len(shapes) != 1:
        raise ValueError(f"joint_sdr: the targets, estimates and mixture must have one shape, got {sorted(shapes)}")
    if not all(np.isfinite(x).all() for x in (*refs, *ests, mix)):
        nan = np.full(len(refs), np.nan)
        return nan, nan.copy()
    ref_silent = np.any([silent_frames(r, sample_rate) for r in refs], axis=0)
    est_silent = np.any([silent_frames(e, sample_rate) for e in ests], axis=0)
    skip_est = ref_silent | est_silent
    skip_mix = ref_silent | silent_frames(mix, sample_rate)
    sdr = np.empty(len(refs))
    base = np.empty(len(refs))
    for j, (r, e) in enumerate(zip(refs, ests, strict=True)):
        sdr[j] = _median(metrics.musdb_sdr_frames(r, e, sample_rate), skip_est)
        base[j] = _median(metrics.musdb_sdr_frames(r, mix, sample_rate), skip_mix)
    return sdr, sdr - base


def _median(frames: np.ndarray, skip: np.ndarray) -> float:
    kept = frames[~skip]
    kept = kept[~np.isnan(kept)]  # own-silent frames are in ``skip`` already; kept for safety
    return float(np.median(kept)) if kept.size else float("nan")


def run_protocol(run: dict) -> str:
    """The protocol a ``run.json`` records (``options.musdb_protocol``); runs written before the option
    existed used the default."""
    return (run.get("options") or {}).get("musdb_protocol") or DEFAULT_PROTOCOL


def protocol_note(run_dir, items) -> str | None:
    """The report line naming the MUSDB18 protocol of each system whose rows include a dataset scored with
    the MUSDB18 columns, e.g. ``"MUSDB18 protocol: museval — museval per target (…)"``; ``None`` when no such
    rows. Systems of one protocol share one entry; a report of several runs names each system's.

    Args:
        run_dir: a run or report folder (its ``run.json`` / ``sources.json`` name the runs).
        items: its ``items.parquet`` rows.
    """
    from harness.config import load_dataset_config
    from harness.results import _run_jsons

    datasets = [d for d in dict.fromkeys(items["dataset"]) if "musdb_sdr" in load_dataset_config(d)["metrics"]]
    if not datasets:
        return None
    systems = list(dict.fromkeys(items.loc[items["dataset"].isin(datasets), "system"]))
    runs = _run_jsons(run_dir, items)
    by_protocol: dict[str, list[str]] = {}
    for system in systems:
        by_protocol.setdefault(run_protocol(runs.get(system, {})), []).append(system)
    if len(by_protocol) == 1:
        return describe(next(iter(by_protocol)))
    return "MUSDB18 protocols: " + "; ".join(
        f"{', '.join(f'`{s}`' for s in names)}: {name} — {PROTOCOL_LABELS.get(name, 'unknown')}"
        for name, names in by_protocol.items())
