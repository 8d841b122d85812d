"""Separation and speech-quality metrics (DESIGN.md §6, §9).

Every metric takes 1-D float arrays of samples (``ref`` = the true source, ``est`` = the estimate,
``mix`` = the mixture, all the same length and sample rate) and returns a Python ``float``:
decibels (dB) for the SDR family and SSNR, MOS-LQO for PESQ.

=================  ==========================================================================  =======
function           definition / source                                                         unit
=================  ==========================================================================  =======
:func:`sdr`        paper eq. 12 with the upstream ``uss.utils.calculate_sdr`` constants           dB
:func:`sdri`       paper eq. 13, ``sdr(ref, est) - sdr(ref, mix)``                              dB
:func:`si_sdr`     Le Roux et al. 2019 (ICASSP), no zero-mean step                              dB
:func:`si_sdri`    ``si_sdr(ref, est) - si_sdr(ref, mix)``                                      dB
:func:`musdb_sdr`  museval 0.4 BSSEval v4 image SDR, 1-s frames, median over frames            dB
:func:`pesq_wb`    ITU-T P.862.2 wide band at 16 kHz (``pesq`` package), NaN on failure         MOS
:func:`ssnr`       segmental SNR, Loizou (2007) ``comp_snr.m``                                  dB
=================  ==========================================================================  =======

Bad *shapes* are programming errors and raise :class:`ValueError` (mismatched lengths, arrays that are
not 1-D, empty arrays). Bad *content* (a silent reference, NaN/inf samples) is something the evaluation
runner records as a row with a ``status`` instead: call :func:`check_signals` first; a status other
than ``"ok"`` means "store NaN for every metric and keep the row" (DESIGN §6, §9). The metric functions
themselves do not refuse such content: :func:`sdr` of a silent reference returns the upstream's
level-dependent number, NaN samples propagate into NaN results, and :func:`pesq_wb_status` reports
its own failures.

``museval``, ``stempeg`` and ``musdb`` are *not* imported here (``import museval`` needs ffmpeg on PATH);
museval is only the test oracle for :func:`musdb_sdr`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SDR_EPS",
    "SILENCE_PEAK",
    "PESQ_SAMPLE_RATE",
    "STATUS_OK",
    "STATUS_LENGTH_MISMATCH",
    "STATUS_REF_NONFINITE",
    "STATUS_EST_NONFINITE",
    "STATUS_REF_SILENT",
    "STATUS_PESQ_EST_SILENT",
    "STATUS_PESQ_NO_UTTERANCES",
    "STATUS_PESQ_TOO_SHORT",
    "STATUS_PESQ_ERROR",
    "SIGNAL_STATUSES",
    "PESQ_STATUSES",
    "check_signals",
    "sdr",
    "sdri",
    "sdr_batch",
    "si_sdr",
    "si_sdri",
    "si_sdr_batch",
    "musdb_sdr",
    "musdb_sdr_frames",
    "pesq_wb",
    "pesq_wb_status",
    "ssnr",
]

SDR_EPS = 1e-10
"""Floor of both mean powers in :func:`sdr` (upstream ``calculate_sdr(eps=1e-10)``)."""

SILENCE_PEAK = 2.0**-24
"""A signal whose peak ``max|x|`` is at or below this (≈ 5.96e-8, −144.5 dBFS) is *silent*.

This is half the least significant bit of 24-bit PCM: any reference read from 16- or 24-bit PCM that
has a single non-zero sample is above it (1 LSB of 16-bit PCM is 3.05e-5), while digital silence and
float residue of resampling/decoding digital silence are at or below it.
"""

PESQ_SAMPLE_RATE = 16000
"""Rate (Hz) at which :func:`pesq_wb` scores (ITU-T P.862.2 wide band)."""

STATUS_OK = "ok"
STATUS_LENGTH_MISMATCH = "length_mismatch"
STATUS_REF_NONFINITE = "ref_nonfinite"
STATUS_EST_NONFINITE = "est_nonfinite"
STATUS_REF_SILENT = "ref_silent"
SIGNAL_STATUSES = (
    STATUS_OK,
    STATUS_LENGTH_MISMATCH,
    STATUS_REF_NONFINITE,
    STATUS_EST_NONFINITE,
    STATUS_REF_SILENT,
)
"""Every value :func:`check_signals` returns."""

STATUS_PESQ_EST_SILENT = "pesq_est_silent"
STATUS_PESQ_NO_UTTERANCES = "pesq_no_utterances"
STATUS_PESQ_TOO_SHORT = "pesq_too_short"
STATUS_PESQ_ERROR = "pesq_error"
PESQ_STATUSES = (
    STATUS_REF_NONFINITE,
    STATUS_EST_NONFINITE,
    STATUS_REF_SILENT,
    STATUS_PESQ_EST_SILENT,
    STATUS_PESQ_NO_UTTERANCES,
    STATUS_PESQ_TOO_SHORT,
    STATUS_PESQ_ERROR,
)
"""Every failure status :func:`pesq_wb_status` returns (besides ``"ok"``)."""


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _as_1d(x, name: str, dtype) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of samples, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    return np.asarray(arr, dtype=dtype)


def _pair_1d(ref, est, dtype, names=("ref", "est")) -> tuple[np.ndarray, np.ndarray]:
    r = _as_1d(ref, names[0], dtype)
    e = _as_1d(est, names[1], dtype)
    if r.shape[0] != e.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same length, got {names[0]} {r.shape[0]} "
            f"samples and {names[1]} {e.shape[0]} samples"
        )
    return r, e


def _pair_2d(refs, ests, dtype) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(refs)
    e = np.asarray(ests)
    for name, arr in (("refs", r), ("ests", e)):
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array (items, samples), got shape {arr.shape}")
        if arr.shape[1] == 0:
            raise ValueError(f"{name} has rows of 0 samples; metrics need at least one sample")
    if r.shape != e.shape:
        raise ValueError(
            f"refs and ests must have the same shape (items, samples), got refs {r.shape} and ests {e.shape}"
        )
    return np.asarray(r, dtype=dtype), np.asarray(e, dtype=dtype)


def _sample_rate(sample_rate) -> int:
    try:
        sr = int(sample_rate)
    except (TypeError, ValueError):
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}") from None
    if sr <= 0 or sr != sample_rate:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return sr


def check_signals(ref, est) -> str:
    """Classify a (reference, estimate) pair before scoring it.

    Args:
        ref: reference samples, any shape (normally ``(L,)``).
        est: estimate samples.

    Returns:
        The first of these that applies, in this order:

        - ``"length_mismatch"``: ``ref`` and ``est`` have different shapes;
        - ``"ref_nonfinite"``: ``ref`` has a NaN or ±inf sample;
        - ``"est_nonfinite"``: ``est`` has a NaN or ±inf sample (e.g. a diverged model);
        - ``"ref_silent"``: ``ref`` is empty or ``max|ref| <= SILENCE_PEAK`` (2**-24, see
          :data:`SILENCE_PEAK`). Plain SDR is −inf for such a reference, and the upstream's 1e-10
          floor turns it into a level-dependent number (−82.8 dB, say). Record NaN and keep the row
          out of aggregates (DESIGN §9);
        - ``"ok"``.

        An all-zero *estimate* is ``"ok"``: its SDR is a well-defined 0 dB.
    """
    r = np.asarray(ref)
    e = np.asarray(est)
    if r.shape != e.shape:
        return STATUS_LENGTH_MISMATCH
    if not np.isfinite(r).all():
        return STATUS_REF_NONFINITE
    if not np.isfinite(e).all():
        return STATUS_EST_NONFINITE
    if r.size == 0 or float(np.max(np.abs(r))) <= SILENCE_PEAK:
        return STATUS_REF_SILENT
    return STATUS_OK


# --------------------------------------------------------------------------------------------------
# SDR, SDRi (upstream definition)
# --------------------------------------------------------------------------------------------------


def _sdr_from_powers(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.maximum(np.asarray(num, dtype=np.float64), SDR_EPS)
    den = np.maximum(np.asarray(den, dtype=np.float64), SDR_EPS)
    return 10.0 * np.log10(num / den)


def sdr(ref, est) -> float:
    """Signal-to-distortion ratio as the upstream computes it (paper eq. 12).

    ``10·log10( max(mean(s²), 1e-10) / max(mean((ŝ − s)²), 1e-10) )``, with the two means taken as
    float32 numpy reductions of float32 arrays (as ``uss.utils.calculate_sdr`` does on its float32
    inputs) and the floor, ratio and logarithm in float64. It reproduces the upstream reference values
    (``reference/public/sdr.npz``) to < 1e-6 dB; the float32 means may differ by one ulp between
    NumPy builds, which is ≈ 5e-7 dB.

    Args:
        ref: ``(L,)`` reference samples; cast to float32.
        est: ``(L,)`` estimate samples; cast to float32.

    Returns:
        SDR in dB. An all-zero estimate gives exactly 0 dB; ``est == ref`` gives
        ``10·log10(mean(s²)/1e-10)``; an all-zero reference gives ``10·log10(1e-10/mean(ŝ²))`` (use
        :func:`check_signals` to flag it). NaN/inf samples give NaN/±inf.

    Raises:
        ValueError: an input is not 1-D, is empty, or the lengths differ.
    """
    r, e = _pair_1d(ref, est, np.float32)
    num = np.mean(r**2)
    den = np.mean((e - r) ** 2)
    return float(_sdr_from_powers(num, den))


def sdri(ref, est, mix) -> float:
    """SDR improvement (paper eq. 13): ``sdr(ref, est) − sdr(ref, mix)``, in dB.

    Args:
        ref, est, mix: ``(L,)`` arrays of the same length (cast to float32, see :func:`sdr`).

    Raises:
        ValueError: an input is not 1-D, is empty, or the lengths differ.
    """
    _pair_1d(ref, mix, np.float32, names=("ref", "mix"))
    return sdr(ref, est) - sdr(ref, mix)


def sdr_batch(refs, ests) -> np.ndarray:
    """:func:`sdr` of each row, vectorised.

    Args:
        refs: ``(N, L)`` references; cast to float32.
        ests: ``(N, L)`` estimates; cast to float32.

    Returns:
        ``(N,)`` float64 SDRs in dB, equal to ``[sdr(refs[i], ests[i]) for i in range(N)]`` (the row
        means use the same float32 pairwise reduction).

    Raises:
        ValueError: inputs are not 2-D, have rows of 0 samples, or their shapes differ.
    """
    r, e = _pair_2d(refs, ests, np.float32)
    num = np.mean(r**2, axis=-1)
    den = np.mean((e - r) ** 2, axis=-1)
    return _sdr_from_powers(num, den)


# --------------------------------------------------------------------------------------------------
# SI-SDR
# --------------------------------------------------------------------------------------------------


def _si_sdr_rows(r: np.ndarray, e: np.ndarray) -> np.ndarray:
    """SI-SDR of each row of float64 ``(N, L)`` arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.sum(e * r, axis=-1) / np.sum(r * r, axis=-1)
        target = alpha[:, None] * r
        noise = target - e
        return 10.0 * np.log10(np.sum(target * target, axis=-1) / np.sum(noise * noise, axis=-1))


def si_sdr(ref, est) -> float:
    """Scale-invariant SDR (Le Roux, Wisdom, Erdogan, Hershey, "SDR – half-baked or well done?",
    ICASSP 2019, eqs. 3–5).

    ``α = <ŝ, s> / ‖s‖²``, ``SI-SDR = 10·log10( ‖α s‖² / ‖α s − ŝ‖² )``. No zero-mean step is applied
    (the paper's definition; some toolkits subtract the means first) and no epsilon is added. Computed
    in float64.

    Args:
        ref: ``(L,)`` reference samples.
        est: ``(L,)`` estimate samples.

    Returns:
        SI-SDR in dB. Undefined cases are returned as such, not floored: NaN for an all-zero reference
        or an all-zero estimate (0/0), +inf when ``est`` is exactly ``α·ref``.

    Raises:
        ValueError: an input is not 1-D, is empty, or the lengths differ.
    """
    r, e = _pair_1d(ref, est, np.float64)
    return float(_si_sdr_rows(r[None, :], e[None, :])[0])


def si_sdri(ref, est, mix) -> float:
    """SI-SDR improvement: ``si_sdr(ref, est) − si_sdr(ref, mix)``, in dB.

    Raises:
        ValueError: an input is not 1-D, is empty, or the lengths differ.
    """
    _pair_1d(ref, mix, np.float64, names=("ref", "mix"))
    return si_sdr(ref, est) - si_sdr(ref, mix)


def si_sdr_batch(refs, ests) -> np.ndarray:
    """:func:`si_sdr` of each row, vectorised.

    Args:
        refs, ests: ``(N, L)`` arrays of the same shape.

    Returns:
        ``(N,)`` float64 SI-SDRs in dB.

    Raises:
        ValueError: inputs are not 2-D, have rows of 0 samples, or their shapes differ.
    """
    r, e = _pair_2d(refs, ests, np.float64)
    return _si_sdr_rows(r, e)


# --------------------------------------------------------------------------------------------------
# MUSDB SDR (museval BSSEval v4, one source image)
# --------------------------------------------------------------------------------------------------


def _as_image(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2:
        raise ValueError(f"{name} must be (samples,) or (samples, channels), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); metrics need at least one sample")
    return arr


def musdb_sdr_frames(ref, est, sample_rate: int) -> np.ndarray:
    """Framewise BSSEval v4 image SDR of one source, as ``museval.evaluate(win=hop=sample_rate)``.

    For one source image museval's v4 SDR is ``Σ s² / Σ (e_spat + e_interf + e_artif)²`` per frame,
    and ``e_spat + e_interf + e_artif = ŝ − s`` identically (the 512-tap distortion filters cancel), so
    it is the framewise SNR ``10·log10( Σ s² / Σ (ŝ − s)² )`` (sums over the frame's samples and
    channels; float64). Verified against museval 0.4.1 to < 1e-9 dB (tests/test_metrics.py).

    Framing (museval ``Framing`` with window = hop = ``sample_rate`` samples, i.e. 1 s):

    - ``L > sample_rate``: ``floor(L / sample_rate)`` whole frames; a trailing partial window is dropped;
    - ``L <= sample_rate``: museval evaluates one frame covering the whole signal; so does this function.

    A frame is NaN (museval's "silent frame", skipped by the median) when the reference **or the
    estimate** is digitally silent in it: the sum over channels is exactly 0 at every sample
    (museval ``_any_source_silent``). A frame with ``ŝ == s`` exactly is +inf (museval ``_safe_db``).

    Args:
        ref: ``(L,)`` mono or ``(L, C)`` multichannel reference image.
        est: estimate of the same shape.
        sample_rate: Hz; also the window and hop length in samples.

    Returns:
        ``(n_frames,)`` float64, dB, NaN for skipped frames.

    Raises:
        ValueError: shapes differ, more than 2 dimensions, empty input, bad ``sample_rate``.
    """
    sr = _sample_rate(sample_rate)
    r = _as_image(ref, "ref")
    e = _as_image(est, "est")
    if r.shape != e.shape:
        raise ValueError(
            f"ref and est must have the same shape (samples[, channels]), got ref {np.shape(ref)} "
            f"and est {np.shape(est)}"
        )
    length, nchan = r.shape
    if length <= sr:
        rf = r[None]
        ef = e[None]
    else:
        nwin = length // sr
        rf = r[: nwin * sr].reshape(nwin, sr, nchan)
        ef = e[: nwin * sr].reshape(nwin, sr, nchan)
    silent = np.all(rf.sum(axis=2) == 0, axis=1) | np.all(ef.sum(axis=2) == 0, axis=1)
    num = np.sum(rf**2, axis=(1, 2))
    den = np.sum((ef - rf) ** 2, axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den == 0, np.inf, 10.0 * np.log10(num / den))
    out[silent] = np.nan
    return out


def musdb_sdr(ref, est, sample_rate: int) -> float:
    """MUSDB18 SDR of one source image: median over 1-s frames of :func:`musdb_sdr_frames`.

    This is museval's (SiSEC 2018) per-track, per-target number: BSSEval v4 image SDR on 1-s windows
    and hops, whole windows only, silent frames (reference or estimate all-zero in the frame) skipped,
    median over the remaining frames (museval/pandas aggregate with a NaN-skipping median).

    Evaluated one target at a time: museval's SiSEC evaluation of all four targets jointly marks a frame
    NaN for every target when *any* target is silent there; that rule is not applied here (DESIGN §9).

    Args:
        ref: ``(L,)`` or ``(L, C)`` reference image.
        est: estimate of the same shape.
        sample_rate: Hz (window = hop = ``sample_rate`` samples).

    Returns:
        dB; NaN when every frame is skipped (museval raises ``ValueError`` on an all-zero reference or
        estimate instead).

    Raises:
        ValueError: see :func:`musdb_sdr_frames`.
    """
    frames = musdb_sdr_frames(ref, est, sample_rate)
    kept = frames[~np.isnan(frames)]
    if kept.size == 0:
        return float("nan")
    return float(np.median(kept))


# --------------------------------------------------------------------------------------------------
# PESQ (ITU-T P.862.2 wide band)
# --------------------------------------------------------------------------------------------------


def pesq_wb_status(ref, est, sample_rate: int) -> tuple[float, str]:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO) with a status instead of an exception.

    Both signals are resampled to 16 kHz with soxr (quality ``"HQ"``, the resampler of
    :mod:`harness.audio`) when ``sample_rate != 16000``, then scored with
    ``pesq.pesq(16000, ref, est, "wb")`` (the ``pesq`` package wraps the ITU-T reference C code; it
    matches the MATLAB reference values to < 3e-7 on the speech_metrics case).

    The ``pesq`` package raises on silent or short signals, and with ``on_error=RETURN_VALUES`` returns
    negative error codes that look like scores; neither reaches the caller here. Every failure is
    ``(nan, status)``:

    =========================  =====================================================================
    status                     cause
    =========================  =====================================================================
    ``"ref_nonfinite"``        ``ref`` has NaN/inf samples (:func:`check_signals`)
    ``"est_nonfinite"``        ``est`` has NaN/inf samples
    ``"ref_silent"``           ``max|ref| <= SILENCE_PEAK``
    ``"pesq_est_silent"``      ``est`` is all zeros (``pesq`` fails with a NaN-to-int ``ValueError``)
    ``"pesq_no_utterances"``   ``pesq.NoUtterancesError``: the level-aligned reference has no speech
    ``"pesq_too_short"``       ``pesq.BufferTooShortError``: under 1/4 s at 16 kHz
    ``"pesq_error"``           any other ``pesq.PesqError`` or ``ValueError`` from ``pesq``, or a
                               non-finite or negative (error-code) score
    =========================  =====================================================================

    Args:
        ref: ``(L,)`` clean reference.
        est: ``(L,)`` degraded / enhanced signal.
        sample_rate: Hz, of both signals.

    Returns:
        ``(score, "ok")`` with the MOS-LQO score (about 1.0–4.64), or ``(nan, status)``.

    Raises:
        ValueError: an input is not 1-D, is empty, the lengths differ, or ``sample_rate`` is not a
            positive integer.
    """
    sr = _sample_rate(sample_rate)
    r, e = _pair_1d(ref, est, np.float64)
    status = check_signals(r, e)
    if status != STATUS_OK:
        return float("nan"), status
    if not np.any(e):
        return float("nan"), STATUS_PESQ_EST_SILENT
    if sr != PESQ_SAMPLE_RATE:
        import soxr

        r = soxr.resample(r, sr, PESQ_SAMPLE_RATE, quality="HQ")
        e = soxr.resample(e, sr, PESQ_SAMPLE_RATE, quality="HQ")
    import pesq as _pesq

    try:
        score = float(_pesq.pesq(PESQ_SAMPLE_RATE, r, e, "wb"))
    except _pesq.NoUtterancesError:
        return float("nan"), STATUS_PESQ_NO_UTTERANCES
    except _pesq.BufferTooShortError:
        return float("nan"), STATUS_PESQ_TOO_SHORT
    except (_pesq.PesqError, ValueError):
        return float("nan"), STATUS_PESQ_ERROR
    if not math.isfinite(score) or score < 0.0:  # P.862.2 scores lie in (0.999, 4.999); codes are -1..-7
        return float("nan"), STATUS_PESQ_ERROR
    return score, STATUS_OK


def pesq_wb(ref, est, sample_rate: int) -> float:
    """Wide-band PESQ (MOS-LQO); NaN on any failure. The reason: :func:`pesq_wb_status`.

    Raises:
        ValueError: as :func:`pesq_wb_status` (shapes, sample rate).
    """
    return pesq_wb_status(ref, est, sample_rate)[0]


# --------------------------------------------------------------------------------------------------
# SSNR (Loizou)
# --------------------------------------------------------------------------------------------------

SSNR_MIN_DB = -10.0
SSNR_MAX_DB = 35.0
_MATLAB_EPS = float(np.finfo(np.float64).eps)
_SSNR_CHUNK_FRAMES = 4096


def ssnr(ref, est, sample_rate: int) -> float:
    """Segmental SNR as in Loizou, *Speech Enhancement: Theory and Practice* (2007), ``comp_snr.m``
    (also pysepm ``SNRseg``), implemented from that definition.

    - frame length ``N = round(30 ms · sample_rate)`` samples (MATLAB rounding, half away from 0),
      hop ``floor(N / 4)`` (75 % overlap for 16 kHz: N = 480, hop = 120);
    - window ``w[n] = 0.5·(1 − cos(2π n / (N + 1)))`` for ``n = 1..N`` (Hann of N+2 points without
      its zero end points);
    - number of frames ``floor(L/hop − N/hop)``: the whole frames except the last one;
    - per frame: ``c = s·w``, ``p = ŝ·w``, ``10·log10( Σ c² / (Σ (c − p)² + eps) )`` with
      ``eps = 2.22e-16`` (MATLAB ``eps``), clipped to [−10, 35] dB (a frame of digital silence in
      ``ref`` gives −10 dB);
    - result: the mean over frames.

    Computed in float64, vectorised over frames. Matches the MATLAB values of
    ``data/meta/speech_metrics`` to ~1e-15 dB.

    Args:
        ref: ``(L,)`` clean reference.
        est: ``(L,)`` processed signal.
        sample_rate: Hz.

    Returns:
        dB.

    Raises:
        ValueError: an input is not 1-D, is empty, the lengths differ, ``sample_rate`` is not a
            positive integer, or the signal is shorter than ``N + hop`` samples (no frame left).
    """
    sr = _sample_rate(sample_rate)
    r, e = _pair_1d(ref, est, np.float64)
    n = int(math.floor(30.0 * sr / 1000.0 + 0.5))
    hop = n // 4
    if n < 4:
        raise ValueError(f"sample_rate {sr} Hz is too low for 30-ms SSNR frames (frame of {n} samples)")
    length = r.shape[0]
    n_frames = int(math.floor(length / hop - n / hop))
    if n_frames < 1:
        raise ValueError(
            f"signals of {length} samples are too short for SSNR at {sr} Hz: need at least {n + hop} "
            f"samples ({n}-sample frames, hop {hop}, last frame dropped)"
        )
    window = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(1, n + 1) / (n + 1)))
    rv = np.lib.stride_tricks.sliding_window_view(r, n)[::hop]
    ev = np.lib.stride_tricks.sliding_window_view(e, n)[::hop]
    total = 0.0
    with np.errstate(divide="ignore"):
        for start in range(0, n_frames, _SSNR_CHUNK_FRAMES):
            stop = min(start + _SSNR_CHUNK_FRAMES, n_frames)
            c = rv[start:stop] * window
            p = ev[start:stop] * window
            signal = np.sum(c * c, axis=1)
            noise = np.sum((c - p) ** 2, axis=1)
            seg = np.clip(10.0 * np.log10(signal / (noise + _MATLAB_EPS)), SSNR_MIN_DB, SSNR_MAX_DB)
            total += float(np.sum(seg))
    return total / n_frames
