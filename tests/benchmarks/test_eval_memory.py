"""Peak memory of eval does not grow with the number of items (issue 5). Slow: run with --slow.

Two synthetic sets (:func:`harness.datasets.synthetic.build_synthetic_set`) of 1,000 and 10,000
quarter-second items (the larger one is 640 MB of float32 audio) are evaluated in fresh processes with
the mixture baseline; the peak RSS of the eval must differ by far less than the audio. A run that kept
the audio (or the estimates) of every item would grow by hundreds of MB. The probe lives in
``benchmarks/evalmem.py`` (shared with the ``eval_peak_rss`` benchmark); benchmark larger sets from the
repository root with ``PYTHONPATH=. python3 benchmarks/evalmem.py 1000 20000``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def evalmem(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import evalmem as module

    return module


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_items(evalmem, tmp_path):
    small = evalmem.measure(1000, tmp_path / "small")
    large = evalmem.measure(10000, tmp_path / "large")
    assert small["items"] == 1000 and large["items"] == 10000
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"\n1,000 items: {small}\n10,000 items: {large}\ngrowth {growth:.1f} MB (audio: 640 MB)")
    assert growth < 64, (small, large)
