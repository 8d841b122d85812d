"""Voicebank-Demand reader on the dev corpus."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from harness.audio import audio_info
from harness.datasets.voicebank_demand import VoicebankDemand


@pytest.fixture(scope="module")
def corpus(dev_data):
    return VoicebankDemand(dev_data / "voicebank-demand")


def test_pairs(corpus):
    corpus.check()
    tracks = corpus.tracks("test")
    assert len(tracks) == 17
    assert [t.track_id for t in tracks] == sorted(t.track_id for t in tracks)
    assert {t.track_id[:4] for t in tracks} == {"p232", "p257"}
    for track in tracks:
        (source,) = track.sources
        assert (source.source_id, source.label) == ("clean", "speech")
        assert source.audio.path.parent.name == "clean_testset_wav"
        assert track.mixture.path.parent.name == "noisy_testset_wav"
        assert source.audio.path.name == track.mixture.path.name == f"{track.track_id}.wav"


def test_sample_rates(corpus):
    rates = collections.Counter(audio_info(t.mixture.path).samplerate for t in corpus.tracks("test"))
    assert rates == {16000: 13, 48000: 4}


def test_absent_train_folders_are_an_empty_split(corpus):
    assert corpus.tracks("train") == []
    assert corpus.vocabulary() == ["speech"]


def test_read_at_16k(corpus):
    track = {t.track_id: t for t in corpus.tracks("test")}["p232_036"]  # a 48-kHz pair
    clean, noisy = corpus.read(track.sources[0].audio, 16000), corpus.read(track.mixture, 16000)
    assert clean.shape == noisy.shape and clean.dtype == np.float32
