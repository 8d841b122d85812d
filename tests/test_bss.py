"""BSS-eval sources SDR/SIR/SAR (harness.bss) against mir_eval called directly, on real built items."""

from __future__ import annotations

import numpy as np
import pytest
from mir_eval.separation import bss_eval_sources

from harness.bss import BSS_COLUMNS, bss_sources
from harness.datasets.store import open_set
from harness.mixtures import BuildOptions, build_mixtures

pytestmark = pytest.mark.numerics

SR = 32000


@pytest.fixture(scope="module")
def fsdk_items(dev_data, tmp_path_factory):
    """Three items of a small FSDKaggle2018 set built from the dev files: (mixture, target, manifest rows)."""
    wd = tmp_path_factory.mktemp("bss_fsdk")
    build_mixtures(dev_data / "fsdkaggle2018", wd, BuildOptions("fsdkaggle2018", per_class=1, jobs=1))
    es = open_set(wd, "fsdkaggle2018")
    rows = np.arange(min(3, len(es.manifest)))
    mix, tgt = es.read_rows(rows)
    return mix, tgt, es.manifest.iloc[rows]


def _estimate(target: np.ndarray, mixture: np.ndarray, k: int) -> np.ndarray:
    """A realistic imperfect estimate: leaked interferer, a 3-sample delay of part of the target, noise."""
    rng = np.random.default_rng(100 + k)
    inter = mixture - target
    delayed = np.concatenate([np.zeros(3, np.float32), target[:-3]])
    noise = 0.01 * float(np.std(target)) * rng.standard_normal(target.shape[0])
    return (0.8 * target + 0.15 * delayed + 0.2 * inter + noise).astype(np.float32)


def test_equals_mir_eval_on_built_items(fsdk_items):
    """Same values as mir_eval with references [target, mixture − target] and estimates [est, mixture − est],
    no permutation, target row; float64 in both, so the only difference would be a different call."""
    mix, tgt, items = fsdk_items
    assert len(items) == 3
    for k in range(len(items)):
        est = _estimate(tgt[k], mix[k], k)
        got, status = bss_sources(tgt[k], est, mix[k], SR)
        assert status == "ok"
        t64, m64, e64 = (x.astype(np.float64) for x in (tgt[k], mix[k], est))
        sdr, sir, sar, _ = bss_eval_sources(np.stack([t64, m64 - t64]), np.stack([e64, m64 - e64]),
                                            compute_permutation=False)
        want = {"bss_sdr": sdr[0], "bss_sir": sir[0], "bss_sar": sar[0]}
        for c in BSS_COLUMNS:
            assert got[c] == pytest.approx(want[c], abs=1e-9), (k, c)
        # sanity of the meaning: 20 % interferer leak bounds the SIR (≈ 20·log10(1/0.2) ≈ 14 dB when the
        # two sources have equal energy) and the estimate is decent but not perfect
        assert 0.0 < got["bss_sdr"] < 40.0 and got["bss_sir"] > got["bss_sdr"] - 1e-9


def test_interferer_default_is_the_mixture_minus_target(fsdk_items):
    """The explicit interferer (the manifest's gain × the rendered interferer ≈ mixture − target within
    float32 rounding) gives the same numbers as the default within the rounding's effect."""
    mix, tgt, items = fsdk_items
    est = _estimate(tgt[0], mix[0], 0)
    default, _ = bss_sources(tgt[0], est, mix[0], SR)
    explicit, status = bss_sources(tgt[0], est, mix[0], SR, interferer=(mix[0] - tgt[0]).astype(np.float32))
    assert status == "ok"
    for c in BSS_COLUMNS:  # float32 rounding of the interferer: ≤ 6e-8 relative per sample
        assert explicit[c] == pytest.approx(default[c], abs=1e-3)


def test_target_row_does_not_depend_on_the_second_estimate(fsdk_items):
    """compute_permutation=False: mir_eval's target row uses the target's estimate only."""
    mix, tgt, _ = fsdk_items
    est = _estimate(tgt[1], mix[1], 1).astype(np.float64)
    t64, m64 = tgt[1].astype(np.float64), mix[1].astype(np.float64)
    other = np.random.default_rng(5).standard_normal(t64.shape[0])
    a = bss_eval_sources(np.stack([t64, m64 - t64]), np.stack([est, m64 - est]), compute_permutation=False)
    b = bss_eval_sources(np.stack([t64, m64 - t64]), np.stack([est, other]), compute_permutation=False)
    got, _ = bss_sources(tgt[1], est.astype(np.float32), mix[1], SR)
    assert a[0][0] == b[0][0] and a[1][0] == b[1][0] and a[2][0] == b[2][0]
    assert got["bss_sdr"] == pytest.approx(a[0][0], abs=1e-4)  # est rounded to float32 above


def test_degenerate_inputs_have_statuses():
    rng = np.random.default_rng(0)
    t = rng.standard_normal(4000).astype(np.float32)
    i = rng.standard_normal(4000).astype(np.float32)
    m = t + i
    cases = {
        "bss_est_silent": (t, np.zeros_like(t), m, None),
        "bss_residual_silent": (t, m, m, None),  # the mixture returned as the estimate
        "bss_interferer_silent": (t, t * 0.5, t, None),
        "ref_silent": (np.zeros_like(t), t, m, None),
        "est_nonfinite": (t, np.full_like(t, np.nan), m, None),
        "length_mismatch": (t, t[:-1], m, None),
        "bss_not_mono": (np.stack([t, t], 1), np.stack([t, i], 1), np.stack([m, m], 1), None),
    }
    for want, (r, e, mx, inter) in cases.items():
        values, status = bss_sources(r, e, mx, SR, interferer=inter)
        assert status == want
        assert all(np.isnan(values[c]) for c in BSS_COLUMNS)
    with pytest.raises(ValueError, match="sample_rate"):
        bss_sources(t, t, m, 0)


def test_hand_worked_leak():
    """An estimate = target + a·interferer with orthogonal-ish white noises: SIR ≈ −20·log10(a)·(energy ratio),
    SAR very high (no artefact beyond the references' span)."""
    rng = np.random.default_rng(3)
    t = rng.standard_normal(16000)
    i = rng.standard_normal(16000)
    values, status = bss_sources(t.astype(np.float32), (t + 0.1 * i).astype(np.float32),
                                 (t + i).astype(np.float32), SR)
    assert status == "ok"
    assert values["bss_sir"] == pytest.approx(20.0, abs=0.3)  # 10·log10(Σt² / Σ(0.1 i)²), E_t ≈ E_i
    assert values["bss_sar"] > 60.0  # only float32 rounding of the inputs is an artefact
