"""Fault suite (issue 15, defects 9 and 10): bad input files and I/O errors give a one-line error naming the
file and exit 2, never a traceback (exit 1) or an "internal error" (exit 3).

Covered: ``uss-bench.toml`` with ``roots`` of the wrong type, a truncated / non-Parquet manifest, a bad
``build.json``, ``--out`` or ``--workdir`` naming a file, a full disk during ``build-mixtures`` (a tiny
tmpfs; needs root to mount, else skipped with the reason), a read-only output folder (a read-only tmpfs).
Latin-1 csvs: ``test_bad_metadata.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pytest

from harness.errors import EXIT_USAGE
from harness.mixtures import BuildOptions, build_mixtures

SET = "mixtures/fsdkaggle2018/test"


def assert_one_line_error(code, err, *needles):
    assert code == EXIT_USAGE, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err
    for n in needles:
        assert str(n) in err, (n, err)


def eval_args(wd, out):
    return ["eval", "fsdkaggle2018", "--baseline", "mixture", "--workdir", wd, "--out", out, "--quiet"]


@pytest.mark.parametrize("toml,needle", [('roots = "/data"\n', "`roots` must be a table"),
                                         ("[roots]\nfsdkaggle2018 = 5\n", "must be a folder name"),
                                         ("[roots]\nfsdkaggle2018 = ['a']\n", "must be a folder name")])
def test_toml_roots_of_the_wrong_type(tmp_path, cli_stderr, monkeypatch, toml, needle):
    """``roots = "/data"`` made ``dataset in roots`` a substring test, then a TypeError (exit 3)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("USS_BENCH_FSDKAGGLE2018_ROOT", raising=False)
    (tmp_path / "uss-bench.toml").write_text(toml)
    code, err = cli_stderr(["build-mixtures", "fsdkaggle2018", "--workdir", tmp_path / "w", "-q"])
    assert_one_line_error(code, err, "uss-bench.toml", needle)


@pytest.mark.parametrize("damage", ["truncate", "not_parquet", "empty"])
def test_bad_manifest_file(wd, tmp_path, cli_stderr, damage):
    path = wd / SET / "manifest.parquet"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "not_parquet": b"item_id,label\nx,y\n",
                      "empty": b""}[damage])
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert_one_line_error(code, err, path, "not a Parquet file")


@pytest.mark.parametrize("text,needle", [("{not json", "not valid JSON"), ("[1, 2]", "JSON list"),
                                         ('{"dataset": "fsdkaggle2018"}', "lacks split, digest, counts"),
                                         ("\xff\xfe", "not valid JSON")])
def test_bad_build_json(wd, tmp_path, cli_stderr, text, needle):
    path = wd / SET / "build.json"
    path.write_bytes(text.encode("latin-1"))
    code, err = cli_stderr(eval_args(wd, tmp_path / "run"))
    assert_one_line_error(code, err, path, needle)


def test_out_naming_a_file(wd, tmp_path, cli_stderr):
    """``--out FILE`` died in mkdir with NotADirectoryError (exit 3)."""
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        code, err = cli_stderr(eval_args(wd, out))
        assert_one_line_error(code, err, "--out", "is a file, not a folder")


def test_workdir_naming_a_file(dev_data, tmp_path, cli_stderr):
    (tmp_path / "afile").write_text("x")
    code, err = cli_stderr(["build-mixtures", "fsdkaggle2018", "--root", dev_data / "fsdkaggle2018", "--workdir",
                            tmp_path / "afile", "-q"])
    assert_one_line_error(code, err, "--workdir", "is a file, not a folder")


def test_os_error_message_names_the_file():
    import errno

    from harness.errors import os_error_message

    assert os_error_message(OSError(errno.EROFS, "Read-only file system", "/x/y")) == \
        "read-only file system: /x/y; choose a writable folder"
    assert os_error_message(OSError(errno.ENOENT, "No such file", "/x")) is None  # not the environment's


# -- a full disk and a read-only folder (tmpfs mounts: root only) ----------------------------------


@contextlib.contextmanager
def tmpfs(path, size="2m", readonly=False):
    """Mount a tmpfs of ``size`` at ``path`` (skip when that is not possible), unmount afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a tmpfs mount needs root (the full-disk / read-only cases run as root in CI)")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_before_the_build(dev_data, tmp_path, cli_stderr):
    """A 2 MB disk for a ≈ 21 MB set: refused up front with the numbers, nothing left behind."""
    with tmpfs(tmp_path / "small") as disk:
        code, err = cli_stderr(["build-mixtures", "fsdkaggle2018", "--root", dev_data / "fsdkaggle2018", "--workdir",
                                disk / "wd", "-q"])
        assert_one_line_error(code, err, f"no space left on {disk}", "needs ≈ 21 MB")  # 40 × 2 × 64000 × 4 B
        assert not any((disk / "wd" / "mixtures" / "fsdkaggle2018").iterdir())


def test_full_disk_during_the_build_keeps_the_previous_set(dev_data, tmp_path, cli_stderr, monkeypatch):
    """The disk fills after the free-space check (bypassed here, as when another process writes meanwhile).
    Before the fix h5py's ENOSPC tracebacks were followed by a segfault (of this pytest process) when the
    failed HDF5 objects were released; now the file's bytes are reserved before HDF5 writes, the error is
    one line, the temporary set is removed and the previous set untouched."""
    from harness import mixtures

    with tmpfs(tmp_path / "small", size="24m") as disk:
        build_mixtures(dev_data / "fsdkaggle2018", disk / "wd", BuildOptions("fsdkaggle2018"))
        before = {p.name: p.read_bytes() for p in (disk / "wd" / SET).iterdir()}
        monkeypatch.setattr(mixtures, "check_free_space", lambda folder, needed: None)
        code, err = cli_stderr(["build-mixtures", "fsdkaggle2018", "--root", dev_data / "fsdkaggle2018", "--workdir",
                                disk / "wd", "--seed", "7", "-q"])
        assert_one_line_error(code, err, f"no space left on {disk}", "needs ≈ 21 MB")
        assert sorted(p.name for p in (disk / "wd" / "mixtures" / "fsdkaggle2018").iterdir()) == ["test"]
        assert {p.name: p.read_bytes() for p in (disk / "wd" / SET).iterdir()} == before


def test_read_only_output_folder(wd, tmp_path, cli_stderr):
    """eval into a read-only file system: exit 2 naming the folder (was an internal error, exit 3)."""
    with tmpfs(tmp_path / "ro", readonly=True) as ro:
        code, err = cli_stderr(eval_args(wd, ro / "run"))
        assert_one_line_error(code, err, "read-only file system", ro / "run")
    code, err = cli_stderr(["build-mixtures", "fsdkaggle2018", "--root", "/nonexistent", "--workdir", wd, "-q"])
    assert code == EXIT_USAGE
    assert json.loads((wd / SET / "build.json").read_text())["counts"]["items"] == 40


@pytest.mark.parametrize("root", [5, ["a"], {"x": 1}, ""])
def test_root_of_the_wrong_type_from_a_config(root):
    """A TOML (e.g. a train config) giving a root as a number or list: TypeError in Path() before."""
    from harness.datasets.base import resolve_root
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="must be a folder name"):
        resolve_root("fsd50k", root)


def test_atomic_writes_leave_no_temporary_file_on_a_full_disk(tmp_path):
    """A write that fails (ENOSPC on a 64-kB tmpfs) removes its ``.NAME.tmp-PID`` file; the final name
    keeps its previous content."""
    import pandas as pd

    from harness.datasets.store import atomic_write_parquet, atomic_write_text

    with tmpfs(tmp_path / "tiny", size="64k") as disk:
        atomic_write_text(disk / "a.txt", "old\n")
        with pytest.raises(OSError):
            atomic_write_text(disk / "a.txt", "x" * 200_000)
        with pytest.raises(OSError):
            atomic_write_parquet(pd.DataFrame({"x": [str(i) * 50 for i in range(20_000)]}), disk / "b.parquet")
        assert sorted(p.name for p in disk.iterdir()) == ["a.txt"]
        assert (disk / "a.txt").read_text() == "old\n"
