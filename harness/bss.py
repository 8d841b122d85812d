"""BSS-eval *sources* SDR / SIR / SAR of two-source items (Vincent, Gribonval & Févotte 2006).

The metric of the group's first paper (Kong et al., ICASSP 2020, *Source separation with weakly labelled
data*: U-Net on AudioSet, SDR 5.67 / SIR 9.38 / SAR 11.15 dB averaged over classes). It is opt-in
(``--metrics +bss``): one call costs 1-4 s for a 2-s item at 32 kHz on one loaded core (measured).

Library: :func:`mir_eval.separation.bss_eval_sources` (BSS Eval v3 "sources": 512-tap time-invariant
distortion filters estimated on the whole signal, single channel). mir_eval rather than museval because
museval's ``bss_eval(..., bsseval_sources_version=True)`` is the same decomposition but museval is
built around framewise *image* evaluation (``import museval`` also needs ffmpeg on PATH), while
mir_eval's ``bss_eval_sources`` is the whole-signal v3 call that papers of 2017-2020 (the group's own
DCASE-era separation code among them) report. The values are mir_eval's, not a re-implementation.

How an item is put to the library:

- references ``[target, interferer]`` (2, L) float64. ``interferer`` defaults to ``mixture − target``
  computed in float64. For the built clip sets (AudioSet, FSDKaggle2018, FSD50K) ``mixtures.h5`` holds
  ``mixture = target + float32(gain) · interferer`` rounded to float32 and nothing else (no clipping,
  no normalisation: :func:`harness.mixtures.render_item`), so ``mixture − target`` in float64 is exactly
  the interferer that *is* in the mixture (it differs from ``gain · interferer`` by the one float32
  rounding of the sum, ≤ 2⁻²⁴ of the larger sample); for Slakh2100 (the real ``mix.flac`` frame) it is the
  rest of the mix, for MUSDB18 the sum of the other stems (the accompaniment), for Voicebank-Demand the
  noise. The two references then add up to the mixture exactly. Pass ``interferer`` to score against
  another second source (e.g. one re-rendered from the manifest's ``interferer_*`` columns).
- estimates ``[estimate, mixture − estimate]``: a query-conditioned separator returns only the
  target's estimate; the second row is the residual, i.e. what a two-output separator whose outputs add
  up to the mixture would give for the interferer. The 2020 paper does not say how its second estimate
  was formed and its code is not public (its repository holds a README only), so this is our choice.
- ``compute_permutation=False``: row 0 of the estimates is paired with row 0 (the target) of the
  references, and the target row's SDR/SIR/SAR are returned. The separator was *asked* for the target,
  so the pairing is known; a permutation search would pair a failed separation with the interferer and
  hide the failure. With the permutation off, mir_eval decomposes estimate row ``j`` against the
  references only for ``j`` = its own row, so the target row's values do not depend on the second
  estimate at all (it only has to pass mir_eval's non-silence check).
"""

from __future__ import annotations

import warnings

import numpy as np

from harness import metrics

__all__ = ["BSS_COLUMNS", "BSS_STATUSES", "bss_sources"]

BSS_COLUMNS = ("bss_sdr", "bss_sir", "bss_sar")
"""Columns :func:`bss_sources` produces (dB)."""

STATUS_BSS_NOT_MONO = "bss_not_mono"
STATUS_BSS_INTERFERER_SILENT = "bss_interferer_silent"
STATUS_BSS_EST_SILENT = "bss_est_silent"
STATUS_BSS_RESIDUAL_SILENT = "bss_residual_silent"
STATUS_BSS_NONFINITE = "bss_nonfinite"
BSS_STATUSES = (
    STATUS_BSS_NOT_MONO,
    STATUS_BSS_INTERFERER_SILENT,
    STATUS_BSS_EST_SILENT,
    STATUS_BSS_RESIDUAL_SILENT,
    STATUS_BSS_NONFINITE,
)
"""Statuses of :func:`bss_sources` besides ``"ok"`` and :data:`harness.metrics.SIGNAL_STATUSES`:

- ``bss_not_mono``: multichannel input (BSS Eval *sources* is single-channel);
- ``bss_interferer_silent``: the interferer (``mixture − target`` by default) is all zeros: the second
  reference is degenerate and mir_eval refuses it;
- ``bss_est_silent``: the estimate is all zeros (mir_eval refuses a silent estimate);
- ``bss_residual_silent``: ``mixture − estimate`` is all zeros, e.g. the mixture returned as the estimate;
- ``bss_nonfinite``: mir_eval returned NaN or ±inf (e.g. an estimate exactly in the references' span).
"""


def _mono(x, name: str) -> np.ndarray | None:
    """``x`` as float64 ``(L,)``; ``None`` when it has more than one channel."""
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        return None
    return arr.astype(np.float64)


def bss_sources(ref, est, mix, sample_rate: int, *, interferer=None) -> tuple[dict[str, float], str]:
    """BSS Eval v3 sources SDR, SIR and SAR of the target's estimate in a two-source item.

    Args:
        ref: the target, ``(L,)`` (or ``(L, 1)``) float32 samples.
        est: the separator's estimate of the target, same shape.
        mix: the mixture, same shape.
        sample_rate: Hz (BSS Eval works on samples; checked and otherwise unused: the 512-tap filters are
            512 samples, 16 ms at 32 kHz).
        interferer: the other source, same shape; ``None``: ``mix − ref`` in float64 (see module docstring).

    Returns:
        ``({"bss_sdr", "bss_sir", "bss_sar"}: dB, status)``; NaN values unless the status is ``"ok"``.
        Statuses: ``"ok"``, :data:`harness.metrics.SIGNAL_STATUSES` (from
        :func:`harness.metrics.check_signals` of (ref, est), (ref, mix) and (ref, interferer)), and
        :data:`BSS_STATUSES`.

    Raises:
        ValueError: ``sample_rate`` is not a positive integer.

    Source: :func:`mir_eval.separation.bss_eval_sources` with ``compute_permutation=False``, references
    ``[ref, interferer]``, estimates ``[est, mix − est]``; the first (target) row of each output.
    """
    metrics._sample_rate(sample_rate)
    nan = {c: float("nan") for c in BSS_COLUMNS}
    for other in (est, mix) if interferer is None else (est, mix, interferer):
        status = metrics.check_signals(ref, other)
        if status != "ok":
            return nan, status
    r, e, m = _mono(ref, "ref"), _mono(est, "est"), _mono(mix, "mix")
    i = None if interferer is None else _mono(interferer, "interferer")
    if r is None or e is None or m is None or (interferer is not None and i is None):
        return nan, STATUS_BSS_NOT_MONO
    if i is None:
        i = m - r
    residual = m - e
    if not i.any():
        return nan, STATUS_BSS_INTERFERER_SILENT
    if not e.any():
        return nan, STATUS_BSS_EST_SILENT
    if not residual.any():
        return nan, STATUS_BSS_RESIDUAL_SILENT
    from mir_eval.separation import bss_eval_sources  # lazy: only runs under --metrics +bss

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # mir_eval's deprecation notices; the values are checked below
        sdr, sir, sar, _ = bss_eval_sources(np.stack([r, i]), np.stack([e, residual]), compute_permutation=False)
    out = {"bss_sdr": float(sdr[0]), "bss_sir": float(sir[0]), "bss_sar": float(sar[0])}
    if not all(np.isfinite(v) for v in out.values()):
        return nan, STATUS_BSS_NONFINITE
    return out, "ok"
