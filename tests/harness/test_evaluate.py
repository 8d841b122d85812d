"""eval on the dev corpora: the mixture baseline scores SDRi 0, the oracle IRM beats it, rows keep a status."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.config import DATASET_NAMES
from harness.datasets.store import open_set
from harness.evaluate import ITEM_COLUMNS, EvalOptions, MixtureBaseline, OracleIRM, run_eval, score
from harness.mixtures import BuildOptions, build_mixtures

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

FOLDERS = {"audioset": "audioset", "fsdkaggle2018": "fsdkaggle2018", "fsd50k": "fsd50k", "musdb18": "musdb18hq",
           "slakh2100": "slakh2100", "voicebank-demand": "voicebank-demand"}


@pytest.fixture(scope="module")
def workdir(dev_data, tmp_path_factory):
    wd = tmp_path_factory.mktemp("work")
    for name in DATASET_NAMES:
        build_mixtures(dev_data / FOLDERS[name], wd, BuildOptions(name, per_class=2, jobs=2))
    return wd


@pytest.fixture(scope="module")
def runs(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for system in (MixtureBaseline(), OracleIRM()):
        run_eval(system, EvalOptions(datasets=list(DATASET_NAMES), workdir=workdir, out=out / system.name[9:]))
    return out


def test_items_have_every_dataset_and_column(runs):
    items = pd.read_parquet(runs / "mixture" / "items.parquet")
    assert list(items.columns) == list(ITEM_COLUMNS)
    assert set(items["dataset"]) == set(DATASET_NAMES)
    assert (items["system"] == "baseline:mixture").all()
    assert items.groupby("dataset").size()["musdb18"] == 16
    vb = items[items["dataset"] == "voicebank-demand"]
    assert vb["pesq"].notna().all() and vb["ssnr"].notna().all()
    assert items[items["dataset"] != "voicebank-demand"]["pesq"].isna().all()


def test_mixture_baseline_sdri_is_zero(runs):
    items = pd.read_parquet(runs / "mixture" / "items.parquet")
    ok = items[items["status"] == "ok"]
    assert len(ok) == len(items)
    # the estimate is the mixture itself: SDRi = sdr(ref, mix) − sdr(ref, mix), the same computation twice
    assert (ok["sdri"] == 0).all()
    assert (ok[ok["dataset"] == "musdb18"]["musdb_sdri"] == 0).all()


def test_oracle_irm_improves_every_dataset(runs):
    items = pd.read_parquet(runs / "oracle-irm" / "items.parquet")
    med = items[items["status"] == "ok"].groupby("dataset")["sdri"].median()
    assert (med > 0).all(), med


def test_resume_skips_written_datasets(workdir, runs, monkeypatch):
    calls = []
    import harness.evaluate as ev

    monkeypatch.setattr(ev, "evaluate_set", lambda *a, **k: calls.append(a[1].dataset) or [])
    out = runs / "mixture"
    run_eval(MixtureBaseline(), EvalOptions(datasets=list(DATASET_NAMES), workdir=workdir, out=out, resume=True))
    assert calls == []
    assert len(pd.read_parquet(out / "items.parquet")) > 0


def test_unscorable_items_keep_a_status():
    cfg = {"metrics": ["sdr", "sdri"], "sample_rate": 32000}
    ref = np.zeros(64000, np.float32)
    row = score(ref, ref.copy(), ref.copy(), cfg)
    assert row["status"] == "ref_silent" and np.isnan(row["sdr"])
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(64000).astype(np.float32)
    est = ref.copy()
    est[5] = np.nan
    assert score(ref, est, ref, cfg)["status"] == "est_nonfinite"
    hand = score(ref, 0.9 * ref, ref, cfg)  # error power 0.01·E -> SDR = 20 dB exactly
    # float32: 0.9·ref and its difference from ref are each rounded (≤ 2⁻²⁴ / 0.1 ≈ 6e-7 of the error), the
    # means by ≤ 1.9e-6 (tests/test_metrics.py): ≤ (10 / ln 10)·(2·6e-7 + 2·1.9e-6) ≈ 2.2e-5 dB from 20 dB
    assert hand["status"] == "ok" and hand["sdr"] == pytest.approx(20.0, abs=1e-4)


def test_open_set_names_the_missing_build(tmp_path):
    from harness.errors import UssBenchError

    with pytest.raises(UssBenchError, match="build-mixtures fsd50k"):
        open_set(tmp_path, "fsd50k")
