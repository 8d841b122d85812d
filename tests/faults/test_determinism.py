"""Issue 15 #14: metric values must not depend on torch's thread count nor on the batch size.

What is exact (asserted bit for bit here): the scorer (every metric of an item is computed from that
item alone, with NumPy reductions whose order depends on the length only, and the soxr resampler,
which runs single-threaded), and the oracle-IRM baseline (per-frame FFTs, element-wise mask, frame-order
overlap-add), whatever ``torch.set_num_threads``, the batch or the scoring slice. What is not: the
estimates of a checkpoint system, whose float32 convolutions torch splits by threads and batch; their
``batch_size`` and torch thread count are recorded in ``parts/<dataset>/meta.json`` and a resume under
other settings is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from harness.config import load_dataset_config
from harness.errors import UssBenchError
from harness.oracle import oracle_irm
from harness.scoring import METRIC_COLUMNS, score_batch


def items(dataset: str, n: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    length = 64000 if dataset in ("fsd50k", "audioset") else 32000 * 3
    refs = (0.1 * rng.standard_normal((n, length))).astype(np.float32)
    ests = (refs + 0.03 * rng.standard_normal((n, length))).astype(np.float32)
    mixes = (refs + 0.1 * rng.standard_normal((n, length))).astype(np.float32)
    return refs, ests, mixes


def bits(rows) -> list[tuple]:
    return [(r["status"], *(np.float64(r[c]).tobytes() for c in METRIC_COLUMNS)) for r in rows]


def scored(dataset: str, batch: int) -> list[tuple]:
    refs, ests, mixes = items(dataset)
    cfg = load_dataset_config(dataset)
    out = []
    for i in range(0, len(refs), batch):
        out += score_batch(refs[i:i + batch], ests[i:i + batch], mixes[i:i + batch], cfg)
    return bits(out)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dataset", ["fsd50k", "musdb18", "voicebank-demand"])
def test_scores_are_bit_identical_for_any_thread_count_and_batch(dataset, threads):
    threads(1)
    one = scored(dataset, 4)
    assert scored(dataset, 16) == one and scored(dataset, 1) == one
    threads(2)
    assert scored(dataset, 4) == one and scored(dataset, 16) == one


def test_scores_are_bit_identical_across_processes_with_other_thread_pools():
    # OpenMP/BLAS pools are sized at process start: compare a 1-thread and a 2-thread process
    code = textwrap.dedent("""
        import json, sys, torch
        sys.path.insert(0, sys.argv[1])
        torch.set_num_threads(int(sys.argv[2]))
        from test_determinism import scored
        print(json.dumps([[x if isinstance(x, str) else x.hex() for x in row]
                          for d in ("fsd50k", "voicebank-demand") for row in scored(d, 16)]))
    """)
    from pathlib import Path

    outs = []
    for n in ("1", "2"):
        env = {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}
        proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), n], capture_output=True,
                              text=True, timeout=300, env={**__import__("os").environ, **env})
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]


def test_oracle_irm_is_bit_identical_for_any_thread_count_and_batch(threads):
    refs, _, mixes = items("fsd50k", n=8, seed=1)
    threads(1)
    one = oracle_irm(mixes, refs)
    threads(2)
    assert np.array_equal(oracle_irm(mixes, refs), one)
    assert np.array_equal(np.concatenate([oracle_irm(mixes[i:i + 4], refs[i:i + 4]) for i in (0, 4)]), one)
    assert np.array_equal(oracle_irm(mixes[3], refs[3]), one[3])


def test_a_resume_under_other_numerics_settings_is_refused(tmp_path, threads):
    from harness.config import REPO_ROOT
    from harness.evaluate import EvalOptions, MixtureBaseline, run_eval
    from harness.mixtures import BuildOptions, build_mixtures

    build_mixtures(REPO_ROOT / "datasets" / "demo" / "fsd50k", tmp_path / "wd", BuildOptions("fsd50k"))
    out = tmp_path / "run"
    opts = dict(datasets=["fsd50k"], workdir=tmp_path / "wd", out=out, limit=8)
    threads(1)
    run_eval(MixtureBaseline(), EvalOptions(**opts, batch_size=4))
    meta = json.loads((out / "parts" / "fsd50k" / "meta.json").read_text())
    assert meta["numerics"] == {"batch_size": 4, "torch_threads": 1}
    with pytest.raises(UssBenchError, match="batch_size"):
        run_eval(MixtureBaseline(), EvalOptions(**opts, batch_size=16, resume=True))
    threads(2)
    with pytest.raises(UssBenchError, match="torch_threads"):
        run_eval(MixtureBaseline(), EvalOptions(**opts, batch_size=4, resume=True))
    threads(1)
    run_eval(MixtureBaseline(), EvalOptions(**opts, batch_size=4, resume=True))  # same settings: resumes
