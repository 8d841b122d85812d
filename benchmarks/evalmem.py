"""Peak RSS of an eval in a fresh process: the probe shared by the ``eval_peak_rss`` benchmark
(``bench_eval.py``) and the slow test ``tests/benchmarks/test_eval_memory.py``.

A synthetic set (:func:`harness.datasets.synthetic.build_synthetic_set`) of ``n_items`` white-noise items
is evaluated with the mixture baseline (``run_eval`` defaults: batch 16, ``--jobs 1``) in a new Python
process, so that the peak of one size never mixes with another's. From the repository root::

    PYTHONPATH=. python3 benchmarks/evalmem.py 1000 20000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, resource, sys, time
from pathlib import Path
from harness.evaluate import EvalOptions, MixtureBaseline, run_eval

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return None

wd, out = Path(sys.argv[1]), Path(sys.argv[2])
before = rss_mb("VmRSS")
t = time.perf_counter()
run = run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=wd, out=out))
print(json.dumps({"items": run["items"]["fsd50k"]["rows"], "seconds": round(time.perf_counter() - t, 2),
                  "peak_rss_mb": rss_mb("VmHWM"), "rss_before_eval_mb": before, "rss_after_eval_mb": rss_mb("VmRSS"),
                  "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""
"""Run as ``python3 -c PROBE WORKDIR OUT``: prints one JSON line. ``peak_rss_mb`` is the process's peak
RSS, imports included: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's own
address space. Not ``ru_maxrss``: the probe starts by (v)fork + exec, and Linux keeps the peak of the
address space before the exec (the parent's) in the child's ``ru_maxrss``, so a 3-GB parent (a
benchmark run that has loaded a model) makes every probe report 3 GB; ``ru_maxrss_mb`` is kept for
comparison.
``rss_before_eval_mb`` is the RSS once harness, torch, pandas... are imported, before ``run_eval``;
``rss_after_eval_mb`` the RSS after it."""


def probe(workdir: Path, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Evaluate the fixed-length set in ``workdir`` into ``out`` in a fresh process (this checkout's
    ``harness``, one OpenMP thread, plus ``env``) and return the probe's JSON: ``items``, ``seconds`` (of
    ``run_eval``), ``peak_rss_mb``, ``rss_before_eval_mb``, ``rss_after_eval_mb``, ``ru_maxrss_mb``
    (see :data:`PROBE`).

    Raises:
        subprocess.CalledProcessError: the probe failed (its stderr is in the exception).
    """
    r = subprocess.run([sys.executable, "-c", PROBE, str(workdir), str(out)], cwd=REPO,
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})})
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(n_items: int, folder: Path, seconds: float = 0.25) -> dict[str, Any]:
    """Build a synthetic set of ``n_items`` items of ``seconds`` s under ``folder`` and :func:`probe` it."""
    from harness.datasets.synthetic import build_synthetic_set

    folder = Path(folder)
    build_synthetic_set(folder / "work", n_items, seconds=seconds)
    return probe(folder / "work", folder / "run")


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, sys.argv[1:] or ["1000", "20000"]):
            print(n, measure(n, Path(tmp) / str(n)), flush=True)
