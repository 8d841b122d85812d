"""AudioSet reader on the dev corpus: segment csvs, audios/ folders and PANNs waveform packs."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from harness.datasets import audioset
from harness.datasets.audioset import AudioSet
from harness.errors import LayoutError, MetadataError


@pytest.fixture(scope="module")
def root(dev_data):
    return dev_data / "audioset"


def pack_only_root(root, tmp_path, keep=()):
    """A root with the dev metadata and packs, and audios/ holding only the clip files in ``keep``."""
    (tmp_path / "metadata").symlink_to(root / "metadata")
    (tmp_path / "hdf5s").symlink_to(root / "hdf5s")
    for name in keep:
        folder = tmp_path / "audios" / name.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name.name).symlink_to(name)
    return tmp_path


def test_counts_and_sources(root):
    corpus = AudioSet(root)
    corpus.check()
    test, train = corpus.clips("test"), corpus.clips("train")
    assert (len(test), len(train)) == (28, 14)
    assert corpus.missing == {"test": [], "train": []}
    for clips, folder in ((test, "eval_segments"), (train, "balanced_train_segments")):
        assert [c.clip_id for c in clips] == sorted(c.clip_id for c in clips)
        assert all(c.audio.h5_index is None and c.audio.path.parent.name == folder for c in clips)
        assert all(c.audio.path.name == f"{c.clip_id}.flac" for c in clips)
    # the dev README: 28 / 14 distinct first labels
    assert len({c.labels[0] for c in test}) == 28 and len({c.labels[0] for c in train}) == 14


def test_vocabulary_is_the_527_display_names(root, meta_dir):
    with open(meta_dir / "audioset" / "class_labels_indices.csv", newline="") as f:
        expected = [row["display_name"] for row in csv.DictReader(f)]
    vocabulary = AudioSet(root).vocabulary()
    assert vocabulary == expected and len(vocabulary) == 527
    assert vocabulary[:2] == ["Speech", "Male speech, man speaking"]


def test_labels_are_display_names_in_csv_order(root):
    clips = {c.clip_id: c for c in AudioSet(root).clips("train")}
    assert clips["YVDCrhSQTIcr"].labels == ("Horse", "Neigh, whinny")  # "/m/03k3r,/m/07q5rw0"
    assert clips["Y-NmkdNrGwK9"].labels == ("Harpsichord",)  # a YTID starting with "-"


def test_packs_give_the_same_clips_and_audio(root, tmp_path):
    files = AudioSet(root)
    packs = AudioSet(pack_only_root(root, tmp_path))
    for split in ("test", "train"):
        by_file, by_pack = files.clips(split), packs.clips(split)
        assert [(c.clip_id, c.labels) for c in by_file] == [(c.clip_id, c.labels) for c in by_pack]
        assert all(c.audio.h5_index is not None for c in by_pack)
    for from_file, from_pack in zip(files.clips("test")[:3], packs.clips("test")[:3], strict=True):
        x, y = files.read(from_file.audio, 32000), packs.read(from_pack.audio, 32000)
        assert y.shape == (320000,) and y.dtype == np.float32  # PANNs packs are zero-padded to 10 s
        # the packs quantize the same audio as PANNs does (x * 32767, truncated): within 2 LSB of the files
        np.testing.assert_allclose(y[: len(x)], x, rtol=0, atol=2 / 32768)
        assert not y[len(x) :].any()


def test_absent_clip_falls_back_to_its_pack_row(root, tmp_path):
    audio = sorted((root / "audios" / "eval_segments").iterdir())
    corpus = AudioSet(pack_only_root(root, tmp_path, keep=audio[1:]))
    clips = {c.clip_id: c for c in corpus.clips("test")}
    assert len(clips) == 28 and corpus.missing["test"] == []
    assert clips[audio[0].stem].audio.h5_index is not None
    assert clips[audio[1].stem].audio.h5_index is None


def test_absent_clips_are_skipped_and_recorded(root, tmp_path, caplog):
    (tmp_path / "metadata").symlink_to(root / "metadata")
    audio = sorted((root / "audios" / "balanced_train_segments").iterdir())
    folder = tmp_path / "audios" / "balanced_train_segments"
    folder.mkdir(parents=True)
    for path in audio[2:]:
        (folder / path.name).symlink_to(path)
    corpus = AudioSet(tmp_path)
    with caplog.at_level(logging.WARNING, logger="harness.datasets.audioset"):
        clips = corpus.clips("train")
    assert len(clips) == 12
    assert corpus.missing["train"] == sorted(p.stem for p in audio[:2])
    assert "2 of 14 clips" in caplog.text and "balanced_train_segments.csv" in caplog.text


def test_no_clip_on_disk_is_an_error(root, tmp_path):
    (tmp_path / "metadata").symlink_to(root / "metadata")
    (tmp_path / "audios" / "eval_segments").mkdir(parents=True)
    with pytest.raises(MetadataError, match="none of the 28 clips listed in .*eval_segments.csv"):
        AudioSet(tmp_path).clips("test")


def test_class_list_falls_back_to_the_bundled_copy(root, tmp_path, monkeypatch):
    (tmp_path / "metadata").mkdir()
    for name in ("eval_segments.csv", "balanced_train_segments.csv"):
        (tmp_path / "metadata" / name).symlink_to(root / "metadata" / name)
    (tmp_path / "audios").symlink_to(root / "audios")
    monkeypatch.setattr(audioset, "BUNDLED_CLASS_LABELS", root / "metadata" / "class_labels_indices.csv")
    assert len(AudioSet(tmp_path).clips("test")) == 28
    monkeypatch.setattr(audioset, "BUNDLED_CLASS_LABELS", tmp_path / "absent.csv")
    with pytest.raises(LayoutError, match="class_labels_indices.csv"):
        AudioSet(tmp_path).check()
