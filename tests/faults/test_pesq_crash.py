"""Issue 15 #1: ``pesq`` 0.0.4 segfaults on long inputs (measured from ~119 s at 16 kHz), and the crash
took the whole eval down. A 200-s Voicebank-like utterance must be scored with a PESQ status instead,
keeping its other metrics; a crash of the C code must be an item status, never the end of the process.

The reproductions run the scorer in a subprocess: before the fix that subprocess dies with SIGSEGV
(rc -11 / 139) and the test fails instead of taking pytest down.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from harness import metrics as M

SR = 16000


def gated_noise(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A speech-like pair: noise bursts gated at 0.5 Hz (the content that crashed pesq from 119 s) and a
    noisy copy of it, float64 at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    gate = (np.sin(2 * np.pi * 0.5 * np.arange(n) / SR) > 0).astype(np.float64)
    ref = 0.1 * rng.standard_normal(n) * gate
    return ref, ref + 0.01 * rng.standard_normal(n)


def test_score_of_a_200_s_voicebank_item_survives_with_a_pesq_status():
    code = textwrap.dedent("""
        import json, numpy as np
        from harness.config import load_dataset_config
        from harness.scoring import score_batch
        from harness.audio import resample
        rng = np.random.default_rng(0)
        sr, n = 16000, 200 * 16000
        gate = (np.sin(2 * np.pi * 0.5 * np.arange(n) / sr) > 0)
        ref16 = 0.1 * rng.standard_normal(n) * gate
        cfg = load_dataset_config("voicebank-demand")
        ref = resample(ref16, sr, cfg["sample_rate"])
        est = (ref + np.float32(0.01) * rng.standard_normal(len(ref)).astype(np.float32)).astype(np.float32)
        mix = (ref + np.float32(0.1) * rng.standard_normal(len(ref)).astype(np.float32)).astype(np.float32)
        print(json.dumps(score_batch([ref], [est], [mix], cfg)[0]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the scorer died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    import json

    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["status"] == "pesq_too_long"
    assert math.isnan(row["pesq"])
    for c in ("sdr", "sdri", "si_sdr", "si_sdri", "ssnr"):  # the item keeps its other metrics
        assert math.isfinite(row[c]), c
    assert row["sdri"] > 15  # est has 10 dB less noise than mix: ~20 dB improvement


def test_pesq_too_long_is_decided_by_length_alone():
    ref, est = gated_noise(M.PESQ_MAX_SECONDS + 0.01)
    assert M.pesq_wb_status(ref, est, SR) == (pytest.approx(float("nan"), nan_ok=True), "pesq_too_long")


@pytest.mark.slow  # ~30 s: pesq computes for a while on 200 s before it segfaults
def test_a_crash_of_the_pesq_c_code_is_a_status_and_this_process_goes_on(monkeypatch):
    # Lift the length guard: the 200-s pair goes to the helper subprocess, where pesq segfaults.
    monkeypatch.setattr(M, "PESQ_MAX_SECONDS", float("inf"))
    ref, est = gated_noise(200.0)
    score, status = M.pesq_wb_status(ref, est, SR)
    assert status == "pesq_crashed" and math.isnan(score)
    # the next long pair gets a fresh helper and a real score
    ref, est = gated_noise(M.PESQ_INLINE_SECONDS + 1.0, seed=1)
    score, status = M.pesq_wb_status(ref, est, SR)
    assert status == "ok" and 1.0 < score < 4.7


def test_the_helper_subprocess_scores_bit_for_bit_like_the_pesq_package():
    import pesq

    ref, est = gated_noise(M.PESQ_INLINE_SECONDS + 1.0, seed=2)
    expected = float(pesq.pesq(SR, ref, est, "wb"))  # independent: the library, in this process
    assert M.pesq_wb_status(ref, est, SR) == (expected, "ok")


@pytest.mark.parametrize("jobs", ["1", "2"])  # scored in the eval process / in a loky worker; ~10 s each
def test_an_eval_with_a_200_s_voicebank_utterance_scores_it_with_a_pesq_status(tmp_path, jobs):
    """The campaign's case on a copy of the Voicebank layout: one test utterance made 200 s long (the
    real utterance repeated). Before the fix the eval died with SIGSEGV (rc -11) and wrote no row."""
    import shutil

    import pandas as pd
    import soundfile as sf

    from harness.config import REPO_ROOT

    root = tmp_path / "vb"
    shutil.copytree(REPO_ROOT / "datasets" / "demo" / "voicebank-demand", root)
    for sub in ("clean_testset_wav", "noisy_testset_wav"):
        path = root / sub / "p232_052.wav"
        x, sr = sf.read(path, dtype="int16")
        sf.write(path, np.tile(x, -(-200 * sr // len(x)))[: 200 * sr], sr, subtype="PCM_16")
    wd, out = tmp_path / "wd", tmp_path / "run"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=600)

    built = cli("build-mixtures", "voicebank-demand", "--root", root, "--workdir", wd, "--quiet")
    assert built.returncode == 0, built.stderr[-2000:]
    proc = cli("eval", "voicebank-demand", "--baseline", "mixture", "--workdir", wd, "--out", out, "--jobs", jobs, "--quiet")
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert len(items) == 3
    long = items.filter(like="p232_052", axis=0).iloc[0]
    assert long["status"] == "pesq_too_long" and np.isnan(long["pesq"])
    assert np.isfinite(long["sdr"]) and np.isfinite(long["ssnr"])
    assert (items.drop(long.name)["status"] == "ok").all()
