"""The benchmark runner's registry, target checks and result files (benchmarks/benchlib.py, run.py).

No timing is asserted: these tests check the bookkeeping with made-up benchmarks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchlib(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import benchlib as module

    monkeypatch.setattr(module, "REGISTRY", {})
    return module


def test_target_parse_and_check(benchlib):
    T = benchlib.Target.parse
    assert T("ratio >= 100").check({"ratio": 120.0}) == (120.0, True)
    assert T("ratio >= 100").check({"ratio": 99.9}) == (99.9, False)
    assert T("max_abs_diff_db <= 1e-6").check({"max_abs_diff_db": 2e-6}) == (2e-6, False)
    assert T("max_abs_diff_db<=1e-6").check({"max_abs_diff_db": 0.0}) == (0.0, True)
    assert T("digest_unchanged == true").check({"digest_unchanged": True}) == (True, True)
    assert T("digest_unchanged == true").check({"digest_unchanged": False}) == (False, False)
    assert T("ratio <= 1.25").check({}) == (None, False)  # missing measurement: not met
    assert T("ratio <= 1.25").check({"ratio": float("nan")})[1] is False
    assert str(T("ratio >= 100")) == "ratio >= 100"
    for bad in ("ratio > 1", "ratio >= fast", "= 3", ""):
        with pytest.raises(ValueError):
            T(bad)


def test_register_run_merge_and_render(benchlib, tmp_path):
    @benchlib.benchmark("fast_thing", target=["ratio >= 10", "err <= 1e-6"], description="ours vs theirs")
    def fast_thing(ctx):
        return {"measured": "one call", "ours_s": 0.01, "reference_s": 0.5, "err": 0.0,
                "notes": ["a note"], "details": {"n": 3}}

    @benchlib.benchmark("slow_thing", target="ratio <= 1.25", description="build vs decode",
                        ratio="ours/reference")
    def slow_thing(ctx):
        return {"measured": "a build", "ours_s": 2.0, "reference_s": 1.0}

    @benchlib.benchmark("broken", target="x >= 1", description="raises", ratio=None)
    def broken(ctx):
        raise RuntimeError("no data here")

    with pytest.raises(ValueError, match="registered twice"):
        benchlib.benchmark("broken", target="x >= 1", description="again")(lambda ctx: {})
    ctx = benchlib.Context()
    fast = benchlib.run_one(benchlib.REGISTRY["fast_thing"], ctx)
    slow = benchlib.run_one(benchlib.REGISTRY["slow_thing"], ctx)
    err = benchlib.run_one(benchlib.REGISTRY["broken"], ctx)
    assert fast["status"] == "MET" and fast["ratio"] == pytest.approx(50.0)
    assert slow["status"] == "MISSED" and slow["ratio"] == pytest.approx(2.0)
    assert [c["met"] for c in slow["checks"]] == [False]
    assert err["status"] == "ERROR" and "no data here" in err["error"]
    assert "MISSED" in benchlib.describe(slow) and "1.25" in benchlib.describe(slow)

    # another developer's entry already in the file: running ours must keep it
    out = tmp_path / "reports"
    theirs = {"name": "peak_rss", "description": "theirs", "status": "MET", "date": "2026-01-01T00:00:00+00:00",
              "checks": [{"target": "peak_rss_mib <= 2048", "actual": 900, "met": True}], "measured": "rss",
              "ours_s": None, "reference_s": None, "ratio": None, "machine": {"cpu": "x"}}
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"schema": 1, "benchmarks": {"peak_rss": theirs}}))
    benchlib.merge_and_write(out, [fast, slow])
    data = json.loads((out / "results.json").read_text())
    assert list(data["benchmarks"]) == ["fast_thing", "peak_rss", "slow_thing"]
    assert data["benchmarks"]["peak_rss"] == theirs
    # a later run of one benchmark replaces its entry only
    benchlib.merge_and_write(out, [err])
    benchlib.merge_and_write(out, [dict(fast, ours_s=0.02)])
    data = json.loads((out / "results.json").read_text())
    assert data["benchmarks"]["fast_thing"]["ours_s"] == 0.02
    assert data["benchmarks"]["slow_thing"]["status"] == "MISSED" and data["benchmarks"]["broken"]["status"] == "ERROR"
    readme = (out / "README.md").read_text()
    for row in ("| `fast_thing` |", "| `slow_thing` |", "| `peak_rss` |", "**MISSED**", "**ERROR**", "50.00×", "| 2.00× |"):
        assert row in readme
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_malformed_results_file_is_never_overwritten(benchlib, tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not overwritten"):
        benchlib.merge_and_write(tmp_path, [])
    assert (tmp_path / "results.json").read_text() == "{not json"


def test_run_py_lists_and_rejects_unknown_names(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    import importlib

    run = importlib.import_module("run")
    assert run.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "musdb_sdr" in listed and "build_mixtures" in listed
    assert run.main(["--only", "no_such_benchmark"]) == 2
