"""Issue 15 #13: a training run killed before its first checkpoint could be neither restarted ("already
holds a training run; pass --resume") nor resumed ("no complete checkpoint; start without --resume");
``train --resume`` of a finished run wrote ``NaN`` (invalid JSON) into ``train.json``; ``--steps 0``
silently meant the config's steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.errors import ConfigError
from harness.train import TrainConfig, resolve_source_roots, train

TINY = """
name = "tiny"
[model]
channels = [2, 2, 2, 2, 2, 2]
n_fft = 384
[query]
net = "logmel_stats"
condition = "emb"
[data]
sources = [
  { dataset = "audioset", split = "train", root = "datasets/demo/audioset" },
  { dataset = "fsdkaggle2018", split = "train", root = "datasets/demo/fsdkaggle2018" },
]
anchor = "random"
[optim]
batch_size = 3
warm_up_steps = 1
[run]
steps = 2
checkpoint_every = 2
validate_every = 2
val_items = 3
log_every = 1
"""


@pytest.fixture
def tiny(tmp_path):
    """A narrow ResUNet30 (a step ≈ 1 s on CPU) on the demo corpora: (config, roots)."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    cfg = TrainConfig.from_toml(path)
    return cfg, resolve_source_roots(cfg, [])


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _killed_before_first_checkpoint(finished: Path, dst: Path) -> Path:
    """The folder a run leaves when killed after logging step 1 but before the checkpoint of step 2:
    ``metrics.csv`` (one row) and an empty ``checkpoints/`` (taken from a finished run of the same recipe)."""
    (dst / "checkpoints").mkdir(parents=True)
    lines = (finished / "metrics.csv").read_text().splitlines()
    (dst / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")
    return dst


def test_run_killed_before_its_first_checkpoint_restarts_and_resumes(tiny, tmp_path):
    cfg, roots = tiny
    ref = train(cfg, roots, tmp_path / "ref", progress=False)
    want = load_file(str(ref.model))
    for resume in (False, True):
        run = _killed_before_first_checkpoint(tmp_path / "ref", tmp_path / f"killed-{resume}")
        got = train(cfg, roots, run, resume=resume, progress=False)
        assert got.steps == 2 and got.final_loss == ref.final_loss
        tensors = load_file(str(got.model))
        assert tensors.keys() == want.keys() and all(torch.equal(tensors[k], want[k]) for k in want)
        assert (run / "metrics.csv").read_text().count("\n") == 3  # header + steps 1, 2: rewritten from 0


def test_resume_of_a_finished_run_writes_valid_json(tiny, tmp_path):
    cfg, roots = tiny
    first = train(cfg, roots, tmp_path / "run", progress=False)
    before = _strict_json(tmp_path / "run" / "train.json")
    again = train(cfg, roots, tmp_path / "run", resume=True, progress=False)
    summary = _strict_json(tmp_path / "run" / "train.json")
    assert summary["final_loss"] == before["final_loss"] == first.final_loss == again.final_loss
    assert summary["val_sdri"] == pytest.approx(before["val_sdri"], abs=1e-3)  # metrics.csv keeps 3 decimals
    assert summary["resumed_from"] == 2 and summary["steps"] == 2


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_zero_or_negative_is_refused(tiny, tmp_path, steps):
    cfg, roots = tiny
    with pytest.raises(ConfigError, match=f"--steps {steps}"):
        train(cfg, roots, tmp_path / "run", steps=steps, progress=False)
    assert not (tmp_path / "run").exists()


def test_steps_zero_on_the_cli_is_a_usage_error(tmp_path, cli):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    r = cli("train", "--config", cfg, "--steps", "0", "--out", tmp_path / "run", "--device", "cpu", "-q")
    assert r.returncode == 2 and "--steps 0" in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr


def test_resume_past_the_steps_asked_is_refused(tiny, tmp_path):
    cfg, roots = tiny
    train(cfg, roots, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="step 2, past the 1 steps"):
        train(cfg, roots, tmp_path / "run", steps=1, resume=True, progress=False)
    shutil.rmtree(tmp_path / "run")


def _train_cli(*args, point=None, n=1, cwd=None):
    import subprocess
    import sys

    driver = Path(__file__).with_name("kill_driver.py")
    head = [sys.executable, str(driver), point, str(n), "--"] if point else [sys.executable, "-m", "harness"]
    return subprocess.run([*head, "train", *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """A 4-step recipe (checkpoints at 2 and 4) and the model of its uninterrupted CLI run."""
    folder = tmp_path_factory.mktemp("train-ref")
    cfg = folder / "tiny.toml"
    cfg.write_text(TINY.replace("steps = 2\ncheckpoint_every = 2", "steps = 4\ncheckpoint_every = 2"))
    ref = _train_cli("--config", cfg, "--out", folder / "ref", "--device", "cpu", "-q")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    return cfg, folder / "ref" / "model.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize(("point", "n", "resume"), [
    pytest.param("call:harness.train:_save", 1, True, id="before-first-checkpoint-resume"),
    pytest.param("call:harness.train:_save", 1, False, id="before-first-checkpoint-restart"),
    pytest.param("before-rename:step_*.state.safetensors", 1, True, id="mid-checkpoint-write"),
    pytest.param("after-rename:step_*.state.safetensors", 1, True, id="after-first-checkpoint"),
])
def test_sigkill_then_rerun_gives_the_uninterrupted_model(tiny4, tmp_path, point, n, resume):
    import signal

    cfg, ref_model = tiny4
    common = ("--device", "cpu", "-q")
    run = tmp_path / "run"
    killed = _train_cli("--config", cfg, "--out", run, *common, point=point, n=n)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    for path in run.rglob("*.safetensors"):  # nothing partial under a final name
        if not path.name.startswith("."):
            load_file(str(path))
    again = _train_cli(*(["--resume", run] if resume else ["--config", cfg, "--out", run]), *common)
    assert again.returncode == 0, again.stdout + again.stderr
    want, got = load_file(str(ref_model)), load_file(str(run / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    _strict_json(run / "train.json")
