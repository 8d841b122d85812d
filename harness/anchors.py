"""Anchor-segment mining: which 2-s segment of a clip to use as a source (paper §3.2, Alg. 1).

Three rules, each returning ``(begin_sample, end_sample)`` with ``end − begin = 64,000`` (2 s at 32 kHz):

- :func:`find_anchor` (**upstream behaviour**, ``detect_mode="max_area"``): the segment where the sound
  event detector's probability for the class has the largest 2-s area (reference/SEMANTICS.md §6).
- :func:`energy_anchor` (**ours**): the 2-s window with the largest energy, for clips without an SED.
- :func:`random_anchor` (**ours**): a uniformly drawn segment. The upstream ``"random"`` mode has a quirk
  (centres only in 100..200 frames, SEMANTICS §6) that we do not reproduce.
"""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING

import numpy as np

from harness import SAMPLE_RATE, SEGMENT_SAMPLES

if TYPE_CHECKING:
    import torch

# torch is never imported here (a tensor input implies it already is): build-mixtures without an SED does
# not pay torch's multi-second import.

FRAMES_PER_SECOND = 100
"""Frame rate of the SED's ``framewise_output``."""

HOP_SAMPLES = SAMPLE_RATE // FRAMES_PER_SECOND
"""Samples per SED frame (320)."""

SEGMENT_FRAMES = int(SEGMENT_SAMPLES / HOP_SAMPLES) + 1
"""Box-filter length in frames: ``int(2 s · 100 + 1)`` = 201."""


def _as_array(framewise: np.ndarray | torch.Tensor) -> np.ndarray:
    """``framewise`` as a 2-D float32 numpy array (torch tensors may live on any device)."""
    torch_mod = sys.modules.get("torch")  # a tensor implies torch was imported
    if torch_mod is not None and isinstance(framewise, torch_mod.Tensor):
        framewise = framewise.detach().cpu().numpy()
    framewise = np.asarray(framewise, dtype=np.float32)
    if framewise.ndim != 2:
        raise ValueError(f"framewise must be (T, classes), got shape {framewise.shape}")
    return framewise


_SCALE_EXP = 149
"""Every float32 is an integer multiple of ``2**-149`` (the smallest subnormal), so ``p · 2**149`` is exact."""


def _window_sums(framewise: np.ndarray | torch.Tensor, class_id: int) -> list[int]:
    """Exact 201-frame box sums of the class's probabilities, in units of ``2**-149``.

    Replicate padding by 100 frames on both sides (SEMANTICS §6 step 2), then ``Σ_{j=a−100}^{a+100}
    p[clip(j, 0, T−1)]`` for every centre ``a``, summed as Python integers: every float32 value times
    ``2**149`` is an integer, so the sums carry no rounding at all and do not depend on the CPU, its vector
    kernels or the thread count (a float32 ``conv1d`` rounds differently on AVX2 and AVX-512 machines).

    Raises:
        ValueError: ``framewise`` is not 2-D or holds NaN/inf.
    """
    prob = _as_array(framewise)[:, class_id]
    if not np.isfinite(prob).all():
        raise ValueError(f"framewise probabilities of class {class_id} hold NaN or inf: the SED output is broken")
    half = SEGMENT_FRAMES // 2
    scaled = np.pad(prob, half, mode="edge").astype(np.float64) * 2.0**_SCALE_EXP  # exact: power-of-two scaling
    prefix = [0, *itertools.accumulate(int(v) for v in scaled.tolist())]
    return [prefix[a + SEGMENT_FRAMES] - prefix[a] for a in range(len(prob))]


def anchor_scores(framewise: np.ndarray | torch.Tensor, class_id: int) -> np.ndarray:
    """The upstream ``AnchorSegmentScorer``: the class's framewise probability smoothed by a 2-s box filter.

    ``s[a] = (1/201) · Σ_{j=a−100}^{a+100} p[clip(j, 0, T−1)]``: replicate padding by 100 frames on both
    sides, then the 201-tap mean (SEMANTICS §6 step 2). The upstream computes it as a float32 ``conv1d``,
    whose rounding depends on the CPU's kernels (up to ``201 · 2**-24`` ≈ 1.2e-5 relative). Ours: the exact
    sum (:func:`_window_sums`), divided by 201 with one correct rounding to float64, then rounded to
    float32, so the scores are the same bits on every machine.

    Args:
        framewise: ``(T, classes)`` SED ``framewise_output`` of one clip (T = 1001 for 10 s; classes = 527).
        class_id: AudioSet class index.

    Returns:
        ``(T,)`` float32 scores (probability units, in [0, 1] for probabilities).

    Raises:
        ValueError: ``framewise`` is not 2-D or holds NaN/inf.
    """
    denominator = SEGMENT_FRAMES << _SCALE_EXP
    # int / int is correctly rounded in Python; the cast to float32 is a second, deterministic rounding
    return np.array([total / denominator for total in _window_sums(framewise, class_id)]).astype(np.float32)


def best_anchor_centre(framewise: np.ndarray | torch.Tensor, class_id: int, first: int = 0,
                       last: int | None = None) -> int:
    """The first centre frame in ``[first, last]`` with the largest exact 2-s area (``np.argmax`` semantics).

    The comparison is on the exact sums (:func:`_window_sums`), so two windows whose areas differ by less
    than a float32 rounding are still told apart, exact ties go to the earlier centre, and the choice is the
    same on every CPU. The upstream's float32 argmax agrees wherever its rounding does not reorder the top
    two scores (on the reference clips the winning margin is ≥ 1.4e-5 relative, far above it).

    Args:
        framewise: ``(T, classes)`` SED ``framewise_output``.
        class_id: AudioSet class index.
        first, last: inclusive range of candidate centres (frames); ``last`` defaults to ``T − 1``.

    Returns:
        the centre frame index.

    Raises:
        ValueError: ``framewise`` is not 2-D or holds NaN/inf, or the range is empty.
    """
    sums = _window_sums(framewise, class_id)
    last = len(sums) - 1 if last is None else last
    if not 0 <= first <= last < len(sums):
        raise ValueError(f"no candidate centre in [{first}, {last}] for {len(sums)} frames")
    window = sums[first: last + 1]
    return first + window.index(max(window))


def find_anchor(framewise: np.ndarray | torch.Tensor, class_id: int) -> tuple[int, int]:
    """Anchor segment of a clip for one class: **upstream behaviour** (``AnchorSegmentDetector``, "max_area").

    SEMANTICS §6: ``a* = argmax(anchor_scores)`` (the first maximum on ties; taken on the exact areas, see
    :func:`best_anchor_centre`), clamped to ``[100, T − 1 − 100]`` ([100, 900] for a 10-s clip, T = 1001),
    then ``[(a* − 100)·320, (a* + 100)·320)``.

    Args:
        framewise: ``(T, 527)`` ``framewise_output`` of :class:`~harness.models.panns.Cnn14DecisionLevelMax`
            for the clip (numpy or torch).
        class_id: AudioSet class index.

    Returns:
        ``(begin_sample, end_sample)``, 64,000 samples apart.

    Raises:
        ValueError: ``framewise`` is not 2-D, holds NaN/inf, or covers less than one 2-s segment.
    """
    framewise = _as_array(framewise)
    half = SEGMENT_FRAMES // 2
    clip_frames = framewise.shape[0] - 1
    if clip_frames < 2 * half:
        raise ValueError(
            f"clip of {framewise.shape[0]} frames is shorter than one {SEGMENT_FRAMES}-frame segment"
        )
    centre = best_anchor_centre(framewise, class_id)
    centre = min(max(centre, half), clip_frames - half)
    return (centre - half) * HOP_SAMPLES, (centre + half) * HOP_SAMPLES


def energy_anchor(
    waveform: np.ndarray, segment_samples: int = SEGMENT_SAMPLES, hop: int = HOP_SAMPLES
) -> tuple[int, int]:
    """The ``segment_samples`` window with the largest energy: **ours** (not in the upstream).

    Candidate windows start at multiples of ``hop``; energies are float64 sums of squares; ties go to the
    earliest window, so the choice is deterministic. A signal not longer than one segment gives
    ``(0, segment_samples)`` (the caller pads it).

    Args:
        waveform: ``(L,)`` float32.
        segment_samples: window length in samples (2 s).
        hop: spacing of candidate starts in samples (one SED frame).

    Returns:
        ``(begin_sample, end_sample)``.
    """
    x = np.asarray(waveform, dtype=np.float64)
    if len(x) <= segment_samples:
        return 0, segment_samples
    cumulative = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(0, len(x) - segment_samples + 1, hop)
    begin = int(starts[np.argmax(cumulative[starts + segment_samples] - cumulative[starts])])
    return begin, begin + segment_samples


def random_anchor(
    length: int, rng: np.random.Generator, segment_samples: int = SEGMENT_SAMPLES
) -> tuple[int, int]:
    """A uniformly drawn segment: **ours**; the start is ``rng.integers(0, length − segment_samples + 1)``.

    Unlike the upstream ``"random"`` mode (centres only in frames 100..200 after its clamp), every start
    is equally likely. A signal not longer than one segment gives ``(0, segment_samples)``, drawing nothing.

    Args:
        length: signal length in samples.
        rng: the keyed numpy Generator of the item (DESIGN.md §4).
        segment_samples: segment length in samples.

    Returns:
        ``(begin_sample, end_sample)``.
    """
    if length <= segment_samples:
        return 0, segment_samples
    begin = int(rng.integers(0, length - segment_samples + 1))
    return begin, begin + segment_samples
