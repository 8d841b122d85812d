"""Issue 12 item 5: hierarchical separation scored with class-aware SDRi (DCASE 2025 Task 4) per ontology level."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.datasets.store import open_set
from harness.errors import ConfigError
from harness.mixtures import BuildOptions, build_mixtures
from harness.ontology import Ontology
from harness.query_protocols import (
    class_aware_sdri,
    hierarchical_summary,
    level_references,
    score_hierarchical,
)

N = 8000


@pytest.fixture(scope="module")
def onto() -> Ontology:
    return Ontology.load()


def halves() -> tuple[np.ndarray, np.ndarray]:
    """Two sources of equal energy on disjoint halves (orthogonal): SDR(a, a + b) = 0 dB exactly."""
    t = np.arange(N)
    a = np.where(t < N // 2, np.sin(0.01 * t), 0).astype(np.float32)
    b = np.where(t >= N // 2, np.sin(0.01 * (t - N // 2)), 0).astype(np.float32)
    return a, b


def test_class_aware_sdri_by_hand():
    a, b = halves()
    mix = a + b
    est_a = a + np.float32(0.1) * a  # error 0.1·a: SDR = 10 log10(1 / 0.01) = 20 dB; SDR of the mixture: 0 dB
    s = class_aware_sdri({"A": a, "B": b}, {"A": est_a, "C": b}, mix)
    # C = {A, B}, Ĉ = {A, C}: P_A = 20 dB, B missed (0), C a false detection (0): 20 / |{A, B, C}|
    assert s["tp"] == 1 and s["fp"] == 1 and s["fn"] == 1
    assert s["sdri"]["A"] == pytest.approx(20.0, abs=1e-4)  # float32 0.1 and sums: ~1e-6 relative
    assert s["ca_sdri"] == pytest.approx(20.0 / 3, abs=1e-4)
    assert s["precision"] == 0.5 and s["recall"] == 0.5
    perfect = class_aware_sdri({"A": a, "B": b}, {"A": a * np.float32(1.1), "B": b * np.float32(1.1)}, mix)
    assert perfect["ca_sdri"] == pytest.approx(20.0, abs=1e-4) and perfect["precision"] == perfect["recall"] == 1
    nothing = class_aware_sdri({"A": a}, {}, mix)
    assert nothing["ca_sdri"] == 0.0 and math.isnan(nothing["precision"]) and nothing["recall"] == 0.0
    assert math.isnan(class_aware_sdri({}, {}, mix)["ca_sdri"])


def test_level_references_sum_the_sources_under_a_node(onto):
    speech, guitar, violin = (onto.class_names.index(n) for n in ("Speech", "Guitar", "Violin, fiddle"))
    a, b = halves()
    refs = level_references(onto, 1, [(speech, a), (guitar, b)])
    names = {onto.name(k) for k in refs}
    assert {"Human sounds", "Music"} <= names
    music = onto.find("Music").id
    np.testing.assert_array_equal(refs[music], b)
    both = level_references(onto, 1, [(guitar, a), (violin, b)])  # two instruments: one Music node, their sum
    np.testing.assert_array_equal(both[music], a + b)


class EnergyTagger(nn.Module):
    """Fake Cnn14: clipwise[k] = chunk energy for the classes in ``on`` (the hierarchy's detector), else 0."""

    def __init__(self, on: list[int]):
        super().__init__()
        scale = np.zeros(527, np.float32)
        scale[on] = 100.0
        self.register_buffer("scale", torch.from_numpy(scale))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        energy = x.pow(2).mean(dim=1, keepdim=True)
        return {"clipwise_output": energy * self.scale[None, :], "embedding": x.mean(dim=1, keepdim=True)}


class Identity(nn.Module):
    """Fake at_soft separator: returns the mixture (SDRi 0 dB for every detected node)."""

    condition_size = 527
    condition_type = "at_soft"

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return mixture


@pytest.fixture(scope="module")
def audioset_wd(dev_data, tmp_path_factory):
    wd = tmp_path_factory.mktemp("work")
    build_mixtures(dev_data / "audioset", wd, BuildOptions("audioset", per_class=1, jobs=1))
    return wd


@pytest.mark.slow
def test_dev_set_run(dev_data, audioset_wd, tmp_path, onto):
    wd = audioset_wd
    evalset = open_set(wd, "audioset", "test")
    speech = onto.class_names.index("Speech")
    df = score_hierarchical(Identity(), EnergyTagger([speech]), evalset, levels=(1, 2), limit=6, ontology=onto)
    assert len(df) == 12 and (df["status"] == "ok").all()
    for row in df.itertuples():  # the fake detects the Speech branch in every (non-silent) mixture
        detected = set(row.detected_nodes.split(";")) - {""}
        want = {1: {"Human sounds"}, 2: {"Human voice"}}[row.level]
        assert detected == want or detected == set()
        true = set(row.true_nodes.split(";"))
        tp = len(detected & true)
        assert (row.tp, row.fp, row.fn) == (tp, len(detected - true), len(true - detected))
        assert row.ca_sdri == pytest.approx(0.0, abs=1e-6)  # identity separator: every matched P_k is 0 dB
    summary = pd.DataFrame(hierarchical_summary(df))
    assert list(summary["level"]) == [1, 2] and (summary["items"] == 6).all()
    sub = df[df["level"] == 1]
    assert summary["recall"].iloc[0] == pytest.approx(sub["tp"].sum() / (sub["tp"].sum() + sub["fn"].sum()))
    fsd = tmp_path / "fsd"
    build_mixtures(dev_data / "fsd50k", fsd, BuildOptions("fsd50k", per_class=1, jobs=1))
    with pytest.raises(ConfigError):
        score_hierarchical(Identity(), EnergyTagger([speech]), open_set(fsd, "fsd50k", "test"))


@pytest.mark.slow
def test_eval_hierarchical_command(audioset_wd, tmp_path, onto, monkeypatch):
    import json

    from typer.testing import CliRunner

    import harness.models
    from harness.cli import app

    speech = onto.class_names.index("Speech")
    monkeypatch.setattr(harness.models, "load_separator_and_query_net",
                        lambda checkpoint, device: (Identity(), EnergyTagger([speech])))
    out = tmp_path / "h"
    r = CliRunner().invoke(app, ["eval-hierarchical", "--checkpoint", str(tmp_path / "fake.ckpt"), "--out", str(out),
                                 "--workdir", str(audioset_wd), "--limit", "4", "--levels", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out / "hierarchical.parquet")
    assert len(df) == 4 and set(df["level"]) == {1}
    rec = json.loads((out / "hierarchical.json").read_text())["levels"]
    assert rec[0]["level"] == 1 and rec[0]["items"] == 4
    assert "| 1 | 4 |" in (out / "hierarchical.md").read_text()
