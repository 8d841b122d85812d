"""results.json holds every Table 2 value of summary.md (with coverage); items.parquet column types are stable."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.evaluate import EvalOptions, MixtureBaseline, OracleIRM, run_eval
from harness.mixtures import BuildOptions, build_mixtures
from harness.reports import TABLE2, aggregate_kind, report_runs
from harness.results import bootstrap_ci
from harness.systems import System

SETS = {"fsd50k": "fsd50k", "voicebank-demand": "voicebank-demand", "musdb18": "musdb18hq"}


class HalfMissing(System):
    """The mixture, except that the first item of each batch has no query (a partial cell)."""

    name = "partial"
    query_modes = ("text",)

    def unscorable(self, items, condition):
        return {items["item_id"].iloc[0]: "no_query"}

    def separate(self, mixture, target, items, condition, queries=None):
        return 0.5 * mixture


@pytest.fixture(scope="module")
def report(dev_data, tmp_path_factory):
    wd = tmp_path_factory.mktemp("work")
    for name, folder in SETS.items():
        build_mixtures(dev_data / folder, wd, BuildOptions(name, per_class=2, jobs=1))
    out = tmp_path_factory.mktemp("runs")
    for system in (MixtureBaseline(), OracleIRM(), HalfMissing()):
        run_eval(system, EvalOptions(datasets=list(SETS), workdir=wd, out=out / system.name.replace(":", "-")))
    return report_runs([out / d for d in ("baseline-mixture", "baseline-oracle-irm", "partial")], out / "report")


def _table2(summary: str) -> dict[str, list[str]]:
    section = summary.split("## Table 2")[1].split("\n\n")[1]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| \*\*(.+?)\*\*[^|]*\|(.*)\|$", line)
        if m:
            rows[m[1]] = [c.strip() for c in m[2].split("|")]
    return rows


def test_results_json_holds_every_table2_value(report):
    rows = _table2(report.summary.read_text())
    res = json.loads((report.summary.parent / "results.json").read_text())
    by_cell = {(r["system"], key): r for r in res["results"] for key in r["table2"]}
    assert set(rows) == {"baseline-mixture", "baseline-oracle-irm", "partial"}  # a report names systems by run
    checked = partial = 0
    for system, cells in rows.items():
        for (key, *_), cell in zip(TABLE2, cells, strict=True):
            if cell == "—":
                assert (system, key) not in by_cell
                continue
            rec = by_cell[(system, key)]
            m = re.fullmatch(r"(-?\d+\.\d\d|—)(?: \((\d+)/(\d+)\))?", cell)  # "—" with coverage: none scored
            assert m, cell
            assert (f"{rec['value']:.2f}" if rec["value"] is not None else "—") == m[1], (system, key, rec, cell)
            if m[2]:
                partial += 1
                assert (rec["items_ok"], rec["rows"]) == (int(m[2]), int(m[3]))
                assert rec["coverage"] == pytest.approx(int(m[2]) / rec["items_in_set"])
            lo, hi = rec["ci95"]
            assert rec["value"] is None or lo <= rec["value"] <= hi
            assert rec["build_digest"] and rec["convention"] == aggregate_kind(rec["dataset"], rec["metric"])
            checked += 1
    assert checked >= 3 * 2 * len(SETS) - 2 and partial > 0
    assert {r["system"] for r in res["runs"]} == set(rows) and all(r["started_at"] for r in res["runs"])


def test_bootstrap_ci_hand_case():
    # one class, all values equal: every resample has the same median
    assert bootstrap_ci(np.full(7, 2.5), np.array(["a"] * 7), "class-median-mean") == (2.5, 2.5)
    # two classes with constant values 1 and 3: class-median-mean is 2 in every resample
    v, c = np.array([1.0, 1.0, 3.0, 3.0, 3.0]), np.array(list("aabbb"))
    assert bootstrap_ci(v, c, "class-median-mean") == (2.0, 2.0)
    lo, hi = bootstrap_ci(np.arange(100.0), np.zeros(100), "median")
    assert 35 < lo < 49.5 < hi < 64  # the median of 0..99 is 49.5; its bootstrap SE is about 4.3


def test_items_parquet_types_are_stable(report):
    runs = report.summary.parent.parent
    schemas = [pq.read_schema(runs / d / "items.parquet") for d in ("baseline-mixture", "partial")]
    for schema in schemas:
        kind = schema.field("checkpoint_sha256").type  # every value null, still a string (not pa.null())
        assert (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and kind == schema.field("system").type
        assert schema.field("class_id").type == pa.int64() and schema.field("sdr").type == pa.float64()
    assert schemas[0].remove_metadata() == schemas[1].remove_metadata()


@pytest.mark.parametrize("how", ["class-median-mean", "median", "mean"])
def test_bootstrap_ci_in_blocks_is_the_one_shot_interval(how, monkeypatch):
    """The resamples are drawn and their statistics computed a block at a time (memory); the interval
    must be the one of drawing all (resamples, N) values at once, written out here with numpy."""
    import harness.results as results_module

    monkeypatch.setattr(results_module, "BOOTSTRAP_BLOCK", 997)  # a few rows per block: many blocks
    rng = np.random.default_rng(5)
    v, c = rng.standard_normal(301), rng.integers(0, 3, 301).astype(str)
    g = np.random.default_rng(0)
    if how == "class-median-mean":
        stats = np.mean([np.median(v[c == k][g.integers(0, (c == k).sum(), size=(1000, (c == k).sum()))], axis=1)
                         for k in dict.fromkeys(c)], axis=0)
    else:
        draw = v[g.integers(0, len(v), size=(1000, len(v)))]
        stats = np.median(draw, axis=1) if how == "median" else draw.mean(axis=1)
    assert bootstrap_ci(v, c, how) == (float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5)))
