"""SIGKILL of ``embed-queries`` at several points, then a rerun: the same query files as an uninterrupted
run (every array of ``queries.npz``, exactly, and ``queries.json``), no partial file under a final name,
and no temporary or ``.old`` folder left after the rerun (issue 15, "a fault suite that stays").

The demo model (``models/demo/demo_tiny.safetensors``, a 128-d ``emb`` query net) over the dev FSD50K
train split (10 clips of 10 classes). ``queries.npz`` is compared by its arrays: ``np.savez`` stamps the
zip members with the wall clock, so its bytes differ between any two runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.models import file_sha256
from harness.queries import embed_queries, query_dir

DRIVER = Path(__file__).with_name("kill_driver.py")
CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "demo" / "demo_tiny.safetensors"
DATASET = "fsd50k"
SHA = file_sha256(CHECKPOINT)
FINAL = SHA[:16]  # the query set's folder name


@pytest.fixture(scope="module")
def reference(dev_data, tmp_path_factory):
    """The uninterrupted run's query folder."""
    wd = tmp_path_factory.mktemp("embed-ref")
    embed_queries(DATASET, CHECKPOINT, dev_data / DATASET, wd, device="cpu")
    return query_dir(wd, DATASET, SHA)


def _embed(dev_data: Path, workdir: Path, point: str | None = None, n: int = 1):
    head = [sys.executable, str(DRIVER), point, str(n), "--"] if point else [sys.executable, "-m", "harness"]
    cmd = [*head, "embed-queries", DATASET, "--checkpoint", str(CHECKPOINT), "--root", str(dev_data / DATASET),
           "--workdir", str(workdir), "--device", "cpu", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _assert_same_queries(folder: Path, reference: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["queries.json", "queries.npz"]
    got, want = np.load(folder / "queries.npz"), np.load(reference / "queries.npz")
    assert sorted(got.files) == sorted(want.files)
    for name in want.files:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert json.loads((folder / "queries.json").read_text()) == json.loads((reference / "queries.json").read_text())


def _temps(workdir: Path) -> list[Path]:
    """Temporary (``.<sha>.tmp-…``) and replaced (``.<sha>.old-…``) query folders beside the final one."""
    parent = workdir / "queries" / DATASET
    return sorted(p for p in parent.iterdir() if p.name.startswith(".")) if parent.is_dir() else []


POINTS = [
    # (point, n, files the killed run's temporary folder holds)
    pytest.param("call:harness.models:embed", 5, None, id="mid-embedding"),
    pytest.param("call:numpy:savez", 1, [], id="before-npz", marks=pytest.mark.slow),
    pytest.param("call:json:dumps", 1, ["queries.npz"], id="between-npz-and-json", marks=pytest.mark.slow),
    pytest.param(f"before-rename:{FINAL}", 1, ["queries.json", "queries.npz"], id="before-final-rename"),
]


@pytest.mark.parametrize(("point", "n", "in_temp"), POINTS)
def test_sigkill_then_rerun_gives_the_uninterrupted_queries(point, n, in_temp, dev_data, reference, tmp_path):
    killed = _embed(dev_data, tmp_path, point, n)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not query_dir(tmp_path, DATASET, SHA).exists()  # nothing under the final name
    temps = _temps(tmp_path)
    if in_temp is None:  # killed before the temporary folder was made
        assert temps == []
    else:
        assert len(temps) == 1 and sorted(p.name for p in temps[0].iterdir()) == in_temp
    r = _embed(dev_data, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_same_queries(query_dir(tmp_path, DATASET, SHA), reference)
    assert _temps(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("after", [False, True], ids=["between-the-two-renames", "after-the-final-rename"])
def test_sigkill_while_replacing_the_queries_then_rerun(after, dev_data, reference, tmp_path):
    """A rerun over an existing query set killed while it replaces it; the next rerun leaves one whole set."""
    first = _embed(dev_data, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    killed = _embed(dev_data, tmp_path, f"{'after' if after else 'before'}-rename:{FINAL}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    kinds = sorted(p.name.rsplit(".", 1)[1].split("-")[0] for p in _temps(tmp_path))
    assert kinds == (["old"] if after else ["old", "tmp"])
    assert query_dir(tmp_path, DATASET, SHA).exists() == after
    r = _embed(dev_data, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_same_queries(query_dir(tmp_path, DATASET, SHA), reference)
    assert _temps(tmp_path) == []
