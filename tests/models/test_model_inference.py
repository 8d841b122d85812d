"""Chunking and batching rules of ``separate`` / ``separate_batch`` / ``embed`` (SEMANTICS §7), on stub models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.models import embed, resolve_device, separate, separate_batch

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)


class RecordingSeparator(nn.Module):
    """Returns ``2·mixture + condition[:, 0]`` and records every call's inputs."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.calls: list[tuple[np.ndarray, np.ndarray, bool]] = []

    def forward(self, mixture, condition):
        self.calls.append((mixture.numpy().copy(), condition.numpy().copy(), self.training))
        return self.scale * mixture + condition[:, :1, None]


class RecordingQueryNet(nn.Module):
    """Outputs each chunk's mean (as 'clipwise_output') and its max (as 'embedding'); records the chunks."""

    def __init__(self):
        super().__init__()
        self.chunks: list[np.ndarray] = []

    def forward(self, waveform):
        self.chunks.extend(waveform.numpy().copy())
        return {
            "clipwise_output": waveform.mean(dim=1, keepdim=True).repeat(1, 3),
            "embedding": waveform.amax(dim=1, keepdim=True).repeat(1, 5),
        }


@pytest.mark.parametrize("length", [12345, 64000, 64000 * 3 + 1000])
def test_separate_cuts_pads_batches_and_truncates(length):
    rng = np.random.default_rng(0)
    waveform = rng.uniform(-0.5, 0.5, length).astype(np.float32)
    condition = np.array([0.25, 0.5, 0.75], dtype=np.float32)
    separator = RecordingSeparator().train()
    output = separate(separator, waveform, condition, batch_size=2)

    assert output.dtype == np.float32 and output.shape == (length,)
    np.testing.assert_allclose(output, 2 * waveform + 0.25, rtol=1e-6)  # 2 float32 ops: ≤ 2·2⁻²⁴ relative
    num_chunks = -(-length // 64000)
    assert [c[0].shape for c in separator.calls] == [
        (min(2, num_chunks - i), 1, 64000) for i in range(0, num_chunks, 2)
    ]
    assert all(c[1].shape == (1, 3) for c in separator.calls)  # one condition, broadcast
    assert not any(c[2] for c in separator.calls) and separator.training  # eval inside, restored after
    chunks = np.concatenate([c[0][:, 0] for c in separator.calls])
    np.testing.assert_array_equal(chunks.reshape(-1)[:length], waveform)
    assert not chunks.reshape(-1)[length:].any()  # the last chunk is zero-padded


def test_separate_batch_slices_per_item_conditions():
    chunks = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    conditions = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    separator = RecordingSeparator()
    output = separate_batch(separator, chunks, conditions, batch_size=2)
    np.testing.assert_array_equal(output, 2 * chunks + np.arange(5)[:, None])
    assert [c[1][:, 0].tolist() for c in separator.calls] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match=r"conditions must be \(5, D\) or \(1, D\)"):
        separate_batch(separator, chunks, conditions[:2])


def test_embed_tiles_chunks_and_averages():
    waveform = np.concatenate([np.full(64000, 0.1), np.full(16000, 0.3)]).astype(np.float32)
    net = RecordingQueryNet()
    condition = embed(net, waveform, "at_soft", batch_size=1)
    assert len(net.chunks) == 2 and all(len(c) == 64000 for c in net.chunks)
    np.testing.assert_array_equal(net.chunks[1], np.full(64000, 0.3, np.float32))  # tiled, not zero-padded
    np.testing.assert_allclose(condition, [0.2] * 3, rtol=1e-6)  # mean of 2 float32 values: one rounding
    assert embed(net, waveform, "emb").shape == (5,)
    with pytest.raises(ValueError, match="condition_type"):
        embed(net, waveform, "embedding")


def test_embed_removes_silent_frames():
    frame = 3200
    waveform = np.zeros(frame * 10 + 100, np.float32)
    waveform[2 * frame : 3 * frame] = 0.5
    waveform[7 * frame + 5] = -0.03  # a single sample above 0.02 keeps its whole frame
    waveform[9 * frame + 10] = 0.01
    waveform[-50:] = 1.0  # trailing partial frame: dropped
    net = RecordingQueryNet()
    embed(net, waveform, "emb", remove_silence=True)
    kept = np.concatenate([waveform[2 * frame : 3 * frame], waveform[7 * frame : 8 * frame]])
    np.testing.assert_array_equal(net.chunks[0], np.tile(kept, 10)[:64000])
    with pytest.raises(ValueError, match="silent"):
        embed(net, np.full(64000, 0.01, np.float32), "emb", remove_silence=True)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
