"""Checkpoint loading: key layouts, one error listing every key problem, unsafe files, export round trip.

Most tests use tiny synthetic checkpoints: the real key lists and shapes from the manifests, every tensor
a broadcast view of one zero (``torch.zeros(()).expand(shape)``), so a "0.8 GB" layout takes a few kB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file

from harness.errors import CheckpointError
from harness.models import (
    Cnn14,
    Cnn14DecisionLevelMax,
    ResUNet30,
    export_checkpoint,
    file_sha256,
    load_checkpoint_state,
    load_query_net,
    load_sed,
    load_separator,
)
from harness.models.checkpoints import upstream_key

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

DTYPES = {"float32": torch.float32, "int64": torch.int64}
UNUSED = re.compile(r"ss_model\.(base\.decoder_block[1-6]\.bn2\.\w+|film\.decoder_block[1-6]->beta2\.\w+)")


def tiny_state_dict(manifest: dict, generator) -> dict[str, torch.Tensor]:
    """The manifest's keys and shapes as zero views; derived constants only where small, with their true values."""
    state = {}
    for entry in manifest["entries"]:
        if entry["kind"] != "derived_constant":
            state[entry["key"]] = torch.zeros((), dtype=DTYPES[entry["dtype"]]).expand(entry["shape"])
        elif entry["numel"] < 1_000_000:
            state[entry["key"]] = generator.fill_derived(entry)
    return state


@pytest.fixture
def tiny_lightning(manifest, formula_generator, tmp_path):
    """``(path, state_dict)`` of a synthetic at_soft Lightning checkpoint; ``save(sd)`` writes a variant."""
    state = tiny_state_dict(manifest("at_soft"), formula_generator)

    def save(sd: dict, name: str = "tiny.ckpt", **extra) -> str:
        path = tmp_path / name
        torch.save({"epoch": 0, "state_dict": sd, **extra}, path)
        return path

    return save, state


@pytest.mark.parametrize("name", ["at_soft", "emb"])
def test_lightning_layout_is_ours_plus_derived_and_unused(name, manifest):
    entries = {e["key"]: e for e in manifest(name)["entries"]}
    size = {"at_soft": 527, "emb": 2048}[name]
    expected = {}
    for component, model in (
        ("separator", ResUNet30(size)),
        ("query_net", Cnn14()),
        ("sed", Cnn14DecisionLevelMax()),
    ):
        expected.update({upstream_key(component, k): list(v.shape) for k, v in model.state_dict().items()})
    extra = set(entries) - set(expected)
    assert set(expected) <= set(entries)
    assert {k: entries[k]["shape"] for k in expected} == expected
    derived = {k for k in extra if entries[k]["kind"] == "derived_constant"}
    assert len(derived) == 12
    assert len(extra - derived) == 42 and all(UNUSED.fullmatch(k) for k in extra - derived)


@pytest.mark.parametrize("name", ["cnn14", "dlm"])
def test_panns_layout_is_ours_plus_derived(name, manifest):
    entries = [e for e in manifest(name)["entries"] if e["kind"] != "derived_constant"]
    model = Cnn14() if name == "cnn14" else Cnn14DecisionLevelMax()
    assert {e["key"]: e["shape"] for e in entries} == {
        k: list(v.shape) for k, v in model.state_dict().items()
    }


def test_tiny_lightning_loads_every_component(tiny_lightning):
    save, state = tiny_lightning
    path = save(state)
    separator = load_separator(path)
    assert (separator.condition_size, separator.condition_type, separator.training) == (527, "at_soft", False)
    assert not any(p.detach().any() for p in separator.parameters())
    assert isinstance(load_query_net(path), Cnn14)
    assert isinstance(load_sed(path), Cnn14DecisionLevelMax)
    assert set(load_checkpoint_state(path)) == {"separator", "query_net", "sed"}


def test_unused_and_derived_tensors_are_optional(tiny_lightning):
    save, state = tiny_lightning
    kept = {
        k: v
        for k, v in state.items()
        if not UNUSED.fullmatch(k) and "extractor" not in k and "scorer" not in k
    }
    path = save(kept)
    assert load_separator(path).condition_size == 527
    load_sed(path)


def test_every_key_problem_in_one_error(tiny_lightning):
    save, state = tiny_lightning
    removed = "ss_model.base.encoder_block3.conv_block1.conv2.weight"
    misshaped = "ss_model.film.decoder_block2->conv_block2->beta1.weight"
    del state[removed]
    state[misshaped] = torch.zeros(767, 527)
    state["ss_model.base.encoder_block7.conv.weight"] = torch.zeros(1)
    state["optimizer_leftover"] = torch.zeros(1)
    path = save(state)
    with pytest.raises(CheckpointError) as info:
        load_separator(path)
    message = str(info.value)
    assert str(path) in message and "ResUNet30 (condition size 527," in message
    assert f"1 missing key(s):\n    {removed}" in message
    assert "2 unexpected key(s)" in message
    assert "ss_model.base.encoder_block7.conv.weight" in message and "optimizer_leftover" in message
    assert (
        f"1 key(s) with the wrong shape:\n    {misshaped} (file [767, 527], expected [768, 527])" in message
    )


def test_wrong_derived_constant_is_reported(tiny_lightning):
    save, state = tiny_lightning
    state["query_net.base.logmel_extractor.melW"] = torch.zeros(513, 64)
    state["anchor_segment_detector.anchor_segment_scorer.smooth_filter"] = torch.ones(1, 1, 201) / 200
    path = save(state)
    with pytest.raises(
        CheckpointError, match=r"1 derived constant.*\n.*query_net\.base\.logmel_extractor\.melW"
    ):
        load_query_net(path)
    with pytest.raises(CheckpointError, match=r"anchor_segment_scorer\.smooth_filter"):
        load_sed(path)
    load_separator(path)  # the query net's and SED's constants are not the separator's business


@dataclass
class TrainConfig:
    learning_rate: float = 1e-3


def test_pickled_objects_are_refused_with_a_conversion_hint(tiny_lightning):
    save, state = tiny_lightning
    path = save(state, "pickled.ckpt", cfg=TrainConfig())
    for load in (load_separator, load_query_net, load_sed, load_checkpoint_state):
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert (
            str(path) in message
            and "pickled Python objects" in message
            and f"references {TrainConfig.__module__}.TrainConfig" in message
        )
        assert "torch.save({'state_dict'" in message and "trust_pickle=True" in message


def test_missing_file(tmp_path):
    path = tmp_path / "absent.ckpt"
    for call in (
        load_separator,
        load_query_net,
        load_sed,
        load_checkpoint_state,
        file_sha256,
        lambda p: export_checkpoint(p, tmp_path / "out.safetensors"),
    ):
        with pytest.raises(CheckpointError, match=f"checkpoint not found: {re.escape(str(path))}"):
            call(path)


def test_panns_file(manifest, formula_generator, tmp_path):
    path = tmp_path / "Cnn14_tiny.pth"
    torch.save({"iteration": 0, "model": tiny_state_dict(manifest("cnn14"), formula_generator)}, path)
    with pytest.raises(CheckpointError, match="PANNs checkpoint.*holds no separator"):
        load_separator(path)
    assert isinstance(load_query_net(path), Cnn14) and isinstance(load_sed(path), Cnn14DecisionLevelMax)
    assert set(load_checkpoint_state(path)) == {"query_net", "sed"}


def test_files_that_are_not_checkpoints(tmp_path):
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="not a USS Lightning checkpoint"):
        load_separator(listing)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint at all\n")
    with pytest.raises(
        CheckpointError, match=f"cannot read checkpoint {re.escape(str(text))}: not a torch checkpoint"
    ):
        load_query_net(text)
    foreign = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a uss-bench/1 checkpoint"):
        load_separator(foreign)
    lightning_without_query_net = tmp_path / "separator_only.ckpt"
    torch.save({"state_dict": {"ss_model.base.bn0.weight": torch.zeros(1025)}}, lightning_without_query_net)
    with pytest.raises(CheckpointError, match=r"holds no Cnn14 \(no query_net\.base\.\* keys\)"):
        load_query_net(lightning_without_query_net)


def test_export_round_trip(at_soft_ckpt, separator_527, query_net, sed, tmp_path):
    out = tmp_path / "exported" / "uss_at_soft.safetensors"
    metadata = export_checkpoint(at_soft_ckpt, out)
    assert metadata["format"] == "uss-bench/1"
    assert (metadata["condition_size"], metadata["condition_type"]) == ("527", "at_soft")
    assert metadata["source_sha256"] == file_sha256(at_soft_ckpt)
    assert metadata["source_file"] == at_soft_ckpt.name
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left

    reloaded = load_separator(out)
    assert (reloaded.condition_size, reloaded.condition_type) == (527, "at_soft")
    for ours, theirs in ((reloaded, separator_527), (load_query_net(out), query_net), (load_sed(out), sed)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    mixture = torch.linspace(-0.5, 0.5, 9600)[None, None] * torch.sin(torch.arange(9600.0) * 0.05)
    condition = torch.zeros(1, 527)
    condition[0, [0, 137, 300]] = torch.tensor([0.9, 0.4, 0.2])
    with torch.inference_mode():
        assert torch.equal(reloaded(mixture, condition), separator_527(mixture, condition))
