"""Run the named benchmarks and update ``reports/benchmarks/{results.json,README.md}``.

    python3 benchmarks/run.py                 # every benchmark
    python3 benchmarks/run.py --only musdb_sdr --only build_mixtures
    python3 benchmarks/run.py --quick         # smaller runs (entries are marked "quick")
    python3 benchmarks/run.py --list          # names and targets
    python3 benchmarks/run.py --dry-run       # print only, write nothing

Benchmarks are the functions registered with ``@benchmark`` in ``benchmarks/bench_*.py`` (imported here
in name order). Exit status: 0 every target met, 1 a target missed, 2 a benchmark failed or bad usage.
The result files are written in every case: a missed target is reported, not hidden.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The checkout's own `harness` first (an installed copy elsewhere must not be what gets measured),
# then this folder for `benchlib` and the bench_* modules.
for p in (str(HERE), str(REPO)):
    if p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)

import benchlib  # noqa: E402


def load_benchmarks() -> dict[str, benchlib.Benchmark]:
    """Import every ``bench_*.py`` beside this file (each registers its benchmarks)."""
    for path in sorted(HERE.glob("bench_*.py")):
        importlib.import_module(path.stem)
    return benchlib.REGISTRY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this benchmark (repeatable, or comma-separated)")
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs (marked quick)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the results, write no file")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks",
                        help="results folder (default: reports/benchmarks)")
    args = parser.parse_args(argv)

    registry = load_benchmarks()
    if args.list:
        for b in registry.values():
            print(f"{b.name:<18} {'; '.join(map(str, b.targets)):<50} {b.description}")
        return 0
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(registry)}", file=sys.stderr)
        return 2

    import harness

    print(f"harness from {Path(harness.__file__).parent}; results to {args.out}"
          + (" (dry run: not written)" if args.dry_run else ""))
    ctx = benchlib.Context(quick=args.quick)
    entries = []
    for name in names:
        print(f"\n-- running {name}{' (quick)' if args.quick else ''}", flush=True)
        entry = benchlib.run_one(registry[name], ctx)
        entries.append(entry)
        print(benchlib.describe(entry), flush=True)
        if entry["status"] == "ERROR":
            print(entry["traceback"], file=sys.stderr)

    if not args.dry_run:
        benchlib.merge_and_write(args.out, entries)
        print(f"\nwrote {args.out / 'results.json'} and {args.out / 'README.md'}")
    print("\nsummary: " + ", ".join(f"{e['name']} {e['status']}" for e in entries))
    statuses = {e["status"] for e in entries}
    return 2 if "ERROR" in statuses else 1 if "MISSED" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
