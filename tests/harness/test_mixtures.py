"""build-mixtures: protocol facts recomputed independently from the corpus files, and determinism."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile
import soxr

from harness import mixtures
from harness.config import load_dataset_config
from harness.datasets import get_corpus
from harness.datasets.store import open_set
from harness.mixtures import BuildOptions, build_mixtures, energy_gain, verify_build

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)


def test_energy_gain_hand_computed():
    t = np.full(100, 0.5, np.float32)  # energy 25
    assert energy_gain(t, np.full(100, 0.1, np.float32), 0.02, 50) == pytest.approx(5.0)  # sqrt(25 / 1)
    assert energy_gain(t, np.full(100, 1e-4, np.float32), 0.02, 50) == 50.0  # 5000 clipped
    assert energy_gain(np.full(100, 1e-4, np.float32), t, 0.02, 50) == 0.02  # 2e-4 clipped
    assert energy_gain(t, np.zeros(100, np.float32), 0.02, 50) == 50.0  # silent interferer


def test_array_sha256_is_the_float32_little_endian_bytes():
    import hashlib

    from harness.datasets.store import array_sha256

    x = np.random.default_rng(1).standard_normal(1001)
    expected = hashlib.sha256(x.astype("<f4").tobytes()).hexdigest()
    assert array_sha256(x) == expected  # float64 input is cast
    assert array_sha256(x.astype(">f4")) == expected  # big-endian input is byte-swapped
    y = np.repeat(x.astype(np.float32), 2)[::2]  # a strided view
    assert array_sha256(y) == expected
    assert array_sha256(np.zeros(0, np.float32)) == hashlib.sha256(b"").hexdigest()


@pytest.fixture(scope="module")
def fsdk_builds(dev_data, tmp_path_factory):
    root = dev_data / "fsdkaggle2018"
    one = tmp_path_factory.mktemp("jobs1")
    two = tmp_path_factory.mktemp("jobs2")
    b1 = build_mixtures(root, one, BuildOptions("fsdkaggle2018", jobs=1))
    b2 = build_mixtures(root, two, BuildOptions("fsdkaggle2018", jobs=2))
    return root, one, two, b1, b2


def test_bit_identical_across_jobs(fsdk_builds):
    _, one, two, b1, b2 = fsdk_builds
    assert b1["digest"] == b2["digest"]
    p = "mixtures/fsdkaggle2018/test/mixtures.h5"
    assert (one / p).read_bytes() == (two / p).read_bytes()
    m1 = pd.read_parquet(one / "mixtures/fsdkaggle2018/test/manifest.parquet")
    m2 = pd.read_parquet(two / "mixtures/fsdkaggle2018/test/manifest.parquet")
    pd.testing.assert_frame_equal(m1, m2)


def test_render_windows_and_source_batches_do_not_change_a_byte(fsdk_builds, tmp_path, monkeypatch):
    """Small windows (sources decoded again in later windows) and small decode batches: same files."""
    _, one, _, b1, _ = fsdk_builds
    monkeypatch.setattr(mixtures, "RENDER_WINDOW", 7)
    monkeypatch.setattr(mixtures, "SOURCE_BATCH", 3)
    seen = []
    b = build_mixtures(fsdk_builds[0], tmp_path, BuildOptions("fsdkaggle2018", jobs=2),
                       progress=lambda done, total: seen.append((done, total)))
    assert b["digest"] == b1["digest"]
    for name in ("mixtures.h5", "manifest.parquet"):
        p = f"mixtures/fsdkaggle2018/test/{name}"
        assert (tmp_path / p).read_bytes() == (one / p).read_bytes(), name
    assert seen[0] == (7, 40) and seen[-1] == (40, 40) and len(seen) == 6


@pytest.mark.parametrize("anchor", ["energy", "random"])
def test_source_first_render_equals_render_item(dev_data, tmp_path, anchor):
    """The build decodes each source once; every item must still be what the per-item ``render_item``
    makes of its spec (audio bytes, onsets, gain, hashes)."""
    root = dev_data / "audioset"
    opts = BuildOptions("audioset", per_class=2, anchor=anchor)
    build_mixtures(root, tmp_path, opts)
    s = open_set(tmp_path, "audioset")
    mix, tgt = s.read_rows(np.arange(len(s.manifest)))
    cfg = load_dataset_config("audioset")
    corpus = get_corpus("audioset", root)
    specs = mixtures.plan_build(corpus, cfg, opts).specs
    assert len(specs) == len(s.manifest) > 40
    for i, spec in enumerate(specs):
        row = mixtures.render_item(spec, corpus, cfg, anchor)
        got = s.manifest.iloc[i]
        assert got["item_id"] == spec.item_id
        np.testing.assert_array_equal(mix[i], row["mixture"])
        np.testing.assert_array_equal(tgt[i], row["target"])
        for col in ("sha256_mixture", "sha256_target", "target_onset_s", "interferer_onset_s", "interferer_gain"):
            assert got[col] == row[col], (spec.item_id, col)


def test_item_counts_follow_the_small_class_rule(fsdk_builds, dev_data):
    """Items per class = min(100, 5 x clips) for the classes of the test csv (datasets/fsdkaggle2018.toml)."""
    root, one, *_ = fsdk_builds
    csv = pd.read_csv(root / "FSDKaggle2018.meta/test_post_competition_scoring_clips.csv")
    expected = {label: min(100, 5 * n) for label, n in csv["label"].value_counts().items()}
    manifest = open_set(one, "fsdkaggle2018").manifest
    assert manifest.groupby("label").size().to_dict() == expected
    assert manifest["item_id"].is_unique
    assert (manifest["interferer_label"] != manifest["label"]).all()


def test_items_are_the_declared_sum(fsdk_builds):
    """target = first 2 s of the clip at 32 kHz (read here with soundfile + soxr); mixture = target + g·interferer."""
    root, one, *_ = fsdk_builds
    s = open_set(one, "fsdkaggle2018")
    mix, tgt = s.read_rows(np.arange(len(s.manifest)))
    for i, row in s.manifest.iterrows():
        def segment(rel):
            x, sr = soundfile.read(root / rel, dtype="float32")
            y = soxr.resample(x, sr, 32000, quality="HQ").astype(np.float32)
            return np.tile(y, -(-64000 // len(y)))[:64000]

        t = segment(row["target_file"])
        np.testing.assert_array_equal(tgt[i], t)
        e_t, e_i = np.sum(t.astype(np.float64) ** 2), np.sum(segment(row["interferer_file"]).astype(np.float64) ** 2)
        assert row["interferer_gain"] == pytest.approx(np.clip(np.sqrt(e_t / e_i), 0.02, 50), rel=1e-12)
        np.testing.assert_allclose(mix[i], t + np.float32(row["interferer_gain"]) * segment(row["interferer_file"]),
                                   atol=1e-7)


def test_verify_detects_tampering(fsdk_builds):
    root, one, *_ = fsdk_builds
    opts = BuildOptions("fsdkaggle2018")
    assert verify_build(root, one, opts) == []
    with h5py.File(one / "mixtures/fsdkaggle2018/test/mixtures.h5", "r+") as h5:
        h5["mixture"][3, 100] += 0.25
    problems = verify_build(root, one, opts)
    assert any("stored mixture does not match" in p for p in problems)


def test_seed_changes_the_set(dev_data, tmp_path, fsdk_builds):
    b = build_mixtures(dev_data / "fsdkaggle2018", tmp_path, BuildOptions("fsdkaggle2018", seed=7))
    assert b["digest"] != fsdk_builds[3]["digest"]


def test_slakh_items_are_real_mix_frames(dev_data, tmp_path):
    """Slakh: 7 classes on the dev test split (dev README); target/mixture = the same 2-s frame."""
    root = dev_data / "slakh2100"
    build = build_mixtures(root, tmp_path, BuildOptions("slakh2100", per_class=2))
    assert build["counts"]["classes"] == 7
    s = open_set(tmp_path, "slakh2100")
    mix, tgt = s.read_rows(np.arange(len(s.manifest)))
    row = s.manifest.iloc[0]
    start = int(round(row["target_onset_s"] * 44100))
    stem, sr = soundfile.read(root / row["target_file"], start=start, frames=88200, dtype="float32")
    full, _ = soundfile.read(root / row["mixture_file"], start=start, frames=88200, dtype="float32")
    assert np.abs(stem).max() > 0.1
    np.testing.assert_array_equal(tgt[0], soxr.resample(stem, sr, 32000, quality="HQ").astype(np.float32))
    np.testing.assert_array_equal(mix[0], soxr.resample(full, sr, 32000, quality="HQ").astype(np.float32))
    assert s.manifest["interferer_file"].isna().all()


def test_virtual_sets(dev_data, tmp_path):
    m = build_mixtures(dev_data / "musdb18hq", tmp_path, BuildOptions("musdb18"))
    v = build_mixtures(dev_data / "voicebank-demand", tmp_path, BuildOptions("voicebank-demand"))
    assert m["counts"]["items"] == 16 and v["counts"]["items"] == 17  # 4 tracks x 4 stems; 17 pairs
    assert m["virtual"] and not (tmp_path / "mixtures/musdb18/test/mixtures.h5").exists()
    vb = open_set(tmp_path, "voicebank-demand").manifest
    assert (vb["label"] == "speech").all() and vb["mixture_file"].str.startswith("noisy_testset_wav/").all()


def test_audioset_anchor_modes(dev_data, tmp_path):
    """Energy anchors are the loudest 2 s (recomputed here); random anchors differ and stay inside the clip."""
    root = dev_data / "audioset"
    build_mixtures(root, tmp_path / "e", BuildOptions("audioset", per_class=1, anchor="energy"))
    build_mixtures(root, tmp_path / "r", BuildOptions("audioset", per_class=1, anchor="random"))
    e = open_set(tmp_path / "e", "audioset")
    r = open_set(tmp_path / "r", "audioset")
    row = e.manifest.iloc[0]
    x, _ = soundfile.read(root / row["target_file"], dtype="float32")
    if len(x) > 64000:
        power = np.convolve(x.astype(np.float64) ** 2, np.ones(64000), "valid")[::320]
        assert row["target_onset_s"] * 32000 == pytest.approx(int(np.argmax(power)) * 320)
    assert not np.array_equal(e.manifest["target_onset_s"].to_numpy(), r.manifest["target_onset_s"].to_numpy())
    assert json.loads((tmp_path / "r/mixtures/audioset/test/build.json").read_text())["options"]["anchor"] == "random"


@pytest.mark.parametrize("jobs", [1, 2])
def test_writer_thread_gives_the_serial_bytes(fsdk_builds, tmp_path, monkeypatch, jobs):
    """Hashing and HDF5 writes on the writer thread (the default) vs in the rendering thread
    (``WRITER_QUEUE = 0``), with a small queue and small windows so that the two sides interleave:
    the same digest, mixtures.h5 and manifest bytes."""
    root, one, _, b1, _ = fsdk_builds
    monkeypatch.setattr(mixtures, "RENDER_WINDOW", 16)
    monkeypatch.setattr(mixtures, "WRITER_QUEUE", 0)
    serial = build_mixtures(root, tmp_path / "serial", BuildOptions("fsdkaggle2018", jobs=jobs))
    monkeypatch.setattr(mixtures, "WRITER_QUEUE", 2)
    threaded = build_mixtures(root, tmp_path / "threaded", BuildOptions("fsdkaggle2018", jobs=jobs))
    assert serial["digest"] == threaded["digest"] == b1["digest"]
    for name in ("mixtures.h5", "manifest.parquet"):
        p = f"mixtures/fsdkaggle2018/test/{name}"
        assert (tmp_path / "serial" / p).read_bytes() == (tmp_path / "threaded" / p).read_bytes(), name


def test_writer_thread_error_reaches_the_caller(dev_data, tmp_path, monkeypatch):
    """An HDF5 write failing on the writer thread stops the build with that error; no set is left."""
    calls = []

    def broken(self, row, values):
        calls.append(row)
        if row == 3:
            raise OSError(5, "simulated write error")

    monkeypatch.setattr(mixtures._RowWriter, "__call__", broken)
    with pytest.raises(OSError, match="simulated write error"):
        build_mixtures(dev_data / "fsdkaggle2018", tmp_path, BuildOptions("fsdkaggle2018", jobs=1))
    assert not (tmp_path / "mixtures/fsdkaggle2018/test/manifest.parquet").exists()
    assert max(calls) == 3


def test_manifest_sha256_in_blocks_is_the_whole_column_formula(fsdk_builds, monkeypatch):
    """manifest_sha256 hashes a few rows at a time (memory); the digest must be the sha256 of
    ``col \\0 json.dumps(column values) \\n`` per column, written out here in one piece."""
    import hashlib

    from harness.datasets import store

    _, one, *_ = fsdk_builds
    m = pd.read_parquet(one / "mixtures/fsdkaggle2018/test/manifest.parquet")
    h = hashlib.sha256()
    for col in store.MANIFEST_COLUMNS:
        values = [None if v is None or (isinstance(v, float) and v != v) else v for v in m[col].astype(object)]
        h.update(f"{col}\0{json.dumps(values, default=str)}\n".encode())
    monkeypatch.setattr(store, "MANIFEST_HASH_BLOCK", 3)
    assert store.manifest_sha256(m) == h.hexdigest()
    assert store.manifest_sha256(m.iloc[:0]) == store.manifest_sha256(m.iloc[:0].copy())
