"""Fault suite (issue 15, defects 2, 3, 6): tampered built sets are refused on open or as read, naming
what differs; whole-track items of different lengths get ``length_mismatch``.

Each test copies a small set built from the dev corpora into ``tmp_path``, tampers with one thing, and
runs ``uss-bench eval`` in-process (``harness.cli.main``): exit 2 and a message naming the file / item.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile

from harness.errors import EXIT_USAGE
from harness.mixtures import BuildOptions, build_mixtures, verify_build

SET = "mixtures/fsdkaggle2018/test"


def eval_args(wd, out, dataset="fsdkaggle2018"):
    return ["eval", dataset, "--baseline", "mixture", "--workdir", wd, "--out", out, "--quiet"]


def test_untampered_set_evaluates(wd, tmp_path, cli_stderr):
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert code == 0, err
    items = pd.read_parquet(tmp_path / "run" / "items.parquet")
    assert len(items) == 40 and (items["status"] == "ok").all()


def test_dropped_manifest_rows_are_refused_naming_the_item(wd, tmp_path, cli_stderr):
    """Defect 2: two rows dropped from the manifest; without the check 31 of 38 items were scored against
    another item's audio with status ok. Now: exit 2, the counts and the first item out of place."""
    path = wd / SET / "manifest.parquet"
    m = pd.read_parquet(path)
    m.drop(index=[5, 20]).reset_index(drop=True).to_parquet(path, index=False)
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert code == EXIT_USAGE, err
    assert "manifest.parquet has 38 rows" in err and "mixtures.h5 has 40 rows" in err
    assert f"first item out of place is {m['item_id'].iloc[6]} (manifest row 5)" in err
    assert not (tmp_path / "run" / "items.parquet").exists()


def test_dropped_rows_with_matching_counts_still_refused(wd, tmp_path, cli_stderr):
    """Defect 2 with build.json's count edited too: the digest no longer matches."""
    path = wd / SET / "manifest.parquet"
    pd.read_parquet(path).drop(index=[5, 20]).to_parquet(path, index=False)
    with h5py.File(wd / SET / "mixtures.h5", "r+") as h5:
        for k in ("mixture", "target"):
            data = np.delete(h5[k][:], [5, 20], axis=0)
            del h5[k]
            h5.create_dataset(k, data=data)
    bj = wd / SET / "build.json"
    build = json.loads(bj.read_text())
    build["counts"]["items"] = 38
    bj.write_text(json.dumps(build))
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert code == EXIT_USAGE and "digest" in err, err


@pytest.mark.parametrize("tamper", ["swap", "nan", "flip"])
def test_tampered_hdf5_rows_are_refused_naming_the_item(wd, tmp_path, cli_stderr, tamper):
    """Defect 3: swapped rows, a NaN in a mixture, one changed sample: the row's sha256 is checked as read."""
    m = pd.read_parquet(wd / SET / "manifest.parquet")
    with h5py.File(wd / SET / "mixtures.h5", "r+") as h5:
        mix = h5["mixture"]
        if tamper == "swap":
            a, b = mix[3], mix[7]
            mix[3], mix[7] = b, a
        elif tamper == "nan":
            mix[3, 1000] = np.nan
        else:
            h5["target"][3, 10] = -h5["target"][3, 10] + 0.5
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert code == EXIT_USAGE, err
    which = "target" if tamper == "flip" else "mixture"
    assert f"the {which} of item {m['item_id'].iloc[3]} (row 3) does not match its manifest hash" in err


@pytest.mark.parametrize("field,value", [("dataset", "fsd50k"), ("split", "train"), ("digest", "0" * 64)])
def test_edited_build_json_is_refused(wd, tmp_path, cli_stderr, field, value):
    bj = wd / SET / "build.json"
    build = json.loads(bj.read_text())
    build[field] = value
    bj.write_text(json.dumps(build))
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert code == EXIT_USAGE and "build.json" in err, err
    assert field in err


def test_edited_per_class_label_in_build_json_is_refused(wd, tmp_path, cli_stderr):
    bj = wd / SET / "build.json"
    build = json.loads(bj.read_text())
    per_class = build["counts"]["per_class"]
    first = next(k for k, v in per_class.items() if v.get("items"))
    per_class["Not a label"] = per_class.pop(first)
    bj.write_text(json.dumps(build))
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert code == EXIT_USAGE and "per-class counts" in err and repr(first) in err, err


@pytest.mark.parametrize("column,value", [("label", "Bark"), ("split", "train"), ("interferer_gain", 1.0),
                                          ("dataset", "fsd50k")])
def test_edited_manifest_column_is_refused(wd, tmp_path, cli_stderr, column, value):
    path = wd / SET / "manifest.parquet"
    m = pd.read_parquet(path)
    m.loc[4, column] = value
    m.to_parquet(path, index=False)
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert code == EXIT_USAGE and "manifest.parquet" in err, err


def test_verify_reports_labels_and_every_column(wd, dev_data):
    """``--verify`` compared only the hash columns: an edited label or onset passed."""
    path = wd / SET / "manifest.parquet"
    m = pd.read_parquet(path)
    item = m["item_id"].iloc[4]
    m.loc[4, "label"] = "Bark" if m.loc[4, "label"] != "Bark" else "Meow"
    m.loc[9, "target_onset_s"] = 0.125
    m.to_parquet(path, index=False)
    problems = verify_build(dev_data / "fsdkaggle2018", wd, BuildOptions("fsdkaggle2018"))
    assert any(p.startswith(f"{item}: label differs") for p in problems), problems
    assert any(p.startswith(f"{m['item_id'].iloc[9]}: target_onset_s differs") for p in problems), problems
    assert any(p.startswith("integrity:") for p in problems)


# -- whole-track sets ------------------------------------------------------------------------------


def copy_musdb(dev_data, dst, tracks=2):
    """Real copies (not links) of the first ``tracks`` MUSDB18 test tracks."""
    src = dev_data / "musdb18hq" / "test"
    for d in sorted(src.iterdir())[:tracks]:
        shutil.copytree(d, dst / "test" / d.name)
        for f in (dst / "test" / d.name).iterdir():
            f.chmod(0o644)
    return dst


def test_whole_track_file_edited_after_build_is_refused(dev_data, tmp_path, cli_stderr):
    """Defect 3: a stem edited after the build in place (same size → only its sha256 tells), and one cut
    (its size changes → the fingerprint on open tells)."""
    root = copy_musdb(dev_data, tmp_path / "musdb")
    wd = tmp_path / "wd"
    build_mixtures(root, wd, BuildOptions("musdb18"))
    track = sorted((root / "test").iterdir())[1]
    data = bytearray((track / "drums.flac").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of audio data: same size, other bytes
    (track / "drums.flac").write_bytes(bytes(data))
    code, err = cli_stderr(eval_args(wd, tmp_path / "run", "musdb18"))
    assert code == EXIT_USAGE, err
    assert "drums.flac" in err and track.name in err
    x, sr = soundfile.read(track / "bass.flac", dtype="float32")
    soundfile.write(track / "bass.flac", x[: len(x) // 4], sr, format="FLAC")
    code, err = cli_stderr(eval_args(wd, tmp_path / "run2", "musdb18"))
    assert code == EXIT_USAGE and "differ from those the set" in err, err
    assert f"the first changed file is {track / 'drums.flac'} (item {track.name}/drums)" in err  # drums: edited too


def test_whole_track_length_mismatch_is_a_status(dev_data, tmp_path, cli_stderr):
    """Defect 6: a stem a quarter the length of its mixture was cut with ``n = min(...)`` and scored ok."""
    root = copy_musdb(dev_data, tmp_path / "musdb", tracks=1)
    track = next((root / "test").iterdir())
    x, sr = soundfile.read(track / "bass.flac", dtype="float32")
    soundfile.write(track / "bass.flac", x[: len(x) // 4], sr, format="FLAC")
    wd = tmp_path / "wd"
    build_mixtures(root, wd, BuildOptions("musdb18"))
    code, err = cli_stderr(eval_args(wd, tmp_path / "run", "musdb18"))
    assert code == 0, err
    items = pd.read_parquet(tmp_path / "run" / "items.parquet").set_index("item_id")
    assert items.loc[f"{track.name}/bass", "status"] == "length_mismatch"
    assert np.isnan(items.loc[f"{track.name}/bass", "sdr"])
    assert (items.drop(index=f"{track.name}/bass")["status"] == "ok").all()
