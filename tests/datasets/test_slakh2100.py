"""Slakh2100 reader on the dev corpus."""

from __future__ import annotations

import numpy as np
import pytest

from harness.datasets.slakh2100 import Slakh2100


@pytest.fixture(scope="module")
def corpus(dev_data):
    return Slakh2100(dev_data / "slakh2100")


def test_tracks_per_split(corpus):
    corpus.check()
    assert [t.track_id for t in corpus.tracks("test")] == ["Track90005", "Track90015"]
    assert [t.track_id for t in corpus.tracks("train")] == ["Track00001"]
    assert corpus.tracks("validation") == []  # empty folder, not kept by git


def test_sources_are_the_rendered_stems_in_metadata_order(corpus):
    (track,) = corpus.tracks("train")
    assert track.mixture.path.name == "mix.flac"
    ids = [s.source_id for s in track.sources]
    assert ids == ["S00", "S01", "S02", "S03", "S04", "S05", "S07", "S08", "S09", "S10"]  # S06 not rendered
    s10 = track.sources[-1]
    assert (s10.label, s10.audio.path.name) == ("FluidR3_GM_p022.sf2", "S10.flac")
    # Track90015/S06 has a file but `audio_rendered: false`: not a source
    track90015 = corpus.tracks("test")[1]
    assert "S06" not in [s.source_id for s in track90015.sources] and len(track90015.sources) == 7


def test_vocabulary_is_the_plugin_names_of_all_splits(corpus):
    per_split = {
        split: {s.label for t in corpus.tracks(split) for s in t.sources} for split in ("test", "train")
    }
    assert (len(per_split["test"]), len(per_split["train"])) == (12, 8)  # the dev README
    vocabulary = corpus.vocabulary()
    assert vocabulary == sorted(per_split["test"] | per_split["train"])
    assert all(label.startswith("FluidR3_GM_p") for label in vocabulary)


def test_mix_is_the_sum_of_the_stems(corpus):
    (track,) = corpus.tracks("train")
    mix = corpus.read(track.mixture, 44100)
    stems = sum(corpus.read(s.audio, 44100) for s in track.sources)
    np.testing.assert_allclose(stems, mix, atol=1e-4)
