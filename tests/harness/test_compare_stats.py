"""Issue 11 #6: ``compare`` that a reviewer can trust — per-metric tolerances and units, per-class regressions,
a paired test per dataset (bootstrap CI of the mean difference, Wilcoxon p, Holm-corrected), compare.json,
and runs on different sets refused.

Expected values are worked by hand (Holm, the exact Wilcoxon null distribution, the normal-theory interval of
a mean) or come from scipy called directly; the demo cases run the committed demo model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy import stats

from harness.compare import ALPHA, check_same_sets, compare_runs, holm, paired_bootstrap_ci, wilcoxon_p
from harness.demo import DEMO_BASELINE, DEMO_CHECKPOINT, DEMO_FOLDERS, DEMO_ROOT
from harness.errors import UssBenchError
from harness.evaluate import items_frame
from harness.metric_registry import metric_spec


@pytest.fixture
def cli(tmp_path):
    """``python -m harness ARGS`` in a subprocess (a wide terminal, so table cells are not wrapped)."""
    import os
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300, env={**os.environ, "COLUMNS": "400"})

    return run


def test_holm_on_a_hand_worked_case():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # NaN is outside the family (m = 2 here) and stays NaN; the cap at 1 holds
    got = holm([0.6, np.nan, 0.2])
    assert np.isnan(got[1]) and got[0] == pytest.approx(0.6) and got[2] == pytest.approx(0.4)
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0


def test_wilcoxon_exact_case_by_hand_and_against_scipy():
    # five positive differences: W- = 0; exact null of the signed-rank sum has 2^5 equally likely sign
    # patterns, one of them all positive, one all negative → two-sided p = 2/32
    assert wilcoxon_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32, abs=1e-12)
    d = np.random.default_rng(3).normal(0.3, 1.0, 60)
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    # zeros are dropped (Wilcoxon's zero_method): same p as without them
    assert wilcoxon_p(np.r_[d, 0.0, 0.0]) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert wilcoxon_p(np.zeros(7)) == 1.0  # scipy cannot rank all-zero differences: no difference, p = 1
    assert math.isnan(wilcoxon_p([]))


def test_paired_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    d = np.random.default_rng(5).normal(0.2, 1.0, 400)
    ci = paired_bootstrap_ci(d, seed=0)
    assert ci == paired_bootstrap_ci(d, seed=0)  # same seed: bit-identical
    assert ci != paired_bootstrap_ci(d, seed=1)
    lo, hi = ci
    # normal theory: mean ± 1.96 σ/√n; the percentile bootstrap agrees to Monte-Carlo error (~5 % here)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert lo < d.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(d.mean(), abs=0.1 * half)
    assert paired_bootstrap_ci(np.zeros(10)) == (0.0, 0.0)
    assert all(math.isnan(x) for x in paired_bootstrap_ci([1.0]))


def test_demo_baseline_against_itself_is_p_1_and_zero_difference(tmp_path, cli):
    cmp = compare_runs(DEMO_BASELINE, DEMO_BASELINE)
    t = cmp.table
    assert len(t) > 0 and not cmp.failed and cmp.class_regressions.empty
    assert (t["delta"] == 0).all() and (t["mean_diff"] == 0).all()
    assert (t["ci_low"] == 0).all() and (t["ci_high"] == 0).all()
    assert (t["p"] == 1).all() and (t["p_holm"] == 1).all() and not t["significant"].any()
    # each metric's tolerance and unit from the registry
    for r in t.itertuples():
        spec = metric_spec(r.metric)
        assert (r.tolerance, r.unit, r.label) == (spec.tolerance, spec.unit, spec.label)
    out = tmp_path / "compare.json"
    r = cli("compare", DEMO_BASELINE, DEMO_BASELINE, "--json", out)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["failed"] is False and len(doc["rows"]) == len(t)
    assert {row["p"] for row in doc["rows"]} == {1.0} and {row["mean_diff"] for row in doc["rows"]} == {0.0}
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left


DATASET = "fsd50k"  # 45 demo items in 5 classes: enough pairs for a paired test


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The demo model and a copy with 10 % relative noise on every separator weight matrix, on the FSD50K
    demo set with oracle queries."""
    from harness.evaluate import EvalOptions, run_eval
    from harness.mixtures import BuildOptions, build_mixtures
    from harness.systems import CheckpointSystem

    wd = tmp_path_factory.mktemp("stats")
    build_mixtures(DEMO_ROOT / DEMO_FOLDERS[DATASET], wd, BuildOptions(dataset=DATASET))
    with safe_open(str(DEMO_CHECKPOINT), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    gen = torch.Generator().manual_seed(0)
    for key, t in tensors.items():
        if key.startswith("separator.") and key.endswith(".weight") and t.dim() > 1:
            tensors[key] = t + 0.1 * t.std() * torch.randn(t.shape, generator=gen)
    changed = wd / "perturbed" / DEMO_CHECKPOINT.name  # same name: rows pair with the original's
    changed.parent.mkdir()
    save_file(tensors, str(changed), metadata=metadata)
    runs = {}
    for name, ckpt in (("orig", DEMO_CHECKPOINT), ("perturbed", changed)):
        system = CheckpointSystem(ckpt, wd, condition="oracle", device="cpu")
        run_eval(system, EvalOptions(datasets=[DATASET], workdir=wd, out=wd / name))
        runs[name] = wd / name
    return runs


@pytest.mark.numerics
def test_demo_run_against_itself_and_against_perturbed_weights(demo_runs, cli):
    same = compare_runs(demo_runs["orig"], demo_runs["orig"])
    assert (same.table["mean_diff"] == 0).all() and (same.table["p"] == 1).all() and same.class_regressions.empty

    cmp = compare_runs(demo_runs["orig"], demo_runs["perturbed"])
    assert set(cmp.table["metric"]) == {"sdr", "sdri"}
    for r in cmp.table.itertuples():
        assert r.pairs == 45 and r.delta < -r.tolerance
        assert r.ci_high < 0 and r.significant and r.p_holm < ALPHA  # distinguishable from item noise
    # the class drops, checked against medians computed here from the two items.parquet
    a, b = (pd.read_parquet(demo_runs[k] / "items.parquet") for k in ("orig", "perturbed"))
    m = a.merge(b, on=["dataset", "condition", "item_id"], suffixes=("_a", "_b"))
    m = m[(m["status_a"] == "ok") & (m["status_b"] == "ok")]
    med = m.groupby("label_a")[["sdr_a", "sdr_b"]].median()
    want = sorted(med.index[med["sdr_b"] - med["sdr_a"] < -metric_spec("sdr").tolerance])
    got = cmp.class_regressions[cmp.class_regressions["metric"] == "sdr"]
    assert want and sorted(got["label"]) == want
    np.testing.assert_allclose(got.set_index("label").loc[want, "delta"],
                               (med["sdr_b"] - med["sdr_a"]).loc[want], atol=1e-9)
    # in the terminal: listed; exit 1 already from the aggregate drop
    r = cli("compare", demo_runs["orig"], demo_runs["perturbed"])
    assert r.returncode == 1 and want[0][:10] in r.stdout and "REGRESSION" in r.stdout, r.stdout + r.stderr


def _items(dataset: str, values: list[float], metric: str, labels: list[str]) -> pd.DataFrame:
    rows = [{"system": "s", "dataset": dataset, "split": "test", "condition": "average", "item_id": f"i{k}",
             "class_id": 0, "label": lab, metric: v, "status": "ok", "seconds": 0.1}
            for k, (v, lab) in enumerate(zip(values, labels, strict=True))]
    return items_frame(rows)


def _save(folder, frame, digests=None):
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "items.parquet")
    if digests:
        (folder / "run.json").write_text(json.dumps({"builds": {d: {"digest": v} for d, v in digests.items()}}))
    return folder


def test_each_metric_its_own_tolerance_and_unit(tmp_path, cli):
    pesq, ssnr = metric_spec("pesq"), metric_spec("ssnr")
    labels = ["a"] * 6
    base = pd.concat([_items("voicebank-demand", [2.0 + 0.1 * k for k in range(6)], "pesq", labels)
                      .assign(ssnr=[5.0 + k for k in range(6)])], ignore_index=True)
    cand = base.copy()
    cand["pesq"] -= 2.5 * pesq.tolerance  # beyond PESQ's tolerance (MOS)
    cand["ssnr"] -= 0.5 * ssnr.tolerance  # within SSNR's (dB)
    b, c = _save(tmp_path / "b", base), _save(tmp_path / "c", cand)
    cmp = compare_runs(b, c)
    assert list(cmp.regressions["metric"]) == ["pesq"]
    assert dict(zip(cmp.table["metric"], cmp.table["unit"], strict=True)) == {"pesq": pesq.unit, "ssnr": ssnr.unit}
    # --tolerance overrides every metric's, in its own unit
    big = 3 * max(pesq.tolerance, ssnr.tolerance)
    assert compare_runs(b, c, big).regressions.empty
    assert cli("compare", b, c).returncode == 1
    assert cli("compare", b, c, "--tolerance", str(big)).returncode == 0
    bad = cli("compare", b, c, "--tolerance", "nan")
    assert bad.returncode == 2 and "tolerance" in bad.stderr and "Traceback" not in bad.stderr


def test_class_regressions_are_listed_and_fail_with_fail_on_class(tmp_path, cli):
    tol = metric_spec("sdri").tolerance
    labels = ["a"] * 5 + ["b"] * 5
    base = _items("fsd50k", [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 4.0, 5.0], "sdri", labels)
    base["sdr"] = base["sdri"] + 1
    cand = base.copy()
    drop = cand["label"] == "a"
    cand.loc[drop, ["sdr", "sdri"]] -= 3 * tol  # class a: median −3 tol
    cand.loc[~drop, ["sdr", "sdri"]] += 2 * tol  # class b: +2 tol → class-median-mean −0.5 tol: within
    b, c = _save(tmp_path / "b", base), _save(tmp_path / "c", cand)
    cmp = compare_runs(b, c)
    assert cmp.regressions.empty and not cmp.failed
    assert sorted(cmp.class_regressions["label"]) == ["a", "a"]  # sdr and sdri
    np.testing.assert_allclose(cmp.class_regressions["delta"], -3 * tol)
    assert compare_runs(b, c, fail_on_class=True).failed
    ok = cli("compare", b, c)
    assert ok.returncode == 0 and "classes whose median drops" in ok.stdout, ok.stdout + ok.stderr
    bad = cli("compare", b, c, "--fail-on-class")
    assert bad.returncode == 1 and "--fail-on-class" in bad.stderr, bad.stdout + bad.stderr
    doc = json.loads((c / "compare.json").read_text())
    assert [r["label"] for r in doc["class_regressions"]] == ["a", "a"]


def test_different_build_digests_are_refused_naming_both_runs_and_digests(tmp_path, cli):
    frame = _items("fsd50k", [1.0, 2.0, 3.0], "sdri", ["a"] * 3)
    b = _save(tmp_path / "runA", frame, {"fsd50k": "1" * 64})
    c = _save(tmp_path / "runB", frame, {"fsd50k": "2" * 64})
    with pytest.raises(UssBenchError) as exc:
        check_same_sets(b, c)
    for part in ("runA", "runB", "1" * 12, "2" * 12, "fsd50k", "--allow-different-sets"):
        assert part in str(exc.value)
    r = cli("compare", b, c)
    assert r.returncode == 2 and "runA" in r.stderr and "runB" in r.stderr and "Traceback" not in r.stderr
    assert cli("compare", b, c, "--allow-different-sets").returncode == 0


def test_reports_still_exports_compare_runs():
    from harness import compare, reports

    assert reports.compare_runs is compare.compare_runs and reports.Comparison is compare.Comparison
