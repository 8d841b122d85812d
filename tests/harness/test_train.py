"""Training (issue 4): the recipe's pieces against hand-computed values, bit-identical resume, and DDP.

The runs use a very narrow ResUNet30 (channels 2, n_fft 384) on the demo corpora's train splits, so
that a step takes about a second on CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from harness.config import REPO_ROOT
from harness.errors import CheckpointError, ConfigError
from harness.train import (
    BalancedSampler,
    TrainConfig,
    mix_segments,
    resolve_source_roots,
    train,
    warm_up_scale,
)

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

TINY = """
name = "tiny"
[model]
channels = [2, 2, 2, 2, 2, 2]
n_fft = 384
[query]
net = "{net}"
condition = "{condition}"
[data]
sources = [
  {{ dataset = "audioset", split = "train", root = "datasets/demo/audioset" }},
  {{ dataset = "fsdkaggle2018", split = "train", root = "datasets/demo/fsdkaggle2018" }},
]
anchor = "random"
[optim]
batch_size = 3
warm_up_steps = 1
[run]
steps = 4
checkpoint_every = 2
validate_every = 2
val_items = 3
log_every = 1
"""


def tiny_config(tmp_path: Path, net: str = "logmel_stats", condition: str = "emb") -> TrainConfig:
    path = tmp_path / f"tiny_{net}.toml"
    path.write_text(TINY.format(net=net, condition=condition))
    return TrainConfig.from_toml(path)


def test_warm_up_is_the_upstream_step_schedule():
    # constant_warm_up: 0.001, 0.01, 0.1 for one warm-up period each, then 1.
    got = [warm_up_scale(s, 10, 1_000_000) for s in (0, 9, 10, 19, 20, 29, 30, 10_000)]
    assert got == [0.001, 0.001, 0.01, 0.01, 0.1, 0.1, 1.0, 1.0]


def test_balanced_sampler_draws_distinct_classes_and_cycles_each_queue():
    per_class = {0: [0, 1, 2], 1: [3], 2: [4, 5], 3: [6]}
    sampler = BalancedSampler(per_class, batch_size=3, seed=7)
    seen = {k: [] for k in per_class}
    for _ in range(40):
        batch = sampler.next_batch()
        classes = [k for _, k in batch]
        assert len(set(classes)) == 3
        for clip, k in batch:
            assert clip in per_class[k]
            seen[k].append(clip)
    # Within every full pass of a class's queue each clip appears exactly once.
    clips = seen[0]
    for start in range(0, len(clips) - len(clips) % 3, 3):
        assert sorted(clips[start:start + 3]) == [0, 1, 2]
    # The state round-trips: a restored sampler continues identically.
    state = json.loads(json.dumps(sampler.state()))
    other = BalancedSampler(per_class, batch_size=3, seed=7)
    other.load_state(state)
    assert [sampler.next_batch() for _ in range(5)] == [other.next_batch() for _ in range(5)]


def test_sampler_refuses_a_batch_larger_than_the_classes():
    with pytest.raises(ConfigError, match="only 2 classes"):
        BalancedSampler({0: [0], 1: [1]}, batch_size=3, seed=0)


def test_mixing_matches_energy_and_skips_overlapping_tags():
    rng = np.random.default_rng(0)
    seg = rng.standard_normal((3, 1000)).astype(np.float32) * np.array([[0.02], [0.004], [0.06]], np.float32)
    tags = [{"Dog"}, {"Dog", "Bark"}, {"Rain"}]
    mix, tgt, counts = mix_segments(seg, tags, mix_num=2, exclude_overlapping_tags=True)
    np.testing.assert_array_equal(tgt, seg)  # no mixture reaches a peak above 1 here
    # Item 0 shares "Dog" with item 1, so its interferer is item 2, scaled to item 0's energy.
    interferer = mix[0] - seg[0]
    # float32 mixing: the interferer is g·seg (one rounding) recovered as mix − seg (one more, relative to
    # |mix| ≤ 5|seg|): ≤ ~6·2⁻²⁴ ≈ 4e-7 per sample, ~1e-6 on an energy; rtol 1e-5 leaves 10×
    np.testing.assert_allclose(np.sum(interferer.astype(np.float64) ** 2), np.sum(seg[0].astype(np.float64) ** 2),
                               rtol=1e-5)
    gain = np.sqrt(np.sum(seg[0].astype(np.float64) ** 2) / np.sum(seg[2].astype(np.float64) ** 2))
    np.testing.assert_allclose(interferer, np.float32(gain) * seg[2], rtol=1e-5, atol=1e-8)
    assert list(counts) == [2, 2, 2]
    # Without exclusion item 0 takes its neighbour, item 1.
    mix, _, _ = mix_segments(seg, tags, mix_num=2, exclude_overlapping_tags=False)
    gain = min(max(np.sqrt(np.sum(seg[0].astype(np.float64) ** 2) / np.sum(seg[1].astype(np.float64) ** 2)), 0.02), 50)
    np.testing.assert_allclose(mix[0], seg[0] + np.float32(gain) * seg[1], rtol=1e-6)
    # Loud mixtures are scaled down with their targets; the target stays the exact component.
    loud = seg * 20
    mix, tgt, _ = mix_segments(loud, [{"a"}, {"b"}, {"c"}], 2, True)
    assert np.max(np.abs(mix)) <= 1.0 + 1e-6
    assert np.max(np.abs(tgt)) < np.max(np.abs(loud))


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[query]\nnet = "cnn14"\ncondition = "onehot"\n')
    with pytest.raises(ConfigError, match="does not fit net"):
        TrainConfig.from_toml(bad)
    bad.write_text("[optim]\nlr = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'lr'"):
        TrainConfig.from_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_toml(tmp_path / "nope.toml")
    cfg = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match="DATASET=DIR"):
        resolve_source_roots(cfg, ["/somewhere"])


def test_shipped_configs_parse():
    for name in ("resunet30_at_soft", "resunet30_emb", "demo_tiny"):
        cfg = TrainConfig.from_toml(REPO_ROOT / "models" / f"{name}.toml")
        assert cfg.name == name
    paper = TrainConfig.from_toml(REPO_ROOT / "models" / "resunet30_at_soft.toml")
    assert (paper.batch_size, paper.learning_rate, paper.mix_num, paper.channels) == (16, 1e-3, 2,
                                                                                      (32, 64, 128, 256, 384, 384))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_resume_is_bit_identical(tmp_path):
    """2K steps in one go == K steps, then --resume to 2K (weights, optimizer state, losses)."""
    cfg = tiny_config(tmp_path)
    roots = resolve_source_roots(cfg, [])
    a = train(cfg, roots, tmp_path / "a", progress=False)
    train(cfg, roots, tmp_path / "b", steps=2, progress=False)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(cfg, roots, tmp_path / "b", steps=4, progress=False)
    b = train(cfg, roots, tmp_path / "b", steps=4, resume=True, progress=False)
    assert a.final_loss == b.final_loss
    for name in ("step_00000004.safetensors", "step_00000004.state.safetensors"):
        ta, tb = _tensors(tmp_path / "a" / "checkpoints" / name), _tensors(tmp_path / "b" / "checkpoints" / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), k
    rows = [(tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("a", "b")]
    strip = [[",".join(line.split(",")[:4]) for line in r] for r in rows]  # all but the wall-clock column
    assert strip[0] == strip[1] and len(strip[0]) == 5
    # The model file is a uss-bench checkpoint that eval loads, with the recipe recorded.
    from harness.models import load_separator, load_separator_and_query_net
    from harness.models.querynets import LogMelStats

    sep = load_separator(a.model)
    assert sep.channels == (2, 2, 2, 2, 2, 2) and sep.condition_size == 128 and sep.n_fft == 384
    assert isinstance(load_separator_and_query_net(a.model)[1], LogMelStats)
    with safe_open(str(a.model), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["training"]["step"] == 4


def test_resume_refuses_a_checkpoint_of_another_shape(tmp_path):
    cfg = tiny_config(tmp_path)
    roots = resolve_source_roots(cfg, [])
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(cfg, roots, tmp_path / "empty", steps=2, resume=True, progress=False)
    train(cfg, roots, tmp_path / "run", steps=2, progress=False)
    cfg.channels = (3, 3, 3, 3, 3, 3)
    with pytest.raises(CheckpointError, match="does not fit"):
        train(cfg, roots, tmp_path / "run", steps=4, resume=True, progress=False)


def test_onehot_condition_trains_and_embeds_labels(tmp_path):
    cfg = tiny_config(tmp_path, net="onehot", condition="onehot")
    roots = resolve_source_roots(cfg, [])
    res = train(cfg, roots, tmp_path / "run", steps=1, progress=False)
    from harness.models import load_separator_and_query_net
    from harness.models.querynets import OneHotQuery

    sep, qn = load_separator_and_query_net(res.model)
    assert isinstance(qn, OneHotQuery) and sep.condition_type == "onehot"
    assert sep.condition_size == len(qn.vocabulary) and "Applause" in qn.vocabulary
    vec = qn.condition(["Applause"]).numpy()
    assert vec.sum() == 1 and vec[qn.vocabulary.index("Applause")] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_with_gloo_train_one_model(tmp_path):
    """torchrun, 2 CPU ranks on gloo: gradients are averaged, so both ranks end with identical weights."""
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY.format(net="logmel_stats", condition="emb"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "harness", "train", "--config", str(cfg_path),
           "--out", str(tmp_path / "ddp"), "--steps", "2", "--device", "cpu", "-q"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["parameter_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    with safe_open(str(tmp_path / "ddp" / "checkpoints" / "step_00000002.state.safetensors"), framework="pt") as f:
        samplers = json.loads(f.metadata()["state"])["samplers"]
    assert [s["rank"] for s in samplers] == [0, 1] and samplers[0]["rng"] != samplers[1]["rng"]
