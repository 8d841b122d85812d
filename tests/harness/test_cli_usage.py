"""The installed ``uss-bench`` console script on usage mistakes: exit 2, a short message, never a traceback.

Each case runs the real console script (the one ``pip install -e .`` put beside the interpreter) with
``click`` made unimportable, as in the README's install (``pip install -c constraints.txt -e .``), where
only typer's vendored copy of click exists; the test environment has click through dask.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from harness import cli
from harness.errors import EXIT_INTERNAL, EXIT_USAGE

SCRIPT = Path(sys.executable).with_name("uss-bench")

MAX_LINES = 5


@pytest.fixture(scope="module")
def no_click(tmp_path_factory) -> dict[str, str]:
    """An environment in which ``import click`` fails, like an install without the test extras."""
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install the package (pip install -c constraints.txt -e .)")
    shadow = tmp_path_factory.mktemp("no-click") / "click"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'click'\", name='click')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("USS_BENCH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["USS_BENCH_LOG_DIR"] = str(tmp_path_factory.mktemp("logs"))
    check = subprocess.run([sys.executable, "-c", "import click"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "No module named 'click'" in check.stderr
    return env


USAGE_MISTAKES = {
    # name: (arguments, a phrase the message must hold)
    "misspelt option": (["eval", "--job", "2", "--all"], "did you mean '--jobs'"),
    "misspelt command": (["evall"], "Did you mean 'eval'"),
    "extra argument": (["compare", "a", "b", "c"], "unexpected extra argument"),
    "bad integer": (["eval", "--all", "--baseline", "mixture", "--batch-size", "x"], "--batch-size"),
    "value below the minimum": (["eval", "--all", "--baseline", "mixture", "--jobs", "0"], "--jobs"),
    "option without its value": (["eval", "--all", "--baseline"], "--baseline"),
    "misspelt dataset (build)": (["build-mixtures", "audiset"], "did you mean 'audioset'"),
    "misspelt dataset (eval)": (["eval", "audiset", "--baseline", "mixture"], "did you mean 'audioset'"),
    "misspelt dataset (queries)": (["embed-queries", "fsd5k", "--checkpoint", "x.ckpt"], "did you mean 'fsd50k'"),
    "misspelt baseline": (["eval", "fsd50k", "--baseline", "mixtur"], "did you mean 'mixture'"),
    "misspelt system": (["eval", "fsd50k", "--system", "oracle-ir"], "did you mean 'oracle-irm'"),
    "misspelt system argument": (["eval", "fsd50k", "--system", "uss", "--system-arg", "checkpont=x.ckpt"],
                                 "did you mean 'checkpoint'"),
    "system argument without =": (["eval", "fsd50k", "--system", "mixture", "--system-arg", "gain"], "KEY=VALUE"),
    "two systems": (["eval", "fsd50k", "--system", "mixture", "--baseline", "mixture"], "exactly one of"),
    "misspelt save-estimates": (["eval", "fsd50k", "--baseline", "mixture", "--save-estimates", "wrost"],
                                "did you mean 'worst'"),
    "plug-in file absent": (["eval", "fsd50k", "--system", "nowhere/my_system.py:Mine"], "no such file"),
    "estimates folder absent": (["score", "no-such-folder", "fsd50k"], "does not exist"),
    "condition for a baseline": (["eval", "fsd50k", "--baseline", "mixture", "--condition", "oracel"],
                                 "drop --condition"),
    "misspelt condition": (["eval", "fsd50k", "--checkpoint", "x.ckpt", "--condition", "oracel"],
                           "did you mean 'oracle'"),
    "unknown device": (["eval", "fsd50k", "--baseline", "mixture", "--device", "gpu"], "--device"),
    "unknown device (separate)": (["separate", "a.wav", "--checkpoint", "x", "--out", "o", "--device", "tpu"],
                                  "--device"),
    "missing argument": (["build-mixtures"], "Missing argument"),
    "misspelt musdb protocol": (["eval", "musdb18", "--baseline", "mixture", "--musdb-protocol", "sisec"],
                                "did you mean 'sisec18'"),
}


@pytest.mark.parametrize("case", list(USAGE_MISTAKES), ids=list(USAGE_MISTAKES))
def test_usage_mistakes_exit_2_briefly(case, no_click, tmp_path):
    args, phrase = USAGE_MISTAKES[case]
    r = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=no_click, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, timeout=120)
    output = r.stdout + r.stderr
    assert r.returncode == EXIT_USAGE, output
    assert "Traceback" not in output and "No module named" not in output, output
    assert 1 <= len(output.strip().splitlines()) <= MAX_LINES, output
    assert phrase in output, output


def test_version(no_click):
    r = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, env=no_click, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"uss-bench {version('uss-bench')}"


def test_help_shows_defaults_and_keeps_bracketed_text(no_click):
    r = subprocess.run([str(SCRIPT), "datasets", "--help"], capture_output=True, text=True, env=no_click,
                       timeout=60)
    assert r.returncode == 0 and "TOML with a [roots] table" in " ".join(r.stdout.split())
    r = subprocess.run([str(SCRIPT), "eval", "--help"], capture_output=True, text=True, env=no_click, timeout=60)
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "[default: 256; x>=1]" in text and "[default: auto]" in text  # --part-items; --batch-size


def test_internal_error_gets_its_own_code_and_a_log(monkeypatch, tmp_path, capsys):
    """A bug (not bad input) exits 3 with one line naming a log file that holds the traceback."""
    import harness.reports

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(harness.reports, "report_runs", broken)
    monkeypatch.setenv("USS_BENCH_LOG_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", str(tmp_path)])
    assert exit_info.value.code == EXIT_INTERNAL
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error: RuntimeError: a bug")
    (log,) = tmp_path.glob("uss-bench-error-*.log")
    assert str(log) in lines[0] and "Traceback" in log.read_text() and "broken" in log.read_text()


def test_written_checkpoints_and_sets_are_group_readable(tmp_path):
    """safetensors writes 0600 and mkdtemp 0700; what we publish gets a plain file's mode (umask 022: 0644)."""
    from harness.datasets.store import atomic_dir
    from harness.demo import DEMO_CHECKPOINT
    from harness.models import export_checkpoint

    mask = os.umask(0o022)
    try:
        export_checkpoint(DEMO_CHECKPOINT, tmp_path / "out.safetensors")
        with atomic_dir(tmp_path / "set") as folder:
            (folder / "x").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "set").stat().st_mode & 0o777 == 0o755
