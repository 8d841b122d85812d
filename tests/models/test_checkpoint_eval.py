"""The checkpoint path end to end on real audio: query sets (eq. 9), eval conditions, statuses, separate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from harness.datasets.store import open_set
from harness.errors import UssBenchError
from harness.evaluate import EvalOptions, run_eval
from harness.metrics import sdr
from harness.mixtures import BuildOptions, build_mixtures
from harness.models import file_sha256, load_query_net, separate_batch
from harness.queries import embed_queries, load_queries
from harness.systems import NO_QUERY, CheckpointSystem

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)


@pytest.fixture(scope="module")
def workdir(dev_data, tmp_path_factory):
    wd = tmp_path_factory.mktemp("ckpt-work")
    build_mixtures(dev_data / "fsdkaggle2018", wd, BuildOptions("fsdkaggle2018", per_class=1))
    return wd


def test_average_condition_needs_a_query_set(at_soft_ckpt, workdir, tmp_path):
    with pytest.raises(UssBenchError, match="embed-queries fsdkaggle2018"):
        run_eval(CheckpointSystem(at_soft_ckpt, workdir), EvalOptions(["fsdkaggle2018"], workdir, tmp_path))


def test_query_set_is_the_mean_of_per_file_means(at_soft_ckpt, dev_data, workdir):
    """Eq. 9: per file, the mean clipwise output over 2-s chunks tiled to 64000; per class, the mean over files."""
    root = dev_data / "fsdkaggle2018"
    prov = embed_queries("fsdkaggle2018", at_soft_ckpt, root, workdir, device="cpu")
    assert prov["checkpoint_sha256"] == file_sha256(at_soft_ckpt) and prov["condition_type"] == "at_soft"
    table, _ = load_queries(workdir, "fsdkaggle2018", prov["checkpoint_sha256"])
    train = pd.read_csv(root / "FSDKaggle2018.meta/train_post_competition.csv")
    assert sorted(table) == sorted(train["label"])  # Applause, Clarinet, Snare_drum: one clip each
    net = load_query_net(at_soft_ckpt)
    fname = train.loc[train["label"] == "Clarinet", "fname"].iloc[0].replace(".wav", ".flac")
    x, sr = soundfile.read(root / "FSDKaggle2018.audio_train" / fname, dtype="float32")
    import soxr

    x = soxr.resample(x, sr, 32000, quality="HQ").astype(np.float32)
    chunks = [np.resize(x[i:i + 64000], 64000) for i in range(0, len(x), 64000)]  # np.resize tiles
    with torch.no_grad():
        expected = net(torch.from_numpy(np.stack(chunks)))["clipwise_output"].mean(0).numpy()
    # the same Cnn14 forward on the same machine, maybe at another batch size (oneDNN picks kernels per
    # shape): a few float32 roundings of a 13-layer net, ≈ 1e-6 of the probabilities; 1e-5 is 10× that
    np.testing.assert_allclose(table["Clarinet"], expected, rtol=1e-5, atol=1e-6)


def test_checkpoint_eval_rows(at_soft_ckpt, workdir, tmp_path):
    system = CheckpointSystem(at_soft_ckpt, workdir, condition="average", device="cpu", batch_size=4)
    run_eval(system, EvalOptions(["fsdkaggle2018"], workdir, tmp_path / "avg"))
    items = pd.read_parquet(tmp_path / "avg/items.parquet")
    # no test class of the dev FSDKaggle2018 split has a train clip: every row is kept, as no_query
    assert len(items) == 7 and (items["status"] == NO_QUERY).all() and items["sdr"].isna().all()
    assert (items["checkpoint_sha256"] == file_sha256(at_soft_ckpt)).all()

    oracle = CheckpointSystem(at_soft_ckpt, workdir, condition="oracle", device="cpu", batch_size=4)
    run_eval(oracle, EvalOptions(["fsdkaggle2018"], workdir, tmp_path / "ora", limit=2))
    rows = pd.read_parquet(tmp_path / "ora/items.parquet")
    assert (rows["status"] == "ok").all() and (rows["condition"] == "oracle").all()
    # the fast path ran, and its start-up check against the plain float32 module is in run.json
    inference = json.loads((tmp_path / "ora/run.json").read_text())["inference"]
    assert inference["fast_path"] is True and 0 <= inference["fidelity_max_rel_diff"] <= 1e-4
    s = open_set(workdir, "fsdkaggle2018")
    mix, tgt = s.read_rows(np.arange(2))
    net = load_query_net(at_soft_ckpt)
    with torch.no_grad():  # eq. 11: the target's own clipwise output (one 2-s chunk)
        cond = net(torch.from_numpy(tgt))["clipwise_output"].numpy()
    est = separate_batch(oracle.separator, mix, cond, batch_size=1)
    for i in range(2):
        # batch 4 in the run, batch 1 here: the outputs differ by ≤ ~1e-5 of peak (conftest.TOLERANCE's
        # measured size). With |SDR| < 20 dB the error power is ≥ 1 % of the target's, so that moves SDR by
        # ≤ (10 / ln 10)·2·1e-5·10^(20/20) ≈ 1e-3 dB at worst; the float32 means add < 4e-5 dB.
        assert abs(rows["sdr"].iloc[i]) < 20
        assert rows["sdr"].iloc[i] == pytest.approx(sdr(tgt[i], est[i]), abs=1e-3)


def test_sed_anchor_rule(dlm_pth, sed):
    """A 10-s clip: exactly the upstream rule (find_anchor). A 4-s clip: the segment stays inside the audio."""
    from harness.anchors import find_anchor
    from harness.mixtures import _sed_anchor_fn

    anchor = _sed_anchor_fn(str(dlm_pth))  # runs the SED on one thread (and sets torch to one thread)
    assert torch.get_num_threads() == 1  # so the framewise below are the same bits as the rule's
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(320000)).astype(np.float32)
    clip[200000:230000] *= 8  # a loud burst
    with torch.no_grad():
        framewise = sed(torch.from_numpy(clip)[None])["framewise_output"][0].numpy()
    for class_id in (0, 137, 300):
        segment, begin = anchor(clip, class_id)
        assert (begin, begin + 64000) == find_anchor(framewise, class_id)
        np.testing.assert_array_equal(segment, clip[begin:begin + 64000])
    short = clip[:128000]  # 4 s: the segment must end by sample 128000
    for class_id in range(0, 527, 25):
        segment, begin = anchor(short, class_id)
        assert 0 <= begin <= 128000 - 64000 and len(segment) == 64000


def test_one_read_loader_equals_the_two_loaders(at_soft_ckpt):
    from harness.models import load_separator, load_separator_and_query_net

    separator, query_net = load_separator_and_query_net(at_soft_ckpt)
    for ours, theirs in ((separator, load_separator(at_soft_ckpt)), (query_net, load_query_net(at_soft_ckpt))):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert separator.condition_type == "at_soft"


@pytest.mark.slow
def test_cli_eval_batch_size_auto_is_recorded(at_soft_ckpt, workdir, tmp_path):
    """``eval --batch-size auto`` (the default) times sizes ≤ --limit, runs at the chosen one, records both."""
    from harness import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["eval", "fsdkaggle2018", "--checkpoint", str(at_soft_ckpt), "--workdir", str(workdir),
                  "--condition", "oracle", "--limit", "2", "--device", "cpu", "--out", str(tmp_path / "run"),
                  "--quiet"])
    assert done.value.code == 0
    run = json.loads((tmp_path / "run/run.json").read_text())
    chosen = run["inference"]["batch_size"]
    assert chosen["mode"] == "auto" and chosen["chosen"] in (1, 2) and set(chosen["seconds_per_item"]) <= {"1", "2"}
    assert run["options"]["batch_size"] == chosen["chosen"]
    assert run["inference"]["fast_path"] and run["inference"]["fidelity_max_rel_diff"] <= 1e-4
