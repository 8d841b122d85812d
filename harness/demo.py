"""``uss-bench demo``: the main job end to end on the embedded demo corpora (``datasets/demo/``).

build-mixtures for every demo corpus → eval of the ``mixture`` and ``oracle-irm`` baselines →
one ``items.parquet`` and ``summary.md`` holding both systems.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from rich.console import Console

from harness.config import DATASET_NAMES, REPO_ROOT
from harness.datasets.store import atomic_write_parquet
from harness.evaluate import BASELINES, EvalOptions, run_eval
from harness.mixtures import BuildOptions, build_mixtures
from harness.reports import render_report

DEMO_ROOT = REPO_ROOT / "datasets" / "demo"
DEMO_FOLDERS = {"audioset": "audioset", "fsdkaggle2018": "fsdkaggle2018", "fsd50k": "fsd50k",
                "musdb18": "musdb18hq", "slakh2100": "slakh2100", "voicebank-demand": "voicebank-demand"}
"""Dataset name → folder under ``datasets/demo``."""


def run_demo(out: Path, workdir: Path | None = None, jobs: int = 1, quiet: bool = True,
             console: Console | None = None) -> Path:
    """Run the demo and return the path of its ``summary.md``.

    Args:
        out: report folder (``items.parquet``, ``summary.md``, ``per_class.md``, figure; one sub-folder
            per system under ``runs/``).
        workdir: where the evaluation sets go; a temporary folder (removed afterwards) when ``None``.
        jobs: render / metric workers.
    """
    console = console or Console(quiet=True)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="uss-bench-demo-") as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        for dataset in DATASET_NAMES:
            build = build_mixtures(DEMO_ROOT / DEMO_FOLDERS[dataset], wd, BuildOptions(dataset=dataset, jobs=jobs))
            console.print(f"built {dataset}: {build['counts']['items']} items, {build['counts']['classes']} classes")
        frames = []
        for make in BASELINES.values():
            system = make()
            run_dir = out / "runs" / system.name.replace(":", "-")
            run_eval(system, EvalOptions(datasets=list(DATASET_NAMES), workdir=wd, out=run_dir, jobs=jobs))
            render_report(run_dir)
            frames.append(pd.read_parquet(run_dir / "items.parquet"))
            console.print(f"evaluated {system.name}")
    atomic_write_parquet(pd.concat(frames, ignore_index=True), out / "items.parquet")
    return render_report(out).summary
