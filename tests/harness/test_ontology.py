"""harness.ontology: the AudioSet ontology levels and class ids, detect-then-separate (SEMANTICS §7),
hierarchical separation (paper Alg. 3/4), example-clip queries (§3.4.3) and the output tree.

The models here are tiny fakes whose outputs are known in closed form; no checkpoint is built.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from harness.errors import AudioError, ConfigError, UssBenchError
from harness.models import separate
from harness.ontology import (
    CLASS_LABELS_PATH,
    Ontology,
    Track,
    detect_and_separate,
    safe_name,
    separate_by_query_audio,
    separate_hierarchical,
    tag_chunks,
    write_tracks,
)

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

S = 64000
SCALE = np.linspace(0.0, 1.0, 527, dtype=np.float32)
"""Fake tagger: clipwise[b, k] = mean(x[b]²) · SCALE[k]."""


class EnergyTagger(nn.Module):
    """Fake Cnn14: clipwise = chunk energy × SCALE; embedding = chunk mean repeated. Records its inputs."""

    def __init__(self, scale: np.ndarray = SCALE):
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, dtype=np.float32)))
        self.inputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert x.ndim == 2 and x.shape[1] == S
        self.inputs.append(x.numpy().copy())
        energy = x.pow(2).mean(dim=1, keepdim=True)
        return {"clipwise_output": energy * self.scale[None, :],
                "embedding": x.mean(dim=1, keepdim=True).expand(-1, 2048)}


class SumSeparator(nn.Module):
    """Fake separator: output = mixture · condition.sum(-1). Records every condition batch."""

    def __init__(self, condition_size: int = 527):
        super().__init__()
        self.condition_size = condition_size
        self.condition_type = {527: "at_soft", 2048: "emb"}[condition_size]
        self.conditions: list[np.ndarray] = []
        self.calls = 0

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        assert mixture.ndim == 3 and mixture.shape[1] == 1 and condition.shape[-1] == self.condition_size
        self.calls += 1
        self.conditions.append(condition.numpy().copy())
        return mixture * condition.sum(dim=-1)[:, None, None]


@pytest.fixture(scope="module")
def onto() -> Ontology:
    return Ontology.load()


def _class_index(display_name: str) -> int:
    with open(CLASS_LABELS_PATH, newline="") as f:
        return next(int(r["index"]) for r in csv.DictReader(f) if r["display_name"] == display_name)


def _chunked_signal(amplitudes: list[float], tail: int, tail_amplitude: float) -> np.ndarray:
    parts = [np.full(S, a, dtype=np.float32) for a in amplitudes] + [np.full(tail, tail_amplitude, np.float32)]
    return np.concatenate(parts)


# ---------------------------------------------------------------------------------------------------
# Ontology
# ---------------------------------------------------------------------------------------------------


def test_roots_are_the_seven_top_categories(onto):
    assert [n.name for n in onto.level_nodes(1)] == [
        "Human sounds", "Animal", "Music", "Natural sounds", "Sounds of things", "Source-ambiguous sounds",
        "Channel, environment and background"]
    assert all(onto.parents(n.id) == () for n in onto.level_nodes(1))


def test_speech_is_under_human_sounds(onto):
    speech = onto.node("/m/09x0r")
    assert speech.name == "Speech" and speech.class_index == 0
    assert onto.class_node(0).id == "/m/09x0r"
    human = onto.find("Human sounds")
    assert 0 in onto.class_ids(human.id)
    assert 0 not in onto.class_ids(onto.find("Music").id)
    assert "Speech" in [n.name for n in onto.level_nodes(3)]
    assert "Human voice" in [n.name for n in onto.level_nodes(2)]


def test_music_class_ids(onto):
    ids = onto.class_ids(onto.find("Music").id)
    assert 137 in ids and onto.class_names[137] == "Music"
    assert _class_index("Guitar") in ids and _class_index("Electric guitar") in ids
    assert ids == sorted(set(ids))
    # "Bell" has two parents (Musical instrument, Sounds of things): the DAG keeps it under both.
    bell = _class_index("Bell")
    assert bell in ids and bell in onto.class_ids(onto.find("Sounds of things").id)
    assert set(onto.parents(onto.find("Bell").id)) == {onto.find("Musical instrument").id,
                                                        onto.find("Sounds of things").id}


def test_levels_and_class_id_coverage(onto):
    level2 = onto.level_nodes(2)
    assert len(level2) > 7
    assert len({n.id for n in level2}) == len(level2)
    assert onto.num_levels == 6
    covered = sorted({k for root in onto.roots for k in onto.class_ids(root)})
    assert covered == list(range(527))
    leaf = onto.class_node(1)  # "Male speech, man speaking": no children
    assert onto.class_ids(leaf.id) == [1]
    assert any(not onto.class_ids(n.id) for n in onto.level_nodes(3))  # e.g. nodes outside the 527
    for bad in (0, 7, "1", True):
        with pytest.raises(ConfigError):
            onto.level_nodes(bad)
    with pytest.raises(ConfigError):
        onto.class_ids("/m/not-a-node")
    assert Ontology.load() is onto


# ---------------------------------------------------------------------------------------------------
# detect_and_separate
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_detect_and_separate_inactive_zero_active_masked(batch_size):
    # chunk energies 1, 0.01, 0.64 and a 1000-sample tail of 1.0 (padded energy 1/64): with ids
    # {10, 400} the max tag is energy · 400/526, so chunks 0 and 2 are active, 1 and 3 are not.
    x = _chunked_signal([1.0, 0.1, 0.8], tail=1000, tail_amplitude=1.0)
    ids = [400, 10, 400]
    tagger, sep = EnergyTagger(), SumSeparator()
    y = detect_and_separate(sep, tagger, x, ids, batch_size=batch_size)

    assert y.dtype == np.float32 and y.shape == x.shape and len(x) % S != 0
    energy = np.array([1.0, 0.01, 0.64, 1000 / S], dtype=np.float32)
    tags = energy[:, None] * SCALE[None, :]
    expected_active = tags[:, [10, 400]].max(axis=1) >= 0.2
    assert expected_active.tolist() == [True, False, True, False]

    # inactive chunks are exact zeros although their input is not
    assert np.all(y[S:2 * S] == 0) and np.all(y[3 * S:] == 0)
    assert np.any(x[S:2 * S] != 0) and np.any(x[3 * S:] != 0)
    # the tagger saw every chunk, the last zero-padded (not tiled)
    seen = np.concatenate(tagger.inputs)
    assert seen.shape == (4, S) and np.all(seen[3, 1000:] == 0) and np.all(seen[3, :1000] == 1.0)
    # the separator saw only active chunks, each with its own condition, zero outside ids
    conditions = np.concatenate(sep.conditions)
    assert conditions.shape == (2, 527)
    outside = np.ones(527, bool)
    outside[[10, 400]] = False
    assert np.all(conditions[:, outside] == 0)
    # toy modules: a few float32 operations per value (≤ 2⁻²⁴ ≈ 6e-8 each), so rtol 1e-6 here and below
    # bounds any order of evaluation with 10× room, and still fails on any wrong factor or chunk
    np.testing.assert_allclose(conditions[:, [10, 400]], tags[[0, 2]][:, [10, 400]], rtol=1e-6)
    # active chunks: mixture · sum(condition)
    for chunk, cond in zip([0, 2], conditions, strict=True):
        np.testing.assert_allclose(y[chunk * S:(chunk + 1) * S], x[chunk * S:(chunk + 1) * S] * cond.sum(), rtol=1e-6)


def test_detect_and_separate_active_partial_last_chunk_and_threshold():
    x = _chunked_signal([1.0], tail=40000, tail_amplitude=1.0)  # last chunk energy 0.625 → active
    sep = SumSeparator()
    y = detect_and_separate(sep, EnergyTagger(), x, [526])
    assert y.shape == (S + 40000,)
    np.testing.assert_allclose(y[:S], np.full(S, 1.0), rtol=1e-6)
    np.testing.assert_allclose(y[S:], np.full(40000, 0.625), rtol=1e-6)
    # threshold is ≥: energy 0.625 · 1.0 is active at 0.625, inactive just above
    y2 = detect_and_separate(SumSeparator(), EnergyTagger(), x, [526], threshold=0.625)
    assert np.any(y2[S:] != 0)
    y3 = detect_and_separate(SumSeparator(), EnergyTagger(), x, [526], threshold=0.63)
    assert np.all(y3[S:] == 0) and np.any(y3[:S] != 0)
    # nothing active: the separator is never called
    sep0 = SumSeparator()
    assert np.all(detect_and_separate(sep0, EnergyTagger(), x, [0]) == 0) and sep0.calls == 0


def test_detect_and_separate_precomputed_tags_match():
    x = _chunked_signal([1.0, 0.3], tail=5, tail_amplitude=0.9)
    tags = tag_chunks(EnergyTagger(), x)
    assert tags.shape == (3, 527)
    a = detect_and_separate(SumSeparator(), EnergyTagger(), x, [300, 500])
    b = detect_and_separate(SumSeparator(), nn.Identity(), x, [300, 500], clipwise=tags)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        detect_and_separate(SumSeparator(), EnergyTagger(), x, [300], clipwise=tags[:2])


def test_emb_separator_is_refused():
    x = np.zeros(S, np.float32)
    for call in (lambda: detect_and_separate(SumSeparator(2048), EnergyTagger(), x, [0]),
                 lambda: separate_hierarchical(SumSeparator(2048), EnergyTagger(), x)):
        with pytest.raises(UssBenchError, match="at_soft.*--query-audio"):
            call()


def test_bad_class_ids():
    x = np.zeros(S, np.float32)
    for ids in ([], [527], [-1], [1.5]):
        with pytest.raises(ConfigError):
            detect_and_separate(SumSeparator(), EnergyTagger(), x, ids)


# ---------------------------------------------------------------------------------------------------
# separate_hierarchical
# ---------------------------------------------------------------------------------------------------


def _speech_only_tagger() -> EnergyTagger:
    scale = np.zeros(527, np.float32)
    scale[0] = 1.0  # only "Speech" (class 0) ever fires
    return EnergyTagger(scale)


def test_hierarchy_returns_only_active_nodes(onto):
    x = _chunked_signal([0.0, 1.0], tail=100, tail_amplitude=0.0)
    tracks = separate_hierarchical(SumSeparator(), _speech_only_tagger(), x, levels=(1, 2, 3))
    assert [(t.level, t.name) for t in tracks] == [(1, "Human sounds"), (2, "Human voice"), (3, "Speech")]
    for t in tracks:
        assert t.waveform.shape == x.shape and t.active_chunks == 1
        assert 0 in t.class_ids and t.node_id == onto.find(t.name).id
        assert np.all(t.waveform[:S] == 0) and np.all(t.waveform[2 * S:] == 0)
        np.testing.assert_allclose(t.waveform[S:2 * S], 1.0, rtol=1e-6)  # condition sum = tag of class 0 = 1
    assert separate_hierarchical(SumSeparator(), _speech_only_tagger(), x, levels=[2])[0].name == "Human voice"
    assert separate_hierarchical(SumSeparator(), _speech_only_tagger(), x, threshold=1.01) == []
    with pytest.raises(ConfigError):
        separate_hierarchical(SumSeparator(), _speech_only_tagger(), x, levels=[9])


def test_class_id_mode_one_track_per_id():
    x = _chunked_signal([1.0], tail=10, tail_amplitude=0.0)
    tracks = separate_hierarchical(SumSeparator(), _speech_only_tagger(), x, class_ids=[137, 0, 137])
    assert [(t.level, t.class_ids, t.name) for t in tracks] == [(None, (137,), "Music"), (None, (0,), "Speech")]
    assert tracks[0].active_chunks == 0 and np.all(tracks[0].waveform == 0)
    assert tracks[1].active_chunks == 1 and np.any(tracks[1].waveform != 0)


# ---------------------------------------------------------------------------------------------------
# separate_by_query_audio
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("condition_size", [527, 2048])
def test_query_audio_averages_per_file_then_across_files(tmp_path, condition_size):
    # fake embedding = chunk mean. File A: 2 s of 0.2 then 2 s of 0.6 → 0.4; file B: 2 s of 0.1 → 0.1.
    # Per file then across files: 0.25 (pooling all chunks would give 0.3).
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    soundfile.write(a, np.concatenate([np.full(S, 0.2), np.full(S, 0.6)]).astype(np.float32), 32000, subtype="FLOAT")
    soundfile.write(b, np.full(S, 0.1, np.float32), 32000, subtype="FLOAT")
    tagger = EnergyTagger(np.ones(527, np.float32))  # clipwise = chunk energy: 0.1 and 0.01 → 0.055
    sep = SumSeparator(condition_size)
    x = _chunked_signal([0.5], tail=123, tail_amplitude=-0.25)
    y = separate_by_query_audio(sep, tagger, x, [a, b], batch_size=1)

    expected = 0.25 if condition_size == 2048 else ((0.04 + 0.36) / 2 + 0.01) / 2
    cond = sep.conditions[0]
    assert cond.shape == (1, condition_size)
    # means of ≤ 64,000 float32 energies (pairwise sums: ≤ 31·2⁻²⁴ ≈ 1.9e-6 relative): rtol 1e-5
    np.testing.assert_allclose(cond, expected, rtol=1e-5)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, separate(SumSeparator(condition_size), x, np.full(condition_size, expected)),
                               rtol=1e-5)


def test_query_audio_errors(tmp_path):
    x = np.zeros(S, np.float32)
    with pytest.raises(ConfigError):
        separate_by_query_audio(SumSeparator(), EnergyTagger(), x, [])
    with pytest.raises(AudioError):
        separate_by_query_audio(SumSeparator(), EnergyTagger(), x, [tmp_path / "missing.wav"])
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(S, np.float32), 32000, subtype="FLOAT")
    with pytest.raises(AudioError, match="silent"):
        separate_by_query_audio(SumSeparator(), EnergyTagger(), x, [silent], remove_silence=True)


# ---------------------------------------------------------------------------------------------------
# write_tracks
# ---------------------------------------------------------------------------------------------------


def test_safe_name():
    assert safe_name("Channel, environment and background") == "Channel_environment_and_background"
    assert safe_name("Bee, wasp, etc.") == "Bee_wasp_etc"
    assert safe_name("AC/DC ../..") == "AC_DC"
    assert safe_name("///") == "node"


def test_write_tracks_tree(tmp_path):
    rng = np.random.default_rng(0)
    wave = [rng.standard_normal(1000).astype(np.float32) * 0.1 for _ in range(4)]
    tracks = [Track(1, "/m/0dgw9r", "Human sounds", (0, 1), wave[0], 1),
              Track(3, "/m/x", "Roaring cats (lions, tigers)", (5,), wave[1], 1),
              Track(2, "/m/y", "AC/DC", (6,), wave[2], 2),
              Track(None, "/m/09x0r", "Speech", (0,), wave[3], 0)]
    out = tmp_path / "out"
    paths = write_tracks(tracks, out)
    assert paths == [out / "level_1" / "Human_sounds.wav", out / "level_3" / "Roaring_cats_lions_tigers.wav",
                     out / "level_2" / "AC_DC.wav", out / "class_0_Speech.wav"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        p.relative_to(out).as_posix() for p in paths)  # no temporary files left
    for path, w in zip(paths, wave, strict=True):
        data, rate = soundfile.read(path, dtype="float32")
        info = soundfile.info(path)
        assert rate == 32000 and info.subtype == "FLOAT" and info.format == "WAV"
        np.testing.assert_array_equal(data, w)
    # rewriting replaces in place
    assert write_tracks(tracks[:1], out) == paths[:1]
    with pytest.raises(ValueError):
        write_tracks([tracks[0], tracks[0]], tmp_path / "dup")


def test_hierarchy_end_to_end_files(tmp_path):
    x = _chunked_signal([1.0], tail=0, tail_amplitude=0.0)
    tracks = separate_hierarchical(SumSeparator(), _speech_only_tagger(), x)
    paths = write_tracks(tracks, tmp_path)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in paths] == [
        "level_1/Human_sounds.wav", "level_2/Human_voice.wav", "level_3/Speech.wav"]
