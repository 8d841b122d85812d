"""The fault suite (issue 15): reproductions of the fault campaign's defects, one file per topic.

At the end of a session that collected any of these tests, pytest prints the fault matrix: how many
cases of ``tests/faults`` passed, failed and were skipped (per file and in total), the count the issue
asks the CI note to give. Slow cases (SIGKILL at points followed by ``--resume``, real clusters) are
marked ``@pytest.mark.slow`` and run with ``--slow``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

FAULTS = Path(__file__).resolve().parent
_OUTCOMES = ("passed", "failed", "skipped")


def _fault_file(nodeid: str, rootpath: Path) -> str | None:
    """The test file's name when ``nodeid`` is a case of ``tests/faults``, else ``None``."""
    path = (rootpath / nodeid.split("::", 1)[0]).resolve()
    return path.name if path.parent == FAULTS else None


def fault_matrix(terminalreporter) -> dict[str, dict[str, int]]:
    """``{test file: {passed, failed, skipped}}`` for the fault cases of this session.

    A case counts once, by its outcome: a failure in setup or teardown makes it ``failed``, an error
    too (``error`` reports are folded into ``failed``).
    """
    outcome: dict[str, str] = {}
    for key in (*_OUTCOMES, "error"):
        for rep in terminalreporter.stats.get(key, []):
            nodeid = getattr(rep, "nodeid", None)
            if not nodeid or _fault_file(nodeid, terminalreporter.config.rootpath) is None:
                continue
            kind = "failed" if key == "error" else key
            if outcome.get(nodeid) != "failed":  # a failing teardown after a pass is a failure
                outcome[nodeid] = kind
    matrix: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_OUTCOMES, 0))
    for nodeid, kind in outcome.items():
        matrix[_fault_file(nodeid, terminalreporter.config.rootpath)][kind] += 1
    return dict(matrix)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the fault matrix count (cases of tests/faults passed / failed / skipped)."""
    matrix = fault_matrix(terminalreporter)
    if not matrix:
        return
    terminalreporter.section("fault matrix (tests/faults)")
    total = dict.fromkeys(_OUTCOMES, 0)
    for name in sorted(matrix):
        counts = matrix[name]
        for k in _OUTCOMES:
            total[k] += counts[k]
        terminalreporter.write_line(f"{name:40s} " + "  ".join(f"{k} {counts[k]:3d}" for k in _OUTCOMES))
    terminalreporter.write_line(f"fault matrix: {sum(total.values())} cases: "
                                + ", ".join(f"{total[k]} {k}" for k in _OUTCOMES))


@pytest.fixture
def cli(tmp_path):
    """Run ``python -m harness ARGS`` in a subprocess; returns the CompletedProcess (text output)."""
    import os
    import subprocess
    import sys

    def run(*args, cwd=None, timeout=300, env=None):
        return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                              cwd=cwd or tmp_path, timeout=timeout, env={**os.environ, **(env or {})})

    return run


@pytest.fixture(scope="session")
def fsd50k_workdir(dev_data, tmp_path_factory):
    """A workdir with a small fsd50k test set (one item per class, 25 two-second items) built from the dev
    layout."""
    from harness.mixtures import BuildOptions, build_mixtures

    wd = tmp_path_factory.mktemp("faults-work")
    build_mixtures(dev_data / "fsd50k", wd, BuildOptions("fsd50k", per_class=1, jobs=1))
    return wd


@pytest.fixture
def dead_pid() -> int:
    """The PID of a process that has exited (and was reaped), for stale-lock cases."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="session")
def voicebank_workdir(build_dev_sets):
    """A workdir with the dev Voicebank-Demand test set (17 whole utterances read from the corpus files)."""
    return build_dev_sets(["voicebank-demand"], "faults-vb")


@pytest.fixture
def run_cli():
    """``run_cli(argv)``: ``uss-bench ARGV`` in this process (so monkeypatches apply); returns its exit code."""
    from harness.cli import main

    def run(argv: list) -> int:
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    return run


@pytest.fixture
def cli_stderr(capsys):
    """``cli_stderr(argv)``: ``uss-bench ARGV`` in this process, expected to exit; returns ``(exit code,
    stderr)`` of that call alone."""
    from harness.cli import main

    def run(argv: list) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        return exc.value.code, capsys.readouterr().err

    return run


@pytest.fixture(scope="session")
def fsdkaggle2018_workdir(build_dev_sets):
    """A workdir with the 40-item FSDKaggle2018 dev test set (never modified: tests tamper with a copy)."""
    return build_dev_sets(["fsdkaggle2018"], "faults-fsdk")


@pytest.fixture
def wd(fsdkaggle2018_workdir, tmp_path):
    """A private copy of :func:`fsdkaggle2018_workdir`, to tamper with."""
    import shutil

    dst = tmp_path / "wd"
    shutil.copytree(fsdkaggle2018_workdir, dst)
    return dst
