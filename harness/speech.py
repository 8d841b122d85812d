"""Speech-enhancement metrics of the field: CSIG/CBAK/COVL, STOI/ESTOI, DNSMOS P.835 (issue 11, item 2).

=================  ==============================================================================  =======
function           definition / source                                                             unit
=================  ==============================================================================  =======
:func:`llr`        LPC log-likelihood ratio, mean of the lowest 95 % of 30-ms frames                   —
:func:`wss`        weighted spectral slope over 25 critical bands, lowest 95 % of frames               —
:func:`segsnr`     segmental SNR of Loizou's ``comp_snr`` (= :func:`harness.metrics.ssnr`)             dB
:func:`composite`  CSIG, CBAK, COVL of Hu & Loizou (2008) from LLR, WSS, segSNR and PESQ              MOS
:func:`stoi`       STOI (Taal et al. 2011) and ESTOI (Jensen & Taal 2016), from ``pystoi``              —
:func:`dnsmos`     DNSMOS P.835 SIG/BAK/OVRL (Reddy et al. 2022), non-intrusive, from ``speechmos``    MOS
=================  ==============================================================================  =======

The composite measures are implemented here from their published definitions: Y. Hu and P. C. Loizou,
"Evaluation of objective quality measures for speech enhancement", IEEE TASLP 16(1), 2008 (§III, eqs.
for LLR and WSS and Table VIII's regressions), and P. C. Loizou, *Speech Enhancement: Theory and Practice*
(2007), ch. 11 (the measures) and the description of its MATLAB ``composite`` tool. No code of another
implementation was used (pysepm, the only Python one, is GPL-3).

**PESQ variant.** ``composite`` feeds in the wide-band P.862.2 score (MOS-LQO) at 16 kHz: solving the
three regressions for (LLR, PESQ, WSS) from the MATLAB CSIG/CBAK/COVL of the noisy reference case
(``data/meta/speech_metrics``) gives PESQ = 1.16241814, the P.862.2 value of that case (1.16241814);
the narrow-band P.862 MOS-LQO of the same pair is 1.47195 (``pesq`` mode ``"nb"``), which does not fit.
:func:`composite` therefore uses :func:`harness.metrics.pesq_wb_status`.

Every item-level function here has the registry's signature ``fn(ref, est, mix, sample_rate, *,
interferer=None) -> (values, status)`` (``mix`` and ``interferer`` are accepted and unused: these metrics
score the estimate against the target, or the estimate alone for DNSMOS). Inputs are ``(n,)`` mono or
``(n, c)`` arrays (float32 in the pipeline); a multichannel input is scored as its channel mean (speech
metrics are defined on mono signals). Values are NaN when the status is not ``"ok"``.

Bad *shapes* raise :class:`ValueError` (as in :mod:`harness.metrics`); bad *content* is a status.
"""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from harness.errors import UssBenchError
from harness.metrics import (
    PESQ_SAMPLE_RATE,
    PESQ_STATUSES,
    STATUS_OK,
    _sample_rate,
    check_signals,
    pesq_wb_status,
    ssnr,
)

__all__ = [
    "SPEECH_SAMPLE_RATE",
    "KEEP_FRACTION",
    "FRAME_CHUNK",
    "STATUS_COMPOSITE_TOO_SHORT",
    "STATUS_COMPOSITE_LLR_UNDEFINED",
    "COMPOSITE_STATUSES",
    "STATUS_STOI_TOO_SHORT",
    "STOI_STATUSES",
    "STATUS_DNSMOS_OUT_OF_RANGE",
    "DNSMOS_STATUSES",
    "MissingExtraError",
    "llr",
    "wss",
    "segsnr",
    "composite",
    "composite_from_components",
    "stoi",
    "dnsmos",
]

SPEECH_SAMPLE_RATE = PESQ_SAMPLE_RATE
"""Rate (Hz) at which :func:`composite` and :func:`dnsmos` score (16 kHz); other rates are resampled with
soxr ``"HQ"`` first, as :func:`harness.metrics.pesq_wb_status` does."""

KEEP_FRACTION = 0.95
"""LLR and WSS average the lowest 95 % of their frame values (Hu & Loizou 2008, §III: "to discard
outliers"); the count kept is ``round(0.95 · frames)`` (MATLAB ``round``: half away from zero)."""

STATUS_COMPOSITE_TOO_SHORT = "composite_too_short"
STATUS_COMPOSITE_LLR_UNDEFINED = "composite_llr_undefined"
COMPOSITE_STATUSES = tuple(dict.fromkeys(
    ("length_mismatch", *PESQ_STATUSES, STATUS_COMPOSITE_TOO_SHORT, STATUS_COMPOSITE_LLR_UNDEFINED)))
"""Every failure status :func:`composite` returns (besides ``"ok"``): those of
:func:`harness.metrics.check_signals` and :func:`harness.metrics.pesq_wb_status`, and

- ``"composite_too_short"``: under one 30-ms frame plus one hop at 16 kHz (600 samples);
- ``"composite_llr_undefined"``: the LLR mean is NaN: more than 5 % of the frames of the reference or the
  estimate are digital silence, whose LPC model does not exist (a zero autocorrelation)."""

STATUS_STOI_TOO_SHORT = "stoi_too_short"
STOI_STATUSES = ("length_mismatch", "ref_nonfinite", "est_nonfinite", "ref_silent", STATUS_STOI_TOO_SHORT)
"""Failure statuses of :func:`stoi`; ``"stoi_too_short"``: fewer than 30 non-silent 25.6-ms frames
(hop 12.8 ms) of the reference are left after pystoi's silent-frame removal (pystoi then warns and returns
1e-5, which is not a score), or the signal is shorter than 30 frames (0.3968 s) to begin with."""

STATUS_DNSMOS_OUT_OF_RANGE = "dnsmos_out_of_range"
DNSMOS_STATUSES = ("est_nonfinite", STATUS_DNSMOS_OUT_OF_RANGE)
"""Failure statuses of :func:`dnsmos`; ``"dnsmos_out_of_range"``: a sample of the (16-kHz) estimate lies
outside [−1, 1], which ``speechmos`` refuses (the model was trained on full-scale-bounded audio; the
estimate is not rescaled here because DNSMOS depends on the level)."""

_STOI_RATE = 10000
_STOI_MIN_SAMPLES = 256 + 29 * 128
"""pystoi's rate (Hz) and the samples at that rate of 30 frames of 256 with hop 128: a shorter signal can
never have the 30 frames STOI needs (and under one frame pystoi raises instead of warning)."""

_NAN = float("nan")


class MissingExtraError(UssBenchError):
    """A metric needs an optional extra of ``uss-bench`` that is not installed (the message names it)."""


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _mono(x, name: str) -> np.ndarray:
    """``x`` as float64 ``(n,)``: a ``(n, c)`` array becomes its channel mean.

    Raises:
        ValueError: not 1-D or 2-D, or empty.
    """
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr.astype(np.float64).mean(axis=1)
    elif arr.ndim != 1:
        raise ValueError(f"{name} must be (samples,) or (samples, channels), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    return np.asarray(arr, dtype=np.float64)


def _pair(ref, est) -> tuple[np.ndarray, np.ndarray]:
    r, e = _mono(ref, "ref"), _mono(est, "est")
    if r.shape != e.shape:
        raise ValueError(f"ref and est must have the same length, got ref {r.shape[0]} samples and "
                         f"est {e.shape[0]} samples")
    return r, e


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == SPEECH_SAMPLE_RATE:
        return x
    import soxr

    return soxr.resample(x, sr, SPEECH_SAMPLE_RATE, quality="HQ")


FRAME_CHUNK = 1024
"""Frames per block in :func:`_frame_pairs` (at 16 kHz ~ 8 MB per windowed block, 16 MB per FFT block):
memory stays bounded for long signals, and the block size is fixed, so a frame's value does not depend on
the signal's length."""


def _frame_pairs(r: np.ndarray, e: np.ndarray, sr: int):
    """Windowed analysis frames of Loizou's measures for ``r`` and ``e``, in blocks of at most
    :data:`FRAME_CHUNK` frames: yields float64 ``(frames, N)`` pairs.

    ``N = round(30 ms · sr)``, hop ``floor(N / 4)``, ``floor(L/hop − N/hop)`` frames (the last whole frame
    is dropped, as in ``comp_snr``), window ``0.5·(1 − cos(2π n/(N+1)))``, ``n = 1..N`` (see
    :func:`harness.metrics.ssnr`).

    Raises:
        ValueError: fewer than ``N + hop`` samples.
    """
    n = int(math.floor(30.0 * sr / 1000.0 + 0.5))
    hop = n // 4
    if n < 4:
        raise ValueError(f"sample_rate {sr} Hz is too low for 30-ms frames (frame of {n} samples)")
    count = int(math.floor(r.shape[0] / hop - n / hop))
    if count < 1:
        raise ValueError(f"signals of {r.shape[0]} samples are too short at {sr} Hz: need at least "
                         f"{n + hop} samples ({n}-sample frames, hop {hop}, last frame dropped)")
    window = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(1, n + 1) / (n + 1)))
    vr, ve = sliding_window_view(r, n)[::hop], sliding_window_view(e, n)[::hop]
    for f0 in range(0, count, FRAME_CHUNK):
        f1 = min(f0 + FRAME_CHUNK, count)
        yield vr[f0:f1] * window, ve[f0:f1] * window


def _lowest_mean(values: np.ndarray) -> float:
    """Mean of the lowest ``round(0.95 · len)`` values; NaNs sort last (as MATLAB ``sort``)."""
    keep = int(math.floor(values.shape[0] * KEEP_FRACTION + 0.5))
    return float(np.mean(np.sort(values)[: max(keep, 1)]))


# --------------------------------------------------------------------------------------------------
# LLR
# --------------------------------------------------------------------------------------------------


def _autocorrelation(frames: np.ndarray, order: int) -> np.ndarray:
    """``R[:, k] = Σ_n x[n]·x[n+k]`` for ``k = 0..order``: ``(frames, order + 1)``."""
    n = frames.shape[1]
    return np.stack([np.einsum("fn,fn->f", frames[:, : n - k], frames[:, k:]) for k in range(order + 1)], axis=1)


def _lpc(r: np.ndarray) -> np.ndarray:
    """Prediction-error filters ``[1, −a_1, …, −a_p]`` of each row of autocorrelations, by the
    Levinson–Durbin recursion (Makhoul 1975, eqs. 38a–e): ``(frames, p + 1)``.

    A row with ``R[0] = 0`` (a silent frame) gives NaN coefficients.
    """
    frames, p1 = r.shape
    a = np.zeros((frames, p1 - 1))
    err = r[:, 0].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(p1 - 1):
            k = (r[:, i + 1] - np.einsum("fj,fj->f", a[:, :i], r[:, i:0:-1])) / err
            prev = a[:, :i].copy()
            a[:, i] = k
            a[:, :i] = prev - k[:, None] * prev[:, ::-1]
            err = (1.0 - k * k) * err
    return np.concatenate([np.ones((frames, 1)), -a], axis=1)


def _llr_frames(r: np.ndarray, e: np.ndarray, sr: int) -> np.ndarray:
    """Per-frame LLR ``log( a_e R_r a_eᵀ / a_r R_r a_rᵀ )`` (Hu & Loizou 2008, eq. 3), ``(frames,)``."""
    order = 10 if sr < 10000 else 16  # Loizou: LPC order 10 at 8 kHz, 16 at 16 kHz
    return np.concatenate([_llr_block(fr, fe, order) for fr, fe in _frame_pairs(r, e, sr)])


def _llr_block(fr: np.ndarray, fe: np.ndarray, order: int) -> np.ndarray:
    """LLR of each pair of windowed frames ``(frames, N)`` with LPC models of ``order``."""
    rr = _autocorrelation(fr, order)
    ar, ae = _lpc(rr), _lpc(_autocorrelation(fe, order))
    lag = np.abs(np.arange(order + 1)[:, None] - np.arange(order + 1)[None, :])
    toeplitz = rr[:, lag]  # (frames, p+1, p+1): Toeplitz autocorrelation matrix of the clean frame
    num = np.einsum("fi,fij,fj->f", ae, toeplitz, ae)
    den = np.einsum("fi,fij,fj->f", ar, toeplitz, ar)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(num / den)


def llr(ref, est, sample_rate: int) -> float:
    """Log-likelihood ratio (Hu & Loizou 2008, §III-A eq. 3; Loizou 2007, §11.1.3).

    Per 30-ms frame (hop 7.5 ms, the window and framing of :func:`harness.metrics.ssnr`), LPC models of
    order 16 (order 10 below 10 kHz) of the windowed clean frame (``a_r``, autocorrelation matrix
    ``R_r``) and processed frame (``a_e``) by Levinson–Durbin; the frame value is
    ``ln( a_e R_r a_eᵀ / (a_r R_r a_rᵀ) )``. The result is the mean of the lowest 95 % of frame values
    (:data:`KEEP_FRACTION`), not clipped (as Loizou's ``composite``: the paper's [0, 2] limit is not
    applied there, and the MATLAB reference values are reproduced only without it). Computed in float64.

    Args:
        ref: ``(L,)`` or ``(L, c)`` clean reference.
        est: processed signal, the same shape.
        sample_rate: Hz.

    Returns:
        The LLR (unitless, ≥ 0 for most frames; 0 for ``est == ref``). NaN when more than 5 % of the frames
        of either signal are digital silence (no LPC model) or a sample is NaN/inf.

    Raises:
        ValueError: bad shapes, a bad ``sample_rate``, or fewer than one frame plus one hop of samples.
    """
    r, e = _pair(ref, est)
    return _lowest_mean(_llr_frames(r, e, _sample_rate(sample_rate)))


# --------------------------------------------------------------------------------------------------
# WSS
# --------------------------------------------------------------------------------------------------

_CRIT_CENTRE_HZ = np.array([
    50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717, 904.128, 1020.38,
    1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97, 2978.04, 3276.17, 3597.63,
])
_CRIT_BANDWIDTH_HZ = np.array([
    70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256, 127.914, 140.423,
    153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072, 298.126, 321.465, 346.136,
])
"""Klatt's (1982) 25 critical bands (centre and bandwidth, Hz), as Loizou's WSS uses them."""
_WSS_KMAX = 20.0
_WSS_KLOCMAX = 1.0


def _crit_filters(sr: int, n_fft: int) -> np.ndarray:
    """Gaussian-shaped critical-band weights on the first ``n_fft/2`` FFT bins, ``(25, n_fft/2)``.

    Band ``i``: ``exp(−11·((j − ⌊f0⌋)/bw)² + ln(bw_1/bw_i))`` with ``f0``, ``bw`` in bins of the
    half spectrum (``max_freq = sr/2``), zeroed below the −30 dB point ``exp(−30/(2·2.303))``.
    """
    half = n_fft // 2
    j = np.arange(half)
    f0 = np.floor(_CRIT_CENTRE_HZ / (sr / 2.0) * half)
    bw = _CRIT_BANDWIDTH_HZ / (sr / 2.0) * half
    norm = np.log(_CRIT_BANDWIDTH_HZ[0]) - np.log(_CRIT_BANDWIDTH_HZ)
    filt = np.exp(-11.0 * ((j[None, :] - f0[:, None]) / bw[:, None]) ** 2 + norm[:, None])
    return filt * (filt > math.exp(-30.0 / (2.0 * 2.303)))


def _slopes_and_weights(energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spectral slopes and Klatt weights of band energies (dB) ``(frames, 25)`` → two ``(frames, 24)``.

    Slope ``s_k = E_{k+1} − E_k``. Weight ``W_k = Kmax/(Kmax + E_max − E_k) · Klocmax/(Klocmax +
    E_peak,k − E_k)`` with ``Kmax = 20``, ``Klocmax = 1`` (Hu & Loizou 2008, eq. 4). The "nearest peak"
    of band ``k``: on a rising slope, searching up to the first band ``n`` whose slope is not rising
    (or the last slope), Loizou's ``wss`` takes the energy of band ``n − 1`` (1-based: the band below
    the slope change); on a falling slope, searching down to the last rising slope ``n``, the energy of
    band ``n + 1``. That choice of the rising case reproduces the MATLAB reference value (the other,
    band ``n``, gives WSS 42.02 instead of 44.70 on the noisy case).
    """
    s = energy[:, 1:] - energy[:, :-1]
    frames, k = s.shape
    right = np.empty((frames, k), dtype=np.intp)  # 0-based index of the first s[n] <= 0 at or after i, else k
    left = np.empty((frames, k), dtype=np.intp)  # 0-based index of the last s[n] > 0 at or before i, else -1
    right[:, k - 1] = np.where(s[:, k - 1] <= 0, k - 1, k)
    for i in range(k - 2, -1, -1):
        right[:, i] = np.where(s[:, i] <= 0, i, right[:, i + 1])
    left[:, 0] = np.where(s[:, 0] > 0, 0, -1)
    for i in range(1, k):
        left[:, i] = np.where(s[:, i] > 0, i, left[:, i - 1])
    rows = np.arange(frames)[:, None]
    peak = np.where(s > 0, energy[rows, right - 1], energy[rows, left + 1])
    base = energy[:, :-1]
    w = (_WSS_KMAX / (_WSS_KMAX + energy.max(axis=1, keepdims=True) - base)) * (
        _WSS_KLOCMAX / (_WSS_KLOCMAX + peak - base))
    return s, w


def _wss_frames(r: np.ndarray, e: np.ndarray, sr: int) -> np.ndarray:
    """Per-frame WSS distance (Hu & Loizou 2008, eq. 4), ``(frames,)``."""
    n = int(math.floor(30.0 * sr / 1000.0 + 0.5))
    n_fft = 1 << int(math.ceil(math.log2(2 * n)))  # MATLAB 2^nextpow2(2·N): 1024 at 16 kHz
    filt = _crit_filters(sr, n_fft)

    def band_db(frames):
        spec = np.abs(np.fft.rfft(frames, n_fft, axis=1)[:, : n_fft // 2]) ** 2
        return 10.0 * np.log10(np.maximum(spec @ filt.T, 1e-10))

    out = []
    for fr, fe in _frame_pairs(r, e, sr):
        sr_, wr = _slopes_and_weights(band_db(fr))
        se, we = _slopes_and_weights(band_db(fe))
        w = 0.5 * (wr + we)
        out.append(np.sum(w * (sr_ - se) ** 2, axis=1) / np.sum(w, axis=1))
    return np.concatenate(out)


def wss(ref, est, sample_rate: int) -> float:
    """Weighted spectral slope distance (Klatt 1982; Hu & Loizou 2008, §III-A eq. 4; Loizou 2007, §11.1.3).

    Per 30-ms frame (framing and window of :func:`llr`): the power spectrum (FFT of ``2^nextpow2(2N)``
    points, 1024 at 16 kHz) is summed through 25 Gaussian-shaped critical-band filters
    (:func:`_crit_filters`) into band energies in dB (floored at 1e-10); the frame distance is
    ``Σ_k W_k (s_r,k − s_e,k)² / Σ_k W_k`` over the 24 slopes, with ``W`` the mean of the clean and
    processed Klatt weights (:func:`_slopes_and_weights`). The result is the mean of the lowest 95 % of
    frame values. Computed in float64.

    Args:
        ref: ``(L,)`` or ``(L, c)`` clean reference.
        est: processed signal, the same shape.
        sample_rate: Hz (the band table stops at 3.77 kHz, so 8 and 16 kHz are the rates it was made for).

    Returns:
        WSS (unitless, ≥ 0; 0 for ``est == ref``); NaN when a sample is NaN/inf.

    Raises:
        ValueError: bad shapes, a bad ``sample_rate``, or fewer than one frame plus one hop of samples.
    """
    r, e = _pair(ref, est)
    return _lowest_mean(_wss_frames(r, e, _sample_rate(sample_rate)))


# --------------------------------------------------------------------------------------------------
# segSNR, composite
# --------------------------------------------------------------------------------------------------


def segsnr(ref, est, sample_rate: int) -> float:
    """Segmental SNR of the composite measures: Loizou's ``comp_snr`` (30-ms frames, 75 % overlap,
    each frame clipped to [−10, 35] dB, mean over *all* frames), which is exactly
    :func:`harness.metrics.ssnr` (see there); a multichannel input is scored as its channel mean.

    Returns:
        dB. Raises: as :func:`harness.metrics.ssnr`.
    """
    r, e = _pair(ref, est)
    return ssnr(r, e, sample_rate)


def composite_from_components(llr_value: float, wss_value: float, segsnr_db: float,
                              pesq_score: float) -> dict[str, float]:
    """Hu & Loizou (2008) Table VIII regressions, each clipped to [1, 5]:

    - ``csig = 3.093 − 1.029·LLR + 0.603·PESQ − 0.009·WSS``
    - ``cbak = 1.634 + 0.478·PESQ − 0.007·WSS + 0.063·segSNR``
    - ``covl = 1.594 + 0.805·PESQ − 0.512·LLR − 0.007·WSS``

    Returns:
        ``{"csig", "cbak", "covl"}`` (MOS, 1..5; NaN where an input is NaN).
    """
    raw = {
        "csig": 3.093 - 1.029 * llr_value + 0.603 * pesq_score - 0.009 * wss_value,
        "cbak": 1.634 + 0.478 * pesq_score - 0.007 * wss_value + 0.063 * segsnr_db,
        "covl": 1.594 + 0.805 * pesq_score - 0.512 * llr_value - 0.007 * wss_value,
    }
    return {k: float(min(5.0, max(1.0, v))) if math.isfinite(v) else _NAN for k, v in raw.items()}


def composite(ref, est, mix, sample_rate: int, *,
              interferer=None) -> tuple[dict[str, float], str]:
    """CSIG, CBAK and COVL (Hu & Loizou 2008), as Loizou's MATLAB ``composite`` computes them.

    Both signals are brought to 16 kHz (soxr ``"HQ"`` when ``sample_rate`` differs, as
    :func:`harness.metrics.pesq_wb_status`), then :func:`llr`, :func:`wss` (lowest 95 % of frames each),
    :func:`segsnr` (all frames) and wide-band PESQ (P.862.2 MOS-LQO, :func:`harness.metrics.pesq_wb_status`;
    the variant the MATLAB values imply, see the module docstring) enter
    :func:`composite_from_components`.

    Args:
        ref: ``(n,)`` or ``(n, c)`` target (clean speech), float.
        est: estimate, the same shape.
        mix: unused (the measures compare the estimate with the target).
        sample_rate: Hz of ``ref`` and ``est``.
        interferer: unused.

    Returns:
        ``({"csig", "cbak", "covl"}, status)``: MOS values in [1, 5] with ``"ok"``, or NaNs with a status
        of :data:`COMPOSITE_STATUSES` (a PESQ failure gives PESQ's own status).

    Raises:
        ValueError: bad shapes (not 1-D/2-D, empty, lengths differ) or a bad ``sample_rate``.
    """
    del mix, interferer
    sr = _sample_rate(sample_rate)
    r, e = _pair(ref, est)
    nan = {"csig": _NAN, "cbak": _NAN, "covl": _NAN}
    status = check_signals(r, e)
    if status != STATUS_OK:
        return nan, status
    r, e = _to_16k(r, sr), _to_16k(e, sr)
    if r.shape[0] < 600:  # one 480-sample frame plus one 120-sample hop at 16 kHz
        return nan, STATUS_COMPOSITE_TOO_SHORT
    pesq_score, status = pesq_wb_status(r, e, SPEECH_SAMPLE_RATE)
    if status != STATUS_OK:
        return nan, status
    llr_value = _lowest_mean(_llr_frames(r, e, SPEECH_SAMPLE_RATE))
    if not math.isfinite(llr_value):
        return nan, STATUS_COMPOSITE_LLR_UNDEFINED
    wss_value = _lowest_mean(_wss_frames(r, e, SPEECH_SAMPLE_RATE))
    seg = ssnr(r, e, SPEECH_SAMPLE_RATE)
    return composite_from_components(llr_value, wss_value, seg, pesq_score), STATUS_OK


# --------------------------------------------------------------------------------------------------
# STOI / ESTOI (pystoi)
# --------------------------------------------------------------------------------------------------


def stoi(ref, est, mix, sample_rate: int, *,
         interferer=None) -> tuple[dict[str, float], str]:
    """STOI (Taal, Hendriks, Heusdens, Jensen, IEEE TASLP 2011) and extended STOI (Jensen & Taal, IEEE
    TASLP 2016), both from ``pystoi.stoi(ref, est, sample_rate, extended=...)`` (pystoi resamples to its
    10 kHz internally and removes silent frames of the reference, 40 dB below its loudest).

    Args:
        ref: ``(n,)`` or ``(n, c)`` target (clean speech); cast to float64.
        est: estimate, the same shape.
        mix, interferer: unused.
        sample_rate: Hz.

    Returns:
        ``({"stoi", "estoi"}, status)``: values in about [0, 1] (ESTOI may be slightly negative) with
        ``"ok"``, or NaNs with a status of :data:`STOI_STATUSES`.

    **Bit-identity.** STOI is reproducible bit for bit. pystoi 0.4.1's ESTOI is not: its value moves in
    the last bits (measured spread 3.5e-16 on a 2-s signal) with the memory alignment of the arrays numpy
    allocates inside it (numpy's SIMD reductions peel unaligned heads), even for identical inputs, so
    two runs, or runs with different worker counts, may differ by a few ulp in ``estoi``.

    Raises:
        ValueError: bad shapes or a bad ``sample_rate``.
    """
    del mix, interferer
    from pystoi import stoi as _stoi

    sr = _sample_rate(sample_rate)
    r, e = _pair(ref, est)
    nan = {"stoi": _NAN, "estoi": _NAN}
    status = check_signals(r, e)
    if status != STATUS_OK:
        return nan, status
    if r.shape[0] * _STOI_RATE < _STOI_MIN_SAMPLES * sr:  # pystoi raises AxisError below one frame
        return nan, STATUS_STOI_TOO_SHORT
    values = {}
    for name, extended in (("stoi", False), ("estoi", True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            value = float(_stoi(r, e, sr, extended=extended))
        if any("Not enough STFT frames" in str(w.message) for w in caught):
            return nan, STATUS_STOI_TOO_SHORT
        values[name] = value
    return values, STATUS_OK


# --------------------------------------------------------------------------------------------------
# DNSMOS P.835 (speechmos, optional extra [dnsmos])
# --------------------------------------------------------------------------------------------------

_DNSMOS = None
_DNSMOS_LOCK = threading.Lock()


def _dnsmos_model():
    """speechmos's DNSMOS P.835 scorer, built once, with single-threaded onnxruntime sessions.

    ``speechmos.dnsmos.run`` builds its sessions with onnxruntime's default thread pool; here the same
    two models of the wheel (``dnsmos_models/sig_bak_ovr.onnx`` and ``model_v8.onnx``) are opened with one
    intra-op and one inter-op thread, so a score does not depend on the machine's core count or on how
    many workers run at once.

    Raises:
        MissingExtraError: ``speechmos`` or one of its undeclared runtime dependencies (onnxruntime,
            librosa, requests) is not installed.
    """
    global _DNSMOS
    with _DNSMOS_LOCK:
        if _DNSMOS is None:
            try:
                import onnxruntime as ort
                from speechmos import dnsmos as sm
            except ImportError as exc:
                raise MissingExtraError(
                    f"metric dnsmos needs the optional extra 'dnsmos' ({exc.name or exc} is missing): "
                    "pip install 'uss-bench[dnsmos]'") from exc
            import os

            folder = os.path.join(os.path.dirname(os.path.abspath(sm.__file__)), "dnsmos_models")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            model = sm.DNSMOS.__new__(sm.DNSMOS)
            model.primary_model_path = os.path.join(folder, "sig_bak_ovr.onnx")
            model.onnx_sess = ort.InferenceSession(model.primary_model_path, options,
                                                   providers=["CPUExecutionProvider"])
            model.p808_onnx_sess = ort.InferenceSession(os.path.join(folder, "model_v8.onnx"), options,
                                                        providers=["CPUExecutionProvider"])
            _DNSMOS = model
    return _DNSMOS


def dnsmos(ref, est, mix, sample_rate: int, *,
           interferer=None) -> tuple[dict[str, float], str]:
    """DNSMOS P.835 (Reddy, Gopal, Cutler, ICASSP 2022): non-intrusive SIG, BAK and OVRL of the estimate.

    The estimate alone is scored (``ref``, ``mix``, ``interferer`` are unused), at 16 kHz (soxr ``"HQ"``
    first when ``sample_rate`` differs), by the ``speechmos`` 0.0.1.1 package (MIT, Microsoft's
    DNS-Challenge models shipped in its wheel; nothing is downloaded): 9.01-s windows hopped by 1 s (a
    shorter signal is repeated up to 9.01 s), the P.835 model's raw outputs mapped by its published
    polynomials, averaged over windows. Non-personalised model (``model_type="dnsmos"``).

    Args:
        ref: unused (may be ``None``).
        est: ``(n,)`` or ``(n, c)`` estimate, float in [−1, 1].
        mix, interferer: unused.
        sample_rate: Hz of ``est``.

    Returns:
        ``({"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}, status)``: MOS (about 1–5) with ``"ok"``, or NaNs
        with a status of :data:`DNSMOS_STATUSES`.

    Raises:
        MissingExtraError: the extra ``uss-bench[dnsmos]`` is not installed.
        ValueError: ``est`` is not 1-D/2-D or is empty, or a bad ``sample_rate``.
    """
    del ref, mix, interferer
    sr = _sample_rate(sample_rate)
    e = _mono(est, "est")
    model = _dnsmos_model()
    nan = {"dnsmos_sig": _NAN, "dnsmos_bak": _NAN, "dnsmos_ovrl": _NAN}
    if not np.isfinite(e).all():
        return nan, "est_nonfinite"
    e = _to_16k(e, sr)
    if np.max(np.abs(e)) > 1.0:
        return nan, STATUS_DNSMOS_OUT_OF_RANGE
    out = model(e, SPEECH_SAMPLE_RATE, False)
    return {"dnsmos_sig": float(out["sig_mos"]), "dnsmos_bak": float(out["bak_mos"]),
            "dnsmos_ovrl": float(out["ovrl_mos"])}, STATUS_OK
