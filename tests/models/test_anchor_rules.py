"""Anchor-segment rules on synthetic inputs: SED box filter (upstream), energy and random (ours)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from harness.anchors import anchor_scores, best_anchor_centre, energy_anchor, find_anchor, random_anchor

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)


def framewise_with_peak(centre: int, frames: int = 1001, class_id: int = 7) -> np.ndarray:
    """Probabilities 0.1 everywhere but a tent peaking at ``centre`` for ``class_id``."""
    framewise = np.full((frames, 10), 0.1, np.float32)
    framewise[:, class_id] = np.maximum(0.9 - 0.002 * np.abs(np.arange(frames) - centre), 0.1)
    return framewise


def test_box_filter_uses_replicate_padding():
    framewise = np.zeros((1001, 3), np.float32)
    framewise[0, 1] = 1.0
    scores = anchor_scores(framewise, 1)
    assert scores.shape == (1001,) and scores.dtype == np.float32
    # frame 0 is repeated 100 times on the left, so it weighs 101/201 in the first score. The scores are the
    # exact sums divided once in float64 and cast to float32, which is what np.float32(101 / 201) does:
    # exact equality, on every CPU.
    np.testing.assert_array_equal(scores[:3], np.float32([101 / 201, 100 / 201, 99 / 201]))
    assert scores[101] == 0


def _exact_areas(column: np.ndarray) -> list[Fraction]:
    """Independent oracle: the 201-frame replicate-padded box sums in exact rational arithmetic."""
    values = [Fraction(float(v)) for v in column]
    padded = [values[0]] * 100 + values + [values[-1]] * 100
    return [sum(padded[a: a + 201], Fraction(0)) for a in range(len(values))]


def _first_argmax(areas: list[Fraction], first: int = 0, last: int | None = None) -> int:
    last = len(areas) - 1 if last is None else last
    window = areas[first: last + 1]
    return first + window.index(max(window))


def test_exact_ties_go_to_the_first_centre_whatever_the_summation_order():
    """Two blocks of the same float32 values in reverse order: their areas are exactly equal, but a float32
    sum rounds them differently depending on the order (a kernel choice). The first plateau must win."""
    rng = np.random.default_rng(3)
    block = rng.uniform(0.3, 0.9, 11).astype(np.float32)
    framewise = np.zeros((1001, 2), np.float32)
    framewise[600:611, 1] = block  # plateau of centres 510..700
    framewise[200:211, 1] = block[::-1]  # plateau of centres 110..300: first
    areas = _exact_areas(framewise[:, 1])
    assert areas[110] == areas[510] and _first_argmax(areas) == 110
    assert best_anchor_centre(framewise, 1) == 110
    assert find_anchor(framewise, 1) == (10 * 320, 210 * 320)
    scores = anchor_scores(framewise, 1)
    assert scores[110] == scores[510]  # one rounding of the same exact value


def test_a_one_ulp_difference_decides_the_anchor():
    """The later block is larger by one float32 ulp in one frame: below a float32 sum's resolution, but the
    exact areas (and so the anchor) see it."""
    block = np.full(11, 0.6, np.float32)
    framewise = np.zeros((1001, 1), np.float32)
    framewise[200:211, 0] = block
    framewise[600:611, 0] = block
    framewise[605, 0] = np.nextafter(np.float32(0.6), np.float32(1))
    areas = _exact_areas(framewise[:, 0])
    assert areas[510] > areas[110] and _first_argmax(areas) == 510
    assert best_anchor_centre(framewise, 0) == 510
    assert find_anchor(framewise, 0) == (410 * 320, 610 * 320)


@pytest.mark.parametrize("seed", range(6))
def test_anchor_equals_the_exact_argmax_on_near_tie_inputs(seed):
    """Probabilities drawn from 3 float32 levels (so many areas tie exactly or differ by one level), and
    the same in a fine random form: the anchor is the exact first argmax, also restricted to a range."""
    rng = np.random.default_rng(seed)
    levels = np.float32([0.1, 0.2, 0.7])
    coarse = levels[rng.integers(0, 3, 1001)]
    fine = rng.random(1001).astype(np.float32)
    for column in (coarse, fine):
        framewise = np.stack([column, 1 - column], axis=1).astype(np.float32)
        areas = _exact_areas(column)
        assert best_anchor_centre(framewise, 0) == _first_argmax(areas)
        assert best_anchor_centre(torch.from_numpy(framewise), 0, 100, 400) == _first_argmax(areas, 100, 400)
        expected = np.float32([float(a / 201) for a in areas])  # exact mean, rounded once to float64, then float32
        np.testing.assert_array_equal(anchor_scores(framewise, 0), expected)


def test_anchor_rejects_broken_probabilities():
    framewise = np.zeros((1001, 2), np.float32)
    framewise[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        find_anchor(framewise, 1)
    with pytest.raises(ValueError, match="no candidate centre"):
        best_anchor_centre(np.zeros((1001, 1), np.float32), 0, 500, 400)


@pytest.mark.parametrize(("centre", "expected"), [(400, 400), (30, 100), (990, 900)])
def test_find_anchor_clamps_to_the_clip(centre, expected):
    begin, end = find_anchor(framewise_with_peak(centre), 7)
    assert (begin, end) == ((expected - 100) * 320, (expected + 100) * 320)
    assert find_anchor(torch.from_numpy(framewise_with_peak(centre)), 7) == (begin, end)


def test_find_anchor_first_maximum_and_short_clips():
    framewise = np.zeros((1001, 1), np.float32)
    framewise[[300, 600], 0] = 1.0  # scores tie at 1/201 for centres 200..400 and 500..700
    assert find_anchor(framewise, 0) == (100 * 320, 300 * 320)
    assert find_anchor(np.ones((201, 1), np.float32), 0) == (0, 64000)
    with pytest.raises(ValueError, match="shorter than one"):
        find_anchor(np.ones((200, 1), np.float32), 0)


def test_energy_anchor_picks_the_loudest_window_first():
    x = np.full(320000, 0.01, np.float32)
    x[96_000:160_000] = 0.5
    x[250_000:260_000] = 0.6
    assert energy_anchor(x) == (96_000, 160_000)
    tied = np.zeros(200_000, np.float32)
    tied[[10_000, 150_000]] = 1.0
    assert energy_anchor(tied) == (0, 64000)
    assert energy_anchor(np.ones(1000, np.float32)) == (0, 64000)


def test_random_anchor_is_uniform_and_reproducible():
    starts = [random_anchor(100_000, np.random.default_rng(seed))[0] for seed in range(200)]
    assert min(starts) >= 0 and max(starts) <= 36_000 and len(set(starts)) > 150
    assert random_anchor(100_000, np.random.default_rng(5)) == random_anchor(
        100_000, np.random.default_rng(5)
    )
    begin, end = random_anchor(100_000, np.random.default_rng(1))
    assert end - begin == 64000
    assert random_anchor(64000, np.random.default_rng(1)) == (0, 64000)
