"""eval at scale (issue 5): item-level parts and resume, executors (loky, Dask), torchrun ranks.

Every run is compared with an independent serial run (one process, ``--jobs 1``, batch size 16, no
resume) on the metric columns and statuses: they must be equal bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.config import REPO_ROOT, load_dataset_config
from harness.errors import ConfigError, UssBenchError
from harness.evaluate import (
    ITEM_COLUMNS,
    METRIC_COLUMNS,
    EvalOptions,
    MixtureBaseline,
    OracleIRM,
    part_files,
    parts_dir,
    run_eval,
    score,
    score_batch,
)
from harness.mixtures import BuildOptions, build_mixtures

pytestmark = pytest.mark.numerics  # float results: rerun under forced-down CPU kernels (noxfile numerics)

DEMO = REPO_ROOT / "datasets" / "demo"
SETS = {"audioset": "audioset", "fsd50k": "fsd50k", "musdb18": "musdb18hq", "voicebank-demand": "voicebank-demand"}
"""Demo sets used here: two fixed-length sets (60 and 45 items), whole tracks (4) and speech (3, PESQ/SSNR)."""
KEY = ["dataset", "condition", "item_id"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CI": "true"}


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=REPO_ROOT, timeout=300, **kw)


def assert_same_metrics(got: pd.DataFrame, want: pd.DataFrame, ordered: bool = True) -> None:
    """Same rows (ids), same statuses, bit-identical metric values (NaN where NaN).

    Exact equality is right here: both runs are on this machine with the same kernels, and the oracle IRM
    and mixture baselines compute each item alone, with per-frame FFTs and element-wise operations (no
    reduction that torch splits across threads), followed by numpy metrics on that item alone; so neither
    the thread count (1 in the subprocesses, 2 in pytest), the batch, the worker nor the rank changes a bit.
    ``nox -s numerics`` reruns these tests under forced-down kernels, where both sides change together.
    """
    if not ordered:
        got, want = (df.sort_values(KEY, kind="stable").reset_index(drop=True) for df in (got, want))
    assert list(got[KEY].itertuples(index=False)) == list(want[KEY].itertuples(index=False))
    assert (got["status"].to_numpy() == want["status"].to_numpy()).all()
    for col in METRIC_COLUMNS:
        a, b = got[col].to_numpy(), want[col].to_numpy()
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        assert same.all(), f"{col}: {np.flatnonzero(~same)[:5]} differ: {a[~same][:3]} vs {b[~same][:3]}"


@pytest.fixture(scope="module")
def demo_wd(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("work")
    for name, folder in SETS.items():
        build_mixtures(DEMO / folder, wd, BuildOptions(name))
    return wd


@pytest.fixture(scope="module")
def serial(demo_wd, tmp_path_factory) -> pd.DataFrame:
    """The reference: one process, jobs 1, batch 16, no resume."""
    out = tmp_path_factory.mktemp("serial")
    run_eval(OracleIRM(), EvalOptions(datasets=list(SETS), workdir=demo_wd, out=out))
    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == 60 + 45 + 4 + 3 and (items["status"] == "ok").sum() > 100
    return items


def _only(items: pd.DataFrame, datasets) -> pd.DataFrame:
    return items[items["dataset"].isin(list(datasets))].reset_index(drop=True)


# -- score_batch --------------------------------------------------------------------------------------


def _same_dicts(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and np.isnan(a[k]) and np.isnan(b[k])) for k in a)


@pytest.mark.parametrize("dataset", ["fsd50k", "musdb18", "voicebank-demand"])
def test_score_batch_equals_score_item_by_item(dataset):
    cfg = load_dataset_config(dataset)
    rng = np.random.default_rng(5)
    n, length = 7, 48000
    refs = rng.standard_normal((n, length)).astype(np.float32)
    mixes = (refs + rng.standard_normal((n, length))).astype(np.float32)
    ests = (refs + 0.3 * rng.standard_normal((n, length))).astype(np.float32)
    refs[1] = 0  # ref_silent
    ests[2, 10] = np.nan  # est_nonfinite
    ests[3] = 0  # all-zero estimate: SDR 0 dB, PESQ fails with a status
    want = [score(r, e, m, cfg) for r, e, m in zip(refs, ests, mixes, strict=True)]
    got = score_batch(refs, ests, mixes, cfg)
    assert all(_same_dicts(g, w) for g, w in zip(got, want, strict=True)), (got, want)
    assert [g["status"] for g in got][1:3] == ["ref_silent", "est_nonfinite"]
    # variable lengths (whole tracks) and a length mismatch go item by item
    refs_v = [refs[0], refs[4][:30000], refs[5]]
    ests_v = [ests[0], ests[4][:30000], ests[5][:100]]
    mixes_v = [mixes[0], mixes[4][:30000], mixes[5]]
    got = score_batch(refs_v, ests_v, mixes_v, cfg)
    want = [score(r, e, m, cfg) for r, e, m in zip(refs_v, ests_v, mixes_v, strict=True)]
    assert all(_same_dicts(g, w) for g, w in zip(got, want, strict=True))
    assert got[2]["status"] == "length_mismatch"
    with pytest.raises(ValueError, match="one of each"):
        score_batch(refs, ests[:3], mixes, cfg)


# -- parts and resume -----------------------------------------------------------------------------------


def test_parts_layout_merge_and_duplicates(demo_wd, serial, tmp_path, caplog):
    out = tmp_path / "run"
    opts = EvalOptions(datasets=["fsd50k", "musdb18"], workdir=demo_wd, out=out, batch_size=4, part_items=8)
    run = run_eval(OracleIRM(), opts)
    parts = part_files(parts_dir(out, "fsd50k", "none"))
    # units of 4 rows, a part once 8 rows are buffered: 45 rows -> 5 parts of 8 and one of 5
    assert [p.name for p in parts] == [f"rank0-{i:06d}.parquet" for i in range(6)]
    assert [len(pd.read_parquet(p)) for p in parts] == [8, 8, 8, 8, 8, 5]
    assert json.loads((out / "parts" / "fsd50k" / "meta.json").read_text())["system"] == "baseline:oracle-irm"
    items = pd.read_parquet(out / "items.parquet")
    assert list(items.columns) == list(ITEM_COLUMNS)
    assert_same_metrics(items, _only(serial, ["fsd50k", "musdb18"]))  # batch 4 == batch 16, same order
    assert run["items"]["fsd50k"] == {"rows": 45, "resumed": 0, "computed": 45, "duplicates_dropped": 0}

    # a duplicate part (e.g. two runs writing into one folder): one row kept per item, and logged
    shutil.copy(parts[1], parts[0].with_name("rank7-000000.parquet"))
    with caplog.at_level(logging.WARNING, logger="harness.evaluate"):
        run = run_eval(OracleIRM(), EvalOptions(**{**opts.__dict__, "resume": True}))
    assert "8 duplicate row(s)" in caplog.text
    assert run["items"]["fsd50k"] == {"rows": 45, "resumed": 45, "computed": 0, "duplicates_dropped": 8}
    items = pd.read_parquet(out / "items.parquet")
    assert not items.duplicated(KEY).any()
    assert_same_metrics(items, _only(serial, ["fsd50k", "musdb18"]))

    # rows missing from inside a block: the block is separated whole again, only the missing rows scored
    first = pd.read_parquet(parts[2])
    first.drop(index=[1, 6]).to_parquet(parts[2], index=False)
    (parts[0].with_name("rank7-000000.parquet")).unlink()
    run = run_eval(OracleIRM(), EvalOptions(**{**opts.__dict__, "resume": True}))
    assert run["items"]["fsd50k"] == {"rows": 45, "resumed": 43, "computed": 2, "duplicates_dropped": 0}
    assert [p.name for p in part_files(parts_dir(out, "fsd50k", "none"))][-1] == "rank0-000006.parquet"
    assert_same_metrics(pd.read_parquet(out / "items.parquet"), _only(serial, ["fsd50k", "musdb18"]))

    # without --resume the dataset starts over
    run = run_eval(OracleIRM(), opts)
    assert run["items"]["fsd50k"]["computed"] == 45 and len(part_files(parts_dir(out, "fsd50k", "none"))) == 6


def test_resume_refuses_parts_of_another_system(demo_wd, tmp_path):
    out = tmp_path / "run"
    run_eval(MixtureBaseline(), EvalOptions(datasets=["musdb18"], workdir=demo_wd, out=out))
    with pytest.raises(UssBenchError, match=r"parts/musdb18 were written for system='baseline:mixture'"):
        run_eval(OracleIRM(), EvalOptions(datasets=["musdb18"], workdir=demo_wd, out=out, resume=True))


def test_resume_after_sigkill(demo_wd, serial, tmp_path):
    """Kill a CLI eval once it has written a part, resume it, and get the uninterrupted run's rows."""
    out = tmp_path / "run"
    args = ["eval", "--baseline", "oracle-irm", *SETS, "--workdir", demo_wd, "--out", out,
            "--batch-size", "4", "--part-items", "4", "-q"]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "harness", *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            env=_env(), cwd=REPO_ROOT)
    first = parts_dir(out, "audioset", "none")  # the first of four datasets: most of the work is still ahead
    deadline = time.monotonic() + 240
    while not part_files(first):
        assert proc.poll() is None, f"eval ended before writing a part: {(tmp_path / 'killed.log').read_text()}"
        assert time.monotonic() < deadline, "no part file after 240 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "items.parquet").exists()
    written = sum(len(pd.read_parquet(p)) for d in SETS for p in part_files(parts_dir(out, d, "none")))
    assert 0 < written < len(serial)

    r = _cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    resumed = sum(v["resumed"] for v in run["items"].values())
    computed = sum(v["computed"] for v in run["items"].values())
    assert resumed >= written >= 4 and computed > 0 and resumed + computed == len(serial)
    items = pd.read_parquet(out / "items.parquet")
    assert not items.duplicated(KEY).any()
    assert_same_metrics(items, serial, ordered=False)
    assert_same_metrics(items, serial)  # and the merge restores the manifest order


# -- executors ----------------------------------------------------------------------------------------


def test_loky_jobs2_equals_serial(demo_wd, serial, tmp_path):
    run = run_eval(OracleIRM(), EvalOptions(datasets=list(SETS), workdir=demo_wd, out=tmp_path, jobs=2,
                                            batch_size=8))
    assert run["execution"]["executor"] == {"kind": "loky", "jobs": 2, "scheduler": None, "started": True}
    assert_same_metrics(pd.read_parquet(tmp_path / "items.parquet"), serial)


def test_dask_cluster_equals_serial(demo_wd, serial, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        run = run_eval(OracleIRM(), EvalOptions(datasets=list(SETS), workdir=demo_wd, out=tmp_path, jobs=1,
                                                executor="dask", scheduler=cluster.scheduler_address))
    assert run["execution"]["executor"]["kind"] == "dask" and run["execution"]["executor"]["jobs"] == 2
    assert_same_metrics(pd.read_parquet(tmp_path / "items.parquet"), serial)


def test_build_mixtures_on_dask_is_bit_identical(tmp_path):
    pytest.importorskip("distributed")
    from joblib import delayed

    from harness.datasets.store import open_set
    from harness.parallel import THREAD_VARS, executor, parallel

    root = DEMO / "fsdkaggle2018"
    serial_build = build_mixtures(root, tmp_path / "serial", BuildOptions("fsdkaggle2018"))
    with executor("dask", jobs=2) as ex:  # a LocalCluster of two worker processes
        assert ex.kind == "dask" and ex.jobs == 2
        dask_build = build_mixtures(root, tmp_path / "dask", BuildOptions("fsdkaggle2018", jobs=2))
        assert parallel(2)(delayed(os.getenv)(v) for v in THREAD_VARS) == ["1"] * len(THREAD_VARS)
    assert dask_build["digest"] == serial_build["digest"]
    a, b = open_set(tmp_path / "serial", "fsdkaggle2018"), open_set(tmp_path / "dask", "fsdkaggle2018")
    rows = np.arange(len(a.manifest))
    for x, y in zip(a.read_rows(rows), b.read_rows(rows), strict=True):
        assert np.array_equal(x, y)


def test_loky_workers_run_one_thread():
    import torch
    from joblib import delayed

    from harness.parallel import THREAD_VARS, executor, parallel

    with executor("loky", jobs=2):
        envs = parallel(2)(delayed(os.getenv)(v) for v in THREAD_VARS)
        threads = parallel(2)(delayed(torch.get_num_threads)() for _ in range(2))
        pids = set(parallel(2)(delayed(os.getpid)() for _ in range(4)))
    assert envs == ["1"] * len(THREAD_VARS) and threads == [1, 1]
    assert os.getpid() not in pids


def test_executor_options_are_checked(tmp_path):
    from harness.parallel import check_executor

    with pytest.raises(ConfigError, match="choose one of loky, dask"):
        check_executor("spark", 1, None)
    with pytest.raises(ConfigError, match="needs --executor dask"):
        check_executor("loky", 2, "tcp://localhost:8786")
    with pytest.raises(ConfigError, match="--jobs 0"):
        check_executor("loky", 0, None)
    with pytest.raises(ConfigError, match="--part-items 0"):
        EvalOptions(datasets=[], workdir=tmp_path, out=tmp_path, part_items=0).check()
    r = _cli("eval", "--baseline", "mixture", "fsd50k", "--workdir", tmp_path, "--scheduler", "tcp://x:1")
    assert r.returncode == 2 and "needs --executor dask" in r.stderr


# -- torchrun -----------------------------------------------------------------------------------------


def test_torchrun_two_ranks_equal_one_process(demo_wd, serial, tmp_path):
    out = tmp_path / "run"
    datasets = ["audioset", "musdb18"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "harness",
           "eval", "--baseline", "oracle-irm", *datasets, "--workdir", str(demo_wd), "--out", str(out),
           "--batch-size", "8", "--device", "cpu", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO_ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["execution"]["ranks"] == 2 and run["execution"]["backend"] == "gloo"
    assert run["items"]["audioset"] == {"rows": 60, "resumed": 0, "computed": 60, "duplicates_dropped": 0}
    ranks = {p.name.split("-")[0] for d in datasets for p in part_files(parts_dir(out, d, "none"))}
    assert ranks == {"rank0", "rank1"}
    # rank r evaluated blocks r, r + 2, ... of 8 items: rank 1 has audioset rows 8-15, 24-31, 40-47, 56-59
    rank1 = pd.concat([pd.read_parquet(p) for p in part_files(parts_dir(out, "audioset", "none"))
                       if p.name.startswith("rank1")])
    ids = serial[serial["dataset"] == "audioset"]["item_id"].to_numpy()
    assert sorted(rank1["item_id"]) == sorted(ids[np.r_[8:16, 24:32, 40:48, 56:60]])
    assert_same_metrics(pd.read_parquet(out / "items.parquet"), _only(serial, datasets))


# -- synthetic sets ---------------------------------------------------------------------------------------


def test_synthetic_set_of_any_size(tmp_path):
    from harness.datasets.store import open_set
    from harness.datasets.synthetic import build_synthetic_set

    build_synthetic_set(tmp_path, 50, seconds=0.25, chunk=16)
    evalset = open_set(tmp_path, "fsd50k")
    assert len(evalset.manifest) == 50 and evalset.build["protocol"] == "synthetic"
    mix, ref = evalset.read_rows(np.arange(50))
    assert mix.shape == (50, 8000) and not np.array_equal(mix, ref)
    run = run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=tmp_path, out=tmp_path / "run",
                                                  batch_size=10, part_items=20))
    items = pd.read_parquet(tmp_path / "run" / "items.parquet")
    assert (items["status"] == "ok").all() and items["sdri"].abs().max() <= 1e-6
    assert run["items"]["fsd50k"]["computed"] == 50
    assert len(part_files(parts_dir(tmp_path / "run", "fsd50k", "none"))) == 3
