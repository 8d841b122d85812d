"""Estimates on disk: `score` on mixtures written as estimates gives SDRi 0; missing/corrupt files are rows;
`eval --save-estimates` writes files that `score` re-scores to the run's numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import harness
from harness.audio import AudioRef
from harness.datasets import get_corpus
from harness.datasets.store import open_set
from harness.mixtures import BuildOptions, build_mixtures

SETS = {"fsd50k": "fsd50k", "voicebank-demand": "voicebank-demand"}


@pytest.fixture(scope="module")
def workdir(build_dev_sets):
    return build_dev_sets(SETS, per_class=1, jobs=1)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True)


def _mixtures(evalset):
    """``{item_id: mixture}`` at 32 kHz, read independently of the eval pipeline."""
    m = evalset.manifest
    if not evalset.virtual:
        mix, _ = evalset.read_rows(np.arange(len(m)))
        return dict(zip(m["item_id"], mix, strict=True))
    corpus = get_corpus(evalset.dataset, evalset.corpus_root)
    return {r.item_id: corpus.read(AudioRef(evalset.corpus_root / r.mixture_file), harness.SAMPLE_RATE)
            for r in m.itertuples()}


@pytest.mark.parametrize("dataset", list(SETS))
def test_mixtures_as_estimates_score_sdri_zero(workdir, tmp_path, dataset):
    evalset = open_set(workdir, dataset)
    est_dir = tmp_path / "est"
    for k, (item_id, mix) in enumerate(_mixtures(evalset).items()):
        path = est_dir / f"{item_id}{'.flac' if k == 1 else '.wav'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # one 24-bit FLAC: quantisation at 2^-23 full scale moves the SDR by ≪ 1e-4 dB
        sf.write(path, mix, harness.SAMPLE_RATE, subtype="PCM_24" if k == 1 else "FLOAT")
    r = _cli("score", est_dir, dataset, "--workdir", workdir, "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 0, r.stderr
    items = pd.read_parquet(tmp_path / "run" / "items.parquet")
    assert len(items) == len(evalset.manifest) and (items["status"] == "ok").all()
    assert np.abs(items["sdri"].to_numpy()).max() <= 1e-4


def test_missing_and_corrupt_estimates_are_rows(workdir, tmp_path):
    evalset = open_set(workdir, "fsd50k")
    mixes = _mixtures(evalset)
    ids = list(mixes)
    est_dir = tmp_path / "est"
    est_dir.mkdir()
    for item_id in ids[2:]:
        sf.write(est_dir / f"{item_id}.wav", mixes[item_id], harness.SAMPLE_RATE, subtype="FLOAT")
    (est_dir / f"{ids[1]}.wav").write_bytes(b"RIFF\x00\x00not a wav file at all")  # ids[0]: no file
    r = _cli("score", est_dir, "fsd50k", "--workdir", workdir, "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 0, r.stderr
    items = pd.read_parquet(tmp_path / "run" / "items.parquet").set_index("item_id")
    assert items.loc[ids[0], "status"] == "missing_estimate"
    assert items.loc[ids[1], "status"] == "corrupt_estimate"
    assert (items.loc[ids[2:], "status"] == "ok").all() and len(items) == len(ids)


def test_saved_estimates_rescore_to_the_run(workdir, tmp_path):
    run = tmp_path / "run"
    r = _cli("eval", *SETS, "--baseline", "oracle-irm", "--workdir", workdir, "--out", run, "--save-estimates", "all",
             "--quiet")
    assert r.returncode == 0, r.stderr
    items = pd.read_parquet(run / "items.parquet")
    for dataset in SETS:
        folder = run / "estimates" / dataset
        sub = items[items["dataset"] == dataset]
        assert sorted(p.stem for p in folder.glob("*.wav")) == sorted(sub["item_id"])
        assert sf.info(next(folder.glob("*.wav"))).subtype == "FLOAT"
        r = _cli("score", folder, dataset, "--workdir", workdir, "--out", tmp_path / f"re-{dataset}", "--quiet")
        assert r.returncode == 0, r.stderr
        again = pd.read_parquet(tmp_path / f"re-{dataset}" / "items.parquet")
        for col in ("sdr", "sdri", "pesq", "ssnr"):  # the same float32 arrays scored again: identical
            np.testing.assert_array_equal(again[col].to_numpy(), sub[col].to_numpy())
    r = _cli("eval", "fsd50k", "--baseline", "oracle-irm", "--workdir", workdir, "--out", tmp_path / "w",
             "--save-estimates", "worst", "--quiet")
    assert r.returncode == 0, r.stderr
    w = pd.read_parquet(tmp_path / "w" / "items.parquet").sort_values(["sdri", "item_id"])
    kept = sorted(p.stem for p in (tmp_path / "w" / "estimates" / "fsd50k").glob("*.wav"))
    assert kept == sorted(w["item_id"].head(5))


def test_musdb_estimates_nest_by_track(dev_data, tmp_path):
    build_mixtures(dev_data / "musdb18hq", tmp_path, BuildOptions("musdb18"))
    run = tmp_path / "run"
    r = _cli("eval", "musdb18", "--baseline", "oracle-irm", "--workdir", tmp_path, "--out", run,
             "--save-estimates", "best", "--quiet")
    assert r.returncode == 0, r.stderr
    items = pd.read_parquet(run / "items.parquet")
    best = items.sort_values(["musdb_sdri", "item_id"], ascending=[False, True])["item_id"].head(5)
    folder = run / "estimates" / "musdb18"
    kept = sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.wav"))
    assert kept == sorted(best)  # item id "track/stem" → <track>/<stem>.wav
    assert all(any(d.iterdir()) for d in folder.iterdir())  # no empty track folders left by the pruning
    r = _cli("score", folder, "musdb18", "--workdir", tmp_path, "--out", tmp_path / "re", "--quiet")
    assert r.returncode == 0, r.stderr
    again = pd.read_parquet(tmp_path / "re" / "items.parquet").set_index("item_id")
    assert (again.loc[~again.index.isin(best), "status"] == "missing_estimate").all()
    np.testing.assert_array_equal(again.loc[best, "musdb_sdri"].to_numpy(),
                                  items.set_index("item_id").loc[best, "musdb_sdri"].to_numpy())
