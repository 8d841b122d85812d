"""Aggregates computed by hand, the Markdown report, and compare's verdicts and exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from harness.evaluate import items_frame
from harness.reports import aggregate, bootstrap_mean, compare_runs, render_report, table2_row


def _items(sdri: dict[str, list[float]], dataset="fsd50k", system="s", condition="none"):
    rows = []
    for label, values in sdri.items():
        for k, v in enumerate(values):
            rows.append({"system": system, "dataset": dataset, "split": "test", "condition": condition,
                         "item_id": f"{label}-{k}", "class_id": 0, "label": label, "sdr": v + 1, "sdri": v,
                         "status": "ok", "seconds": 0.1})
    return items_frame(rows)


def test_class_median_mean_by_hand():
    items = _items({"a": [1.0, 2.0, 9.0], "b": [4.0, 6.0]})
    # medians: a -> 2, b -> 5; mean over classes 3.5 (plain mean over items would be 4.4)
    assert aggregate(items["sdri"], items["label"], "class-median-mean") == pytest.approx(3.5)
    assert aggregate(items["sdri"], items["label"], "mean") == pytest.approx(4.4)
    assert table2_row(items)["fsd50k_sdri"] == pytest.approx(3.5)


def test_not_ok_rows_stay_out_of_aggregates(tmp_path):
    items = _items({"a": [1.0, 3.0], "b": [5.0]})
    items.loc[0, ["status", "sdri"]] = ["ref_silent", np.nan]
    assert table2_row(items)["fsd50k_sdri"] == pytest.approx((3.0 + 5.0) / 2)
    items.to_parquet(tmp_path / "items.parquet")
    text = render_report(tmp_path).summary.read_text()
    assert "ref_silent: 1" in text and "paper" in text


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    x = np.random.default_rng(1).normal(3, 1, 200)
    m, lo, hi = bootstrap_mean(x)
    assert lo < m < hi and (m, lo, hi) == bootstrap_mean(x)


@pytest.fixture
def two_runs(tmp_path):
    base = _items({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    (tmp_path / "base").mkdir()
    base.to_parquet(tmp_path / "base/items.parquet")
    worse = base.copy()
    worse.loc[worse["label"] == "a", "sdri"] -= 0.5  # class-median-mean drops by 0.25 dB
    (tmp_path / "cand").mkdir()
    worse.to_parquet(tmp_path / "cand/items.parquet")
    return tmp_path


def test_compare_flags_a_regression(two_runs):
    same = compare_runs(two_runs / "base", two_runs / "base", 0.1)
    assert same.regressions.empty and same.newly_failing == 0
    worse = compare_runs(two_runs / "base", two_runs / "cand", 0.1)
    sdri = worse.table.set_index("metric").loc["sdri"]
    assert sdri["delta"] == pytest.approx(-0.25)
    assert list(worse.regressions["metric"]) == ["sdri"]
    assert compare_runs(two_runs / "base", two_runs / "cand", 0.3).regressions.empty


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True)


def test_compare_exit_codes(two_runs):
    assert _cli("compare", two_runs / "base", two_runs / "base").returncode == 0
    bad = _cli("compare", two_runs / "base", two_runs / "cand")
    assert bad.returncode == 1 and "REGRESSION" in bad.stdout
    missing = _cli("compare", two_runs / "base", two_runs / "nowhere")
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_compare_counts_items_that_stop_scoring(two_runs):
    cand = pd.read_parquet(two_runs / "base/items.parquet")
    cand.loc[0, ["status", "sdri", "sdr"]] = ["est_nonfinite", np.nan, np.nan]
    cand.to_parquet(two_runs / "cand/items.parquet")
    assert compare_runs(two_runs / "base", two_runs / "cand").newly_failing == 1
    assert _cli("compare", two_runs / "base", two_runs / "cand").returncode == 1
