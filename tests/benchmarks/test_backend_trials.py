"""benchmarks/backend_trials.py runs end to end on a tiny model (``--quick``), so the trial of the
TorchScript backends cannot rot. No timing is asserted; each candidate's fidelity figure is checked
against the fast path's limit (TorchScript runs the same float32 kernels: far inside it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "backend_trials.py"


def test_backend_trials_quick():
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--batch", "1", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["fidelity"]) == {"default", "jit_freeze", "jit_optimize_for_inference"}
    assert all(0 <= v <= 1e-4 for v in result["fidelity"].values()), result["fidelity"]
    assert all(len(r) == 1 and r[0] > 0 for r in result["runs_s"].values())
