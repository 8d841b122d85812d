"""FSDKaggle2018 reader on the dev corpus."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from harness.datasets.fsdkaggle2018 import LABELS, FSDKaggle2018


@pytest.fixture(scope="module")
def corpus(dev_data):
    return FSDKaggle2018(dev_data / "fsdkaggle2018")


def test_counts_and_files(corpus):
    corpus.check()
    test, train = corpus.clips("test"), corpus.clips("train")
    assert (len(test), len(train)) == (8, 3)
    for clips, folder in ((test, "FSDKaggle2018.audio_test"), (train, "FSDKaggle2018.audio_train")):
        assert [c.clip_id for c in clips] == sorted(c.clip_id for c in clips)
        assert all(c.audio.path.parent.name == folder and c.audio.path.stem == c.clip_id for c in clips)
        assert all(len(c.clip_id) == 8 and len(c.labels) == 1 for c in clips)
    assert len({c.labels[0] for c in test + train}) == 10  # the dev README: 10 of the 41 labels
    assert {c.clip_id: c.labels for c in test}["e583ece6"] == ("Flute",)


def test_vocabulary_is_the_41_labels_of_the_real_train_csv(corpus, meta_dir):
    with open(meta_dir / "fsdkaggle2018" / "train_post_competition.csv", newline="") as f:
        labels = sorted({row["label"] for row in csv.DictReader(f)})
    assert corpus.vocabulary() == labels == list(LABELS)
    assert len(LABELS) == 41


def test_read_resamples_to_mono_float32(corpus):
    clip = corpus.clips("train")[0]
    x = corpus.read(clip.audio, 32000)
    assert x.ndim == 1 and x.dtype == np.float32 and len(x) > 0 and np.isfinite(x).all()
