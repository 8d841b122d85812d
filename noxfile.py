"""Sessions: ``tests`` (default), ``numerics``, ``lint``, ``demo``, ``bench``. Each installs the pinned constraints.txt.

``bench`` is never a default session and CI does not run it: timings need a quiet machine.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = "constraints.txt"


def _install(session: nox.Session) -> None:
    # dfn: the deepfilternet3 system's tests run in CI; dnsmos: so do the DNSMOS metric's
    session.install("-c", CONSTRAINTS, "-e", ".[test,dfn,dnsmos,openvino]")


def _ensure_debian(session: nox.Session, package: str, present: bool, needed_for: str) -> None:
    """Install Debian's ``package`` unless its commands are ``present``, when we may (root with apt-get)."""
    if present:
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-qq", external=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", package, external=True, env=env)
    else:
        session.warn(f"{package} is not on PATH: install Debian's {package}, or {needed_for}")


def _ensure_ffmpeg(session: nox.Session) -> None:
    """museval imports stempeg, which needs ffmpeg/ffprobe on PATH (Debian package ffmpeg)."""
    _ensure_debian(session, "ffmpeg", bool(shutil.which("ffmpeg") and shutil.which("ffprobe")),
                   "the museval tests cannot run")


def _ensure_chromium(session: nox.Session) -> None:
    """The report.html test opens the page in a headless browser (Debian package chromium)."""
    _ensure_debian(session, "chromium", any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")),
                   "the report.html browser test is skipped")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (slow tests too with ``nox -s tests -- --slow``)."""
    _ensure_ffmpeg(session)
    _ensure_chromium(session)
    _install(session)
    session.run("pytest", *session.posargs, env={"OMP_NUM_THREADS": "2"})


@nox.session
def faults(session: nox.Session) -> None:
    """The fault suite (``tests/faults``) with its slow cases: SIGKILL of eval and train at several points
    then ``--resume``, the deliberate PESQ segfault (CI runs it after ``numerics``). It prints the fault
    matrix count at the end."""
    _ensure_ffmpeg(session)
    _install(session)
    session.run("pytest", "tests/faults", "--slow", "-q", *session.posargs, env={"OMP_NUM_THREADS": "2"})


FORCED_KERNELS = {
    # name: environment. Each stands in for another CPU's kernels: ATen's vectorised kernels dispatch on
    # the CPU (AVX-512 / AVX2 / scalar "default"), oneDNN's convolutions on its ISA cap. One thread in one
    # setting, two in the other, so a dependence on the thread count shows up too.
    "aten-avx2+onednn-avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"},
    "aten-default+onednn-avx2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                 "OMP_NUM_THREADS": "1"},
}
"""Kernel settings under which ``numerics`` reruns the float-sensitive tests (marker ``numerics``)."""


@nox.session
def numerics(session: nox.Session) -> None:
    """The tests marked ``numerics`` once per setting of :data:`FORCED_KERNELS` (CI runs it after ``tests``).

    A tolerance that only holds for this machine's kernels fails here on any machine, not first on the
    next CPU CI happens to get.
    """
    _ensure_ffmpeg(session)
    _install(session)
    for name, env in FORCED_KERNELS.items():
        session.log(f"numerics under {name}: {env}")
        session.run("pytest", "-m", "numerics", "-q", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the code."""
    session.install("-c", CONSTRAINTS, "ruff")
    session.run("ruff", "check", "harness", "tests", "benchmarks", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on the embedded demo corpora: ``uss-bench demo`` (``-- --out DIR``, ``-- --update-baseline``)."""
    _install(session)
    session.run("uss-bench", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ``benchmarks/run.py`` (pass ``-- --only NAME --quick``); updates reports/benchmarks/.

    The GPU benchmark is separate: ``python benchmarks/gpu.py`` on a machine with CUDA (writes gpu.json there).

    Exits non-zero when a target is missed (1) or a benchmark fails (2), after writing the reports.
    """
    _ensure_ffmpeg(session)
    _install(session)
    session.run("python", "benchmarks/run.py", *session.posargs)
