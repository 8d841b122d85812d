"""Issue 15 #15: temporary files of killed runs were never cleaned: ``.<split>.tmp-*`` folders of killed
builds (up to a whole ``mixtures.h5``) and ``.items.parquet.tmp-PID`` of killed evals. The next start
removes those whose writer is dead, and keeps those of live writers.

The killed writers are real processes: a child that wrote its temporary names and was SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.config import REPO_ROOT
from harness.evaluate import EvalOptions, MixtureBaseline, run_eval
from harness.mixtures import BuildOptions, build_mixtures
from harness.tempfiles import remove_stale_temps

DEMO = REPO_ROOT / "datasets" / "demo"


def killed_writer(*names: Path) -> int:
    """A child process writes temporary names carrying its PID (the templates' ``{pid}``), then is
    SIGKILLed. Returns its (now dead) PID."""
    code = textwrap.dedent("""
        import os, sys, time
        from pathlib import Path
        for name in sys.argv[1:]:
            p = Path(name.format(pid=os.getpid()))
            if p.name.endswith("/") or "-x" in p.name:
                p.mkdir(parents=True)
                (p / "mixtures.h5").write_bytes(b"\\0" * 4096)
            else:
                p.write_bytes(b"partial")
        print(os.getpid(), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, names)], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return pid


@pytest.fixture
def workdir(tmp_path) -> Path:
    build_mixtures(DEMO / "fsd50k", tmp_path / "wd", BuildOptions("fsd50k"))
    return tmp_path / "wd"


def test_a_rebuild_removes_the_folders_of_killed_builds(workdir):
    sets = workdir / "mixtures" / "fsd50k"
    pid = killed_writer(sets / ".test.tmp-{pid}-xk3j2", sets / ".test.old-{pid}")
    live = sets / f".test.tmp-{os.getpid()}-xlive"  # a build in progress (this process) is left alone
    live.mkdir()
    build_mixtures(DEMO / "fsd50k", workdir, BuildOptions("fsd50k"))
    left = sorted(p.name for p in sets.iterdir())
    assert left == [live.name, "test"], f"stale temporaries of process {pid} survived: {left}"


def test_an_eval_removes_the_temporary_outputs_of_killed_runs(workdir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    pid = killed_writer(out / ".items.parquet.tmp-{pid}", out / ".run.json.tmp-{pid}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = out / f".items.parquet.tmp-{sleeper.pid}"  # another run that is still writing
        busy.write_bytes(b"partial")
        run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=workdir, out=out, limit=4))
        hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
        assert hidden == [busy.name], f"after the run of process {pid}: {hidden}"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_only_copy_of_a_set_is_kept(tmp_path):
    # killed between its two renames: the old set is the only copy left; it is not deleted
    pid = killed_writer(tmp_path / ".test.old-{pid}")
    assert remove_stale_temps(tmp_path) == []
    assert (tmp_path / f".test.old-{pid}").exists()
