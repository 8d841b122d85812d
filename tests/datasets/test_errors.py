"""The registry and the readers' errors: wrong roots, absent files, corrupt audio, unknown labels.

Each test clones a dev corpus into ``tmp_path`` (real folders, files as symlinks to the read-only dev
files), breaks one thing, and checks the error names the file.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from harness.datasets import CORPORA, get_corpus
from harness.datasets.audioset import AudioSet
from harness.datasets.fsd50k import FSD50K
from harness.datasets.fsdkaggle2018 import FSDKaggle2018
from harness.datasets.musdb18 import MUSDB18
from harness.datasets.slakh2100 import Slakh2100
from harness.datasets.voicebank_demand import VoicebankDemand
from harness.errors import AudioError, ConfigError, LayoutError, MetadataError

DEV_FOLDERS = {
    "audioset": "audioset",
    "fsdkaggle2018": "fsdkaggle2018",
    "fsd50k": "fsd50k",
    "musdb18": "musdb18hq",
    "slakh2100": "slakh2100",
    "voicebank-demand": "voicebank-demand",
}


def clone(src, dst):
    """Recreate the tree ``src`` at ``dst``: real, writable folders; files symlinked to ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.symlink_to(path)
    return dst


def rewrite(path, old, new):
    """Replace the symlink ``path`` by a real file with ``old`` replaced by ``new`` (once)."""
    text = path.read_text()
    assert old in text
    path.unlink()
    path.write_text(text.replace(old, new, 1))


def test_registry_order_and_lookup(tmp_path):
    assert list(CORPORA) == list(DEV_FOLDERS)
    assert all(name == cls.name for name, cls in CORPORA.items())
    corpus = get_corpus("fsd50k", tmp_path)
    assert isinstance(corpus, FSD50K) and corpus.root == tmp_path


def test_unknown_corpus_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        ConfigError, match="unknown dataset 'esc50'.*audioset, fsdkaggle2018, .*voicebank-demand"
    ):
        get_corpus("esc50", tmp_path)


@pytest.mark.parametrize("name", list(CORPORA))
def test_missing_root(name, tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(LayoutError, match="does not exist") as exc:
        get_corpus(name, root).check()
    assert str(root) in str(exc.value) and "Expected layout" in str(exc.value)


@pytest.mark.parametrize(
    ("cls", "wrong", "missing"),
    [
        (FSD50K, "audioset", "FSD50K.ground_truth"),
        (FSDKaggle2018, "fsd50k", "FSDKaggle2018.meta"),
        (AudioSet, "fsdkaggle2018", "metadata"),
        (MUSDB18, "voicebank-demand", "test/"),
        (Slakh2100, "fsd50k", "train/, validation/ and test/"),
        (VoicebankDemand, "musdb18", "clean_testset_wav"),
    ],
)
def test_wrong_layout(cls, wrong, missing, dev_data):
    corpus = cls(dev_data / DEV_FOLDERS[wrong])
    with pytest.raises(LayoutError, match=f"{cls.title} root .*missing folders? {missing}"):
        corpus.check()
    with pytest.raises(LayoutError):
        corpus.clips("test") if cls.kind == "clips" else corpus.tracks("test")


def test_unknown_split(dev_data):
    with pytest.raises(LayoutError, match="no split 'eval'"):
        FSD50K(dev_data / "fsd50k").clips("eval")


# -- files listed but absent ----------------------------------------------------------------------


def test_fsdkaggle2018_listed_clip_absent(dev_data, tmp_path):
    root = clone(dev_data / "fsdkaggle2018", tmp_path)
    (root / "FSDKaggle2018.audio_test" / "907ac6d4.flac").unlink()
    with pytest.raises(
        MetadataError, match="listed in .*test_post_competition_scoring_clips.csv but absent"
    ) as exc:
        FSDKaggle2018(root).clips("test")
    assert "907ac6d4.wav" in str(exc.value)
    assert len(FSDKaggle2018(root).clips("train")) == 3


def test_fsd50k_listed_clip_absent(dev_data, tmp_path):
    root = clone(dev_data / "fsd50k", tmp_path)
    (root / "FSD50K.dev_audio" / "90819734.flac").unlink()  # a val clip
    with pytest.raises(MetadataError, match="listed in .*dev.csv but absent: .*90819734.wav"):
        FSD50K(root).clips("val")


def test_fsd50k_missing_audio_folder(dev_data, tmp_path):
    root = clone(dev_data / "fsd50k", tmp_path)
    for path in (root / "FSD50K.eval_audio").iterdir():
        path.unlink()
    (root / "FSD50K.eval_audio").rmdir()
    with pytest.raises(LayoutError, match="missing folder FSD50K.eval_audio"):
        FSD50K(root).clips("test")


def test_musdb18_stem_absent(dev_data, tmp_path):
    root = clone(dev_data / "musdb18hq", tmp_path)
    (root / "test" / "Music Delta - 80s Rock" / "bass.flac").unlink()
    with pytest.raises(MetadataError, match="Music Delta - 80s Rock has no bass.wav"):
        MUSDB18(root).tracks("test")


def test_slakh2100_rendered_stem_absent(dev_data, tmp_path):
    root = clone(dev_data / "slakh2100", tmp_path)
    (root / "train" / "Track00001" / "stems" / "S10.flac").unlink()
    with pytest.raises(MetadataError, match="listed in .*Track00001/metadata.yaml but absent: .*S10.flac"):
        Slakh2100(root).tracks("train")


def test_slakh2100_mix_absent(dev_data, tmp_path):
    root = clone(dev_data / "slakh2100", tmp_path)
    (root / "test" / "Track90015" / "mix.flac").unlink()
    with pytest.raises(MetadataError, match="Track90015 has no mix.flac"):
        Slakh2100(root).tracks("test")


@pytest.mark.parametrize("side", ["noisy_testset_wav", "clean_testset_wav"])
def test_voicebank_twin_absent(side, dev_data, tmp_path):
    root = clone(dev_data / "voicebank-demand", tmp_path)
    (root / side / "p257_015.wav").unlink()
    other = "clean_testset_wav" if side == "noisy_testset_wav" else "noisy_testset_wav"
    with pytest.raises(MetadataError, match=f"{other}/p257_015.wav has no twin in .*{side}"):
        VoicebankDemand(root).tracks("test")


# -- audio ---------------------------------------------------------------------------------------------


def test_corrupt_audio_file(dev_data, tmp_path):
    root = clone(dev_data / "fsdkaggle2018", tmp_path)
    path = root / "FSDKaggle2018.audio_test" / "8c6b4c11.flac"
    path.unlink()
    path.write_bytes(b"fLaC this is not audio" * 10)
    corpus = FSDKaggle2018(root)
    clip = {c.clip_id: c for c in corpus.clips("test")}["8c6b4c11"]  # listing does not decode
    with pytest.raises(AudioError, match="8c6b4c11.flac"):
        corpus.read(clip.audio, 32000)


def test_corrupt_hdf5_pack(dev_data, tmp_path):
    root = clone(dev_data / "audioset", tmp_path)
    for path in (root / "audios" / "eval_segments").iterdir():
        path.unlink()
    pack = root / "hdf5s" / "waveforms" / "eval.h5"
    pack.unlink()
    pack.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    with pytest.raises(MetadataError, match="eval.h5"):
        AudioSet(root).clips("test")


def test_wrong_sample_rate(dev_data, tmp_path):
    root = clone(dev_data / "fsdkaggle2018", tmp_path)
    path = root / "FSDKaggle2018.audio_train" / "cef7ed5f.flac"
    path.unlink()
    soundfile.write(path, np.zeros(22050, dtype=np.float32), 22050)
    corpus = FSDKaggle2018(root)
    clip = {c.clip_id: c for c in corpus.clips("train")}["cef7ed5f"]
    with pytest.raises(
        AudioError, match="cef7ed5f.flac: sample rate 22050 Hz, but FSDKaggle2018 ships 44100 Hz"
    ):
        corpus.read(clip.audio, 32000)


# -- unknown labels --------------------------------------------------------------------------------------


def test_fsdkaggle2018_unknown_label(dev_data, tmp_path):
    root = clone(dev_data / "fsdkaggle2018", tmp_path)
    rewrite(root / "FSDKaggle2018.meta" / "train_post_competition.csv", "Clarinet", "Kazoo")
    with pytest.raises(MetadataError, match="train_post_competition.csv line 3: unknown label 'Kazoo'"):
        FSDKaggle2018(root).clips("train")


def test_fsd50k_unknown_label(dev_data, tmp_path):
    root = clone(dev_data / "fsd50k", tmp_path)
    rewrite(root / "FSD50K.ground_truth" / "eval.csv", "Accordion,", "Bandoneon,")
    with pytest.raises(MetadataError, match="eval.csv line 2: unknown label 'Bandoneon'"):
        FSD50K(root).clips("test")


def test_audioset_unknown_mid(dev_data, tmp_path):
    root = clone(dev_data / "audioset", tmp_path)
    rewrite(root / "metadata" / "eval_segments.csv", '"/m/01bjv"', '"/m/01bjv,/m/zzzzz"')
    with pytest.raises(MetadataError, match="eval_segments.csv line 6: unknown label '/m/zzzzz'"):
        AudioSet(root).clips("test")


def test_audioset_malformed_line(dev_data, tmp_path):
    root = clone(dev_data / "audioset", tmp_path)
    rewrite(
        root / "metadata" / "balanced_train_segments.csv",
        'KYDxAVjyPdr, 0.000, 4.728, "/m/018j2"',
        "KYDxAVjyPdr",
    )
    with pytest.raises(MetadataError, match="balanced_train_segments.csv line 4: expected"):
        AudioSet(root).clips("train")


def test_slakh2100_malformed_yaml(dev_data, tmp_path):
    root = clone(dev_data / "slakh2100", tmp_path)
    rewrite(root / "test" / "Track90005" / "metadata.yaml", "stems:", "stems: [")
    with pytest.raises(MetadataError, match="Track90005/metadata.yaml: not valid YAML"):
        Slakh2100(root).tracks("test")
