"""The fast inference path (harness.models.fast): same outputs as the plain module, checked at start-up.

Small ResUNet30 configurations with random weights and random BatchNorm statistics (the folding is only
tested when the BatchNorms are not the identity). Tolerance: the prepared model reassociates float32
sums (scaled conv weights, channels-last kernels), ≈ √n·2⁻²⁴ per layer of peak; over ~60 layers that is
≤ 1e-5 of peak (measured 2e-7 here); a wrong fold (a scale or shift applied to the wrong channel or
twice) moves the output by > 1e-2 of peak.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import UssBenchError
from harness.models import fast, separate, separate_batch
from harness.models.resunet import ResUNet30

SMALL = dict(channels=(4, 8, 8, 16, 16, 16), n_fft=384)


def _randomise_batchnorms(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity, which a broken
    fold would pass), in place; returns ``net`` in eval mode."""
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _model(seed: int = 0, condition_size: int = 527) -> ResUNet30:
    torch.manual_seed(seed)
    return _randomise_batchnorms(ResUNet30(condition_size, **SMALL))


def _inputs(batch: int = 3, length: int = 16000, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, 1, length, generator=g), torch.rand(batch, 527, generator=g)


def test_prepared_model_matches_the_plain_module():
    model = _model()
    x, c = _inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        ref = model(x, c)
        prepared = fast.prepare_for_inference(model)
        out = prepared(x, c)
        broadcast = prepared(x, c[:1])
        broadcast_ref = model(x, c[:1])
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert fast.relative_difference(out, ref) <= 1e-5
    assert fast.relative_difference(broadcast, broadcast_ref) <= 1e-5
    # the original is untouched: its own BatchNorms, no fused block, still the same outputs
    assert not hasattr(model, "fast_prepared") and isinstance(model.encoder_block1.conv_block1.bn2,
                                                              torch.nn.BatchNorm2d)
    assert prepared.condition_size == 527 and prepared.condition_type == "at_soft"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    mine = {t.data_ptr() for t in model.state_dict().values()}
    assert not mine & {t.data_ptr() for t in prepared.state_dict().values()}  # no storage shared


def test_folding_is_not_the_identity():
    """The test above can fail: leaving bn2 out of the fused block moves the output far beyond 1e-5."""
    model = _model()
    x, c = _inputs()
    with torch.inference_mode():
        prepared = fast.prepare_for_inference(model)
        ref = model(x, c)
        block = prepared.encoder_block2.conv_block1
        block.shift2.zero_()
        assert fast.relative_difference(prepared(x, c), ref) > 1e-3


def test_relative_difference_hand_worked():
    ref = torch.tensor([1.0, -4.0, 2.0])
    assert fast.relative_difference(ref + torch.tensor([0.0, 0.0, 0.5]), ref) == 0.5 / 4  # exact in float32
    assert fast.relative_difference(torch.zeros(2), torch.zeros(2)) == 0.0


def test_checked_forward_records_the_figure_and_caches(monkeypatch):
    model = _model()
    x, c = _inputs()
    calls = []
    real = fast.prepare_for_inference

    def counting(m):
        calls.append(1)
        return real(m)

    monkeypatch.setattr(fast, "prepare_for_inference", counting)
    first = fast.checked_forward(model, x, c)
    second = fast.checked_forward(model, x, c)
    assert len(calls) == 1 and torch.equal(first, second)
    report = model.inference_report
    assert report["fast_path"] is True and 0 <= report["fidelity_max_rel_diff"] <= 1e-5
    assert report["fidelity_limit"] == fast.FIDELITY_LIMIT and report["memory_format"] == "channels_last"
    with torch.no_grad():  # new weights (a training step): prepared and checked again
        model.encoder_block1.conv_block1.conv1.weight.mul_(1.01)
    fast.checked_forward(model, x, c)
    assert len(calls) == 2


def test_checked_forward_refuses_a_broken_preparation(monkeypatch):
    """A preparation that mis-folds one BatchNorm (scale applied twice) is caught on the first batch."""
    model = _model()
    x, c = _inputs()
    real = fast.prepare_for_inference

    def broken(m):
        prepared = real(m)
        w = prepared.decoder_block3.conv_block2.conv1_weight
        scale, _ = fast._bn_affine(m.decoder_block3.conv_block2.bn2)
        w.mul_(scale[:, None, None, None])
        return prepared

    monkeypatch.setattr(fast, "prepare_for_inference", broken)
    with pytest.raises(fast.FastPathError, match="differs from the plain float32 model") as info:
        separate_batch(model, x[:, 0].numpy(), c.numpy(), batch_size=2)
    assert isinstance(info.value, UssBenchError)  # the CLI shows one line, exit 2
    assert model.inference_report["fidelity_max_rel_diff"] > fast.FIDELITY_LIMIT
    assert model not in fast._CACHE  # never used after the refusal


def test_separate_batch_fast_equals_plain(monkeypatch):
    model = _model(seed=3)
    x, c = _inputs(batch=5, length=64000)
    fast_out = separate_batch(model, x[:, 0].numpy(), c.numpy(), batch_size=2)
    monkeypatch.setenv(fast.FAST_ENV, "0")
    plain_out = separate_batch(model, x[:, 0].numpy(), c.numpy(), batch_size=2)
    assert model.inference_report == {"fast_path": False, "reason": f"{fast.FAST_ENV}=0"}
    peak = np.abs(plain_out).max()
    assert np.abs(fast_out - plain_out).max() <= 1e-5 * peak
    # long-signal path too, with its (1, D) broadcast condition
    monkeypatch.delenv(fast.FAST_ENV)
    long = separate(model, x[:2, 0].reshape(-1).numpy()[:100000], c[0].numpy(), batch_size=2)
    assert long.shape == (100000,)


def test_checked_forward_keeps_training_mode_and_passes_other_modules_through():
    model = _model().train()
    x, c = _inputs(batch=2)
    fast.checked_forward(model, x, c)
    assert model.training

    class Stub(torch.nn.Module):
        def forward(self, mixture, condition):
            return mixture * 2

    assert torch.equal(fast.checked_forward(Stub(), x, c), x * 2)


def test_prepare_rejects_other_modules():
    with pytest.raises(TypeError, match="ResUNet30"):
        fast.prepare_for_inference(torch.nn.Linear(2, 2))


def test_tune_allocator_is_idempotent():
    first = fast.tune_allocator()
    assert fast.tune_allocator() is first
    if first["applied"]:
        assert first["mallopt"]["M_MMAP_MAX"] == 0
    else:
        assert first["reason"]


def test_choose_batch_size_times_candidates_and_records_the_choice():
    model = _model(seed=5)
    chosen = fast.choose_batch_size(model, candidates=(1, 2, 4), max_items=2, length=16000)
    timed = model.inference_report["batch_size"]
    assert chosen in (1, 2) and timed["mode"] == "auto" and timed["chosen"] == chosen
    assert set(timed["seconds_per_item"]) <= {"1", "2"}  # 4 > max_items: never tried
    assert model.inference_report["fast_path"] is True  # the first timed call prepared and checked it


def test_batch_size_option_is_checked_before_any_work():
    from harness.cli import _fixed_batch_size
    from harness.errors import ConfigError

    assert _fixed_batch_size("auto") == 16 and _fixed_batch_size("8") == 8
    for bad in ("0", "-3", "many", "2.5"):
        with pytest.raises(ConfigError, match="--batch-size must be auto or an integer"):
            _fixed_batch_size(bad)


def test_prepared_path_is_deterministic():
    """Same inputs, same batch size → bit-identical outputs: on the cached preparation and on a fresh one
    (what another process, or another --jobs, gets). The timing-based batch-size choice is not involved."""
    model = _model(seed=7)
    x, c = _inputs(batch=4, length=32000)
    first = separate_batch(model, x[:, 0].numpy(), c.numpy(), batch_size=2)
    again = separate_batch(model, x[:, 0].numpy(), c.numpy(), batch_size=2)
    fast._CACHE.pop(model)
    fresh = separate_batch(model, x[:, 0].numpy(), c.numpy(), batch_size=2)
    assert np.array_equal(first, again) and np.array_equal(first, fresh)


def test_query_net_fast_path_matches_the_plain_cnn14():
    """Cnn14's conv → BatchNorm pairs folded (embed and embed-queries run this): same outputs."""
    from harness.models import Cnn14, embed

    torch.manual_seed(11)
    net = _randomise_batchnorms(Cnn14())
    x = 0.1 * torch.randn(2, 64000, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = net(x)
        out = fast.prepare_query_net(net)(x)
    for key in ("clipwise_output", "embedding"):
        assert fast.relative_difference(out[key], ref[key]) <= 1e-5, key
    vec = embed(net, x.reshape(-1).numpy(), "emb")  # two tiled chunks through checked_forward
    assert net.inference_report["fast_path"] and net.inference_report["fidelity_max_rel_diff"] <= 1e-5
    np.testing.assert_allclose(vec, ref["embedding"].mean(0).numpy(), rtol=0, atol=1e-5 * float(ref["embedding"].abs().max()))


def test_cli_sets_the_openmp_wait_policy_before_torch_loads():
    """``main`` sets OMP_WAIT_POLICY=PASSIVE only while torch is not loaded, and never over the user's value."""
    import os
    import subprocess
    import sys

    code = ("import os, sys\nfrom harness import cli\nassert 'torch' not in sys.modules\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\nprint(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "ACTIVE"


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(fast.BACKEND_ENV, "tensorrt")
    with pytest.raises(fast.FastPathError, match="USS_BENCH_BACKEND='tensorrt' is not a backend"):
        fast.checked_forward(_model(), torch.zeros(1, 1, 16000), torch.zeros(1, 527))


def test_openvino_backend_matches_the_plain_module_for_any_shape(monkeypatch):
    """USS_BENCH_BACKEND=openvino: the U-Net core runs in OpenVINO (float32); the output stays within the
    fast path's reasoning (≤ 1e-5 of peak, see the module docstring) for the first batch and for other
    batch sizes, lengths and a broadcast (1, D) condition (one compiled model with dynamic shapes)."""
    pytest.importorskip("openvino")
    monkeypatch.setenv(fast.BACKEND_ENV, "openvino")
    model = _model(3)
    g = torch.Generator().manual_seed(4)
    x, c = 0.1 * torch.randn(3, 1, 32000, generator=g), torch.rand(3, 527, generator=g)
    with torch.inference_mode():
        cases = [(x, c), (x[:2, :, :20000], c[:1]), (x[:1], c[:1])]
        refs = [model(a, b) for a, b in cases]
    for (a, b), ref in zip(cases, refs, strict=True):
        out = fast.checked_forward(model, a, b)
        assert out.shape == ref.shape
        assert fast.relative_difference(out, ref) <= 1e-5
    assert model.inference_report["backend"] == "openvino"
    assert model.inference_report["fidelity_max_rel_diff"] <= 1e-5
    prepared = fast._CACHE[model][1]
    assert isinstance(prepared.mask_logits, fast.OpenVINOCore) and prepared.mask_logits._compiled is not None
