"""MUSDB18 protocols (``--musdb-protocol``) against museval called the same way, on real tracks.

The oracle is museval 0.4 itself: ``museval.evaluate`` with the arguments each protocol names (and, for
``sisec18``, the call ``museval.eval_mus_track`` makes, checked against eval_mus_track's own output).
Signals are the eval's: the corpus files decoded to 32-kHz mono by the MUSDB18 reader. Besides the dev
tracks, a second MUSDB18-HQ layout is written in a temporary folder with *other* tracks (stems of different
dev tracks re-combined, cropped, scaled, one stem silenced for 1.5 s), built, and evaluated end to end with
the oracle IRM, its estimates saved and re-scored with museval item by item.
"""

from __future__ import annotations

import json
import os
import types
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import soundfile

from harness import metrics, musdb_protocols
from harness.datasets import get_corpus
from harness.datasets.musdb18 import STEMS
from harness.errors import ConfigError
from harness.evaluate import EvalOptions, OracleIRM, run_eval
from harness.mixtures import BuildOptions, build_mixtures

pytestmark = pytest.mark.numerics

SR = 32000
TOL = 1e-6  # dB; both sides sum float64 squares of the same float32 samples (measured ≤ 1e-9)
LATE = "Freedoom - Track90005 (uss-bench composite)"  # bass starts at 5.17 s: frames 0-4 silent


@pytest.fixture(scope="module")
def museval():
    try:
        import museval
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("museval is not installed (the test oracle)")
        pytest.skip("museval is not installed")
    except Exception as exc:  # stempeg raises at import without ffmpeg on PATH
        if os.environ.get("CI"):
            pytest.fail(f"import museval failed: {exc}")
        pytest.skip(f"import museval failed ({exc}); install ffmpeg")
    return museval


def _track(root, name: str) -> dict[str, np.ndarray]:
    """The mixture and stems of one track at 32 kHz mono, decoded as the eval decodes them."""
    corpus = get_corpus("musdb18", root)
    (track,) = [t for t in corpus.tracks("test") if t.track_id == name]
    out = {"mixture": corpus.read(track.mixture, SR)}
    out.update({s.source_id: corpus.read(s.audio, SR) for s in track.sources})
    return out


def _estimate(ref: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """A plausible separated estimate: the target with mixture leakage, delayed 3 samples."""
    return (0.9 * ref + 0.05 * np.roll(mix, 3)).astype(np.float32)


def _nanmedian(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


def _uss_code_museval(museval, ref, est, mix):
    """The released code's two calls (evaluation/separate_and_evaluate.py, calculate_metrics)."""
    sdrs, _, _, _ = museval.evaluate(references=est[None, :, None], estimates=ref[None, :, None], win=SR, hop=SR)
    sdrs0, _, _, _ = museval.evaluate(references=est[None, :, None], estimates=mix[None, :, None], win=SR, hop=SR)
    sdr = _nanmedian(sdrs)
    return sdr, sdr - _nanmedian(sdrs0)


def _per_target_museval(museval, ref, est, mix):
    sdrs, _, _, _ = museval.evaluate(ref[None, :, None], est[None, :, None], win=SR, hop=SR)
    sdrs0, _, _, _ = museval.evaluate(ref[None, :, None], mix[None, :, None], win=SR, hop=SR)
    sdr = _nanmedian(sdrs)
    return sdr, sdr - _nanmedian(sdrs0)


def _joint_museval(museval, refs, ests, mix):
    """``museval.evaluate`` as ``eval_mus_track`` calls it (a list of (L, C) targets and estimates)."""
    col = [r[:, None] for r in refs]
    sdr, _, _, _ = museval.evaluate(col, [e[:, None] for e in ests], win=SR, hop=SR)
    sdr0, _, _, _ = museval.evaluate(col, [mix[:, None]] * len(refs), win=SR, hop=SR)
    a = np.array([_nanmedian(s) for s in sdr])
    return a, a - np.array([_nanmedian(s) for s in sdr0])


def test_protocol_choice_is_checked():
    assert musdb_protocols.check_protocol("sisec18") == "sisec18"
    with pytest.raises(ConfigError, match="did you mean 'uss-code'"):
        musdb_protocols.check_protocol("uss_code")
    with pytest.raises(ConfigError, match="--musdb-protocol"):
        EvalOptions(datasets=[], workdir=".", out=".", musdb_protocol="sisec").check()


def test_per_target_protocols_equal_museval_on_a_dev_track(museval, dev_data):
    t = _track(dev_data / "musdb18hq", LATE)
    for stem in ("bass", "vocals"):
        ref, mix = t[stem], t["mixture"]
        est = _estimate(ref, mix)
        ours = musdb_protocols.item_sdr(ref, est, mix, SR, "museval")
        # the default protocol is today's computation, bit for bit
        assert ours[0] == metrics.musdb_sdr(ref, est, SR)
        assert ours[1] == metrics.musdb_sdr(ref, est, SR) - metrics.musdb_sdr(ref, mix, SR)
        np.testing.assert_allclose(ours, _per_target_museval(museval, ref, est, mix), atol=TOL, rtol=0)
        swapped = musdb_protocols.item_sdr(ref, est, mix, SR, "uss-code")
        np.testing.assert_allclose(swapped, _uss_code_museval(museval, ref, est, mix), atol=TOL, rtol=0)
        assert abs(swapped[1] - ours[1]) > 0.1  # the protocols really differ on this estimate


def test_sisec18_equals_joint_museval_and_eval_mus_track(museval, dev_data):
    t = _track(dev_data / "musdb18hq", LATE)
    refs = [t[s] for s in STEMS]
    ests = [_estimate(r, t["mixture"]) for r in refs]
    sdr, sdri = musdb_protocols.joint_sdr(refs, ests, t["mixture"], SR)
    want_sdr, want_sdri = _joint_museval(museval, refs, ests, t["mixture"])
    np.testing.assert_allclose(sdr, want_sdr, atol=TOL, rtol=0)
    np.testing.assert_allclose(sdri, want_sdri, atol=TOL, rtol=0)
    # the joint mask matters: the bass is silent in frames 0-4, so they are dropped for the vocals too
    per_target = metrics.musdb_sdr(refs[0], ests[0], SR)
    assert abs(per_target - sdr[0]) > 1e-3
    # and the call above is eval_mus_track's: its TrackStore frames (quantised to 1e-5 dB) agree
    track = types.SimpleNamespace(name=LATE, rate=SR, targets=OrderedDict(
        (s, types.SimpleNamespace(audio=r[:, None])) for s, r in zip(STEMS, refs, strict=True)))
    store = museval.eval_mus_track(track, {s: e[:, None] for s, e in zip(STEMS, ests, strict=True)})
    for j, target in enumerate(store.scores["targets"]):
        assert target["name"] == STEMS[j]
        frames = [float(f["metrics"]["SDR"]) for f in target["frames"]]
        assert _nanmedian(frames) == pytest.approx(sdr[j], abs=1e-5)


# -- another MUSDB18-HQ layout, other tracks, end to end --------------------------------------------

def _read44(dev_data, track: str, stem: str) -> np.ndarray:
    x, sr = soundfile.read(dev_data / "musdb18hq" / "test" / track / f"{stem}.flac", dtype="float32")
    assert sr == 44100 and x.ndim == 2
    return x


OTHER_TRACKS = {
    # name: {stem: (source track, source stem, start s, gain)}, length s; stems re-combined across tracks
    "Remix - One": ({"vocals": ("Freedoom - Track90013 (uss-bench composite)", "vocals", 1.0, 0.8),
                     "drums": (LATE, "drums", 1.0, 1.1),
                     "bass": ("Music Delta - 80s Rock", "bass", 0.0, 0.9),
                     "other": (LATE, "other", 2.5, 0.7)}, 6.5),  # other starts at 2.17 s: frames 0-1 silent
    "Remix - Two": ({"vocals": (LATE, "vocals", 0.0, 1.0),
                     "drums": ("Freedoom - Track90013 (uss-bench composite)", "drums", 3.0, 0.6),
                     "bass": ("Freedoom - Track90015 (uss-bench composite)", "bass", 2.0, 1.0),
                     "other": ("Music Delta - 80s Rock", "other", 0.0, 1.2)}, 6.8),
}


@pytest.fixture(scope="module")
def other_layout(dev_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("musdb_other")
    for name, (spec, seconds) in OTHER_TRACKS.items():
        n = int(seconds * 44100)
        folder = root / "test" / name
        folder.mkdir(parents=True)
        stems = {}
        for stem, (src, src_stem, start, gain) in spec.items():
            x = _read44(dev_data, src, src_stem)
            a = int(start * 44100)
            stems[stem] = (gain * x[a: a + n]).astype(np.float32)
            assert len(stems[stem]) == n
        if name == "Remix - Two":  # drums silent from 1.0 to 4.0 s: at 32 kHz frame 2 is all zeros (the
            stems["drums"][44100: 4 * 44100] = 0.0  # resampler's ringing reaches a few ms into the gap)
        for stem, x in stems.items():
            soundfile.write(folder / f"{stem}.wav", x, 44100, subtype="FLOAT")
        soundfile.write(folder / "mixture.wav", sum(stems.values()), 44100, subtype="FLOAT")
    wd = tmp_path_factory.mktemp("musdb_other_wd")
    build_mixtures(root, wd, BuildOptions("musdb18", jobs=1))
    return root, wd


def _run(wd, out, protocol: str, jobs: int = 1) -> pd.DataFrame:
    run_eval(OracleIRM(), EvalOptions(datasets=["musdb18"], workdir=wd, out=out, musdb_protocol=protocol,
                                      save_estimates="all", jobs=jobs))
    return pd.read_parquet(out / "items.parquet")


def _estimates(out, items: pd.DataFrame) -> dict[str, np.ndarray]:
    folder = out / "estimates" / "musdb18"
    found = {}
    for item_id in items["item_id"]:
        x, sr = soundfile.read(folder / f"{item_id}.wav", dtype="float32")
        assert sr == SR
        found[item_id] = x
    return found


def test_other_layout_per_target_protocols_equal_museval(museval, other_layout, tmp_path):
    root, wd = other_layout
    for protocol, oracle in (("uss-code", _uss_code_museval), ("museval", _per_target_museval)):
        out = tmp_path / protocol
        items = _run(wd, out, protocol)
        assert len(items) == 8 and (items["status"] == "ok").all()
        est = _estimates(out, items)
        run = json.loads((out / "run.json").read_text())
        assert run["options"]["musdb_protocol"] == protocol
        res = json.loads((out / "results.json").read_text())
        assert {r["musdb_protocol"] for r in res["results"] if r["metric"].startswith("musdb_")} == {protocol}
        for row in items.itertuples():
            track, stem = row.item_id.split("/")
            t = _track(root, track)
            want = oracle(museval, t[stem], est[row.item_id], t["mixture"])
            assert row.musdb_sdr == pytest.approx(want[0], abs=TOL), (protocol, row.item_id)
            assert row.musdb_sdri == pytest.approx(want[1], abs=TOL), (protocol, row.item_id)


def test_other_layout_sisec18_equals_joint_museval_any_jobs(museval, other_layout, tmp_path):
    root, wd = other_layout
    one = _run(wd, tmp_path / "j1", "sisec18", jobs=1)
    two = _run(wd, tmp_path / "j2", "sisec18", jobs=2)
    cols = ["item_id", "musdb_sdr", "musdb_sdri", "sdr", "sdri", "status"]
    pd.testing.assert_frame_equal(one[cols], two[cols])  # bit-identical whatever the workers
    assert (one["status"] == "ok").all() and np.isfinite(one["musdb_sdr"]).all()
    est = _estimates(tmp_path / "j1", one)
    for track in OTHER_TRACKS:
        t = _track(root, track)
        rows = one[one["item_id"].str.startswith(track + "/")].set_index("item_id")
        refs = [t[s] for s in STEMS]
        ests = [est[f"{track}/{s}"] for s in STEMS]
        want_sdr, want_sdri = _joint_museval(museval, refs, ests, t["mixture"])
        got = rows.loc[[f"{track}/{s}" for s in STEMS]]
        np.testing.assert_allclose(got["musdb_sdr"], want_sdr, atol=TOL, rtol=0)
        np.testing.assert_allclose(got["musdb_sdri"], want_sdri, atol=TOL, rtol=0)
    # a stem silent in some frames (track one: other in 0-1 s; track two: drums in 2 s) moves the other
    # stems of its track off their per-target values: those frames are dropped for every target
    joint = one.set_index("item_id")["musdb_sdr"]
    pt = pd.Series({i: metrics.musdb_sdr(_track(root, i.split("/")[0])[i.split("/")[1]], e, SR)
                    for i, e in est.items()})  # the per-target (museval protocol) value of the same estimate
    for track, silent_stem in (("Remix - One", "other"), ("Remix - Two", "drums")):
        moved = [f"{track}/{s}" for s in STEMS if s != silent_stem]
        # (a median can stay put when the dropped frames straddle it: Remix One's bass does)
        assert (np.abs(joint[moved] - pt[moved]) > 1e-3).sum() >= 2, track
        assert joint[f"{track}/{silent_stem}"] == pt[f"{track}/{silent_stem}"]  # its own frames: skipped anyway
    # the other columns are the per-item ones of the same estimates (one track per separate call, as before)
    for row in one.itertuples():
        track, stem = row.item_id.split("/")
        assert row.sdr == metrics.sdr(_track(root, track)[stem], est[row.item_id])
    from harness.reports import render_report

    render_report(tmp_path / "j1")  # the report names the protocol beside Table 2's MUSDB columns
    assert "MUSDB18 protocol: sisec18" in (tmp_path / "j1" / "summary.md").read_text()
    assert "MUSDB18 protocol: sisec18" in (tmp_path / "j1" / "report.html").read_text()


def test_sisec18_with_limit_cutting_a_track_leaves_nan(other_layout, tmp_path):
    _, wd = other_layout
    run_eval(OracleIRM(), EvalOptions(datasets=["musdb18"], workdir=wd, out=tmp_path, musdb_protocol="sisec18",
                                      limit=6))
    items = pd.read_parquet(tmp_path / "items.parquet")
    assert len(items) == 6
    assert np.isfinite(items["musdb_sdr"].iloc[:4]).all() and items["musdb_sdr"].iloc[4:].isna().all()
    assert items["status_detail"].iloc[4:].str.contains("sisec18").all()
    assert np.isfinite(items["sdr"]).all()


def test_resume_refuses_another_protocol(other_layout, tmp_path):
    from harness.errors import UssBenchError

    _, wd = other_layout
    run_eval(OracleIRM(), EvalOptions(datasets=["musdb18"], workdir=wd, out=tmp_path, limit=4))
    with pytest.raises(UssBenchError, match="musdb_protocol"):
        run_eval(OracleIRM(), EvalOptions(datasets=["musdb18"], workdir=wd, out=tmp_path, limit=4, resume=True,
                                          musdb_protocol="sisec18"))


def test_score_rescores_saved_estimates_under_another_protocol(museval, other_layout, tmp_path):
    """`uss-bench score --musdb-protocol uss-code` on the estimates an eval saved: the released code's call."""
    from harness import cli

    root, wd = other_layout
    first = _run(wd, tmp_path / "first", "museval")
    folder = tmp_path / "first" / "estimates" / "musdb18"
    cli.score(estimates=folder, dataset="musdb18", workdir=wd, out=tmp_path / "again", musdb_protocol="uss-code",
              quiet=True)
    again = pd.read_parquet(tmp_path / "again" / "items.parquet").set_index("item_id")
    assert "MUSDB18 protocol: uss-code" in (tmp_path / "again" / "summary.md").read_text()
    est = _estimates(tmp_path / "first", first)
    for item_id in list(est)[:4]:  # one track: museval takes ~1 s per call
        track, stem = item_id.split("/")
        t = _track(root, track)
        want = _uss_code_museval(museval, t[stem], est[item_id], t["mixture"])
        assert again.loc[item_id, "musdb_sdr"] == pytest.approx(want[0], abs=TOL)
        assert again.loc[item_id, "musdb_sdri"] == pytest.approx(want[1], abs=TOL)
