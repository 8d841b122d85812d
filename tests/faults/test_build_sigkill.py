"""SIGKILL of ``build-mixtures`` at several points, then a rerun: the same set, byte for byte, as an
uninterrupted build (``mixtures.h5``, ``manifest.parquet``, ``build.json`` but its wall-clock ``seconds``),
no partial file under a final name, and no temporary or ``.old`` folder left after the rerun (issue 15,
"a fault suite that stays")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.mixtures import BuildOptions, build_mixtures

DRIVER = Path(__file__).with_name("kill_driver.py")
SET = Path("mixtures") / "fsd50k" / "test"
ARGS = ("build-mixtures", "fsd50k", "--per-class", "1", "--jobs", "1", "-q")


@pytest.fixture(scope="module")
def reference(dev_data, tmp_path_factory):
    """The uninterrupted build's set folder (25 fsd50k items, one per class)."""
    wd = tmp_path_factory.mktemp("build-ref")
    build_mixtures(dev_data / "fsd50k", wd, BuildOptions("fsd50k", per_class=1, jobs=1))
    return wd / SET


def _build(dev_data: Path, workdir: Path, *extra: str, point: str | None = None, n: int = 1):
    head = [sys.executable, str(DRIVER), point, str(n), "--"] if point else [sys.executable, "-m", "harness"]
    cmd = [*head, *ARGS, "--root", str(dev_data / "fsd50k"), "--workdir", str(workdir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _build_json(folder: Path) -> dict:
    build = json.loads((folder / "build.json").read_text())
    build.pop("seconds")
    return build


def _assert_same_set(folder: Path, reference: Path) -> None:
    for name in ("mixtures.h5", "manifest.parquet"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    assert _build_json(folder) == _build_json(reference)


def _temps(workdir: Path) -> list[Path]:
    """Temporary (``.test.tmp-…``) and replaced (``.test.old-…``) set folders beside the final one."""
    return sorted(p for p in (workdir / SET).parent.iterdir() if p.name.startswith("."))


POINTS = [
    pytest.param("call:harness.mixtures:_RowWriter.__call__", 25, id="mid-hdf5-write"),
    pytest.param("call:harness.mixtures:trim_hdf5", 1, id="hdf5-closed-untrimmed", marks=pytest.mark.slow),
    pytest.param("call:harness.mixtures:items_digest", 1, id="between-manifest-and-build-json",
                 marks=pytest.mark.slow),
    pytest.param("before-rename:test", 1, id="before-final-rename", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("point", "n"), POINTS)
def test_sigkill_then_rerun_gives_the_uninterrupted_set(point, n, dev_data, reference, tmp_path):
    killed = _build(dev_data, tmp_path, point=point, n=n)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not (tmp_path / SET).exists()  # nothing under the final name before the final rename
    assert len(_temps(tmp_path)) == 1  # the killed build's temporary set
    r = _build(dev_data, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_same_set(tmp_path / SET, reference)
    assert _temps(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("after", [False, True], ids=["between-the-two-renames", "after-the-final-rename"])
def test_sigkill_while_replacing_a_set_then_rerun(after, dev_data, reference, tmp_path):
    """A rebuild over an existing set (another seed) killed while it replaces it: either the old set is
    moved aside and the new one not yet in place, or the new one is in place and the old not yet removed.
    The rerun gives the uninterrupted set and removes the old copy."""
    first = _build(dev_data, tmp_path, "--seed", "7")
    assert first.returncode == 0, first.stdout + first.stderr
    old = (tmp_path / SET / "mixtures.h5").read_bytes()
    assert old != (reference / "mixtures.h5").read_bytes()
    killed = _build(dev_data, tmp_path, point=f"{'after' if after else 'before'}-rename:test")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    temps = _temps(tmp_path)
    if after:  # the new set is whole under the final name, the old one beside it
        _assert_same_set(tmp_path / SET, reference)
        assert [p.name.split("-")[0] for p in temps] == [".test.old"]
    else:  # the old set only under its .old name, the new one under its temporary name
        assert not (tmp_path / SET).exists()
        assert sorted(p.name.split("-")[0] for p in temps) == [".test.old", ".test.tmp"]
        old_copy = next(p for p in temps if ".old-" in p.name)
        assert (old_copy / "mixtures.h5").read_bytes() == old
    r = _build(dev_data, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_same_set(tmp_path / SET, reference)
    assert _temps(tmp_path) == []
