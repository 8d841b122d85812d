"""Tests of harness.speech against values computed independently of it.

Oracles: the MATLAB reference values of ``data/meta/speech_metrics/README.md`` (Loizou's ``composite``,
``comp_snr``, ITU-T P.862.2, the STOI reference); the components those MATLAB values imply, solved from
the paper's regressions (independent of our LLR/WSS code); hand-worked cases; ``pystoi`` and
``speechmos`` called directly.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile

from harness import metrics as M
from harness import speech as S

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

# MATLAB reference values, data/meta/speech_metrics/README.md (degraded scored against 1_speech).
MATLAB_SSNR = {"noisy": -0.2168617488195842, "processed": -1.203370519849324}
MATLAB_PESQ_WB = {"noisy": 1.162418139243076, "processed": 1.059470549259627}
MATLAB_COMPOSITE = {  # csig, cbak, covl
    "noisy": (2.0379921576936724, 1.8630832845433165, 1.5433158494889607),
    "processed": (1.0, 1.5970462092512985, 1.0),  # csig and covl are clipped at 1
}
MATLAB_STOI = {"noisy": 0.8389069756011454, "processed": 0.6611653263173312}

# Tolerances (each reasoned, measured values in the comments):
TOL_COMPONENT = 1e-10
"""LLR and WSS vs the values implied by MATLAB's composite (measured 6.5e-13 and 1.7e-12). Solving
the regressions divides by 0.007 (WSS) and 1.029 (LLR), so the ~4e-16 rounding of the printed MATLAB
doubles becomes ~1e-13; the rest is float64 rounding of FFTs, sums and the order-16 Levinson recursion
done in another order (relative ~1e-13 of values ~50). 1e-10 leaves a margin for other BLAS/FFT builds
and still catches any change of definition (the nearest-peak variant alone moves WSS by 2.7)."""
TOL_PESQ_LIB = 3e-7
"""``pesq`` 0.0.4 vs the MATLAB P.862.2 values: measured 2.51e-7 and 1.34e-7 (the C code's float32
arithmetic vs MATLAB's double)."""
TOL_COMPOSITE = 0.805 * TOL_PESQ_LIB + 1e-9
"""The composite measures inherit the PESQ library difference scaled by its coefficient (≤ 0.805 in COVL):
measured 1.5e-7 (CSIG), 1.2e-7 (CBAK), 2.0e-7 (COVL) noisy, 6.4e-8 CBAK processed: exactly the PESQ
difference times 0.603 / 0.478 / 0.805; LLR, WSS and segSNR contribute < 1e-11."""
TOL_STOI_MATLAB = 1.5e-5
"""pystoi 0.4.1 vs MATLAB STOI: measured 1.42e-5 (noisy) and 1.31e-5 (processed); pystoi resamples to
10 kHz with its own polyphase filter, not MATLAB's ``resample``, which is where its known ~1e-5 lies."""


def _solve_matlab_components(case: str) -> tuple[float, float]:
    """(LLR, WSS) implied by MATLAB's composite, from the regressions, MATLAB's PESQ and SSNR:
    CBAK gives WSS, then CSIG gives LLR (noisy only; the processed CSIG is clipped: LLR is NaN)."""
    csig, cbak, _ = MATLAB_COMPOSITE[case]
    pesq, seg = MATLAB_PESQ_WB[case], MATLAB_SSNR[case]
    w = (1.634 + 0.478 * pesq + 0.063 * seg - cbak) / 0.007
    llr = (3.093 + 0.603 * pesq - 0.009 * w - csig) / 1.029 if case == "noisy" else math.nan
    return llr, w


@pytest.fixture(scope="module")
def speech_case(meta_dir):
    folder = meta_dir / "speech_metrics"
    out = {}
    for key, name in (("clean", "1_speech"), ("noisy", "1_noisySpeech"), ("processed", "1_processed")):
        x, sr = soundfile.read(folder / f"{name}_16000_Hz.wav", dtype="float64")
        assert sr == 16000
        out[key] = x
    return out


# ---------------------------------------------------------------------------------------------
# components vs MATLAB
# ---------------------------------------------------------------------------------------------


def test_matlab_values_are_consistent_with_the_paper_regressions():
    """The oracle itself: the noisy COVL predicted from the (LLR, WSS) that CSIG and CBAK imply equals
    MATLAB's COVL, so the three regressions and the wide-band PESQ are what MATLAB used."""
    llr, w = _solve_matlab_components("noisy")
    covl = 1.594 + 0.805 * MATLAB_PESQ_WB["noisy"] - 0.512 * llr - 0.007 * w
    assert covl == pytest.approx(MATLAB_COMPOSITE["noisy"][2], abs=1e-12)


def test_pesq_variant_fed_to_composite_is_wide_band(speech_case):
    """Solving the three noisy regressions for (LLR, PESQ, WSS) gives P.862.2 wide band, not the
    narrow-band P.862 MOS-LQO (``pesq`` mode "nb", 1.472), so composite uses pesq_wb_status."""
    a = np.array([[-1.029, 0.603, -0.009], [0.0, 0.478, -0.007], [-0.512, 0.805, -0.007]])
    csig, cbak, covl = MATLAB_COMPOSITE["noisy"]
    b = np.array([csig - 3.093, cbak - 1.634 - 0.063 * MATLAB_SSNR["noisy"], covl - 1.594])
    _, pesq_implied, _ = np.linalg.solve(a, b)
    assert pesq_implied == pytest.approx(MATLAB_PESQ_WB["noisy"], abs=1e-9)
    import pesq as pesq_lib

    nb = pesq_lib.pesq(16000, speech_case["clean"], speech_case["noisy"], "nb")
    assert abs(nb - pesq_implied) > 0.3
    wb, status = M.pesq_wb_status(speech_case["clean"], speech_case["noisy"], 16000)
    assert status == "ok" and wb == pytest.approx(pesq_implied, abs=TOL_PESQ_LIB)


@pytest.mark.parametrize("case", ["noisy", "processed"])
def test_wss_matches_matlab(speech_case, case):
    _, w = _solve_matlab_components(case)
    assert S.wss(speech_case["clean"], speech_case[case], 16000) == pytest.approx(w, abs=TOL_COMPONENT)


def test_llr_matches_matlab_noisy(speech_case):
    llr, _ = _solve_matlab_components("noisy")
    assert S.llr(speech_case["clean"], speech_case["noisy"], 16000) == pytest.approx(llr, abs=TOL_COMPONENT)


def test_llr_processed_is_consistent_with_the_clipped_matlab_values(speech_case):
    """Processed CSIG and COVL are clipped at 1: the unclipped values were ≤ 1, which bounds LLR from below
    (2.0707 with MATLAB's PESQ and the implied WSS); ours is 2.0801. Were the paper's [0, 2] clip of LLR
    applied, LLR would be ≤ 2 and the bound would fail."""
    _, w = _solve_matlab_components("processed")
    pesq = MATLAB_PESQ_WB["processed"]
    bound = max((3.093 + 0.603 * pesq - 0.009 * w - 1.0) / 1.029, (1.594 + 0.805 * pesq - 0.007 * w - 1.0) / 0.512)
    assert S.llr(speech_case["clean"], speech_case["processed"], 16000) > bound > 2.0


@pytest.mark.parametrize("case", ["noisy", "processed"])
def test_segsnr_matches_matlab(speech_case, case):
    assert S.segsnr(speech_case["clean"], speech_case[case], 16000) == pytest.approx(MATLAB_SSNR[case], abs=1e-12)


@pytest.mark.parametrize("case", ["noisy", "processed"])
def test_pesq_component_matches_matlab(speech_case, case):
    score, status = M.pesq_wb_status(speech_case["clean"], speech_case[case], 16000)
    assert status == "ok" and score == pytest.approx(MATLAB_PESQ_WB[case], abs=TOL_PESQ_LIB)


# ---------------------------------------------------------------------------------------------
# composite vs MATLAB
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["noisy", "processed"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_composite_matches_matlab(speech_case, case, dtype):
    """The pipeline hands float32 arrays; the WAVs are 32-bit float, so the cast is exact."""
    values, status = S.composite(speech_case["clean"].astype(dtype), speech_case[case].astype(dtype),
                                 speech_case["noisy"], 16000)
    assert status == "ok"
    for name, want in zip(("csig", "cbak", "covl"), MATLAB_COMPOSITE[case], strict=True):
        assert values[name] == pytest.approx(want, abs=TOL_COMPOSITE), name
    if case == "processed":
        assert values["csig"] == 1.0 and values["covl"] == 1.0  # clipped, as MATLAB's


def test_composite_other_rate_is_scored_at_16k(speech_case):
    import soxr

    c48 = soxr.resample(speech_case["clean"], 16000, 48000, quality="HQ")
    n48 = soxr.resample(speech_case["noisy"], 16000, 48000, quality="HQ")
    want = S.composite(soxr.resample(c48, 48000, 16000, quality="HQ"),
                       soxr.resample(n48, 48000, 16000, quality="HQ"), None, 16000)
    assert S.composite(c48, n48, None, 48000) == want


# ---------------------------------------------------------------------------------------------
# hand-worked cases
# ---------------------------------------------------------------------------------------------


def _speechlike(seconds: float = 2.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """AR(2) resonance at 500 Hz driven by noise, gated on/off at 4 Hz: has LPC structure and pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = np.zeros(n)
    e = rng.standard_normal(n)
    a1, a2 = 2 * 0.97 * math.cos(2 * math.pi * 500 / sr), -(0.97**2)
    for i in range(2, n):
        x[i] = a1 * x[i - 1] + a2 * x[i - 2] + e[i]
    gate = 0.55 + 0.45 * np.sin(2 * math.pi * 4 * np.arange(n) / sr)
    return 0.1 * x * gate / np.max(np.abs(x))


def test_identity_gives_zero_distances_and_clipped_fives():
    x = _speechlike()
    assert S.llr(x, x, 16000) == 0.0  # log(1)
    assert S.wss(x, x, 16000) == 0.0  # equal slopes
    values, status = S.composite(x, x, x, 16000)
    # PESQ(x, x) ≈ 4.64: CSIG ≈ 5.89, CBAK ≈ 6.06 (segSNR 35), COVL ≈ 5.33 before the clip
    assert status == "ok" and values == {"csig": 5.0, "cbak": 5.0, "covl": 5.0}


def test_llr_and_wss_ignore_the_level():
    """LPC coefficients and dB spectral slopes (and Klatt's weights, differences of dB) do not change
    with a gain: LLR and WSS of 0.5·x against x are 0 up to rounding."""
    x = _speechlike()
    assert abs(S.llr(x, 0.5 * x, 16000)) < 1e-9
    assert abs(S.wss(x, 0.5 * x, 16000)) < 1e-9


def test_frame_blocks_do_not_change_the_values(monkeypatch):
    """LLR and WSS frames are computed FRAME_CHUNK at a time (bounded memory); blocks of 7 frames give
    the same frame values up to float rounding of the batched products."""
    x = _speechlike(1.0)
    y = x + 0.02 * np.random.default_rng(2).standard_normal(x.shape)
    whole_llr, whole_wss = S._llr_frames(x, y, 16000), S._wss_frames(x, y, 16000)
    monkeypatch.setattr(S, "FRAME_CHUNK", 7)
    np.testing.assert_allclose(S._llr_frames(x, y, 16000), whole_llr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(S._wss_frames(x, y, 16000), whole_wss, rtol=0, atol=1e-10)
    assert whole_llr.shape == (int(16000 / 120 - 4),)


def test_composite_from_components_worked_values():
    v = S.composite_from_components(0.0, 0.0, 0.0, 1.0)
    assert v["csig"] == pytest.approx(3.093 + 0.603)
    assert v["cbak"] == pytest.approx(1.634 + 0.478)
    assert v["covl"] == pytest.approx(1.594 + 0.805)
    v = S.composite_from_components(1.0, 50.0, 10.0, 2.5)
    assert v["csig"] == pytest.approx(3.093 - 1.029 + 0.603 * 2.5 - 0.45)
    assert v["cbak"] == pytest.approx(1.634 + 0.478 * 2.5 - 0.35 + 0.63)
    assert v["covl"] == pytest.approx(1.594 + 0.805 * 2.5 - 0.512 - 0.35)
    assert S.composite_from_components(3.0, 200.0, -10.0, 1.0) == {"csig": 1.0, "cbak": 1.0, "covl": 1.0}
    assert math.isnan(S.composite_from_components(math.nan, 1.0, 1.0, 1.0)["csig"])


def test_multichannel_is_scored_as_the_channel_mean():
    x = _speechlike()
    y = x + 0.02 * np.random.default_rng(1).standard_normal(x.shape)
    stereo = S.composite(np.stack([x, x], 1), np.stack([y, y], 1), None, 16000)
    assert stereo == S.composite(x, y, None, 16000)
    multi, status = S.stoi(np.stack([x, x], 1), np.stack([y, y], 1), None, 16000)
    mono, _ = S.stoi(x, y, None, 16000)
    assert status == "ok" and multi["stoi"] == mono["stoi"]
    # pystoi's ESTOI varies in its last bits with the memory alignment of its arrays (~1e-16, see stoi())
    assert multi["estoi"] == pytest.approx(mono["estoi"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# statuses and errors
# ---------------------------------------------------------------------------------------------


def test_composite_statuses():
    x = _speechlike().astype(np.float32)
    y = (x + 0.01).astype(np.float32)
    nan3 = {"csig", "cbak", "covl"}

    def check(ref, est, want):
        values, status = S.composite(ref, est, None, 16000)
        assert status == want and set(values) == nan3 and all(math.isnan(v) for v in values.values())
        assert status in S.COMPOSITE_STATUSES

    check(np.zeros_like(x), y, "ref_silent")
    check(x, np.zeros_like(x), "pesq_est_silent")
    bad = y.copy()
    bad[5] = np.nan
    check(x, bad, "est_nonfinite")
    check(x[:500], y[:500], "composite_too_short")
    check(x[:3000], y[:3000], "pesq_too_short")
    gappy = y.copy()
    gappy[: len(y) // 5] = 0.0  # 20 % digital silence: no LPC model for > 5 % of the frames
    check(x, gappy, "composite_llr_undefined")


def test_bad_shapes_raise():
    x = _speechlike(0.5)
    with pytest.raises(ValueError, match="same length"):
        S.composite(x, x[:-1], None, 16000)
    with pytest.raises(ValueError, match="samples, channels"):
        S.llr(x[None, None, :], x[None, None, :], 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        S.stoi(x, x, None, 16000.5)
    with pytest.raises(ValueError, match="too short"):
        S.wss(x[:100], x[:100], 16000)


# ---------------------------------------------------------------------------------------------
# STOI / ESTOI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["noisy", "processed"])
def test_stoi_equals_pystoi_and_matlab(speech_case, case):
    from pystoi import stoi as pystoi

    values, status = S.stoi(speech_case["clean"], speech_case[case], None, 16000)
    assert status == "ok"
    assert values["stoi"] == pystoi(speech_case["clean"], speech_case[case], 16000, extended=False)
    # ESTOI: pystoi itself gives values a few ulp apart from call to call (memory alignment, see
    # harness.speech.stoi; measured spread ≤ 3.5e-16), so "equal" is to 1e-14
    assert values["estoi"] == pytest.approx(pystoi(speech_case["clean"], speech_case[case], 16000, extended=True),
                                            abs=1e-14)
    assert values["stoi"] == pytest.approx(MATLAB_STOI[case], abs=TOL_STOI_MATLAB)


def test_stoi_statuses():
    x = _speechlike(1.0)
    for n in (10, 256, 6348):  # under one frame pystoi raises AxisError; 6348 samples = 0.39675 s < 30 frames
        values, status = S.stoi(x[:n], x[:n], None, 16000)
        assert status == "stoi_too_short" and all(math.isnan(v) for v in values.values())
    # 2 s, of which 0.2 s is within 40 dB of the peak: pystoi drops the rest as silent, < 30 frames remain
    quiet = 1e-4 * _speechlike(2.0, seed=4)
    quiet[8000:11200] = x[:3200]
    assert S.stoi(quiet, quiet, None, 16000)[1] == "stoi_too_short"
    values, status = S.stoi(np.zeros(16000), x, None, 16000)
    assert status == "ref_silent" and status in S.STOI_STATUSES


# ---------------------------------------------------------------------------------------------
# DNSMOS (optional extra [dnsmos])
# ---------------------------------------------------------------------------------------------


def test_dnsmos_missing_extra_names_it(monkeypatch):
    monkeypatch.setattr(S, "_DNSMOS", None)
    monkeypatch.setitem(sys.modules, "speechmos", None)  # import fails as if not installed
    with pytest.raises(S.MissingExtraError, match=r"uss-bench\[dnsmos\]"):
        S.dnsmos(None, np.zeros(16000, np.float32), None, 16000)


def test_dnsmos_equals_speechmos(speech_case):
    pytest.importorskip("onnxruntime")
    sm = pytest.importorskip("speechmos.dnsmos")
    for case in ("noisy", "processed"):
        est = speech_case[case].astype(np.float32)
        values, status = S.dnsmos(None, est, None, 16000)
        want = sm.run(est, sr=16000)
        assert status == "ok"
        # our sessions are single-threaded; the library's use the default pool: same kernels, same sums
        assert values["dnsmos_sig"] == pytest.approx(want["sig_mos"], abs=1e-6)
        assert values["dnsmos_bak"] == pytest.approx(want["bak_mos"], abs=1e-6)
        assert values["dnsmos_ovrl"] == pytest.approx(want["ovrl_mos"], abs=1e-6)
        assert 1.0 < values["dnsmos_ovrl"] < 5.0
    again, _ = S.dnsmos(None, speech_case["noisy"].astype(np.float32), None, 16000)
    assert again == S.dnsmos(None, speech_case["noisy"].astype(np.float32), None, 16000)[0]


def test_dnsmos_statuses():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("speechmos.dnsmos")
    x = _speechlike(1.0).astype(np.float32)
    values, status = S.dnsmos(None, 2.0 * x / np.max(np.abs(x)), None, 16000)
    assert status == "dnsmos_out_of_range" and all(math.isnan(v) for v in values.values())
    bad = x.copy()
    bad[0] = np.inf
    assert S.dnsmos(None, bad, None, 16000)[1] == "est_nonfinite"


def test_dnsmos_needs_no_network(speech_case, meta_dir):
    """In a fresh interpreter whose sockets refuse every connection and name lookup, speechmos (which
    imports ``requests``) still loads its models from the wheel and scores."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("speechmos.dnsmos")
    wav = meta_dir / "speech_metrics" / "1_noisySpeech_16000_Hz.wav"
    code = textwrap.dedent(f"""
        import socket
        def refuse(*a, **k):
            raise OSError("network blocked by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import numpy as np, soundfile
        from harness import speech
        x, _ = soundfile.read({str(wav)!r}, dtype="float32")
        values, status = speech.dnsmos(None, x, None, 16000)
        print(status, repr(values["dnsmos_ovrl"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    status, ovrl = out.stdout.split()
    want, _ = S.dnsmos(None, speech_case["noisy"].astype(np.float32), None, 16000)
    assert status == "ok" and float(ovrl) == want["dnsmos_ovrl"]
