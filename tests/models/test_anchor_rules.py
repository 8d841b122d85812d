"""Anchor-segment rules on synthetic inputs: SED box filter (upstream), energy and random (ours)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.anchors import anchor_scores, energy_anchor, find_anchor, random_anchor


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
    # frame 0 is repeated 100 times on the left, so it weighs 101/201 in the first score
    np.testing.assert_allclose(scores[:3], [101 / 201, 100 / 201, 99 / 201], rtol=1e-6)
    assert scores[101] == 0


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
