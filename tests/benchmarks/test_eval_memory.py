"""Peak memory of eval does not grow with the number of items (issue 5). Slow: run with --slow.

Two synthetic sets (:func:`harness.datasets.synthetic.build_synthetic_set`) of 1,000 and 10,000
quarter-second items (the larger one is 640 MB of float32 audio) are evaluated in fresh processes with
the mixture baseline; the peak RSS of the eval must differ by far less than the audio. A run that kept
the audio (or the estimates) of every item would grow by hundreds of MB. Benchmark larger sets the
same way, from the repository root: ``PYTHONPATH=. python3 tests/benchmarks/test_eval_memory.py 1000 20000``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.config import REPO_ROOT

PROBE = """
import json, resource, sys, time
from pathlib import Path
from harness.evaluate import EvalOptions, MixtureBaseline, run_eval
wd, out = Path(sys.argv[1]), Path(sys.argv[2])
t = time.perf_counter()
run = run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=wd, out=out))
print(json.dumps({"items": run["items"]["fsd50k"]["rows"], "seconds": round(time.perf_counter() - t, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def measure(n_items: int, folder, seconds: float = 0.25) -> dict:
    """Build a synthetic set of ``n_items`` under ``folder`` and evaluate it in a fresh process."""
    from harness.datasets.synthetic import build_synthetic_set

    build_synthetic_set(folder / "work", n_items, seconds=seconds)
    r = subprocess.run([sys.executable, "-c", PROBE, str(folder / "work"), str(folder / "run")], cwd=REPO_ROOT,
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_items(tmp_path):
    small = measure(1000, tmp_path / "small")
    large = measure(10000, tmp_path / "large")
    assert small["items"] == 1000 and large["items"] == 10000
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"\n1,000 items: {small}\n10,000 items: {large}\ngrowth {growth:.1f} MB (audio: 640 MB)")
    assert growth < 64, (small, large)


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, sys.argv[1:] or ["1000", "20000"]):
            print(n, measure(n, Path(tmp) / str(n)))
