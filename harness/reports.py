"""Aggregation, Markdown tables, reports of one or several runs, and ``compare`` (DESIGN §6–7).

Aggregates name their convention:

- ``class-median-mean``: median over a class's items, then the mean over classes (the paper's, for
  AudioSet, FSDKaggle2018, FSD50K and Slakh2100). For MUSDB18 the classes are the four stems and each
  track is one item of its stem, so the same computation is "median over tracks per stem, then the mean
  over stems" (the SiSEC/MUSDB convention) on the framewise-median SDR of each track.
- ``median`` / ``mean`` over utterances for Voicebank-Demand PESQ and SSNR (the upstream reports the
  median; the speech-enhancement literature the mean: both are shown, named).
- ``mean [95% CI]``: the plain mean over items with a percentile bootstrap interval (1,000 resamples,
  seed 0), in the detail table.

Only rows with ``status == "ok"`` enter an aggregate; the others are counted in the status table.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import DATASET_NAMES, REPO_ROOT
from harness.datasets.store import atomic_write_text
from harness.errors import UssBenchError

TABLE2 = (
    # (column key, header, dataset, metric, condition preference, aggregate)
    ("audioset_sdri_oracle", "AudioSet SDRi ora. emb", "audioset", "sdri", ("oracle", "none"), "class-median-mean"),
    ("audioset_sdri_average", "AudioSet SDRi avg. emb", "audioset", "sdri", ("average", "none"), "class-median-mean"),
    ("fsdkaggle2018_sdr", "FSDK2018 SDR", "fsdkaggle2018", "sdr", ("average", "oracle", "none"), "class-median-mean"),
    ("fsdkaggle2018_sdri", "FSDK2018 SDRi", "fsdkaggle2018", "sdri", ("average", "oracle", "none"), "class-median-mean"),
    ("fsd50k_sdr", "FSD50K SDR", "fsd50k", "sdr", ("average", "oracle", "none"), "class-median-mean"),
    ("fsd50k_sdri", "FSD50K SDRi", "fsd50k", "sdri", ("average", "oracle", "none"), "class-median-mean"),
    ("musdb18_sdr", "MUSDB18 SDR", "musdb18", "musdb_sdr", ("average", "oracle", "none"), "class-median-mean"),
    ("musdb18_sdri", "MUSDB18 SDRi", "musdb18", "musdb_sdri", ("average", "oracle", "none"), "class-median-mean"),
    ("slakh2100_sdr", "Slakh2100 SDR", "slakh2100", "sdr", ("average", "oracle", "none"), "class-median-mean"),
    ("slakh2100_sdri", "Slakh2100 SDRi", "slakh2100", "sdri", ("average", "oracle", "none"), "class-median-mean"),
    ("voicebank_pesq", "Voicebank PESQ", "voicebank-demand", "pesq", ("average", "oracle", "none"), "median"),
    ("voicebank_ssnr", "Voicebank SSNR", "voicebank-demand", "ssnr", ("average", "oracle", "none"), "median"),
)
"""The paper's Table 2 columns and how each is computed from ``items.parquet``.

A cell uses the first condition of its preference list that the system has rows for: average queries
as in the paper; a run evaluated with oracle queries only (system name ending ``[oracle]``) fills the
columns from its oracle rows; baselines have ``none``."""

HEADLINE = {
    "audioset": ("sdri",), "fsdkaggle2018": ("sdr", "sdri"), "fsd50k": ("sdr", "sdri"),
    "musdb18": ("musdb_sdr", "musdb_sdri"), "slakh2100": ("sdr", "sdri"), "voicebank-demand": ("pesq", "ssnr"),
}
"""Metrics that ``compare`` gates on, per dataset (the Table 2 metrics)."""


def aggregate(values: pd.Series, labels: pd.Series, how: str) -> float:
    """One aggregate of a metric column.

    Args:
        values: metric values of the ``ok`` rows (NaN ignored).
        labels: the rows' class labels (for ``class-median-mean``).
        how: ``class-median-mean``, ``median`` or ``mean``.

    Returns:
        the aggregate, NaN when no finite value is left.
    """
    frame = pd.DataFrame({"v": values.to_numpy(dtype=float), "c": labels.to_numpy()}).dropna()
    if frame.empty:
        return float("nan")
    if how == "class-median-mean":
        return float(frame.groupby("c")["v"].median().mean())
    if how == "median":
        return float(frame["v"].median())
    if how == "mean":
        return float(frame["v"].mean())
    raise ValueError(f"unknown aggregate {how!r}")


def aggregate_kind(dataset: str) -> str:
    """How Table 2 aggregates a dataset: ``median`` over Voicebank utterances, else ``class-median-mean``."""
    return "median" if dataset == "voicebank-demand" else "class-median-mean"


def dataset_aggregate(items: pd.DataFrame, dataset: str, metric: str, condition: str | None = None) -> float:
    """The Table 2 aggregate of ``metric`` on ``dataset`` (``ok`` rows; optional condition filter)."""
    rows = items[(items["dataset"] == dataset) & (items["status"] == "ok")]
    if condition is not None:
        rows = rows[rows["condition"] == condition]
    return aggregate(rows[metric], rows["label"], aggregate_kind(dataset))


def bootstrap_mean(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean with a 95 % percentile bootstrap interval (deterministic: fixed seed)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cell_condition(sub: pd.DataFrame, prefs: tuple[str, ...]) -> str | None:
    """The condition a Table 2 cell is computed from: the first of ``prefs`` with rows in ``sub`` (one
    system, one dataset), else the system's own first condition (its primary query mode, e.g. ``text``),
    so a system with another query mode never gets NaN cells; ``None`` when ``sub`` is empty."""
    present = list(dict.fromkeys(sub["condition"]))
    return next((c for c in prefs if c in present), present[0] if present else None)


def table2_row(items: pd.DataFrame) -> dict[str, float]:
    """The Table 2 cells of one system's items (NaN for datasets not evaluated)."""
    row = {}
    for key, _, dataset, metric, prefs, _how in TABLE2:
        sub = items[items["dataset"] == dataset]
        cond = cell_condition(sub, prefs)
        row[key] = dataset_aggregate(items, dataset, metric, cond) if cond else float("nan")
    return row


def paper_rows(path: Path | None = None) -> list[tuple[str, dict[str, float]]]:
    """The paper's published rows from ``reports/baselines/paper_table2.csv`` (empty cells = NaN)."""
    path = path or REPO_ROOT / "reports" / "baselines" / "paper_table2.csv"
    if not path.is_file():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    out = []
    for rec in csv.DictReader(lines):
        name = rec.pop("system")
        out.append((name, {k: float(v) if v.strip() else float("nan") for k, v in rec.items()}))
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub Markdown table (first column left-aligned, the others right-aligned)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table2_cells(items: pd.DataFrame) -> dict[str, tuple[float, int, int]]:
    """The Table 2 cells of one system's items with their coverage.

    Returns:
        ``{column key: (value, ok rows, rows)}``: the aggregate (NaN when not computed), and how many of
        the rows of the cell's dataset and condition it was computed on. ``ok < rows`` marks a cell
        computed on part of the set (items without a query, unscorable items); ``rows == 0``: the dataset
        was not evaluated.
    """
    out = {}
    for key, _, dataset, metric, prefs, _how in TABLE2:
        sub = items[items["dataset"] == dataset]
        cond = cell_condition(sub, prefs)
        if cond is None:
            out[key] = (float("nan"), 0, 0)
            continue
        rows = sub[sub["condition"] == cond]
        ok = rows[(rows["status"] == "ok") & rows[metric].notna()]
        out[key] = (dataset_aggregate(items, dataset, metric, cond), len(ok), len(rows))
    return out


def format_cell(cell: tuple[float, int, int], digits: int = 2) -> str:
    """A Table 2 cell as text: ``3.03``, or ``3.03 (20/140)`` when computed on 20 of 140 rows."""
    value, ok, rows = cell
    text = _fmt(value, digits)
    return f"{text} ({ok}/{rows})" if rows and ok < rows else text


@dataclass
class RunSource:
    """One run folder that went into a report."""

    path: Path
    """The run folder (its ``estimates/`` are looked up here)."""
    label: str
    """The run's name in the report (its folder name, made unique)."""
    systems: dict[str, str]
    """``{system in the run's items.parquet: system name in the report}``."""
    digests: dict[str, str]
    """``{dataset: evaluation-set digest}`` from the run's ``run.json`` (empty when it has none)."""
    sets: dict[str, str]
    """``{dataset: evaluation-set folder}`` as recorded at eval time (may no longer exist)."""

    def as_json(self) -> dict:
        return {"path": str(self.path), "label": self.label, "systems": self.systems, "digests": self.digests,
                "sets": self.sets}


SOURCES_JSON = "sources.json"
"""Written by a report of several runs (or of a run rendered elsewhere): where its systems came from."""


def _run_meta(run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``(digests, set folders)`` per dataset from a run's ``run.json`` (empty when absent)."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}, {}
    try:
        builds = json.loads(path.read_text()).get("builds", {}) or {}
    except (OSError, ValueError) as exc:
        raise UssBenchError(f"cannot read {path}: {exc}; restore it or rerun `uss-bench eval`") from exc
    return ({d: str(b["digest"]) for d, b in builds.items() if b.get("digest")},
            {d: str(b["path"]) for d, b in builds.items() if b.get("path")})


def run_sources(run_dir: str | Path, items: pd.DataFrame | None = None) -> list[RunSource]:
    """The runs behind a report folder: its ``sources.json``, else the folder itself as one run.

    Raises:
        UssBenchError: an unreadable ``sources.json`` or ``run.json``.
    """
    run_dir = Path(run_dir)
    src = run_dir / SOURCES_JSON
    if src.is_file():
        try:
            recs = json.loads(src.read_text())["runs"]
            return [RunSource(Path(r["path"]), r["label"], dict(r["systems"]), dict(r.get("digests", {})),
                              dict(r.get("sets", {}))) for r in recs]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UssBenchError(f"cannot read {src}: {exc}; delete it and rerun `uss-bench report`") from exc
    items = load_items(run_dir) if items is None else items
    digests, sets = _run_meta(run_dir)
    systems = list(dict.fromkeys(items["system"]))
    return [RunSource(run_dir, run_dir.resolve().name, {s: s for s in systems}, digests, sets)]


def expand_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders named by ``paths``: a folder with ``items.parquet`` is a run; a folder without one
    stands for the run folders directly inside it (e.g. the demo's ``runs/``).

    Raises:
        UssBenchError: a path that is neither a run nor a folder of runs.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "items.parquet").is_file() or (p.is_file() and p.suffix == ".parquet"):
            out.append(p if p.is_dir() else p.parent)
        elif p.is_dir() and (subs := sorted(d for d in p.iterdir() if (d / "items.parquet").is_file())):
            out.extend(subs)
        else:
            raise UssBenchError(f"{p} is not a run folder (no items.parquet) nor a folder of run folders; "
                                "pass folders written by `uss-bench eval`")
    return list(dict.fromkeys(out))


def _unique_labels(paths: list[Path]) -> list[str]:
    """Folder names, lengthened by their parents' names until unique."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while True:
        labels = ["/".join(pp[-depth:]) for pp in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(pp) for pp in parts):
            return labels
        depth += 1


def merge_runs(paths: list[str | Path], allow_different_sets: bool = False) -> tuple[pd.DataFrame, list[RunSource]]:
    """Items of several runs side by side, systems named by their runs.

    A run holding one system names it by the run (``<label>``); a run holding several names each
    ``<label>/<system>``. A single run keeps its system names. Rows keep every column; ``run`` holds the
    run's label and ``source_system`` the system's name in its run.

    Args:
        paths: run folders or folders of runs (:func:`expand_runs`).
        allow_different_sets: merge even when two runs evaluated a dataset on sets with different build
            digests (their numbers are then not comparable item by item).

    Returns:
        ``(items, sources)``.

    Raises:
        UssBenchError: unreadable runs; two runs whose sets of one dataset have different digests
            (names both runs and the dataset) unless ``allow_different_sets``.
    """
    runs = expand_runs(paths)
    labels = _unique_labels(runs)
    frames, sources = [], []
    for run, label in zip(runs, labels, strict=True):
        items = load_items(run)
        inner = run_sources(run, items)
        digests = {d: v for s in inner for d, v in s.digests.items()}
        sets = {d: v for s in inner for d, v in s.sets.items()}
        systems = list(dict.fromkeys(items["system"]))
        if len(runs) == 1:
            names = {s: s for s in systems}
        else:
            names = {s: label if len(systems) == 1 else f"{label}/{s}" for s in systems}
        frames.append(items.assign(source_system=items.get("source_system", items["system"]),
                                   system=items["system"].map(names), run=label))
        if (run / SOURCES_JSON).is_file():  # a report of runs: keep pointing at the runs (their estimates)
            sources += [RunSource(src.path, f"{label}/{src.label}", {o: names[n] for o, n in src.systems.items()
                                                                     if n in names}, src.digests, src.sets)
                        for src in inner]
        else:
            sources.append(RunSource(run, label, names, digests, sets))
    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            for dataset in sorted(set(a.digests) & set(b.digests)):
                if a.digests[dataset] != b.digests[dataset] and not allow_different_sets:
                    raise UssBenchError(
                        f"runs {a.path} and {b.path} evaluated {dataset} on different sets (build digest "
                        f"{a.digests[dataset][:12]}… vs {b.digests[dataset][:12]}…): their items do not pair. "
                        "Rebuild one set with the other's options, or pass --allow-different-sets to show "
                        "them side by side anyway")
    items = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return items, sources


@dataclass
class Report:
    """What ``render_report`` wrote."""

    summary: Path
    per_class: Path
    figure: Path | None
    """The Table 2 overview figure (``table2.png``)."""
    figures: list[Path]
    """Every figure: ``table2.png``, then ``per_class_<dataset>.png`` in Table 2 order."""
    html: Path
    """The self-contained ``report.html``."""


def report_runs(runs: list[str | Path], out: str | Path | None = None, allow_different_sets: bool = False
                ) -> Report:
    """Render one report of several runs (or folders of runs) side by side into ``out``.

    With one run and no ``out`` (or ``out`` the run itself) the run's own folder is re-rendered. Otherwise
    ``out`` receives the merged ``items.parquet`` and ``sources.json`` (the runs, their systems and set
    digests), then the report files (:func:`render_report`).

    Raises:
        UssBenchError: see :func:`merge_runs`; several runs without ``out``.
    """
    expanded = expand_runs(runs)
    if len(expanded) == 1 and (out is None or Path(out).resolve() == expanded[0].resolve()):
        return render_report(expanded[0])
    if out is None:
        raise UssBenchError(f"{len(expanded)} runs make one report: name its folder with --out DIR")
    from harness.datasets.store import atomic_write_parquet

    items, sources = merge_runs(expanded, allow_different_sets)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(items, out / "items.parquet")
    atomic_write_text(out / SOURCES_JSON, json.dumps({"runs": [s.as_json() for s in sources]}, indent=2) + "\n")
    return render_report(out)


def table2_markdown(items: pd.DataFrame, systems: list[str]) -> tuple[str, dict[str, dict]]:
    """The Table 2 section's table (ours with coverage markers, then the paper's rows) and its cells."""
    header = ["system", *[h for _, h, *_ in TABLE2]]
    rows, cells = [], {}
    for system in systems:
        sub = items[items["system"] == system]
        cells[system] = table2_cells(sub)
        own = [c for c in dict.fromkeys(sub["condition"]) if c not in ("average", "oracle", "none")]
        name = f"**{system}**" + (f" (query mode: {', '.join(own)})" if own else "")  # Table 2 names the mode
        rows.append([name, *[format_cell(cells[system][k]) for k, *_ in TABLE2]])
    for name, paper in paper_rows():
        rows.append([name, *[_fmt(paper.get(k, float("nan")), 2) for k, *_ in TABLE2]])
    return markdown_table(header, rows), cells


def detail_rows(items: pd.DataFrame, systems: list[str]) -> list[dict]:
    """Per system, dataset, condition and headline metric: counts, aggregates and the mean's 95 % CI.

    Returns:
        dicts with ``system, dataset, condition, metric, rows, ok, classes, class_median_mean, median,
        mean, ci_low, ci_high`` (floats NaN when nothing is ``ok``).
    """
    out = []
    for system in systems:
        sub_sys = items[items["system"] == system]
        for dataset in DATASET_NAMES:
            for metric in HEADLINE[dataset]:
                for cond, sub in sub_sys[sub_sys["dataset"] == dataset].groupby("condition", sort=False):
                    ok = sub[sub["status"] == "ok"]
                    mean, lo, hi = bootstrap_mean(ok[metric].to_numpy())
                    out.append({"system": system, "dataset": dataset, "condition": cond, "metric": metric,
                                "rows": len(sub), "ok": len(ok), "classes": int(ok["label"].nunique()),
                                "class_median_mean": aggregate(ok[metric], ok["label"], "class-median-mean"),
                                "median": float(ok[metric].median()) if len(ok) else float("nan"),
                                "mean": mean, "ci_low": lo, "ci_high": hi})
    return out


def status_rows(items: pd.DataFrame) -> list[dict]:
    """Per system and dataset: rows, ``ok`` rows and ``{status kind: count}`` of the others.

    A status of an older run that embeds its detail (``read_error: /path/x.wav …``) counts under its kind
    (``read_error``), as :func:`harness.evaluate.split_status` stores it now."""
    out = []
    for (system, dataset), sub in items.groupby(["system", "dataset"], sort=False):
        counts = sub["status"].astype(str).str.split(": ", n=1).str[0].value_counts()
        out.append({"system": system, "dataset": dataset, "rows": len(sub), "ok": int(counts.get("ok", 0)),
                    "other": {str(k): int(v) for k, v in counts.items() if k != "ok"}})
    return out


CONVENTIONS = (
    "Conventions: SDR and SDRi in dB (paper eq. 12–13, upstream constants 1e-10); "
    "AudioSet, FSDK2018, FSD50K and Slakh2100 are `class-median-mean` (median per class, mean over "
    "classes); MUSDB18 is the BSSEval-v4 image SDR (median over 1-s frames at 32 kHz) with "
    "`class-median-mean` over the four stems (median over tracks per stem, mean over stems); "
    "Voicebank PESQ (P.862.2 wide band, MOS-LQO) and SSNR (dB) at 16 kHz are the median over "
    "utterances, as the upstream (means below). Baselines take no query, so the same number stands "
    "in both AudioSet columns. Only `ok` rows are aggregated; the others are counted below. A cell "
    "computed on part of its rows shows `(ok/rows)`, e.g. `3.03 (20/140)`. "
    "Numbers on the dev or demo corpora are not comparable with the paper's.")


def render_report(run_dir: str | Path) -> Report:
    """(Re-)render a report folder from its ``items.parquet``.

    Writes ``summary.md`` (Table 2 with coverage markers, detail with CIs, item status), ``per_class.md``,
    the figures ``table2.png`` and ``per_class_<dataset>.png`` (:mod:`harness.figures`) and the
    self-contained ``report.html`` (:mod:`harness.report_html`; audio players when the runs saved
    estimates under ``<run>/estimates/<dataset>/``). Every file is written atomically.

    Raises:
        UssBenchError: ``run_dir`` has no readable ``items.parquet``; unreadable ``run.json`` /
            ``sources.json``.
    """
    from harness import figures as F
    from harness.query_protocols import paper_rows as protocol_paper_rows
    from harness.query_protocols import report_markdown
    from harness.report_html import write_html

    run_dir = Path(run_dir)
    all_items = load_items(run_dir)
    sources = run_sources(run_dir, all_items)
    items = protocol_paper_rows(all_items)  # the absent-query rows have their own section
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    systems = list(dict.fromkeys(items["system"]))
    parts = [f"# uss-bench report: {', '.join(systems) or 'no items'}", ""]
    if run.get("git_revision") or run.get("checkpoint_sha256"):
        parts.append(f"harness {run.get('versions', {}).get('harness', '?')}, git {run.get('git_revision')}, "
                     f"checkpoint sha256 {run.get('checkpoint_sha256')}")
        parts.append("")
    if (run_dir / SOURCES_JSON).is_file():
        parts.append("Runs: " + "; ".join(f"`{s.label}` ({s.path})" for s in sources))
        parts.append("")
    table2, cells = table2_markdown(items, systems)
    from harness.results import write_results

    write_results(run_dir, all_items)  # the same cells for machines
    parts += ["## Table 2 (paper layout)", "", table2, "", CONVENTIONS, "",
              "HTML report (tables, figures, audio): [report.html](report.html)", ""]
    parts += ["## Detail per dataset", ""]
    detail = [[r["system"], r["dataset"], r["condition"], r["metric"], str(r["ok"]), str(r["classes"]),
               _fmt(r["class_median_mean"]), _fmt(r["median"]),
               f"{_fmt(r['mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"] for r in detail_rows(items, systems)]
    parts += [markdown_table(["system", "dataset", "condition", "metric", "items ok", "classes",
                              "class-median-mean", "median", "mean [95% CI]"], detail, "llll" + "r" * 5), ""]
    protocols = report_markdown(all_items)  # eval --query-protocol absent / --query-modes
    if protocols:
        parts += [protocols, ""]
    parts += ["## Item status", ""]
    srows = [[r["system"], r["dataset"], str(r["rows"]), str(r["ok"]),
              ", ".join(f"{k}: {v}" for k, v in r["other"].items()) or "—"] for r in status_rows(all_items)]
    parts += [markdown_table(["system", "dataset", "rows", "ok", "not scored (status: count)"], srows,
                             "llrrl"), ""]
    colors = F.system_colors(systems)
    pngs: dict[str, bytes] = {}
    with F.figure_style():
        paper = paper_rows()
        present = set(items["dataset"])
        fig = F.table2_figure(cells, [(k, h) for k, h, d, *_ in TABLE2 if d in present], paper[0][1] if paper else {},
                              colors,
                              paper[0][0] if paper else "paper")
        if fig is not None:
            pngs["table2.png"] = F.png_bytes(fig)
        for dataset in F.ordered_datasets(items):
            fig = F.dataset_figure(items, dataset, systems, colors)
            if fig is not None:
                pngs[f"per_class_{dataset}.png"] = F.png_bytes(fig)
    figure_paths = []
    for name, data in pngs.items():
        atomic_write_bytes(run_dir / name, data)
        figure_paths.append(run_dir / name)
    parts += ["Per-class tables: [per_class.md](per_class.md). Figures: "
              + ", ".join(f"`{p.name}`" for p in figure_paths) + ".", ""]
    summary = run_dir / "summary.md"
    atomic_write_text(summary, "\n".join(parts))
    per_class = run_dir / "per_class.md"
    atomic_write_text(per_class, per_class_markdown(items))
    html = write_html(run_dir, items, sources, systems, cells, pngs, colors)
    return Report(summary=summary, per_class=per_class, figure=figure_paths[0] if pngs.get("table2.png") else None,
                  figures=figure_paths, html=html)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file through a temporary name and a rename (:func:`harness.datasets.store.atomic_write`)."""
    from harness.datasets.store import atomic_write

    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def per_class_markdown(items: pd.DataFrame) -> str:
    """Median SDR / SDRi (MUSDB: framewise SDR; Voicebank: PESQ, SSNR) per class, per system and dataset."""
    parts = ["# Per-class results", "", "Medians over the `ok` items of each class.", ""]
    for (system, dataset, cond), sub in items.groupby(["system", "dataset", "condition"], sort=False):
        metrics = HEADLINE[dataset] if dataset != "audioset" else ("sdr", "sdri")
        ok = sub[sub["status"] == "ok"]
        table = ok.groupby(["class_id", "label"])[list(metrics)].median().reset_index()
        counts = sub.groupby("label").size()
        rows = [[f"{r.class_id}", str(r.label), str(int(counts.get(r.label, 0))),
                 *[_fmt(getattr(r, m)) for m in metrics]] for r in table.itertuples()]
        parts += [f"## {system} · {dataset} · condition {cond}", "",
                  markdown_table(["class_id", "label", "items", *metrics], rows, "rlr" + "r" * len(metrics)), ""]
    return "\n".join(parts)


def load_items(run: str | Path) -> pd.DataFrame:
    """``items.parquet`` of a run folder (or the file itself).

    Raises:
        UssBenchError: missing or unreadable file, or a file without the item columns.
    """
    path = Path(run)
    if path.is_dir():
        path = path / "items.parquet"
    if not path.is_file():
        raise UssBenchError(f"no items.parquet at {path}; pass a run folder written by `uss-bench eval`")
    try:
        items = pd.read_parquet(path)
    except Exception as exc:
        raise UssBenchError(f"cannot read {path}: {exc}") from exc
    missing = {"dataset", "item_id", "condition", "label", "status"} - set(items.columns)
    if missing:
        raise UssBenchError(f"{path} lacks columns {sorted(missing)}; is it an uss-bench items.parquet?")
    return items


@dataclass
class Comparison:
    """Per-aggregate deltas between two runs on their paired items."""

    table: pd.DataFrame
    """One row per (system, dataset, condition, metric): ``base``, ``candidate``, ``delta`` and ``note``
    (``""``, ``"missing in candidate"``, ``"missing in base"``, ``"missing in both"``: the run has no such
    metric column)."""
    regressions: pd.DataFrame
    unpaired: dict[str, int]
    newly_failing: int
    """Items ``ok`` in the baseline but not in the candidate (they count as a regression)."""
    missing: int = 0
    """Baseline rows without a row in the candidate (items or whole datasets lost): a regression unless
    :attr:`allow_missing`."""
    missing_datasets: list[str] = field(default_factory=list)
    """Datasets of the baseline of which the candidate has no row at all."""
    allow_missing: bool = False
    """Rows missing from the candidate do not fail the comparison (``--allow-missing``)."""

    @property
    def failed(self) -> bool:
        """Whether the comparison fails: a regression, an item that stopped scoring, or rows missing."""
        return bool(len(self.regressions) or self.newly_failing or (self.missing and not self.allow_missing))


def check_tolerance(tolerance_db: float) -> float:
    """``tolerance_db`` as a float when it is finite and ≥ 0.

    Raises:
        UssBenchError: NaN (it would disable the gate: every comparison with NaN is false), ±inf or a
            negative value.
    """
    tol = float(tolerance_db)
    if not np.isfinite(tol) or tol < 0:
        raise UssBenchError(f"--tolerance-db {tolerance_db}: the tolerance must be a finite number ≥ 0 "
                            "(dB; MOS for PESQ), e.g. --tolerance-db 0.1")
    return tol


def _run_folder(run: str | Path) -> Path:
    """The run folder of ``run`` (a folder, or its ``items.parquet``)."""
    path = Path(run)
    return path.parent if path.is_file() else path


def check_same_sets(base: str | Path, cand: str | Path) -> None:
    """Refuse two runs whose ``run.json`` record different build digests for a dataset.

    A run's digests come from its ``run.json``, a report folder's from the runs its ``sources.json``
    names; runs without either (a committed baseline of items only) record no digests and pass.

    Raises:
        UssBenchError: names the dataset and both digests.
    """
    da, db = _set_digests(base), _set_digests(cand)
    differ = [d for d in sorted(set(da) & set(db)) if da[d] != db[d]]
    if differ:
        d = differ[0]
        show = [", ".join(f"{v[:12]}…" for v in sorted(x[d])) for x in (da, db)]
        raise UssBenchError(
            f"{base} and {cand} evaluated {', '.join(differ)} on different sets (build digest of {d}: "
            f"{show[0]} vs {show[1]}): their items do not pair. Evaluate both on one build, or pass "
            "--allow-different-sets to compare them anyway")


def _set_digests(run: str | Path) -> dict[str, set[str]]:
    """``{dataset: build digests}`` of a run folder or report folder (:func:`run_sources`)."""
    out: dict[str, set[str]] = {}
    for src in run_sources(_run_folder(run)):
        for dataset, digest in src.digests.items():
            out.setdefault(dataset, set()).add(digest)
    return out


def _metric_note(metric: str, a: pd.DataFrame, b: pd.DataFrame) -> str:
    where = [name for name, frame in (("base", a), ("candidate", b)) if metric not in frame.columns]
    return "" if not where else "missing in both" if len(where) == 2 else f"missing in {where[0]}"


def compare_runs(base: str | Path, cand: str | Path, tolerance_db: float = 0.1, two_sided: bool = False,
                 allow_missing: bool = False, allow_different_sets: bool = False) -> Comparison:
    """Pair rows by ``(dataset, condition, item_id)`` and compare each Table 2 aggregate.

    Runs holding one system each are paired whatever the systems' names (a new checkpoint against an old
    one). Runs holding several systems (e.g. the demo: baselines and the demo model) are paired per
    system too, by ``(system, dataset, condition, item_id)``.

    A regression is an aggregate of the candidate lower than the baseline's by more than
    ``tolerance_db`` (applied as is to PESQ, in MOS); with ``two_sided`` any change beyond the tolerance
    counts (a golden table, such as the demo's, must be refreshed deliberately, also when it improves).
    Aggregates use the rows that are ``ok`` in both runs. A metric column that a run lacks gives NaN
    (noted in ``table.note``); lost by the candidate while the baseline has values, it is a regression.
    Baseline rows that the candidate lacks (items, whole datasets) make :attr:`Comparison.failed` true
    unless ``allow_missing``.

    Raises:
        UssBenchError: unreadable inputs, no item in common, a tolerance that is not finite and ≥ 0,
            duplicate keys, or (unless ``allow_different_sets``) runs on sets with different build digests.
    """
    tolerance_db = check_tolerance(tolerance_db)
    a, b = load_items(base), load_items(cand)
    if not allow_different_sets:
        check_same_sets(base, cand)
    metrics = sorted({m for ms in HEADLINE.values() for m in ms} | {"sdri"})
    notes = {m: _metric_note(m, a, b) for m in metrics}
    a = a.assign(**{m: np.nan for m in metrics if m not in a.columns})
    b = b.assign(**{m: np.nan for m in metrics if m not in b.columns})
    multi = a["system"].nunique() > 1 or b["system"].nunique() > 1
    key = (["system"] if multi else []) + ["dataset", "condition", "item_id"]
    if a.duplicated(key).any() or b.duplicated(key).any():
        raise UssBenchError(f"a run has duplicate ({', '.join(key)}) rows; cannot pair them")
    if not multi:
        b = b.assign(system=a["system"].iloc[0] if len(a) else "")
    merged = a.merge(b, on=key, suffixes=("_base", "_cand"))
    if not multi:
        merged["system"] = merged["system_base"]
    if merged.empty:
        raise UssBenchError(f"{base} and {cand} have no item in common (pairs by {', '.join(key)})")
    unpaired = {"base_only": len(a) - len(merged), "candidate_only": len(b) - len(merged)}
    missing_datasets = sorted(set(a["dataset"]) - set(b["dataset"]))
    for dataset in missing_datasets:
        unpaired[f"{dataset}: in base, absent from candidate"] = int((a["dataset"] == dataset).sum())
    both_ok = merged[(merged["status_base"] == "ok") & (merged["status_cand"] == "ok")]
    rows = []
    for (system, dataset, cond), sub in both_ok.groupby(["system", "dataset", "condition"], sort=False):
        how = aggregate_kind(dataset)
        for metric in HEADLINE.get(dataset, ("sdri",)):
            va = aggregate(sub[f"{metric}_base"], sub["label_base"], how)
            vb = aggregate(sub[f"{metric}_cand"], sub["label_base"], how)
            rows.append({"system": system, "dataset": dataset, "condition": cond, "metric": metric,
                         "aggregate": how, "items": len(sub), "base": va, "candidate": vb, "delta": vb - va,
                         "note": notes[metric]})
    failing = (merged["status_base"] == "ok") & (merged["status_cand"] != "ok")
    for dataset, n in merged[failing].groupby("dataset").size().items():
        unpaired[f"{dataset}: ok in base, not scored in candidate"] = int(n)
    table = pd.DataFrame(rows)
    if len(table):
        off = table["delta"].abs() > tolerance_db if two_sided else table["delta"] < -tolerance_db
        regressions = table[off | ~np.isfinite(table["delta"]) & np.isfinite(table["base"])]
    else:
        regressions = table
    return Comparison(table=table, regressions=regressions, unpaired=unpaired, newly_failing=int(failing.sum()),
                      missing=unpaired["base_only"], missing_datasets=missing_datasets, allow_missing=allow_missing)


def write_baseline(run: str | Path, baseline_dir: str | Path) -> Path:
    """Make ``run`` the new baseline: copy its ``items.parquet`` and write ``summary.md`` and
    ``aggregates.csv`` (one line per system, dataset, condition and Table 2 metric) into ``baseline_dir``.

    ``aggregates.csv`` is text, so a refreshed baseline shows up as a readable diff in review.

    Returns:
        ``baseline_dir``.
    """
    from harness.datasets.store import atomic_write_parquet, atomic_write_text

    items = load_items(run)
    out = Path(baseline_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(items, out / "items.parquet")
    ok = items[items["status"] == "ok"]
    lines = ["system,dataset,condition,metric,aggregate,items,value"]
    for (system, dataset, cond), sub in ok.groupby(["system", "dataset", "condition"], sort=True):
        how = aggregate_kind(dataset)
        for metric in HEADLINE.get(dataset, ("sdri",)):
            lines.append(f"{system},{dataset},{cond},{metric},{how},{len(sub)},"
                         f"{aggregate(sub[metric], sub['label'], how):.4f}")
    atomic_write_text(out / "aggregates.csv", "\n".join(lines) + "\n")
    render_report(out)
    return out
