"""One declaration each (issue 11 item 1): datasets, metrics and aggregations are declared once and
everything else is derived; a seventh corpus and a new metric need no list edited anywhere."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import metric_registry as MR
from harness import metrics as M
from harness.aggregations import AGGREGATIONS, aggregation, apply
from harness.audio import resample
from harness.config import dataset_names, load_dataset_config, validate_dataset_config
from harness.datasets import register_corpus, unregister_corpus
from harness.datasets.fsdkaggle2018 import FSDKaggle2018
from harness.demo import DEMO_ROOT
from harness.errors import ConfigError
from harness.evaluate import EvalOptions, MixtureBaseline, OracleIRM, item_columns, run_eval
from harness.mixtures import BuildOptions, build_mixtures
from harness.reports import (
    aggregate_kind,
    compare_runs,
    dataset_aggregate,
    headline,
    render_report,
    report_runs,
    table2,
)
from harness.scoring import score

REPO = Path(__file__).resolve().parents[2]

# -- a seventh corpus: one reader, one TOML -----------------------------------------------------------

TINY_TOML = """
name = "tinyfsd"
sample_rate = 32000
segment_seconds = 2.0
items_per_class = 3
seed = 7
label_rule = "primary"
metrics = ["sdr", "sdri", "si_sdr", "si_sdri"]
aggregate = "mean"

[mixing]
gain_min = 0.02
gain_max = 50.0

[small_classes]
max_uses_per_clip = 2

[[columns]]
key = "tinyfsd_sdri"
header = "TinyFSD SDRi"
metric = "sdri"

[[columns]]
key = "tinyfsd_sdr"
header = "TinyFSD SDR (class median)"
metric = "sdr"
aggregate = "class-median-mean"
"""


@pytest.fixture
def tiny_corpus(tmp_path):
    """A seventh corpus registered for one test: the demo's FSDKaggle2018 files under a new name."""
    toml = tmp_path / "tinyfsd.toml"
    toml.write_text(TINY_TOML)

    class TinyFSD(FSDKaggle2018):
        name = "tinyfsd"
        title = "TinyFSD"
        declaration = toml

    register_corpus(TinyFSD)
    try:
        yield TinyFSD
    finally:
        unregister_corpus("tinyfsd")


def test_a_seventh_corpus_goes_through_build_eval_report_compare(tiny_corpus, tmp_path):
    assert "tinyfsd" in dataset_names()
    wd = tmp_path / "work"
    build_mixtures(DEMO_ROOT / "fsdkaggle2018", wd, BuildOptions(dataset="tinyfsd"))
    runs = {}
    for system in (MixtureBaseline(), OracleIRM()):
        runs[system.name] = tmp_path / system.name[9:]
        run_eval(system, EvalOptions(datasets=["tinyfsd"], workdir=wd, out=runs[system.name]))
        render_report(runs[system.name])
    items = pd.read_parquet(runs["baseline:oracle-irm"] / "items.parquet")
    assert set(items["dataset"]) == {"tinyfsd"} and (items["status"] == "ok").all()
    # the report columns, their headers and aggregations come from the TOML
    cols = [c for c in table2() if c[2] == "tinyfsd"]
    assert [(k, h, m, a) for k, h, _, m, _, a in cols] == [
        ("tinyfsd_sdri", "TinyFSD SDRi", "sdri", "mean"), ("tinyfsd_sdr", "TinyFSD SDR (class median)", "sdr",
                                                            "class-median-mean")]
    assert headline()["tinyfsd"] == ("sdri", "sdr")
    summary = (runs["baseline:oracle-irm"] / "summary.md").read_text()
    assert "TinyFSD SDRi" in summary and "TinyFSD SDR (class median)" in summary
    res = json.loads((runs["baseline:oracle-irm"] / "results.json").read_text())
    rec = {r["metric"]: r for r in res["results"]}
    # independent aggregates: numpy over the item values
    sdri = items["sdri"].to_numpy(float)
    assert rec["sdri"]["convention"] == "mean" and rec["sdri"]["value"] == pytest.approx(float(np.mean(sdri)), abs=1e-12)
    per_class = [np.median(items.loc[items["label"] == c, "sdr"].to_numpy(float)) for c in set(items["label"])]
    assert rec["sdr"]["convention"] == "class-median-mean"
    assert rec["sdr"]["value"] == pytest.approx(float(np.mean(per_class)), abs=1e-12)
    cmp = compare_runs(runs["baseline:mixture"], runs["baseline:oracle-irm"])
    row = cmp.table[cmp.table["metric"] == "sdri"].iloc[0]
    assert row["dataset"] == "tinyfsd" and row["aggregate"] == "mean"
    assert row["base"] == 0.0 and row["candidate"] == pytest.approx(float(np.mean(sdri)), abs=1e-12)
    assert not cmp.failed  # the oracle IRM beats the mixture


def test_registering_twice_is_a_typed_error(tiny_corpus):
    class Other(FSDKaggle2018):
        name = "tinyfsd"

    with pytest.raises(ConfigError, match="registered twice"):
        register_corpus(Other)


# -- a new metric: one function, one declaration, --resume into an older run ---------------------------

def crest_db(ref, est, mix, sample_rate, *, interferer=None):
    """A test metric: the estimate's crest factor, 20 log10(peak / rms) in dB."""
    e = np.asarray(est, dtype=np.float64)
    rms = math.sqrt(float(np.mean(e * e)))
    if rms == 0:
        return {"crest": float("nan")}, "crest_silent"
    return {"crest": 20 * math.log10(float(np.max(np.abs(e))) / rms)}, "ok"


def test_a_new_metric_resumes_into_an_older_run_folder(dev_data, tmp_path):
    import soundfile as sf

    wd = tmp_path / "work"
    build_mixtures(dev_data / "fsdkaggle2018", wd, BuildOptions("fsdkaggle2018", per_class=2))
    out, old = tmp_path / "run", tmp_path / "old"
    run_eval(OracleIRM(), EvalOptions(datasets=["fsdkaggle2018"], workdir=wd, out=out, limit=3))
    shutil.copytree(out, old)  # an older run folder, written before the metric existed
    MR.register_metric(MR.MetricSpec("crest", "Crest", "dB", False, 0.1, fn=f"{__name__}:crest_db",
                                     statuses=("crest_silent",), opt_in=True))
    try:
        assert "crest" in item_columns()
        run_eval(OracleIRM(), EvalOptions(datasets=["fsdkaggle2018"], workdir=wd, out=out, resume=True,
                                          metrics=("+crest",), save_estimates="all"))
        items = pd.read_parquet(out / "items.parquet")
        assert list(items.columns) == list(item_columns())
        assert items["crest"].iloc[:3].isna().all()  # rows of the older run: missing, not a crash
        new = items.iloc[3:]
        assert len(new) and new["crest"].notna().all()
        for r in new.itertuples():  # independent value: the saved float32 estimate, by hand
            est, _ = sf.read(out / "estimates" / "fsdkaggle2018" / f"{r.item_id}.wav", dtype="float64")
            expected = 20 * math.log10(np.max(np.abs(est)) / math.sqrt(np.mean(est * est)))
            assert r.crest == pytest.approx(expected, abs=1e-9)
        # report and compare of the old folder (no crest column) and the new one
        render_report(old)
        render_report(out)
        cmp = compare_runs(old, out, allow_missing=True)
        assert {"sdr", "sdri"} <= set(cmp.table["metric"])
        res = json.loads((out / "results.json").read_text())
        crest = next(r for r in res["results"] if r["metric"] == "crest")
        assert crest["unit"] == "dB" and crest["items_ok"] == len(new)
        assert not any(r["metric"] == "crest" for r in json.loads((old / "results.json").read_text())["results"])
    finally:
        MR.METRICS.pop("crest", None)


# -- per-metric status ----------------------------------------------------------------------------

def test_a_pesq_failure_leaves_ssnr_and_the_sdr_family():
    rng = np.random.default_rng(0)
    sr = 32000
    ref = (0.1 * rng.standard_normal(sr * 2)).astype(np.float32)
    mix = (ref + 0.05 * rng.standard_normal(sr * 2)).astype(np.float32)
    est = np.zeros_like(ref)  # PESQ refuses an all-zero estimate; SDR is a well-defined 0 dB
    cfg = load_dataset_config("voicebank-demand")
    row = score(ref, est, mix, cfg)
    assert row["status"] == "pesq_est_silent"  # the row's status as before (first failing metric)
    # CSIG/CBAK/COVL are built on PESQ (Hu & Loizou 2008), so they fail with it; SSNR and SDR do not
    assert row["metric_status"] == ("pesq=pesq_est_silent;csig=pesq_est_silent;cbak=pesq_est_silent;"
                                    "covl=pesq_est_silent")
    assert all(math.isnan(row[c]) for c in ("pesq", "csig", "cbak", "covl"))
    expected_ssnr = M.ssnr(resample(ref, sr, 16000), resample(est, sr, 16000), 16000)
    assert row["ssnr"] == expected_ssnr and math.isfinite(row["ssnr"])
    assert row["sdr"] == 0.0
    ok = score(ref, mix, mix, cfg)
    assert ok["status"] == "ok" and ok["metric_status"] == ""
    items = pd.DataFrame([{**row, "dataset": "voicebank-demand", "condition": "none", "label": "speech",
                           "item_id": "a"},
                          {**ok, "dataset": "voicebank-demand", "condition": "none", "label": "speech",
                           "item_id": "b"}])
    # SSNR's aggregate uses both items, PESQ's only the one it scored
    assert dataset_aggregate(items, "voicebank-demand", "ssnr") == pytest.approx(
        float(np.median([row["ssnr"], ok["ssnr"]])), abs=1e-12)
    assert dataset_aggregate(items, "voicebank-demand", "pesq") == ok["pesq"]


def failing_metric(ref, est, mix, sample_rate, *, interferer=None):
    raise RuntimeError("boom")


def test_a_metric_that_raises_marks_only_its_own_columns():
    MR.register_metric(MR.MetricSpec("boom", "Boom", "", True, 0.1, fn=f"{__name__}:failing_metric",
                                     statuses=("boom_failed",), opt_in=True))
    try:
        rng = np.random.default_rng(1)
        ref = rng.standard_normal(16000).astype(np.float32)
        mix = (ref + rng.standard_normal(16000)).astype(np.float32)
        cfg = {**load_dataset_config("fsd50k"), "metrics": MR.resolve_metrics(["sdr", "sdri"], ["+boom"])}
        row = score(ref, mix, mix, cfg)
        assert row["metric_status"] == "boom=boom_failed" and math.isnan(row["boom"])
        assert row["sdr"] == M.sdr(ref, mix)
    finally:
        MR.METRICS.pop("boom", None)


def test_a_missing_metric_module_fails_only_when_requested():
    MR.register_metric(MR.MetricSpec("ghost", "Ghost", "", True, 0.1, fn="harness.no_such_module:fn", opt_in=True))
    try:
        rng = np.random.default_rng(2)
        ref = rng.standard_normal(8000).astype(np.float32)
        cfg = load_dataset_config("fsd50k")
        assert score(ref, ref, ref, cfg)["status"] == "ok"  # not requested: not imported
        with pytest.raises(ConfigError, match="ghost.*no_such_module"):
            score(ref, ref, ref, {**cfg, "metrics": [*cfg["metrics"], "ghost"]})
    finally:
        MR.METRICS.pop("ghost", None)


# -- the registry ----------------------------------------------------------------------------------

def test_metric_spec_unknown_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'pesq'"):
        MR.metric_spec("pesk")


def test_resolve_metrics_groups_and_removal():
    assert MR.resolve_metrics(["sdr", "sdri"], ["+bss"]) == ["sdr", "sdri", "bss_sdr", "bss_sir", "bss_sar"]
    assert MR.resolve_metrics(["sdr", "sdri", "pesq"], ["-pesq,+stoi"]) == ["sdr", "sdri", "stoi"]
    with pytest.raises(ConfigError, match="did you mean 'dnsmos'"):
        MR.resolve_metrics([], ["+dnsmo"])


def test_registry_declares_the_contract_fields():
    assert MR.metric_spec("pesq").unit == "MOS" and MR.metric_spec("pesq").tolerance == 0.05
    assert MR.metric_spec("sdri").improvement and MR.metric_spec("sdri").base == "sdr"
    assert MR.metric_spec("residual_db").higher_is_better is False
    assert MR.metric_spec("csig").rate(32000) == 16000 and MR.metric_spec("sdr").rate(44100) == 44100
    assert [m for m, s in MR.METRICS.items() if s.group == "bss"] == ["bss_sdr", "bss_sir", "bss_sar"]
    assert MR.metric_spec("musdb_sdr").axis == "SDR (dB, BSSEval v4 framewise median)"


# -- dataset declarations --------------------------------------------------------------------------

def _repo_toml(name: str) -> dict:
    import tomllib

    return tomllib.loads((REPO / "datasets" / f"{name}.toml").read_text())


def test_the_derived_lists_equal_the_paper_layout():
    assert dataset_names() == ("audioset", "fsdkaggle2018", "fsd50k", "musdb18", "slakh2100", "voicebank-demand")
    assert [k for k, *_ in table2()] == [
        "audioset_sdri_oracle", "audioset_sdri_average", "fsdkaggle2018_sdr", "fsdkaggle2018_sdri", "fsd50k_sdr",
        "fsd50k_sdri", "musdb18_sdr", "musdb18_sdri", "slakh2100_sdr", "slakh2100_sdri", "voicebank_pesq",
        "voicebank_ssnr"]
    assert aggregate_kind("voicebank-demand", "pesq") == "median"
    assert aggregate_kind("musdb18", "musdb_sdr") == "track-median-stem-mean"
    assert aggregate_kind("audioset") == "class-median-mean"
    assert load_dataset_config("audioset")["label_rule"] == "all-tags"
    assert load_dataset_config("fsd50k")["label_rule"] == "primary"
    assert load_dataset_config("audioset")["query_modes"] == ["oracle", "average"]


@pytest.mark.parametrize("name", ["audioset", "fsdkaggle2018", "fsd50k", "musdb18", "slakh2100", "voicebank-demand"])
def test_every_shipped_toml_validates(name):
    cfg = load_dataset_config(name)
    assert cfg["name"] == name and cfg["columns"]


@pytest.mark.parametrize(("edit", "match"), [
    (lambda c: c.update(aggregte="median"), r"fsd50k\.toml: unknown key 'aggregte'; did you mean 'aggregate'"),
    (lambda c: c["mixing"].update(gain_mx=1.0), r"unknown key mixing\.'gain_mx'; did you mean 'gain_max'"),
    (lambda c: c["mixing"].update(sources=3), r"mixing\.sources = 3 is not implemented"),
    (lambda c: c.update(metrics=["sdr", "sdrii"]), r"metrics: unknown metric 'sdrii'; did you mean"),
    (lambda c: c.update(aggregate="class-median"), r"aggregate: unknown aggregation 'class-median'"),
    (lambda c: c.update(label_rule="tags"), r"label_rule: unknown label rule 'tags'"),
    (lambda c: c.update(seed="1234"), r"seed = '1234' must be an integer"),
    (lambda c: c["columns"][0].update(metric="pesq"), r"columns\[0\]\.metric 'pesq' is not in metrics"),
    (lambda c: c["columns"][0].update(headr="x"), r"unknown key columns\[0\]\.'headr'; did you mean 'header'"),
    (lambda c: c.pop("sample_rate"), r"missing key 'sample_rate'"),
])
def test_a_bad_declaration_is_a_typed_error_naming_file_and_key(edit, match):
    cfg = _repo_toml("fsd50k")
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_dataset_config(cfg, REPO / "datasets" / "fsd50k.toml")


def test_every_schema_key_is_one_the_code_reads():
    """Each key the schema allows is read as a string key somewhere in the harness besides the schema (no
    dead declaration); a key with a single allowed value (``fit``, ``rule``, ...) is enforced by the
    validation itself (see the ``sources = 3`` case above)."""
    from harness.config import COLUMN_KEYS, TABLE_KEYS, TOP_KEYS

    src = "\n".join(p.read_text() for p in (REPO / "harness").rglob("*.py"))
    specs = {**TOP_KEYS, **{k: v for t in TABLE_KEYS.values() for k, v in t.items()}, **COLUMN_KEYS}
    read = [k for k, (_, rule) in specs.items() if not (isinstance(rule, tuple) and rule[0] == "fixed")]
    unread = [k for k in read if f'"{k}"' not in src.replace(f'"{k}": (', "")]
    assert unread == []
    fixed = sorted(set(specs) - set(read))
    assert fixed == ["exclude_target_class", "fit", "protocol", "rule", "sources"]


# -- aggregations ----------------------------------------------------------------------------------

def test_aggregations_on_hand_worked_values():
    v = [1.0, 2.0, 9.0, 4.0, 6.0]
    c = ["a", "a", "a", "b", "b"]
    assert apply("class-median-mean", v, c) == (2.0 + 5.0) / 2
    assert apply("median", v, c) == 4.0 and apply("mean", v, c) == 4.4
    # MUSDB: track T1 has two rows of vocals (median 2.0), T2 one (9.0); bass one track (5.0)
    ids = ["T1/vocals", "T1/vocals", "T2/vocals", "T1/bass", "T1/bass"]
    assert apply("track-median-stem-mean", [1.0, 3.0, 9.0, 4.0, 6.0], ["vocals"] * 3 + ["bass"] * 2, ids) == (
        (2.0 + 9.0) / 2 + 5.0) / 2
    assert math.isnan(apply("mean", [np.nan], ["a"]))
    with pytest.raises(ConfigError, match="did you mean 'median'"):
        aggregation("medain")
    assert set(AGGREGATIONS) >= {"class-median-mean", "median", "mean", "track-median-stem-mean"}


def test_report_aggregate_is_selectable_and_recorded(dev_data, tmp_path):
    wd = tmp_path / "work"
    build_mixtures(dev_data / "voicebank-demand", wd, BuildOptions("voicebank-demand"))
    out = tmp_path / "run"
    run_eval(MixtureBaseline(), EvalOptions(datasets=["voicebank-demand"], workdir=wd, out=out, limit=4))
    items = pd.read_parquet(out / "items.parquet")
    res = json.loads((out / "results.json").read_text())
    pesq = next(r for r in res["results"] if r["metric"] == "pesq")
    assert pesq["convention"] == "median" and pesq["value"] == pytest.approx(float(np.median(items["pesq"])))
    report_runs([out], aggregate="mean")
    res = json.loads((out / "results.json").read_text())
    pesq = next(r for r in res["results"] if r["metric"] == "pesq")
    assert pesq["convention"] == "mean" and pesq["value"] == pytest.approx(float(np.mean(items["pesq"])))
    assert "`mean`" in (out / "summary.md").read_text()
    with pytest.raises(ConfigError):
        EvalOptions(datasets=["voicebank-demand"], workdir=wd, out=out, aggregate="avg").check()
