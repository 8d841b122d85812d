"""Issue 15 #5 (data loss): a second eval into a running eval's ``--out`` deleted its parts. The run folder
is now locked (``<out>/eval.lock``, owner PID and host); a stale lock is reported and broken on request."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pandas as pd
import pytest

from harness.evaluate import EvalOptions, MixtureBaseline, parts_dir, run_eval
from harness.runlock import LOCK_NAME, RunLocked


def _lock(out, pid, host=None):
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                             "started": "2026-01-01T00:00:00+00:00", "command": ["eval"]}))


@pytest.fixture
def running_owner():
    """A live process standing for the eval that holds the folder."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_second_eval_refuses_a_locked_folder_and_keeps_its_parts(fsd50k_workdir, tmp_path, running_owner, cli):
    out = tmp_path / "run"
    run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=out))
    parts = sorted(p.name for p in parts_dir(out, "fsd50k", "none").iterdir())
    assert parts and not (out / LOCK_NAME).exists()  # released at the end
    _lock(out, running_owner)  # the first eval is (still) running
    r = cli("eval", "fsd50k", "--baseline", "mixture", "--workdir", fsd50k_workdir, "--out", out, "-q")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"PID {running_owner}" in r.stderr and socket.gethostname() in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in parts_dir(out, "fsd50k", "none").iterdir()) == parts  # nothing removed
    # a live owner is never broken, not even with --break-lock
    r = cli("eval", "fsd50k", "--baseline", "mixture", "--workdir", fsd50k_workdir, "--out", out, "-q",
            "--break-lock")
    assert r.returncode == 2 and f"PID {running_owner}" in r.stderr


def test_stale_lock_is_reported_and_broken_on_request(fsd50k_workdir, tmp_path, cli, dead_pid):
    out = tmp_path / "run"
    pid = dead_pid
    _lock(out, pid)
    args = ("eval", "fsd50k", "--baseline", "mixture", "--workdir", fsd50k_workdir, "--out", out, "-q")
    r = cli(*args)
    assert r.returncode == 2 and "stale" in r.stderr and "--break-lock" in r.stderr and str(pid) in r.stderr
    assert not (out / "items.parquet").exists()
    r = cli(*args, "--break-lock")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(pd.read_parquet(out / "items.parquet")) == 25 and not (out / LOCK_NAME).exists()


def test_resume_breaks_a_stale_lock_and_says_so(fsd50k_workdir, tmp_path, cli, dead_pid):
    out = tmp_path / "run"
    _lock(out, dead_pid)  # the run being resumed was killed
    r = cli("eval", "fsd50k", "--baseline", "mixture", "--workdir", fsd50k_workdir, "--out", out, "-q", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stale lock" in r.stderr and str(dead_pid) in r.stderr
    assert not (out / LOCK_NAME).exists()


def test_resume_does_not_break_a_foreign_lock(fsd50k_workdir, tmp_path):
    out = tmp_path / "run"
    _lock(out, 1, host="some-other-host.invalid")
    with pytest.raises(RunLocked, match="--break-lock"):
        run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=out, resume=True))


def test_lock_of_another_host_needs_break_lock(fsd50k_workdir, tmp_path):
    out = tmp_path / "run"
    _lock(out, 1, host="some-other-host.invalid")
    opts = EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=out)
    with pytest.raises(RunLocked, match="some-other-host.invalid"):
        run_eval(MixtureBaseline(), opts)
    opts.break_lock = True
    assert run_eval(MixtureBaseline(), opts)["items"]["fsd50k"]["rows"] == 25


def test_lock_is_released_when_the_run_fails(fsd50k_workdir, tmp_path):
    from harness.errors import UssBenchError

    out = tmp_path / "run"
    with pytest.raises(UssBenchError):
        run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=out, split="val"))
    assert not (out / LOCK_NAME).exists()


def test_out_naming_a_file_is_a_usage_error(fsd50k_workdir, tmp_path, cli):
    out = tmp_path / "afile"
    out.write_text("x")
    r = cli("eval", "fsd50k", "--baseline", "mixture", "--workdir", fsd50k_workdir, "--out", out, "-q")
    assert r.returncode == 2 and str(out) in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_reused_pid_does_not_keep_a_lock_alive(fsd50k_workdir, tmp_path, running_owner):
    from harness.runlock import lock_state, process_start

    owner = {"pid": running_owner, "host": socket.gethostname(), "start_ticks": process_start(running_owner)}
    assert lock_state(owner) == "alive"
    assert lock_state({**owner, "start_ticks": owner["start_ticks"] - 1}) == "stale"  # another process's number
    assert lock_state({**owner, "boot_id": "0000-before-a-reboot"}) == "stale"


def test_the_lock_names_its_owner(fsd50k_workdir, tmp_path, monkeypatch):
    import os

    from harness.runlock import read_lock

    seen = {}
    real = run_eval.__globals__["_run_eval_locked"]

    def spy(system, opts, *a, **k):
        seen.update(read_lock(opts.out / LOCK_NAME))
        return real(system, opts, *a, **k)

    monkeypatch.setitem(run_eval.__globals__, "_run_eval_locked", spy)
    run_eval(MixtureBaseline(), EvalOptions(datasets=["fsd50k"], workdir=fsd50k_workdir, out=tmp_path / "run"))
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname() and seen["start_ticks"] is not None
