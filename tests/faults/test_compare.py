"""Issue 15 #4: ``compare`` must fail when the candidate lost items or datasets, refuse runs on different
sets, validate its tolerance, and survive a run without a metric column."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.errors import UssBenchError
from harness.evaluate import items_frame
from harness.reports import compare_runs


def _items(dataset: str, n: int = 4, offset: float = 0.0) -> pd.DataFrame:
    rows = [{"system": "s", "dataset": dataset, "split": "test", "condition": "average", "item_id": f"{dataset}-{k}",
             "class_id": k % 2, "label": f"c{k % 2}", "sdr": 5.0 + k + offset, "sdri": 3.0 + k + offset,
             "status": "ok", "seconds": 0.1} for k in range(n)]
    return items_frame(rows)


def _run(folder, frame: pd.DataFrame, digests: dict[str, str] | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "items.parquet")
    if digests is not None:
        builds = {d: {"digest": v, "path": f"/sets/{d}"} for d, v in digests.items()}
        (folder / "run.json").write_text(json.dumps({"builds": builds}))
    return folder


@pytest.fixture
def base(tmp_path):
    frame = pd.concat([_items("fsd50k"), _items("slakh2100")], ignore_index=True)
    return _run(tmp_path / "base", frame, {"fsd50k": "a" * 64, "slakh2100": "b" * 64})


def test_candidate_missing_a_dataset_is_a_regression(base, tmp_path, cli):
    cand = _run(tmp_path / "cand", _items("fsd50k"), {"fsd50k": "a" * 64})
    cmp = compare_runs(base, cand)
    assert cmp.missing == 4 and cmp.missing_datasets == ["slakh2100"]
    r = cli("compare", base, cand)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "slakh2100" in r.stdout + r.stderr and "no regression" not in r.stdout
    ok = cli("compare", base, cand, "--allow-missing")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_candidate_missing_items_is_a_regression(base, tmp_path, cli):
    frame = pd.read_parquet(base / "items.parquet").iloc[:-1]  # one slakh2100 item lost
    cand = _run(tmp_path / "cand", frame)
    assert compare_runs(base, cand).missing == 1
    assert cli("compare", base, cand).returncode == 1
    assert cli("compare", base, cand, "--allow-missing").returncode == 0


def test_runs_on_different_sets_are_refused(base, tmp_path, cli):
    frame = pd.read_parquet(base / "items.parquet")
    cand = _run(tmp_path / "cand", frame, {"fsd50k": "c" * 64, "slakh2100": "b" * 64})  # fsd50k rebuilt
    with pytest.raises(UssBenchError, match="fsd50k.*different sets"):
        compare_runs(base, cand)
    r = cli("compare", base, cand)
    assert r.returncode == 2 and "fsd50k" in r.stderr and "Traceback" not in r.stderr
    assert cli("compare", base, cand, "--allow-different-sets").returncode == 0


@pytest.mark.parametrize("tol", ["nan", "inf", "-0.1", "-inf"])
def test_tolerance_must_be_finite_and_not_negative(base, tol, cli):
    with pytest.raises(UssBenchError, match="tolerance"):
        compare_runs(base, base, float(tol))
    r = cli("compare", base, base, f"--tolerance-db={tol}")
    assert r.returncode == 2 and "tolerance" in r.stderr, r.stdout + r.stderr


def test_nan_tolerance_no_longer_hides_a_drop(base, tmp_path, cli):
    frame = pd.read_parquet(base / "items.parquet")
    frame["sdri"] -= 5.0
    cand = _run(tmp_path / "cand", frame)
    assert cli("compare", base, cand, "--tolerance-db=nan").returncode == 2
    assert cli("compare", base, cand).returncode == 1


def test_a_run_without_a_metric_column_is_reported_not_a_crash(base, tmp_path, cli):
    frame = pd.read_parquet(base / "items.parquet").drop(columns=["sdri"])
    cand = _run(tmp_path / "cand", frame)
    cmp = compare_runs(base, cand)
    missing = cmp.table[cmp.table["metric"] == "sdri"]
    assert len(missing) == 2 and missing["candidate"].isna().all() and (missing["note"] == "missing in candidate").all()
    assert set(cmp.regressions["metric"]) == {"sdri"}  # the base had it: losing it is a regression
    r = cli("compare", base, cand)
    assert r.returncode == 1 and "missing" in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    # the other way round: the baseline lacks it, the candidate's values cannot regress against nothing
    r = cli("compare", cand, base)
    assert r.returncode == 0 and "missing in base" in r.stdout, r.stdout + r.stderr


def test_a_report_folder_carries_its_runs_digests(base, tmp_path, cli):
    frame = pd.read_parquet(base / "items.parquet")
    report = _run(tmp_path / "report", frame)  # a report of runs: digests in sources.json, no run.json
    (report / "sources.json").write_text(json.dumps({"runs": [
        {"path": str(base), "label": "base", "systems": {"s": "s"}, "digests": {"fsd50k": "c" * 64}}]}))
    r = cli("compare", base, report)
    assert r.returncode == 2 and "fsd50k" in r.stderr and "cccccccccccc" in r.stderr, r.stdout + r.stderr


def test_multi_system_candidate_missing_a_system_is_a_regression(tmp_path, cli):
    a = pd.concat([_items("fsd50k").assign(system=s) for s in ("x", "y")], ignore_index=True)
    base = _run(tmp_path / "base", a)
    cand = _run(tmp_path / "cand", a[a["system"] == "x"].assign(system="x"))
    cand_both = _run(tmp_path / "cand2", a)
    assert compare_runs(base, cand_both).missing == 0
    cmp = compare_runs(base, cand)
    assert cmp.missing == 4 and cmp.failed
    assert cli("compare", base, cand).returncode == 1
