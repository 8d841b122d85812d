"""FSD50K reader on the dev corpus."""

from __future__ import annotations

import csv

import pytest

from harness.datasets.fsd50k import FSD50K


@pytest.fixture(scope="module")
def corpus(dev_data):
    return FSD50K(dev_data / "fsd50k")


def test_counts_per_split(corpus):
    corpus.check()
    counts = {split: len(corpus.clips(split)) for split in corpus.splits}
    assert counts == {"test": 28, "train": 10, "val": 3}  # 28 eval + 13 dev clips


def test_files_and_order(corpus):
    for split, folder in (
        ("test", "FSD50K.eval_audio"),
        ("train", "FSD50K.dev_audio"),
        ("val", "FSD50K.dev_audio"),
    ):
        clips = corpus.clips(split)
        assert [c.clip_id for c in clips] == sorted(c.clip_id for c in clips)
        assert all(c.audio.path.parent.name == folder and c.audio.path.stem == c.clip_id for c in clips)


def test_labels_keep_csv_order_primary_first(corpus):
    val = {c.clip_id: c.labels for c in corpus.clips("val")}
    assert val["92435068"] == (
        "Chicken_and_rooster",
        "Fowl",
        "Livestock_and_farm_animals_and_working_animals",
        "Animal",
    )
    assert {c.clip_id: c.labels for c in corpus.clips("train")}["96140908"] == ("Alarm",)


def test_vocabulary_is_the_200_labels(corpus, meta_dir):
    with open(meta_dir / "fsd50k" / "vocabulary.csv", newline="") as f:
        expected = [row[1] for row in csv.reader(f)]
    vocabulary = corpus.vocabulary()
    assert vocabulary == expected and len(vocabulary) == 200
    assert all(
        label in vocabulary for split in corpus.splits for c in corpus.clips(split) for label in c.labels
    )
