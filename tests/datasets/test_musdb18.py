"""MUSDB18-HQ reader on the dev corpus."""

from __future__ import annotations

import numpy as np
import pytest

from harness.audio import audio_info
from harness.datasets.musdb18 import MUSDB18


@pytest.fixture(scope="module")
def corpus(dev_data):
    return MUSDB18(dev_data / "musdb18hq")


def test_test_tracks_and_stems(corpus):
    corpus.check()
    tracks = corpus.tracks("test")
    assert [t.track_id for t in tracks] == [
        "Freedoom - Track90005 (uss-bench composite)",
        "Freedoom - Track90013 (uss-bench composite)",
        "Freedoom - Track90015 (uss-bench composite)",
        "Music Delta - 80s Rock",
    ]
    for track in tracks:
        assert track.mixture.path.name == "mixture.flac"
        assert [(s.source_id, s.label) for s in track.sources] == [(n, n) for n in corpus.vocabulary()]
        assert [s.audio.path.name for s in track.sources] == [
            "vocals.flac",
            "drums.flac",
            "bass.flac",
            "other.flac",
        ]


def test_vocabulary(corpus):
    assert corpus.vocabulary() == ["vocals", "drums", "bass", "other"]


def test_absent_train_folder_is_an_empty_split(corpus):
    assert corpus.tracks("train") == []


def test_stereo_files_read_as_mono(corpus):
    track = {t.track_id: t for t in corpus.tracks("test")}["Music Delta - 80s Rock"]
    info = audio_info(track.mixture.path)
    assert (info.samplerate, info.channels) == (44100, 2)
    assert round(info.frames / info.samplerate, 2) == 6.80  # the real preview, whole
    x = corpus.read(track.mixture, 44100)
    assert x.shape == (info.frames,) and x.dtype == np.float32
