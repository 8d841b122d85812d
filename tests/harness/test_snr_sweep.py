"""SNR sweep sets (issue 12 item 3): determinism, realised ratios, pairing, the eval and report hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from harness.datasets.store import built_datasets, open_set
from harness.errors import ConfigError
from harness.mixtures import BuildOptions, build_mixtures
from harness.snr_sweep import parse_snr_list, parse_snr_split, snr_gain, snr_split, sweep_table

pytestmark = pytest.mark.numerics

SNRS = (-10.0, -5.0, 0.0, 5.0, 10.0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("USS_BENCH_")}, "CI": "true"})


@pytest.fixture(scope="module")
def sweeps(dev_data, tmp_path_factory):
    """The dev FSD50K layout: the paper's set, and the sweep built with 1 and with 2 workers."""
    root = dev_data / "fsd50k"
    one, two = tmp_path_factory.mktemp("snr-jobs1"), tmp_path_factory.mktemp("snr-jobs2")
    paper = build_mixtures(root, one, BuildOptions("fsd50k"))
    b1 = {s: build_mixtures(root, one, BuildOptions("fsd50k", jobs=1, snr_db=s)) for s in SNRS}
    b2 = {s: build_mixtures(root, two, BuildOptions("fsd50k", jobs=2, snr_db=s)) for s in SNRS}
    return root, one, two, paper, b1, b2


def test_split_names_round_trip():
    assert [snr_split("test", s) for s in (-10, -5, 0, -0.0, 5, 2.5)] == [
        "test@snr-10", "test@snr-5", "test@snr+0", "test@snr+0", "test@snr+5", "test@snr+2.5"]
    for s in (-10.0, 0.0, 2.5, 10.0):
        assert parse_snr_split(snr_split("test", s)) == ("test", s)
    assert parse_snr_split("test") == ("test", None)
    assert parse_snr_list("-10, -5,0,5,10,5") == [-10.0, -5.0, 0.0, 5.0, 10.0]
    for bad in ("", "-10,x", "nan", "inf"):
        with pytest.raises(ConfigError):
            parse_snr_list(bad)


def test_gain_hand_computed():
    # E_t = 4, E_i = 1: 0 dB needs g = 2; +20 dB needs g = 0.2; no clip to [0.02, 50]: E_t/E_i = 1e6 at -20 dB
    assert snr_gain(4.0, 1.0, 0.0) == pytest.approx(2.0, rel=1e-15)
    assert snr_gain(4.0, 1.0, 20.0) == pytest.approx(0.2, rel=1e-15)
    assert snr_gain(1e6, 1.0, -20.0) == pytest.approx(1e4, rel=1e-15)  # the paper's clip would give 50
    assert snr_gain(0.0, 1.0, 5.0) == 1.0 and snr_gain(1.0, 0.0, 5.0) == 1.0  # silent segment: plain sum


def test_bit_identical_across_jobs_at_every_snr(sweeps):
    _, one, two, _, b1, b2 = sweeps
    digests = set()
    for s in SNRS:
        split = snr_split("test", s)
        assert b1[s]["digest"] == b2[s]["digest"], split
        p = f"mixtures/fsd50k/{split}/mixtures.h5"
        assert (one / p).read_bytes() == (two / p).read_bytes(), split
        m1 = pd.read_parquet(one / f"mixtures/fsd50k/{split}/manifest.parquet")
        m2 = pd.read_parquet(two / f"mixtures/fsd50k/{split}/manifest.parquet")
        pd.testing.assert_frame_equal(m1, m2)
        digests.add(b1[s]["digest"])
    assert len(digests) == len(SNRS)  # each SNR is its own set


def test_sets_record_their_ratio_and_pair(sweeps):
    _, one, _, paper, b1, _ = sweeps
    assert paper["split"] == "test" and "snr_db" not in paper  # the paper's build.json keeps its keys
    pm = open_set(one, "fsd50k", "test").manifest
    for s in SNRS:
        split = snr_split("test", s)
        es = open_set(one, "fsd50k", split)  # passes the integrity checks
        on_disk = json.loads((es.path / "build.json").read_text())
        assert on_disk["snr_db"] == s and on_disk["split"] == split and on_disk["snr_sweep"]["corpus_split"] == "test"
        m = es.manifest
        assert (m["split"] == split).all()
        # the same items (ids, targets, interferers, onsets) as the paper's set: only the gain differs
        for col in ("item_id", "label", "target_file", "interferer_file", "target_onset_s", "interferer_onset_s",
                    "sha256_target"):
            assert m[col].tolist() == pm[col].tolist(), (split, col)
    # the paper's set and the "+0" set differ only where the paper's gain clip [0.02, 50] bites
    m0 = open_set(one, "fsd50k", "test@snr+0").manifest
    clipped = (pm["interferer_gain"] <= 0.02) | (pm["interferer_gain"] >= 50)
    np.testing.assert_allclose(m0["interferer_gain"][~clipped], pm["interferer_gain"][~clipped], rtol=1e-12)


def test_realised_ratio_is_the_requested_one(sweeps):
    """10·log10(Σt² / Σ(x − t)²) from the stored float32 mixture x and target t, in float64.

    x = fl(t + fl(g·i)): x − t differs from g·i by the rounding of the sum, ≤ 2⁻²⁴|x| a sample, i.e. a relative
    error of the interferer's energy ≲ 2·2⁻²⁴·(1 + 10^(10/20)) ≈ 5e-7 at +10 dB: ≈ 2e-6 dB. Tolerance 1e-4 dB.
    """
    _, one, _, _, _, _ = sweeps
    for s in SNRS:
        split = snr_split("test", s)
        with h5py.File(one / f"mixtures/fsd50k/{split}/mixtures.h5", "r") as h5:
            x = h5["mixture"][:].astype(np.float64)
            t = h5["target"][:].astype(np.float64)
        tir = 10 * np.log10(np.sum(t**2, axis=1) / np.sum((x - t) ** 2, axis=1))
        np.testing.assert_allclose(tir, s, atol=1e-4, err_msg=split)


def test_sweep_is_refused_for_real_mixtures(dev_data, tmp_path):
    for dataset, folder in (("musdb18", "musdb18hq"), ("slakh2100", "slakh2100"),
                            ("voicebank-demand", "voicebank-demand")):
        r = _cli("build-mixtures", dataset, "--root", dev_data / folder, "--workdir", tmp_path, "--snr-db", "0")
        assert r.returncode == 2, (dataset, r.stderr)
        assert "--snr-db applies to the two-source datasets" in r.stderr and "Traceback" not in r.stderr
    r = _cli("build-mixtures", "fsd50k", "--root", dev_data / "fsd50k", "--workdir", tmp_path, "--snr-db", "-5,x")
    assert r.returncode == 2 and "is not a number of dB" in r.stderr
    assert not (tmp_path / "mixtures").exists()


def test_sweep_table_quantiles_hand_computed():
    items = pd.DataFrame({"system": "s", "dataset": "d", "condition": "none",
                          "snr_db": [5.0] * 4 + [-5.0] * 3 + [0.0],
                          "sdri": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 99.0],
                          "status": ["ok"] * 7 + ["ref_silent"]})
    t = sweep_table(items)
    assert t["snr_db"].tolist() == [-5.0, 5.0]  # sorted by SNR; the SNR without an ok row is absent
    assert t["median"].tolist() == [20.0, 2.5]
    assert t["q25"].tolist() == [15.0, 1.75] and t["q75"].tolist() == [25.0, 3.25]  # linear interpolation
    assert t["items"].tolist() == [3, 4]


def test_oracle_irm_sdri_falls_with_snr_in_the_report(sweeps, tmp_path):
    """eval --snr-db runs the sweep into <run>/snr/*; the report's table and figure show SDRi against SNR.

    The oracle IRM leaves a residual that grows with the interferer's share: SDRi (relative to the mixture's
    SDR, which is the SNR) falls as the SNR rises.
    """
    _, one, _, _, _, _ = sweeps
    run = tmp_path / "run"
    r = _cli("eval", "--all", "--baseline", "oracle-irm", "--workdir", one, "--out", run,
             "--snr-db", ",".join(f"{s:g}" for s in SNRS))
    assert r.returncode == 0, r.stderr
    assert built_datasets(one) == ["fsd50k"]
    main = pd.read_parquet(run / "items.parquet")
    assert set(main["split"]) == {"test"}  # --all evaluates the paper's sets only
    summary = (run / "summary.md").read_text()
    assert "## SNR sweep" in summary and (run / "snr_sweep.png").read_bytes()[:4] == b"\x89PNG"
    html = (run / "report.html").read_text()
    assert "<h2>SNR sweep</h2>" in html
    medians = []
    for s in SNRS:
        sub = pd.read_parquet(run / "snr" / snr_split("test", s) / "items.parquet")
        assert set(sub["split"]) == {snr_split("test", s)} and sub["item_id"].tolist() == main["item_id"].tolist()
        ok = sub[sub["status"] == "ok"]
        medians.append(float(ok["sdri"].median()))
        assert f"| +{s:g} |" in summary or f"| {s:+g} |" in summary
    assert all(a > b for a, b in zip(medians, medians[1:], strict=False)), medians


def test_eval_names_the_missing_sweep_sets(dev_data, tmp_path):
    build_mixtures(dev_data / "fsd50k", tmp_path, BuildOptions("fsd50k"))
    r = _cli("eval", "fsd50k", "--baseline", "mixture", "--workdir", tmp_path, "--out", tmp_path / "run",
             "--snr-db", "-5")
    assert r.returncode == 2
    assert "test@snr-5" in r.stderr and "build-mixtures fsd50k --split test --snr-db -5" in r.stderr
