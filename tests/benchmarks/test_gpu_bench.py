"""benchmarks/gpu.py runs end to end on the CPU (``--device cpu --quick``), so it cannot rot before a GPU
is lent. No timing is asserted; the rows' shape and the float32 rows' self-consistency are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_quick_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    rows = result["rows"]
    forward = [r for r in rows if r["kind"] == "forward"]
    assert {(r["precision"], r["batch"]) for r in forward} == {(p, b) for p in ("float32", "tf32", "bf16")
                                                              for b in (1, 2)}
    assert all(r["items_per_s"] > 0 for r in rows if "items_per_s" in r)
    # float32 against itself is exact; on the CPU the TF32 flags change nothing; bf16 moves SDRi a little
    assert all(r["sdri_max_abs_diff_vs_float32_db"] == 0 for r in forward if r["precision"] != "bf16")
    (ev,) = [r for r in rows if r["kind"] == "eval"]
    assert ev["items"] == 2 and 0 <= ev["fidelity_max_rel_diff"] <= 1e-4  # the fast path's check ran
    (tr,) = [r for r in rows if r["kind"] == "train"]
    assert tr["batch"] == 2 and tr["steps_per_s"] > 0
