"""Issue 15 #18: ``--resume`` trusted part files. A part without a metric column merged as NaN with status
``ok``; duplicate rows with conflicting values kept the first with only a warning. Both are refused now,
naming the part file."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.errors import UssBenchError
from harness.evaluate import EvalOptions, MixtureBaseline, part_files, parts_dir, run_eval


@pytest.fixture
def run(fsd50k_workdir, tmp_path):
    """A finished mixture-baseline run on 25 items in parts of 8 rows (whole blocks: 8, 8, 8, 1)."""
    opts = EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=tmp_path / "run", batch_size=4,
                       part_items=8)
    run_eval(MixtureBaseline(), opts)
    parts = part_files(parts_dir(opts.out, "fsd50k", "none"))
    assert len(parts) >= 3
    opts.resume = True
    return opts, parts


def _args(opts):
    return ("eval", "fsd50k", "--baseline", "mixture", "--workdir", opts.workdir, "--out", opts.out, "-q",
            "--batch-size", "4", "--part-items", "8", "--resume")


def test_part_without_a_metric_column_is_refused(run, cli):
    opts, parts = run
    bad = parts[1]
    pd.read_parquet(bad).drop(columns=["sdri"]).to_parquet(bad)
    with pytest.raises(UssBenchError, match=f"{bad.name}.*sdri"):
        run_eval(MixtureBaseline(), opts)
    r = cli(*_args(opts))
    assert r.returncode == 2 and bad.name in r.stderr and "sdri" in r.stderr and "Traceback" not in r.stderr


def test_part_with_a_text_metric_column_is_refused(run):
    opts, parts = run
    frame = pd.read_parquet(parts[0])
    frame["sdr"] = frame["sdr"].astype(str)
    frame.to_parquet(parts[0])
    with pytest.raises(UssBenchError, match=f"{parts[0].name}.*non-numeric.*sdr"):
        run_eval(MixtureBaseline(), opts)


def test_conflicting_duplicate_rows_are_refused(run, cli):
    opts, parts = run
    dup = pd.read_parquet(parts[0]).iloc[:2].copy()
    dup.loc[dup.index[1], "sdr"] += 3.0  # the same item scored differently
    extra = parts[0].with_name("rank0-000900.parquet")
    dup.to_parquet(extra)
    with pytest.raises(UssBenchError, match=f"disagree.*{extra.name}.*{parts[0].name}"):
        run_eval(MixtureBaseline(), opts)
    r = cli(*_args(opts))
    assert r.returncode == 2 and extra.name in r.stderr and "Traceback" not in r.stderr


def test_agreeing_duplicates_are_still_dropped(run):
    opts, parts = run
    base = pd.read_parquet(opts.out / "items.parquet")
    dup = pd.read_parquet(parts[0]).iloc[:2].copy()
    dup["seconds"] += 1.0  # timing differs between runs; the values do not
    dup.to_parquet(parts[0].with_name("rank0-000900.parquet"))
    out = run_eval(MixtureBaseline(), opts)
    assert out["items"]["fsd50k"]["duplicates_dropped"] == 2
    pd.testing.assert_frame_equal(pd.read_parquet(opts.out / "items.parquet").drop(columns="git_revision"),
                                  base.drop(columns="git_revision"))


def test_part_of_another_dataset_is_refused(run):
    opts, parts = run
    frame = pd.read_parquet(parts[2])
    frame["dataset"] = "fsdkaggle2018"
    frame.to_parquet(parts[2])
    with pytest.raises(UssBenchError, match=f"{parts[2].name}.*fsdkaggle2018"):
        run_eval(MixtureBaseline(), opts)
