"""The new metrics reach items.parquet through the eval: `--metrics +bss` on a two-source set and the
speech metrics on Voicebank-Demand, checked against the libraries called directly on the saved estimates.

The metric functions themselves are tested elsewhere (tests/test_bss.py against mir_eval,
tests/test_speech_metrics.py against the MATLAB reference values); here the question is whether the eval
hands each function the right signals (target, estimate, mixture; the rate the registry declares) and
writes its values into the right columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile
from mir_eval.separation import bss_eval_sources
from pystoi import stoi as pystoi_stoi

from harness.audio import resample
from harness.datasets.store import open_set
from harness.evaluate import EvalOptions, OracleIRM, run_eval

SR = 32000


def _oracle_irm_run(build_dev_sets, tmp_path, dataset: str, limit: int, build: dict, **options):
    """Build ``dataset``'s dev set (``BuildOptions(jobs=1, **build)``), evaluate the oracle IRM on its first ``limit`` items with the estimates
    saved; returns ``(workdir, set, run folder, items.parquet rows)``, every row ``ok``."""
    wd = build_dev_sets([dataset], jobs=1, **build)
    out = tmp_path / "run"
    run_eval(OracleIRM(), EvalOptions(datasets=[dataset], workdir=wd, out=out, limit=limit, save_estimates="all",
                                      **options))
    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == limit and (items["status"] == "ok").all()
    return wd, open_set(wd, dataset), out, items


def _manifest_row(es, item_id: str) -> int:
    return int(np.flatnonzero(es.manifest["item_id"].to_numpy() == item_id)[0])


def _saved(out, dataset: str, item_id: str) -> np.ndarray:
    x, sr = soundfile.read(out / "estimates" / dataset / f"{item_id}.wav", dtype="float32")
    assert sr == SR
    return x


def test_plus_bss_scores_the_saved_estimates_as_mir_eval_does(build_dev_sets, tmp_path):
    """BSS-eval SDR/SIR/SAR of each item = mir_eval's bss_eval_sources with references [target, mixture −
    target] and estimates [estimate, mixture − estimate], no permutation (Kong et al. 2020's metric);
    float64 in both, so a difference would mean other signals or another call (1e-6 dB: the estimate
    round-trips exactly through the float32 WAV)."""
    wd, es, out, items = _oracle_irm_run(build_dev_sets, tmp_path, "fsdkaggle2018", 3, {"per_class": 1},
                                         metrics=("+bss",))
    mix, tgt = es.read_rows(np.arange(3))
    for row in items.itertuples():
        k = _manifest_row(es, row.item_id)
        est = _saved(out, "fsdkaggle2018", row.item_id).astype(np.float64)
        t, m = tgt[k].astype(np.float64), mix[k].astype(np.float64)
        sdr, sir, sar, _ = bss_eval_sources(np.stack([t, m - t]), np.stack([est, m - est]),
                                            compute_permutation=False)
        assert row.bss_sdr == pytest.approx(sdr[0], abs=1e-6)
        assert row.bss_sir == pytest.approx(sir[0], abs=1e-6)
        assert row.bss_sar == pytest.approx(sar[0], abs=1e-6)
    # not opted in: the columns stay NaN (the metric is opt-in because it costs seconds per item)
    out2 = tmp_path / "run2"
    run_eval(OracleIRM(), EvalOptions(datasets=["fsdkaggle2018"], workdir=wd, out=out2, limit=1))
    assert pd.read_parquet(out2 / "items.parquet")["bss_sdr"].isna().all()


def test_voicebank_speech_metrics_are_scored_at_16_khz(build_dev_sets, tmp_path):
    """STOI/ESTOI in items.parquet = pystoi on the clean utterance and the saved estimate, both taken to
    16 kHz as the registry declares (≤ 1e-5: pystoi is float64, the clean file is read here with soundfile
    and soxr rather than the corpus reader); CSIG/CBAK/COVL are present and inside the composite scale [1, 5]."""
    _, es, out, items = _oracle_irm_run(build_dev_sets, tmp_path, "voicebank-demand", 2, {}, metrics=("+estoi",))
    for row in items.itertuples():
        k = _manifest_row(es, row.item_id)
        clean, file_sr = soundfile.read(es.corpus_root / es.manifest["target_file"].iloc[k], dtype="float32")
        ref = resample(clean, file_sr, SR)  # the set's rate, as the eval reads the clean utterance
        est = _saved(out, "voicebank-demand", row.item_id)
        r16, e16 = resample(ref, SR, 16000), resample(est, SR, 16000)
        assert row.stoi == pytest.approx(pystoi_stoi(r16, e16, 16000), abs=1e-5)
        assert row.estoi == pytest.approx(pystoi_stoi(r16, e16, 16000, extended=True), abs=1e-5)
        for c in ("csig", "cbak", "covl"):
            assert 1.0 <= getattr(row, c) <= 5.0, c
