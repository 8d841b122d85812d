"""Issue 12 items 1-2: the absent-query test and the query-modality matrix (harness.query_protocols)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.datasets import get_corpus
from harness.errors import EXIT_USAGE, ConfigError
from harness.evaluate import EvalOptions, run_eval
from harness.query_protocols import (
    ABSENT,
    draw_absent,
    paired_difference,
    parse_query_modes,
    residual_db,
    score_absent,
)
from harness.reports import compare_runs, render_report
from harness.systems import MixtureBaseline, System

SETS = {"fsd50k": "fsd50k", "audioset": "audioset"}


@pytest.fixture(scope="module")
def workdir(build_dev_sets):
    return build_dev_sets(SETS, per_class=1, jobs=1)


def mixture_labels(dev_data: Path, workdir: Path, dataset: str) -> dict[str, set[str]]:
    """Every label of each item's target and interferer clips, read from the corpus metadata here."""
    corpus = get_corpus(dataset, dev_data / SETS[dataset])
    by_path = {Path(c.audio.path).resolve(): set(c.labels) for c in corpus.clips("test")}
    manifest = pd.read_parquet(next((workdir / "mixtures" / dataset).glob("*/manifest.parquet")))
    root = (dev_data / SETS[dataset]).resolve()
    out = {}
    for row in manifest.itertuples():
        labels = {row.label, row.interferer_label}
        for f in (row.target_file, row.interferer_file):
            labels |= by_path.get((root / f.split("#")[0]).resolve(), set())
        out[row.item_id] = labels
    return out


# -- the metric, by hand --------------------------------------------------------------------------


def test_residual_db_by_hand():
    x = np.random.default_rng(0).standard_normal(64000).astype(np.float32)
    assert residual_db(x, x.copy()) == 0.0  # exact: identical arrays
    assert residual_db(0.5 * x, x) == 10 * math.log10(0.25)  # × 0.5 scales every square by exactly 1/4
    assert residual_db(np.zeros_like(x), x) == -math.inf
    assert math.isnan(residual_db(x, np.zeros_like(x)))
    rows = score_absent([np.float32(10 ** (-19 / 20)) * x, np.float32(10 ** (-21 / 20)) * x, np.zeros_like(x),
                         x], [x, x, x, np.zeros_like(x)])
    assert [r["false_activation"] for r in rows[:3]] == [1.0, 0.0, 0.0]  # FUSS: above -20 dB is active
    assert abs(rows[0]["residual_db"] + 19) < 1e-4 and abs(rows[1]["residual_db"] + 21) < 1e-4  # float32 gain
    assert rows[2]["residual_db"] == -math.inf and rows[2]["status"] == "ok"
    assert rows[3]["status"] == "mix_silent" and math.isnan(rows[3]["residual_db"])
    assert all(math.isnan(r["sdri"]) for r in rows)


def test_absent_draw_is_per_item_and_never_present():
    cands = [f"c{i}" for i in range(20)]
    a = draw_absent(cands, {"c1", "c2"}, 7, "fsd50k", "item-3")
    assert a == draw_absent(cands, {"c1", "c2"}, 7, "fsd50k", "item-3") and a not in {"c1", "c2"}
    assert draw_absent(cands, set(cands), 7, "fsd50k", "x") is None
    draws = {draw_absent(cands, {"c0"}, 7, "fsd50k", f"i{i}") for i in range(400)}
    assert draws == set(cands) - {"c0"}  # uniform over the pool: all 19 reached in 400 draws


def test_parse_query_modes():
    assert parse_query_modes("oracle, average,audio-shots:1,audio-shots", shots=5) == \
        ["oracle", "average", "audio-shots:1", "audio-shots:5"]
    for bad in ("orcale", "audio-shots:0", "average:2", "oracle,oracle", "audio-shots:x"):
        with pytest.raises(ConfigError):
            parse_query_modes(bad)


def test_paired_difference_by_hand():
    # two classes; mode b is a + 1 on class x and a + 3 on class y: class-median-mean difference is 2 exactly,
    # and every paired resample keeps that difference (same items drawn for both)
    ids = [f"i{i}" for i in range(6)]
    labels = ["x", "x", "x", "y", "y", "y"]
    a = pd.DataFrame({"item_id": ids, "label": labels, "status": "ok", "sdri": [1.0, 2.0, 5.0, 0.0, 4.0, 8.0]})
    b = a.assign(sdri=a["sdri"] + np.array([1, 1, 1, 3, 3, 3.0]))
    b.loc[5, "status"] = "no_query"  # unpaired: left out of both sides
    d = paired_difference(b, a, "sdri", "class-median-mean")
    assert d["items"] == 5 and d["delta"] == pytest.approx(2.0) and d["ci95"] == pytest.approx([2.0, 2.0])
    # median over all items, a hand-worked case with spread: 5 paired items
    m = paired_difference(b, a, "sdri", "median")
    assert m["delta"] == pytest.approx(np.median([2, 3, 6, 3, 7]) - np.median([1, 2, 5, 0, 4]))
    assert m["ci95"][0] <= m["delta"] <= m["ci95"][1]


# -- the absent protocol through eval ---------------------------------------------------------------


def test_mixture_baseline_absent_residual_is_exactly_0_db(workdir, dev_data, tmp_path):
    plain, absent = tmp_path / "plain", tmp_path / "absent"
    run_eval(MixtureBaseline(), EvalOptions(datasets=list(SETS), workdir=workdir, out=plain))
    run_eval(MixtureBaseline(), EvalOptions(datasets=list(SETS), workdir=workdir, out=absent,
                                            query_protocol=ABSENT, jobs=2, batch_size=3))
    a, p = pd.read_parquet(absent / "items.parquet"), pd.read_parquet(plain / "items.parquet")
    rows = a[a["condition"] == ABSENT]
    assert len(rows) == len(p) and (rows["status"] == "ok").all()
    assert (rows["residual_db"] == 0.0).all() and (rows["false_activation"] == 1.0).all()
    # the paper protocol's rows are unchanged by the option
    same = a[a["condition"] != ABSENT].reset_index(drop=True)
    for col in ("item_id", "condition", "status", "sdr", "sdri", "si_sdri"):
        pd.testing.assert_series_equal(same[col], p[col], check_names=False)
    assert p["residual_db"].isna().all() and p["query_label"].isna().all()
    for dataset in SETS:  # the queried class is in neither the target's nor the interferer's labels
        truth = mixture_labels(dev_data, workdir, dataset)
        sub = rows[rows["dataset"] == dataset]
        assert sub["query_label"].notna().all()
        assert not any(q in truth[i] for i, q in zip(sub["item_id"], sub["query_label"], strict=True))
    # the draw depends on the seed and the item only: one worker and batch 16 give the same classes
    again = tmp_path / "again"
    run_eval(MixtureBaseline(), EvalOptions(datasets=list(SETS), workdir=workdir, out=again, query_protocol=ABSENT))
    b = pd.read_parquet(again / "items.parquet")
    assert a["query_label"].equals(b["query_label"])
    render_report(absent)
    summary = (absent / "summary.md").read_text()
    assert "## Absent-query test" in summary and "| baseline:mixture | fsd50k |" in summary
    res = json.loads((absent / "results.json").read_text())
    assert {r["dataset"]: r["median_residual_db"] for r in res["query_protocols"]["absent"]} == \
        {"fsd50k": 0.0, "audioset": 0.0}
    assert not any(r["condition"] == ABSENT for r in res["results"])  # Table 2 records are the paper's only


class SilentWhenAbsent(System):
    """An oracle of presence: the mixture for a class it knows is in the mixture, zeros otherwise."""

    name = "test:silent-when-absent"
    query_modes = ("label",)

    def __init__(self, present: dict[str, set[str]]):
        self.present = present

    def separate(self, mixture, target, items, condition, queries=None):
        keep = np.array([q.label in self.present[i] for i, q in zip(items["item_id"], queries, strict=True)])
        return np.where(keep[:, None], mixture, np.float32(0)).astype(np.float32)


def test_silent_when_absent_system_reports_minus_inf_and_0_percent(workdir, dev_data, tmp_path):
    present = {k: v for d in SETS for k, v in mixture_labels(dev_data, workdir, d).items()}
    out = tmp_path / "silent"
    run_eval(SilentWhenAbsent(present), EvalOptions(datasets=list(SETS), workdir=workdir, out=out,
                                                     query_protocol=ABSENT))
    items = pd.read_parquet(out / "items.parquet")
    rows = items[items["condition"] == ABSENT]
    assert (rows["residual_db"] == -np.inf).all() and (rows["false_activation"] == 0.0).all()
    assert (items.loc[items["condition"] == "label", "sdri"] == 0.0).all()  # present queries: the mixture
    render_report(out)  # no NaN crash on -inf anywhere: report, results.json, compare
    summary = (out / "summary.md").read_text()
    assert "| test:silent-when-absent | fsd50k | 25/25 | −∞ | 0 % |" in summary
    res = json.loads((out / "results.json").read_text())
    assert all(r["median_residual_db"] == "-inf" and r["false_activation_rate"] == 0.0
               for r in res["query_protocols"]["absent"])
    cmp = compare_runs(out, out, two_sided=True)
    assert not cmp.failed


def test_unsupported_mode_is_a_usage_error(workdir, tmp_path):
    script = Path(sys.executable).with_name("uss-bench")
    proc = subprocess.run([str(script), "eval", "fsd50k", "--baseline", "mixture", "--query-modes", "oracle,label",
                           "--workdir", str(workdir), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == EXIT_USAGE
    assert "has query modes none only" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_cli_absent_protocol_end_to_end(workdir, tmp_path):
    script = Path(sys.executable).with_name("uss-bench")
    out = tmp_path / "cli"
    proc = subprocess.run([str(script), "eval", "fsd50k", "--baseline", "mixture", "--query-protocol", "absent",
                           "--workdir", str(workdir), "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| baseline:mixture | fsd50k | 25/25 | 0.00 | 100 % |" in (out / "summary.md").read_text()
    bad = subprocess.run([str(script), "eval", "fsd50k", "--baseline", "mixture", "--query-protocol", "absnt",
                          "--workdir", str(workdir), "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == EXIT_USAGE and "absent" in bad.stderr + bad.stdout


# -- the demo model: absent residuals per dataset and the modes matrix --------------------------------


@pytest.mark.slow
def test_demo_model_absent_and_modes_matrix(workdir, dev_data, tmp_path):
    from harness.demo import DEMO_CHECKPOINT
    from harness.queries import embed_queries
    from harness.systems import CheckpointSystem

    for d in SETS:
        embed_queries(d, DEMO_CHECKPOINT, dev_data / SETS[d], workdir, device="cpu")
    modes = ["oracle", "average", "audio-shots:1"]
    runs = []
    for name in ("one", "two"):
        system = CheckpointSystem(DEMO_CHECKPOINT, workdir, device="cpu")
        run_eval(system, EvalOptions(datasets=list(SETS), workdir=workdir, out=tmp_path / name, limit=12,
                                     query_protocol=ABSENT, query_modes=modes))
        render_report(tmp_path / name)
        runs.append(tmp_path / name)
    a, b = (pd.read_parquet(r / "items.parquet") for r in runs)
    assert list(dict.fromkeys(a["condition"])) == [*modes, ABSENT]
    assert a[["condition", "item_id", "sdri", "residual_db", "status"]].equals(
        b[["condition", "item_id", "sdri", "residual_db", "status"]])
    ra, rb = (json.loads((r / "results.json").read_text())["query_protocols"] for r in runs)
    shots = ra["runs"][a["system"].iloc[0]]["shots"]
    assert shots == rb["runs"][b["system"].iloc[0]]["shots"]  # the same seed: the same clips
    for d in SETS:
        rec = shots[d]["audio-shots:1"]
        assert rec["files_sha256"] and all(len(f) == 1 for f in rec["files"].values())
    absent = {r["dataset"]: r for r in ra["absent"]}
    assert set(absent) == set(SETS)
    for r in absent.values():  # a real model: a finite residual, a rate in [0, 1]
        assert isinstance(r["median_residual_db"], float) and 0 <= r["false_activation_rate"] <= 1
    matrix = {(r["dataset"], r["condition"]) for r in ra["modes"]}
    assert {("fsd50k", m) for m in modes} <= matrix
    summary = (runs[0] / "summary.md").read_text()
    assert "## Query-modality matrix" in summary and "| audio-shots:1 |" in summary
    assert (a.loc[a["condition"] == "oracle", "status"] == "ok").all()
