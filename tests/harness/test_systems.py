"""The system registry and contract: plug-ins by file, the target reaches oracle systems only, queries per item."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from harness.errors import ConfigError
from harness.evaluate import EvalOptions, run_eval
from harness.systems import System, resolve_spec, resolve_system

SETS = {"fsd50k": "fsd50k", "voicebank-demand": "voicebank-demand"}  # one fixed-length set, one whole-file set


@pytest.fixture(scope="module")
def workdir(build_dev_sets):
    return build_dev_sets(SETS, per_class=1, jobs=1)


class Spy(System):
    """Records what the pipeline hands it; returns the mixture."""

    name = "spy"
    query_modes = ("label", "text")

    def __init__(self, oracle: bool = False):
        self.is_oracle = oracle
        self.calls: list[tuple] = []

    def separate(self, mixture, target, items, condition, queries=None):
        self.calls.append((mixture.copy(), None if target is None else target.copy(), items.copy(), condition,
                           list(queries)))
        return mixture.copy()


def test_non_oracle_system_never_receives_the_target(workdir, tmp_path):
    spy = Spy(oracle=False)
    run_eval(spy, EvalOptions(datasets=list(SETS), workdir=workdir, out=tmp_path / "a"))
    assert spy.calls and all(target is None for _, target, *_ in spy.calls)
    oracle = Spy(oracle=True)
    run_eval(oracle, EvalOptions(datasets=list(SETS), workdir=workdir, out=tmp_path / "b"))
    # an oracle system gets a target of the mixture's shape that differs from the mixture
    assert all(t is not None and t.shape == m.shape and not np.array_equal(t, m) for m, t, *_ in oracle.calls)


def test_each_item_gets_its_query(workdir, tmp_path):
    spy = Spy()
    run_eval(spy, EvalOptions(datasets=["fsd50k"], workdir=workdir, out=tmp_path))
    for _, _, items, condition, queries in spy.calls:
        assert condition == "label"  # the primary mode: query_modes[0]
        assert [q.class_id for q in queries] == items["class_id"].tolist()
        assert [q.label for q in queries] == items["label"].tolist()
        assert [q.text for q in queries] == [lab.replace("_", " ") for lab in items["label"]]
        assert all(q.mode == "label" and q.oracle_source is None and q.embedding is None for q in queries)


def test_average_mode_without_embeddings_is_refused(workdir, tmp_path):
    class NoTable(Spy):
        query_modes = ("average",)

    with pytest.raises(ConfigError, match="no average query embeddings"):
        run_eval(NoTable(), EvalOptions(datasets=["fsd50k"], workdir=workdir, out=tmp_path))


def test_unknown_names_and_args_say_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'oracle-irm'"):
        resolve_spec("oracle-ir")
    with pytest.raises(ConfigError, match="did you mean 'checkpoint'"):
        resolve_system("uss", {"checkpont": "x.ckpt"}, {"workdir": "w"})
    with pytest.raises(ConfigError, match="needs --system-arg checkpoint="):
        resolve_system("uss", {}, {"workdir": "w"})


PLUGIN = '''
import numpy as np
from harness.systems import System


class HalfGain(System):
    """Scales the mixture by a gain."""

    name = "plugin:half-gain"
    description = "mixture times a gain"
    sample_rate = 32000

    def __init__(self, gain: float = 0.5):
        self.gain = gain

    def separate(self, mixture, target, items, condition, queries=None):
        assert target is None
        return (self.gain * mixture).astype(np.float32)


def make(gain: float = 1.0):
    return HalfGain(gain)
'''


def test_plugin_file_runs_on_two_datasets(workdir, tmp_path):
    plugin = tmp_path / "my_system.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "harness", "eval", *SETS, "--system", f"{plugin}:HalfGain",
                        "--system-arg", "gain=0.25", "--workdir", str(workdir), "--out", str(out), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    items = pd.read_parquet(out / "items.parquet")
    assert set(items["dataset"]) == set(SETS) and (items["status"] == "ok").all()
    assert (items["system"] == "plugin:half-gain").all()
    # est = 0.25 · mix: SDR(ref, g·mix) = 10 log10(|r|² / |r − g·m|²), computed here independently
    sets = {d: __import__("harness.datasets.store", fromlist=["open_set"]).open_set(workdir, d) for d in SETS}
    fsd = items[items["dataset"] == "fsd50k"]
    mix, ref = sets["fsd50k"].read_rows(np.arange(len(fsd)))
    want = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2, 1) / np.sum((ref - 0.25 * mix).astype(np.float64) ** 2, 1))
    np.testing.assert_allclose(fsd["sdr"].to_numpy(), want, atol=1e-3)
    run = json.loads((out / "run.json").read_text())
    assert run["system_info"]["args"] == {"gain": "0.25"} and run["system_info"]["sample_rate"] == 32000
    # a factory taking the system args as keywords, and a misspelt argument
    r = subprocess.run([sys.executable, "-m", "harness", "eval", "fsd50k", "--system", f"{plugin}:make",
                        "--system-arg", "gian=2", "--workdir", str(workdir), "--out", str(out), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "did you mean 'gain'" in r.stderr, r.stderr


def test_systems_lists_the_registry():
    r = subprocess.run([sys.executable, "-m", "harness", "systems"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("mixture", "oracle-irm", "uss", "deepfilternet3"):
        assert name in r.stdout
    assert "48000 Hz" in r.stdout  # deepfilternet3's rate, listed without building it


def test_table2_uses_the_primary_mode_and_names_it(workdir, tmp_path):
    from harness.reports import TABLE2, render_report

    run_eval(Spy(), EvalOptions(datasets=list(SETS), workdir=workdir, out=tmp_path))
    table2 = render_report(tmp_path).summary.read_text().split("## Table 2")[1].split("\n\n")[1]
    row = next(line for line in table2.splitlines() if "**spy**" in line)
    assert "(query mode: label)" in row
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    for (_, _, dataset, *_), cell in zip(TABLE2, cells, strict=True):
        assert (cell != "—") == (dataset in SETS), (dataset, cell)


class RateSpy(Spy):
    query_modes = ("none",)

    def __init__(self, rate: int):
        super().__init__()
        self.sample_rate = rate

    def separate(self, mixture, target, items, condition, queries=None):
        super().separate(mixture, target, items, condition, queries)
        return mixture.copy()


@pytest.mark.parametrize("rate", [16000, 48000])
def test_system_gets_inputs_at_its_own_rate(workdir, tmp_path, rate):
    import soundfile as sf
    import soxr

    from harness.datasets.store import open_set

    spy = RateSpy(rate)
    run = run_eval(spy, EvalOptions(datasets=list(SETS), workdir=workdir, out=tmp_path))
    vb = open_set(workdir, "voicebank-demand")
    got = {c[2]["item_id"].iloc[0]: c[0][0] for c in spy.calls if c[2]["dataset"].iloc[0] == "voicebank-demand"}
    assert set(got) == set(vb.manifest["item_id"])
    for row in vb.manifest.itertuples():
        # the corpus file, resampled once (soxr HQ) from its own rate: not the 32-kHz copy
        x, sr = sf.read(vb.corpus_root / row.mixture_file, dtype="float32")
        want = x if sr == rate else soxr.resample(x, sr, rate, quality="HQ").astype(np.float32)
        np.testing.assert_array_equal(got[row.item_id][: len(want)], want[: len(got[row.item_id])])
        assert abs(len(got[row.item_id]) - len(want)) <= 1
    fsd = open_set(workdir, "fsd50k")
    mix, _ = fsd.read_rows(np.arange(len(fsd.manifest)))
    got = np.concatenate([c[0] for c in spy.calls if c[2]["dataset"].iloc[0] == "fsd50k"])
    want = np.stack([soxr.resample(m, 32000, rate, quality="HQ") for m in mix])
    assert got.shape == (len(mix), 2 * rate)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert run["sample_rates"]["voicebank-demand"]["system"] == rate
    assert run["sample_rates"]["voicebank-demand"]["metrics"]["pesq"] == 16000
    # the estimates, returned at the system rate, are brought back to the set rate and scored
    items = pd.read_parquet(tmp_path / "items.parquet")
    assert (items["status"] == "ok").all()


def test_entry_point_plugin_is_found(workdir, tmp_path):
    """A package that declares ``[project.entry-points."uss_bench.systems"]`` (here: its installed metadata)."""
    site = tmp_path / "site"
    (site / "halfgain_pkg").mkdir(parents=True)
    (site / "halfgain_pkg" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "halfgain_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: halfgain-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[uss_bench.systems]\nhalf-gain = halfgain_pkg:HalfGain\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-m", "harness", "systems"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "half-gain" in r.stdout and "halfgain-pkg" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "harness", "eval", "fsd50k", "--system", "half-gain", "--workdir",
                        str(workdir), "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert (pd.read_parquet(tmp_path / "run" / "items.parquet")["system"] == "plugin:half-gain").all()


def test_readme_plugin_example_runs(workdir, tmp_path):
    """The README's plug-in (≤ 30 lines) runs as written on two datasets, at its own 16-kHz rate."""
    import re

    import torch

    from harness.config import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    code = re.search(r"<!-- plugin-example -->\n```python\n(.*?)```", readme, re.S)[1]
    assert len(code.strip().splitlines()) <= 30
    (tmp_path / "my_enhancer.py").write_text(code)

    class Half(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x

    torch.jit.save(torch.jit.script(Half()), str(tmp_path / "model.pt"))
    r = subprocess.run([sys.executable, "-m", "harness", "eval", *SETS, "--system",
                        f"{tmp_path / 'my_enhancer.py'}:MyEnhancer", "--system-arg", f"weights={tmp_path / 'model.pt'}",
                        "--workdir", str(workdir), "--out", str(tmp_path / "run"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    items = pd.read_parquet(tmp_path / "run" / "items.parquet")
    assert (items["status"] == "ok").all() and set(items["dataset"]) == set(SETS)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["sample_rates"]["fsd50k"]["system"] == 16000


def test_audio_shots_are_k_clips_of_the_class_from_the_query_split(workdir, dev_data, tmp_path):
    import soundfile as sf
    import soxr

    from harness.queries import query_files

    class Shots(Spy):
        query_modes = ("audio-shots",)

    runs = []
    for k in (2, 2, 1):
        spy = Shots()
        run_eval(spy, EvalOptions(datasets=["fsd50k"], workdir=workdir, out=tmp_path / str(len(runs)), shots=k))
        runs.append([q for call in spy.calls for q in call[4]])
    train = query_files("fsd50k", dev_data / "fsd50k", "train")
    items = pd.read_parquet(tmp_path / "0" / "items.parquet")
    no_clips = ~items["label"].isin(list(train))
    assert no_clips.any() and (items.loc[no_clips, "status"] == "no_query").all()  # counted, not NaN cells
    assert len(runs[0]) == (~no_clips).sum()
    for q in runs[0]:
        assert q.mode == "audio-shots" and len(q.shots) == min(2, len(train[q.label]))
        files = [soxr.resample(*sf.read(r.path, dtype="float32"), 32000, quality="HQ").astype(np.float32)
                 for r in train[q.label]]  # the clip, resampled once (soxr HQ) to the system's 32 kHz
        for shot in q.shots:  # each shot is one of the class's train clips, read whole
            assert sum(len(f) == len(shot) and np.array_equal(f, shot) for f in files) >= 1
    for a, b in zip(runs[0], runs[1], strict=True):  # the same seed: the same clips
        assert all(np.array_equal(x, y) for x, y in zip(a.shots, b.shots, strict=True))
    assert all(len(q.shots) == 1 for q in runs[2])
