"""Bad input through the command line: exit code 2 and a message that names the file."""

from __future__ import annotations

import shutil
import subprocess
import sys


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          env=env)


def test_missing_root(tmp_path):
    r = _cli("build-mixtures", "fsd50k", "--root", tmp_path / "absent", "--workdir", tmp_path)
    assert r.returncode == 2 and "absent" in r.stderr


def test_no_root_configured(tmp_path, monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("USS_BENCH_")}
    r = subprocess.run([sys.executable, "-m", "harness", "build-mixtures", "musdb18"], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "USS_BENCH_MUSDB18_ROOT" in r.stderr


def test_wrong_layout(dev_data, tmp_path):
    r = _cli("build-mixtures", "fsd50k", "--root", dev_data / "audioset", "--workdir", tmp_path)
    assert r.returncode == 2 and "FSD50K" in r.stderr


def test_corrupt_audio_is_named(dev_data, tmp_path):
    root = tmp_path / "fsdk"
    shutil.copytree(dev_data / "fsdkaggle2018", root)
    bad = root / "FSDKaggle2018.audio_test" / "657482ab.flac"
    bad.write_bytes(b"not audio at all" * 100)
    r = _cli("build-mixtures", "fsdkaggle2018", "--root", root, "--workdir", tmp_path / "w")
    assert r.returncode == 2 and "657482ab.flac" in r.stderr
    assert not (tmp_path / "w/mixtures/fsdkaggle2018/test").exists()  # nothing half-written


def test_unknown_label_is_named(dev_data, tmp_path):
    root = tmp_path / "fsdk"
    shutil.copytree(dev_data / "fsdkaggle2018", root)
    csv = root / "FSDKaggle2018.meta" / "test_post_competition_scoring_clips.csv"
    csv.write_text(csv.read_text().replace("Acoustic_guitar", "Kazoo_solo", 1))
    r = _cli("build-mixtures", "fsdkaggle2018", "--root", root, "--workdir", tmp_path / "w")
    assert r.returncode == 2 and "Kazoo_solo" in r.stderr and "test_post_competition_scoring_clips.csv" in r.stderr


def test_listed_but_absent_file(dev_data, tmp_path):
    root = tmp_path / "fsdk"
    shutil.copytree(dev_data / "fsdkaggle2018", root)
    (root / "FSDKaggle2018.audio_test" / "907ac6d4.flac").unlink()
    r = _cli("build-mixtures", "fsdkaggle2018", "--root", root, "--workdir", tmp_path / "w")
    assert r.returncode == 2 and "907ac6d4" in r.stderr


def test_eval_without_a_build(tmp_path):
    r = _cli("eval", "--baseline", "mixture", "fsd50k", "--workdir", tmp_path)
    assert r.returncode == 2 and "build-mixtures fsd50k" in r.stderr
    r = _cli("eval", "--baseline", "nonsense", "fsd50k", "--workdir", tmp_path)
    assert r.returncode == 2


def test_datasets_lists_all_six(dev_data, tmp_path):
    import os

    env = {**os.environ, "USS_BENCH_FSD50K_ROOT": str(dev_data / "fsd50k")}
    r = _cli("datasets", env=env)
    assert r.returncode == 0
    for name in ("audioset", "fsdkaggle2018", "fsd50k", "musdb18", "slakh2100", "voicebank-demand"):
        assert name in r.stdout
    assert "valid" in r.stdout
