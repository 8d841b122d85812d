"""Issue 15 #15: a SIGKILLed or interrupted ``--jobs >= 2`` run left its loky workers alive (30+ minutes,
one holding 573 MB); SIGTERM lost the buffered rows that SIGINT flushes.

The run is a subprocess that scores with :func:`harness.scoring.score_task` on the loky executor (as
the eval does), prints its workers' PIDs, then kills itself; the test waits for those PIDs to go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RUN = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from joblib import delayed
    from harness import parallel
    from harness.scoring import score_task

    def task(main, ref):
        score_task(main, [ref], [ref * 0.5], [ref * 0.25], {"metrics": ["sdr"], "sample_rate": 32000})
        time.sleep(0.3)
        return os.getpid()

    ref = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    with parallel.executor("loky", 2):
        pids = parallel.parallel(2)(delayed(task)(os.getpid(), ref) for _ in range(8))
        print(" ".join(map(str, sorted(set(pids)))), flush=True)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(30)
""")


def alive_loky(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return b"loky" in cmd and stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT", "SIGTERM"])
def test_loky_workers_do_not_outlive_a_killed_run(sig):
    proc = subprocess.run([sys.executable, "-c", RUN, sig], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    pids = [int(p) for p in proc.stdout.split()]
    assert pids and os.getpid() not in pids
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive_loky(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if alive_loky(p)]
    for p in left:  # clean up before failing (these are this test's own grandchildren)
        os.kill(p, signal.SIGKILL)
    assert not left, f"loky workers {left} outlived the run killed with {sig}"


SLOW_EVAL = textwrap.dedent("""
    import sys, time
    from harness.evaluate import EvalOptions, MixtureBaseline, run_eval

    class Slow(MixtureBaseline):
        def separate(self, mixture, target, items, condition):
            print("unit", flush=True)
            time.sleep(0.4)
            return super().separate(mixture, target, items, condition)

    # a part is written at 10,000 rows or after PART_SECONDS (60 s), here only at the end: before the
    # fix SIGTERM ended the process at once and lost every row
    run_eval(Slow(), EvalOptions(datasets=["fsd50k"], workdir=sys.argv[1], out=sys.argv[2], batch_size=4,
                                 part_items=10_000))
""")


def test_sigterm_flushes_the_buffered_rows_like_sigint(tmp_path):
    import pandas as pd

    import harness.evaluate as E
    from harness.config import REPO_ROOT
    from harness.mixtures import BuildOptions, build_mixtures

    build_mixtures(REPO_ROOT / "datasets" / "demo" / "fsd50k", tmp_path / "wd", BuildOptions("fsd50k"))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EVAL, str(tmp_path / "wd"), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    units = 0
    for line in proc.stdout:
        units += line.startswith("unit")
        if units == 4:  # 3 units of 4 rows separated and scored, the 4th being separated
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Terminated" in err  # the interrupt, raised in the main thread
    rows = sum(len(pd.read_parquet(p)) for p in E.part_files(E.parts_dir(out, "fsd50k", "none")))
    assert rows >= 8, f"SIGTERM lost the buffered rows ({rows} in the parts)"


def loky_children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and alive_loky(int(stat.parent.name)):
            out.append(int(stat.parent.name))
    return out


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_a_killed_eval_cli_with_jobs_2_leaves_no_worker(tmp_path, sig):
    from harness.config import REPO_ROOT
    from harness.mixtures import BuildOptions, build_mixtures

    build_mixtures(REPO_ROOT / "datasets" / "demo" / "musdb18hq", tmp_path / "wd", BuildOptions("musdb18"))
    proc = subprocess.Popen([sys.executable, "-m", "harness", "eval", "musdb18", "--baseline", "oracle-irm",
                             "--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "run"), "--jobs", "2",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(workers) < 2:
        workers = loky_children(proc.pid)
        time.sleep(0.05)
    assert workers, "the eval finished before its loky workers could be seen"
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive_loky(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if alive_loky(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"loky workers {left} outlived the eval killed with {sig}"
