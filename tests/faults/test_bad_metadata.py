"""Fault suite (issue 15, defects 8 and 9 for metadata, 19 for a Slakh root given as MUSDB18): duplicate
rows, names that leave the split's folder or the root, Latin-1 csvs, a wrong corpus layout. Each is refused
with a :class:`MetadataError` / :class:`LayoutError` naming the file and the line; from the CLI, exit 2.

Each test clones a dev corpus into ``tmp_path`` (real folders, files linked to the read-only dev files).
"""

from __future__ import annotations

import pytest

from harness.datasets.audioset import AudioSet
from harness.datasets.fsd50k import FSD50K
from harness.datasets.fsdkaggle2018 import FSDKaggle2018
from harness.datasets.musdb18 import MUSDB18
from harness.datasets.slakh2100 import Slakh2100
from harness.errors import EXIT_USAGE, LayoutError, MetadataError

FSDK_TEST = "FSDKaggle2018.meta/test_post_competition_scoring_clips.csv"


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


def edit_lines(path, edit):
    """Replace the symlink ``path`` by a real file whose lines are ``edit(lines)``."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.unlink()
    path.write_text("".join(edit(lines)), encoding="utf-8")
    return lines


def test_fsdkaggle2018_duplicate_row(dev_data, tmp_path, cli_stderr):
    """Five duplicated rows gave 45 items instead of 40; now the first duplicate's line is named."""
    root = clone(dev_data / "fsdkaggle2018", tmp_path / "root")
    n = len(FSDKaggle2018(root).clips("test"))
    lines = edit_lines(root / FSDK_TEST, lambda ls: ls + ls[1:6])
    fname = lines[1].split(",")[0]
    with pytest.raises(MetadataError, match=rf"line {len(lines) + 1}: clip {fname[:-4]} already listed on line 2"):
        FSDKaggle2018(root).clips("test")
    code, err = cli_stderr(["build-mixtures", "fsdkaggle2018", "--root", root, "--workdir", tmp_path / "wd", "-q"])
    assert code == EXIT_USAGE and "already listed on line 2" in err and FSDK_TEST.split("/")[1] in err
    assert n == len(lines) - 1  # before the edit: one clip per data line


@pytest.mark.parametrize("name", ["../FSDKaggle2018.audio_train/{x}", "/etc/{x}", "sub/../../{x}"])
def test_fsdkaggle2018_path_leaving_the_split_folder(dev_data, tmp_path, name):
    """A test-csv row naming a train clip (``../FSDKaggle2018.audio_train/X``) leaked it into the test set."""
    root = clone(dev_data / "fsdkaggle2018", tmp_path / "root")
    train = sorted((root / "FSDKaggle2018.audio_train").iterdir())[0].with_suffix(".wav").name
    bad = name.format(x=train)
    edit_lines(root / FSDK_TEST, lambda ls: [ls[0], f"{bad},Bark,Public,0,x\n", *ls[1:]])
    with pytest.raises(MetadataError, match=r"line 2: file name .* leaves .*FSDKaggle2018.audio_test"):
        FSDKaggle2018(root).clips("test")


def test_fsd50k_clip_in_train_and_val(dev_data, tmp_path):
    """dev.csv listing one clip both as train and as val (a leak between the splits) is refused."""
    root = clone(dev_data / "fsd50k", tmp_path / "root")
    path = root / "FSD50K.ground_truth" / "dev.csv"
    lines = edit_lines(path, lambda ls: ls + [ls[1].replace(",train", ",val")])
    fname = lines[1].split(",")[0]
    with pytest.raises(MetadataError, match=rf"dev.csv line {len(lines) + 1}: clip {fname} already listed on line 2"):
        FSD50K(root).clips("val")


def test_fsd50k_fname_leaving_the_folder(dev_data, tmp_path):
    root = clone(dev_data / "fsd50k", tmp_path / "root")
    path = root / "FSD50K.ground_truth" / "eval.csv"
    train = sorted((root / "FSD50K.dev_audio").iterdir())[0].stem
    edit_lines(path, lambda ls: [ls[0], ls[1].replace(ls[1].split(",")[0], f"../FSD50K.dev_audio/{train}", 1),
                                 *ls[2:]])
    with pytest.raises(MetadataError, match=r"eval.csv line 2: file name .* leaves"):
        FSD50K(root).clips("test")


def test_audioset_ytid_leaving_audios(dev_data, tmp_path):
    root = clone(dev_data / "audioset", tmp_path / "root")
    path = root / "metadata" / "eval_segments.csv"
    lines = edit_lines(path, lambda ls: [*ls[:3], ls[3].replace(ls[3].split(",")[0], "../../x"), *ls[4:]])
    assert lines[3][0] != "#"
    with pytest.raises(MetadataError, match=r"eval_segments.csv line 4: file name .* leaves"):
        AudioSet(root).clips("test")


def test_slakh_stem_id_leaving_the_track(dev_data, tmp_path):
    root = clone(dev_data / "slakh2100", tmp_path / "root")
    path = root / "test" / "Track90005" / "metadata.yaml"
    edit_lines(path, lambda ls: [line.replace("  S00:", "  ../../../train/Track90001/stems/S00:") for line in ls])
    with pytest.raises(MetadataError, match=r"metadata.yaml: file name .* leaves"):
        Slakh2100(root).tracks("test")


@pytest.mark.parametrize("corpus", ["fsdkaggle2018", "fsd50k", "audioset", "slakh2100"])
def test_latin1_metadata_is_a_metadata_error(dev_data, tmp_path, cli_stderr, corpus):
    """A csv/yaml saved as Latin-1 raised UnicodeDecodeError (a traceback, exit 1/3); now exit 2 naming the
    file and the line."""
    folder = {"fsdkaggle2018": "fsdkaggle2018", "fsd50k": "fsd50k", "audioset": "audioset",
              "slakh2100": "slakh2100"}[corpus]
    root = clone(dev_data / folder, tmp_path / "root")
    rel = {"fsdkaggle2018": FSDK_TEST, "fsd50k": "FSD50K.ground_truth/eval.csv",
           "audioset": "metadata/eval_segments.csv", "slakh2100": "test/Track90005/metadata.yaml"}[corpus]
    path = root / rel
    data = path.read_bytes()
    second = data.index(b"\n") + 1
    path.unlink()
    path.write_bytes(data[:second] + data[second:].replace(b"\n", " caf\xe9\n".encode("latin-1"), 1))
    code, err = cli_stderr(["build-mixtures", corpus, "--root", root, "--workdir", tmp_path / "wd", "-q"])
    assert code == EXIT_USAGE, err
    assert f"{path.name} line 2: byte 0xe9" in err and "not UTF-8" in err


def test_slakh_root_given_as_musdb_is_a_layout_error(dev_data, cli_stderr, tmp_path):
    """It said "track folder … has no vocals.wav" (a MetadataError about one track); now: wrong layout."""
    with pytest.raises(LayoutError, match="MUSDB18-HQ root .*wrong layout.*look like Slakh2100"):
        MUSDB18(dev_data / "slakh2100").tracks("test")
    code, err = cli_stderr(["build-mixtures", "musdb18", "--root", dev_data / "slakh2100", "--workdir",
                            tmp_path / "wd", "-q"])
    assert code == EXIT_USAGE and "wrong layout" in err
