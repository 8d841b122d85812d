"""SIGKILL of ``eval`` at several points, then ``--resume``: the same ``items.parquet`` as an uninterrupted
run (every column but the wall-clock ``seconds``), no partial file under a final name, no temporary file
or lock left after the resume (issue 15, "a fault suite that stays")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.evaluate import EvalOptions, OracleIRM, part_files, parts_dir, run_eval
from harness.runlock import LOCK_NAME

DRIVER = Path(__file__).with_name("kill_driver.py")
ARGS = ("--baseline", "oracle-irm", "fsd50k", "--batch-size", "4", "--part-items", "4", "-q")
FINAL_PARQUET = ("items.parquet",)


@pytest.fixture(scope="module")
def reference(fsd50k_workdir, tmp_path_factory):
    """The uninterrupted run's items (25 rows of the oracle IRM on fsd50k, parts of 4 rows)."""
    out = tmp_path_factory.mktemp("sigkill-ref") / "run"
    run_eval(OracleIRM(), EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=out, batch_size=4,
                                      part_items=4))
    return pd.read_parquet(out / "items.parquet")


def _killed(point: str, n: int, workdir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(DRIVER), point, str(n), "--", "eval", *ARGS, "--workdir", str(workdir), "--out",
           str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _assert_no_partial_final_files(out: Path) -> None:
    """Every file under a final name is whole: the parquet files read, the JSON files parse."""
    for path in [*out.rglob("*.parquet")]:
        if not path.name.startswith("."):
            pd.read_parquet(path)
    for path in out.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())


def _same(items: pd.DataFrame, reference: pd.DataFrame) -> None:
    # exact: the same items through the same float computation (metrics are per item, blocks the same)
    pd.testing.assert_frame_equal(items.drop(columns="seconds"), reference.drop(columns="seconds"), check_exact=True)


POINTS = [
    pytest.param("before-rename:rank0-*.parquet", 3, id="mid-part-write"),
    pytest.param("after-rename:rank0-*.parquet", 2, id="between-parts", marks=pytest.mark.slow),
    pytest.param("call:harness.evaluate:_separate", 5, id="mid-unit", marks=pytest.mark.slow),
    pytest.param("before-rename:meta.json", 1, id="at-start", marks=pytest.mark.slow),
    pytest.param("before-rename:items.parquet", 1, id="mid-merge-write", marks=pytest.mark.slow),
    pytest.param("after-rename:items.parquet", 1, id="before-run-json", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("point", "n"), POINTS)
def test_sigkill_then_resume_gives_the_uninterrupted_rows(point, n, fsd50k_workdir, reference, tmp_path):
    out = tmp_path / "run"
    killed = _killed(point, n, fsd50k_workdir, out)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    _assert_no_partial_final_files(out)
    if "items.parquet" not in point or point.startswith("before"):
        assert not (out / "items.parquet").exists()
    assert (out / LOCK_NAME).exists()  # the killed run's lock is stale now
    r = subprocess.run([sys.executable, "-m", "harness", "eval", *ARGS, "--workdir", str(fsd50k_workdir), "--out",
                        str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    _same(pd.read_parquet(out / "items.parquet"), reference)
    assert json.loads((out / "run.json").read_text())["items"]["fsd50k"]["rows"] == 25
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name or p.name == LOCK_NAME]
    assert leftovers == []
    rows = sum(len(pd.read_parquet(p)) for p in part_files(parts_dir(out, "fsd50k", "none")))
    assert rows == 25  # no part was written twice


@pytest.mark.slow
def test_sigkill_twice_then_resume(fsd50k_workdir, reference, tmp_path):
    """Killed, resumed and killed again mid-part, then resumed to the end."""
    out = tmp_path / "run"
    assert _killed("after-rename:rank0-*.parquet", 1, fsd50k_workdir, out).returncode == -signal.SIGKILL
    again = _killed("before-rename:rank0-*.parquet", 2, fsd50k_workdir, out, "--resume")
    assert again.returncode == -signal.SIGKILL, again.stdout + again.stderr
    _assert_no_partial_final_files(out)
    r = subprocess.run([sys.executable, "-m", "harness", "eval", *ARGS, "--workdir", str(fsd50k_workdir), "--out",
                        str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    _same(pd.read_parquet(out / "items.parquet"), reference)
