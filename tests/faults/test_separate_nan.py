"""Issue 15 #12: ``separate`` wrote an all-NaN WAV and exited 0 from a checkpoint with NaN weights. Non-finite
weights or outputs are an error now (exit 2, nothing written)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from harness.config import REPO_ROOT

DEMO = REPO_ROOT / "models" / "demo" / "demo_tiny.safetensors"
AUDIO = "voicebank-demand/noisy_testset_wav/p232_036.wav"


@pytest.fixture
def nan_checkpoint(tmp_path):
    """The demo checkpoint with its separator's output convolution set to NaN (what a diverged run saves)."""
    with safe_open(str(DEMO), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["separator.after_conv.weight"] = tensors["separator.after_conv.weight"].fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("mode", [["--class-ids", "0"], ["--query-audio", AUDIO], []])
def test_nan_weights_write_no_wav(nan_checkpoint, dev_data, tmp_path, mode, cli):
    mode = [str(dev_data / m) if m == AUDIO else m for m in mode]
    out = tmp_path / "out"
    r = cli("separate", dev_data / AUDIO, "--checkpoint", nan_checkpoint, "--out", out, "--device", "cpu", *mode)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "non-finite" in r.stderr and "nan.safetensors" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.rglob("*.wav"))


def test_non_finite_output_is_refused_even_from_finite_weights(dev_data, tmp_path, monkeypatch, run_cli, capsys):
    import harness.ontology as onto

    def nan_estimate(separator, query_net, waveform, clips, batch_size=8):
        est = np.zeros_like(waveform)
        est[100] = np.inf
        return est

    monkeypatch.setattr(onto, "separate_by_query_audio", nan_estimate)
    out = tmp_path / "out"
    rc = run_cli(["separate", dev_data / AUDIO, "--checkpoint", DEMO, "--out", out, "--device", "cpu",
                  "--query-audio", dev_data / AUDIO])
    assert rc == 2 and "1 non-finite" in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*.wav"))
