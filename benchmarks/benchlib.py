"""The benchmark registry, the context a benchmark runs in, and the result files.

A benchmark is a function registered with :func:`benchmark`; it takes a :class:`Context` and returns a
dict of measurements. The runner (``run.py``) checks the declared targets against that dict, prints the
verdict, and merges the entry into ``reports/benchmarks/results.json`` (one entry per benchmark name, so
running one benchmark updates its entry only), then re-renders ``reports/benchmarks/README.md`` from the
merged file. See ``benchmarks/README.md`` for how to add one.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_SCHEMA = 1

RATIO_KINDS = {
    "reference/ours": "speed-up (reference time / ours)",
    "ours/reference": "time ratio (ours / reference)",
}

_TARGET_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Target:
    """One pass/fail condition on a measurement: ``key op value`` (``op`` is ``>=``, ``<=`` or ``==``)."""

    key: str
    op: str
    value: float | bool | str

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"ratio >= 100"``, ``"max_abs_diff_db <= 1e-6"``, ``"digest_unchanged == true"``.

        Raises:
            ValueError: not of the form ``key op value``.
        """
        m = _TARGET_RE.match(text)
        if not m:
            raise ValueError(f"target {text!r} is not 'key >= value', 'key <= value' or 'key == value'")
        key, op, raw = m.groups()
        value: float | bool | str
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = float(raw)
            except ValueError:
                value = raw
        if op != "==" and not isinstance(value, float):
            raise ValueError(f"target {text!r}: {op} needs a number")
        return cls(key, op, value)

    def check(self, measurements: dict[str, Any]) -> tuple[Any, bool]:
        """``(actual value, met?)``; a missing or non-finite measurement does not meet the target."""
        actual = measurements.get(self.key)
        if actual is None:
            return None, False
        if self.op == "==":
            return actual, actual == self.value
        try:
            x = float(actual)
        except (TypeError, ValueError):
            return actual, False
        if math.isnan(x):
            return actual, False
        return actual, x >= self.value if self.op == ">=" else x <= self.value

    def __str__(self) -> str:
        v = self.value
        text = ("true" if v else "false") if isinstance(v, bool) else (f"{v:g}" if isinstance(v, float) else v)
        return f"{self.key} {self.op} {text}"


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark (see :func:`benchmark`)."""

    name: str
    func: Callable[[Context], dict[str, Any]]
    targets: tuple[Target, ...]
    description: str
    ratio: str | None


REGISTRY: dict[str, Benchmark] = {}


def benchmark(name: str, *, target: str | Sequence[str], description: str,
              ratio: str | None = "reference/ours") -> Callable:
    """Register ``func(ctx) -> dict`` as the benchmark ``name``.

    Args:
        name: unique id; the key of its entry in ``results.json`` and ``--only NAME``.
        target: one or more ``"key op value"`` strings checked against the returned dict (and against
            ``ratio``, which the runner adds); all must hold for MET.
        description: one line: what is compared with what.
        ratio: how the runner derives ``ratio`` from ``ours_s`` and ``reference_s``: ``"reference/ours"``
            (a speed-up, higher is better), ``"ours/reference"`` (an overhead, lower is better), or
            ``None`` (no reference timing, e.g. a peak-memory benchmark).

    The function returns a dict with, by convention:

    - ``measured`` (str): what exactly was timed, on which data;
    - ``ours_s`` / ``reference_s`` (float, seconds): the two timings, when there is a reference;
    - any other JSON values the targets name (``max_abs_diff_db``, ``peak_rss_mib``...);
    - ``details`` (dict) and ``notes`` (list of str): free-form, shown in the README.

    Raises:
        ValueError: a name registered twice, an unknown ``ratio`` kind or a malformed target.
    """
    targets = (target,) if isinstance(target, str) else tuple(target)
    parsed = tuple(Target.parse(t) for t in targets)
    if ratio is not None and ratio not in RATIO_KINDS:
        raise ValueError(f"ratio must be one of {sorted(RATIO_KINDS)} or None, got {ratio!r}")

    def register(func: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        if name in REGISTRY:
            raise ValueError(f"benchmark {name!r} is registered twice")
        REGISTRY[name] = Benchmark(name, func, parsed, description, ratio)
        return func

    return register


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a benchmark gets: options and helpers.

    Attributes:
        quick: a smaller, faster run (the entry is marked ``quick``).
        repo: the repository root.
        data_dir: ``../shared/data/dev`` beside the repository (real corpora layouts).
    """

    quick: bool = False
    repo: Path = REPO
    data_dir: Path = field(default_factory=lambda: REPO.parent / "shared" / "data" / "dev")

    def log(self, message: str) -> None:
        """A progress line on stdout."""
        print(f"  .. {message}", flush=True)


def timings(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> dict[str, Any]:
    """Wall-clock seconds of ``fn()`` (``time.perf_counter``) over ``repeat`` runs after ``warmup`` runs.

    Returns:
        ``{"median_s", "min_s", "runs_s"}``.
    """
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs_s": runs}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CPU_FEATURES = ("sha_ni", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
"""The /proc/cpuinfo flags that benchmark notes talk about (detected, never assumed)."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, load, OS and the versions that matter for the timings."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cpu_features": sorted(cpu_flags() & set(CPU_FEATURES)),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "torch": _version("torch"),
        "museval": _version("museval"),
        "soxr": _version("soxr"),
        "soundfile": _version("soundfile"),
        "h5py": _version("h5py"),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                  "OMP_WAIT_POLICY")
                       if k in os.environ},
    }


def _git_revision(repo: Path) -> str | None:
    import subprocess

    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def _jsonable(x: Any) -> Any:
    """numpy scalars/arrays and paths as plain JSON values; non-finite floats as strings."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy scalar or array
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def run_one(bench: Benchmark, ctx: Context) -> dict[str, Any]:
    """Run one benchmark and build its ``results.json`` entry (never raises for the benchmark's errors)."""
    facts = machine_facts()
    started = _dt.datetime.now(_dt.UTC)
    t0 = time.perf_counter()
    entry: dict[str, Any] = {
        "name": bench.name,
        "description": bench.description,
        "quick": ctx.quick,
        "date": started.isoformat(timespec="seconds"),
        "git_revision": _git_revision(ctx.repo),
        "machine": facts,
    }
    try:
        measured = dict(bench.func(ctx))
    except Exception as exc:  # reported as ERROR, with the message, never swallowed silently
        import traceback

        entry.update(status="ERROR", error=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc(limit=8), targets=[str(t) for t in bench.targets])
        entry["wall_s"] = round(time.perf_counter() - t0, 3)
        return _jsonable(entry)
    ours, ref = measured.get("ours_s"), measured.get("reference_s")
    if bench.ratio and ours and ref and "ratio" not in measured:
        measured["ratio"] = ref / ours if bench.ratio == "reference/ours" else ours / ref
    checks = []
    for t in bench.targets:
        actual, met = t.check(measured)
        checks.append({"target": str(t), "actual": actual, "met": bool(met)})
    entry.update(
        status="MET" if all(c["met"] for c in checks) else "MISSED",
        measured=measured.pop("measured", ""),
        ours_s=measured.pop("ours_s", None),
        reference_s=measured.pop("reference_s", None),
        ratio=measured.pop("ratio", None),
        ratio_kind=bench.ratio,
        checks=checks,
        notes=list(measured.pop("notes", [])),
        details=measured.pop("details", {}),
        measurements=measured,  # whatever else the benchmark returned (target keys among them)
    )
    entry["wall_s"] = round(time.perf_counter() - t0, 3)
    return _jsonable(entry)


# --------------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------------


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_ratio(entry: dict[str, Any]) -> str:
    r = entry.get("ratio")
    if r is None:
        return "—"
    return f"{r:,.0f}×" if r >= 100 else f"{r:.2f}×"


def fmt_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def describe(entry: dict[str, Any]) -> str:
    """The console block of one entry."""
    lines = [f"== {entry['name']}: {entry['description']}" + ("  [quick]" if entry.get("quick") else "")]
    if entry["status"] == "ERROR":
        lines += [f"   ERROR    : {entry['error']}", f"   targets  : {'; '.join(entry['targets'])}"]
        return "\n".join(lines)
    kind = RATIO_KINDS.get(entry.get("ratio_kind") or "", "")
    lines += [
        f"   measured : {entry['measured']}",
        f"   ours     : {fmt_seconds(entry['ours_s'])}",
        f"   reference: {fmt_seconds(entry['reference_s'])}",
        f"   ratio    : {fmt_ratio(entry)}" + (f"  ({kind})" if kind and entry.get("ratio") is not None else ""),
    ]
    for c in entry["checks"]:
        lines.append(f"   target   : {c['target']:<28} actual {fmt_value(c['actual']):<12} "
                     f"{'MET' if c['met'] else 'MISSED'}")
    for note in entry.get("notes", []):
        lines.append(f"   note     : {note}")
    lines.append(f"   result   : {entry['status']}  (benchmark wall time {entry['wall_s']:.1f} s)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# result files
# --------------------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(out_dir: Path):
    """An exclusive lock for read-merge-write of one output folder (outside the repository)."""
    key = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"uss-bench-benchmarks-{key}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_results(path: Path) -> dict[str, Any]:
    """The results file, or an empty one when absent.

    Raises:
        ValueError: the file exists but is not a results file of this schema (never overwritten then).
    """
    if not path.exists():
        return {"schema": RESULTS_SCHEMA, "benchmarks": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it, it is not overwritten") from exc
    if data.get("schema") != RESULTS_SCHEMA or not isinstance(data.get("benchmarks"), dict):
        raise ValueError(f"{path} is not a schema-{RESULTS_SCHEMA} results file; it is not overwritten")
    return data


def merge_and_write(out_dir: Path, entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Merge ``entries`` into ``out_dir/results.json`` (by name) and re-render ``out_dir/README.md``.

    Both files are written atomically, under a lock, so concurrent runners do not lose each other's entries.
    """
    results_path = out_dir / "results.json"
    with _locked(out_dir):
        data = load_results(results_path)
        for e in entries:
            data["benchmarks"][e["name"]] = e
        data["benchmarks"] = dict(sorted(data["benchmarks"].items()))
        atomic_write_text(results_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out_dir / "README.md", render_markdown(data))
    return data


def _machine_line(m: dict[str, Any]) -> str:
    return (f"{m.get('cpu')}; {m.get('usable_cpus')} usable of {m.get('logical_cpus')} logical CPUs; "
            f"load avg {m.get('load_avg_1_5_15')}; {m.get('os')}; Python {m.get('python')}, "
            f"numpy {m.get('numpy')}, scipy {m.get('scipy')}, torch {m.get('torch')}, museval {m.get('museval')}, "
            f"soxr {m.get('soxr')}, soundfile {m.get('soundfile')}, h5py {m.get('h5py')}")


def render_markdown(data: dict[str, Any]) -> str:
    """``README.md`` of the results folder: the table, then each benchmark's details and machine."""
    entries = list(data["benchmarks"].values())
    out = [
        "# Benchmarks",
        "",
        "Generated by `python3 benchmarks/run.py` from `results.json` (do not edit by hand; "
        "`benchmarks/README.md` says how to run and add benchmarks). Each row is the latest run of that "
        "benchmark; rows may come from different runs, so each names its date and machine.",
        "",
        "| benchmark | ours | reference | ratio | target | met? | date (UTC) | machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        targets = "; ".join(c["target"] for c in e.get("checks", [])) or "; ".join(e.get("targets", []))
        status = e["status"] + (" (quick run)" if e.get("quick") else "")
        m = e.get("machine", {})
        out.append(
            f"| `{e['name']}` | {fmt_seconds(e.get('ours_s'))} | {fmt_seconds(e.get('reference_s'))} | "
            f"{fmt_ratio(e)} | `{targets}` | **{status}** | {e['date'][:16].replace('T', ' ')} | "
            f"{m.get('cpu')}, {m.get('usable_cpus')} CPUs |"
        )
    for e in entries:
        out += ["", f"## `{e['name']}`", "", e["description"], ""]
        if e["status"] == "ERROR":
            out += [f"**ERROR**: `{e['error']}`", ""]
        else:
            out += [f"- measured: {e['measured']}"]
            if e.get("ratio") is not None:
                out += [f"- ratio: {fmt_ratio(e)}, {RATIO_KINDS.get(e.get('ratio_kind') or '', '')}"]
            for c in e["checks"]:
                out.append(f"- target `{c['target']}`: actual {fmt_value(c['actual'])} → "
                           f"**{'MET' if c['met'] else 'MISSED'}**")
            out += [f"- note: {n}" for n in e.get("notes", [])]
            if e.get("details"):
                out += ["", "<details><summary>details</summary>", "", "```json",
                        json.dumps(e["details"], indent=2, ensure_ascii=False), "```", "", "</details>"]
        out += ["", f"Run {e['date']} at git `{e.get('git_revision')}` on: {_machine_line(e.get('machine', {}))}. "
                    f"Benchmark wall time {e.get('wall_s')} s."]
    return "\n".join(out) + "\n"
