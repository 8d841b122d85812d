"""``uss-bench demo``: the main job end to end on the embedded demo corpora (``datasets/demo/``).

build-mixtures for every demo corpus → embed-queries with the demo checkpoint (``models/demo/``) →
eval of the demo model (the Table 2 protocol: average queries, AudioSet also oracle; and oracle queries
on every dataset, since the demo's query splits cover few test classes) and of the ``mixture`` and
``oracle-irm`` baselines → one ``items.parquet`` and ``summary.md`` → compare with the committed table
in ``reports/baselines/demo/``.

The comparison is two-sided with a 0.05 dB tolerance: the demo is deterministic, so any change of its
numbers, better or worse, means the pipeline changed and the baseline must be refreshed on purpose
(``uss-bench demo --update-baseline``; reviewed through ``reports/baselines/demo/aggregates.csv``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console

from harness.config import REPO_ROOT, dataset_names, load_dataset_config
from harness.datasets.store import atomic_write_parquet
from harness.errors import CheckpointError, UssBenchError
from harness.evaluate import BASELINES, EvalOptions, run_eval
from harness.mixtures import BuildOptions, build_mixtures
from harness.models.checkpoints import file_sha256
from harness.reports import (
    Comparison,
    compare_runs,
    render_report,
    run_sources,
    write_baseline,
    write_sources,
)

DEMO_ROOT = REPO_ROOT / "datasets" / "demo"


def demo_folders() -> dict[str, str]:
    """Dataset name → its folder under ``datasets/demo`` (each declaration's ``demo_folder``), for the
    registered datasets whose folder exists. ``DEMO_FOLDERS`` is this dict."""
    out = {}
    for name in dataset_names():
        folder = load_dataset_config(name)["demo_folder"]
        if (DEMO_ROOT / folder).is_dir():
            out[name] = folder
    return out


def __getattr__(name: str):
    if name == "DEMO_FOLDERS":
        return demo_folders()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEMO_CHECKPOINT = REPO_ROOT / "models" / "demo" / "demo_tiny.safetensors"
"""The committed demo model (trained by ``uss-bench train --config models/demo_tiny.toml``)."""

DEMO_CHECKSUM = REPO_ROOT / "models" / "demo" / "SHA256SUMS"
"""``sha256sum`` line of :data:`DEMO_CHECKPOINT`, checked before use (a corrupt or changed file fails)."""

DEMO_BASELINE = REPO_ROOT / "reports" / "baselines" / "demo"
"""The committed demo table that ``uss-bench demo`` compares with."""

DEMO_TOLERANCE_DB = 0.05
"""Allowed change of any demo aggregate (dB; MOS for PESQ), either way."""


@dataclass
class DemoResult:
    summary: Path
    comparison: Comparison | None
    """``None`` when there was no baseline to compare with, or the baseline was refreshed."""


def verify_demo_checkpoint(path: Path = DEMO_CHECKPOINT, sums: Path = DEMO_CHECKSUM) -> str:
    """Check the demo checkpoint against its recorded sha256; return the digest.

    Raises:
        CheckpointError: the file or its checksum is missing, or the digest differs (says how to fix).
    """
    if not path.is_file():
        raise CheckpointError(f"the demo checkpoint {path} is missing; restore it from git "
                              "or retrain it (models/demo/README.md)")
    digest = file_sha256(path)
    expected = {line.split()[1].lstrip("*"): line.split()[0] for line in sums.read_text().splitlines() if line.strip()}
    if expected.get(path.name) != digest:
        raise CheckpointError(
            f"{path} has sha256 {digest}, but {sums} records {expected.get(path.name)}. A retrained demo "
            "model must update SHA256SUMS and the baseline table together (models/demo/README.md)"
        )
    return digest


def run_demo(out: Path, workdir: Path | None = None, jobs: int = 1, quiet: bool = True,
             console: Console | None = None, checkpoint: Path | None = None,
             baseline: Path | None = DEMO_BASELINE, update_baseline: bool = False,
             tolerance_db: float = DEMO_TOLERANCE_DB) -> DemoResult:
    """Run the demo and compare it with the committed table.

    Args:
        out: report folder (``items.parquet``, ``summary.md``, ``per_class.md``, figure; one sub-folder
            per system under ``runs/``).
        workdir: where the evaluation sets and query sets go; a temporary folder (removed afterwards)
            when ``None``.
        jobs: render / metric workers (results do not depend on it).
        checkpoint: the demo model; :data:`DEMO_CHECKPOINT` (checksum-verified) when ``None``.
        baseline: the committed table to compare with; ``None`` skips the comparison.
        update_baseline: write this run as the new baseline instead of failing on a difference.
        tolerance_db: allowed change of any aggregate, either way.

    Raises:
        CheckpointError: the demo checkpoint is missing or fails its checksum.
    """
    from harness.queries import embed_queries
    from harness.systems import CheckpointSystem

    console = console or Console(quiet=True)
    out = Path(out)
    if checkpoint is None:
        checkpoint = DEMO_CHECKPOINT
        verify_demo_checkpoint()
    with tempfile.TemporaryDirectory(prefix="uss-bench-demo-") as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        folders = demo_folders()
        for dataset, folder in folders.items():
            build = build_mixtures(DEMO_ROOT / folder, wd, BuildOptions(dataset=dataset, jobs=jobs))
            console.print(f"built {dataset}: {build['counts']['items']} items, {build['counts']['classes']} classes")
        for dataset, folder in folders.items():
            prov = embed_queries(dataset, checkpoint, DEMO_ROOT / folder, wd, device="cpu")
            console.print(f"queries {dataset}: {prov['classes']} class(es) from the {prov['split']} split")
        frames, run_dirs = [], []
        systems = [BASELINES["mixture"](), BASELINES["oracle-irm"](),
                   CheckpointSystem(checkpoint, wd, condition="average", device="cpu"),
                   CheckpointSystem(checkpoint, wd, condition="oracle", device="cpu")]
        for system in systems:
            run_dir = out / "runs" / system.name.replace(":", "-").replace("[", "-").replace("]", "")
            run_eval(system, EvalOptions(datasets=list(folders), workdir=wd, out=run_dir, jobs=jobs))
            render_report(run_dir)
            frames.append(pd.read_parquet(run_dir / "items.parquet"))
            run_dirs.append(run_dir)
            console.print(f"evaluated {system.name}", markup=False)
        # one report of the four runs, their systems under their own names; sources.json names the runs and
        # their sets, and it is rendered while the sets exist: the ontology roll-ups read the sets'
        # manifests for the interferer labels (issue 12)
        atomic_write_parquet(pd.concat(frames, ignore_index=True), out / "items.parquet")
        write_sources(out, [src for run_dir in run_dirs for src in run_sources(run_dir)])
        rep = render_report(out)
    summary = rep.summary
    console.print(f"HTML report: {rep.html}", markup=False, highlight=False)
    if baseline is None:
        return DemoResult(summary, None)
    if not update_baseline and not (Path(baseline) / "items.parquet").is_file():
        raise UssBenchError(f"no demo baseline at {baseline}; create it deliberately with "
                            "`uss-bench demo --update-baseline` and commit it")
    if update_baseline:
        write_baseline(out, baseline)
        console.print(f"wrote the demo baseline {baseline}: review and commit its aggregates.csv and summary.md")
        return DemoResult(summary, None)
    return DemoResult(summary, compare_runs(baseline, out, tolerance_db, two_sided=True))
