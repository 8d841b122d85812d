"""Fault suite (issue 15, defect 19, checkpoints): integer weights were cast to float silently, float
casts were not reported, and torch 2.6+'s refusal of a blocked module ("unsupported GLOBAL posix.system
whose module posix is blocked") fell back to torch's generic preamble instead of naming the global.

Checkpoints here are tiny: the real PANNs Cnn14 key list and shapes from ``reference/manifests``, every
tensor a broadcast view of one zero (a few kB).
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from harness.errors import CheckpointError
from harness.models import Cnn14, load_query_net

DTYPES = {"float32": torch.float32, "int64": torch.int64}


@pytest.fixture(scope="module")
def cnn14_state(reference_dir):
    """The Cnn14 state dict of the PANNs layout (zeros; derived constants left out: they are optional)."""
    manifest = json.loads((reference_dir / "manifests" / "panns_cnn14.json").read_text())
    return {e["key"]: torch.zeros((), dtype=DTYPES[e["dtype"]]).expand(e["shape"])
            for e in manifest["entries"] if e["kind"] != "derived_constant"}


def first_float_weight(state):
    return next(k for k, v in state.items() if v.dtype == torch.float32 and k.endswith("weight"))


def save(tmp_path, state, name="Cnn14_tiny.pth", **extra):
    path = tmp_path / name
    torch.save({"iteration": 0, "model": state, **extra}, path)
    return path


def test_tiny_checkpoint_loads(cnn14_state, tmp_path):
    assert isinstance(load_query_net(save(tmp_path, cnn14_state)), Cnn14)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_weights_are_refused(cnn14_state, tmp_path, dtype):
    key = first_float_weight(cnn14_state)
    state = dict(cnn14_state, **{key: torch.zeros((), dtype=dtype).expand(cnn14_state[key].shape)})
    with pytest.raises(CheckpointError, match="integer or bool dtype") as info:
        load_query_net(save(tmp_path, state))
    assert f"{key} (file {str(dtype)[6:]}, expected float32)" in str(info.value)


def test_float_casts_are_reported(cnn14_state, tmp_path, caplog):
    key = first_float_weight(cnn14_state)
    state = dict(cnn14_state, **{key: torch.zeros((), dtype=torch.float64).expand(cnn14_state[key].shape)})
    with caplog.at_level(logging.WARNING, logger="harness.models.checkpoints"):
        model = load_query_net(save(tmp_path, state))
    assert isinstance(model, Cnn14)
    assert any("1 tensor(s)" in r.getMessage() and f"{key} (float64 → float32)" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


class _Payload:
    """Unpickling this would run ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_blocked_module_payload_is_named(cnn14_state, tmp_path):
    marker = tmp_path / "payload-ran"
    path = save(tmp_path, cnn14_state, "evil.pth", x=_Payload(f"touch '{marker}'"))
    with pytest.raises(CheckpointError) as info:
        load_query_net(path)
    message = str(info.value)
    assert f"it references {os.system.__module__}.system" in message, message
    assert "Weights only load failed" not in message and "In PyTorch 2.6" not in message
    assert not marker.exists()
