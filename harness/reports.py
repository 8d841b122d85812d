"""Aggregation, Markdown tables and reports of one or several runs (DESIGN §6–7); ``compare`` lives in
:mod:`harness.compare` (its names stay importable from here).

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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness import aggregations
from harness.config import dataset_names, load_dataset_config
from harness.datasets.store import atomic_write_text
from harness.errors import UssBenchError
from harness.metric_registry import usable_mask

TABLE2_COLUMNS = ("key", "header", "dataset", "metric", "conditions", "aggregate")
"""The fields of a report column, as :func:`table2` gives them."""


def table2() -> tuple[tuple[str, str, str, str, tuple[str, ...], str], ...]:
    """The report columns, derived from the declarations: each registered dataset's ``[[columns]]``
    (:mod:`harness.config`), in registry order; for the six paper corpora the paper's Table 2 columns.

    Returns:
        ``(column key, header, dataset, metric, condition preference, aggregate)`` per column. A cell
        uses the first condition of its preference list that the system has rows for: average queries as
        in the paper; a run evaluated with oracle queries only (system name ending ``[oracle]``) fills the
        columns from its oracle rows; baselines have ``none``. ``TABLE2`` is this tuple.
    """
    out = []
    for dataset in dataset_names():
        for col in load_dataset_config(dataset)["columns"]:
            out.append((col["key"], col["header"], dataset, col["metric"], tuple(col["conditions"]),
                        col["aggregate"]))
    return tuple(out)


def headline() -> dict[str, tuple[str, ...]]:
    """Metrics that ``compare`` gates on, per dataset: the metrics of its report columns (the Table 2
    metrics), else its first declared metric. ``HEADLINE`` is this dict."""
    out = {}
    for dataset in dataset_names():
        cfg = load_dataset_config(dataset)
        out[dataset] = tuple(dict.fromkeys(c["metric"] for c in cfg["columns"])) or tuple(cfg["metrics"][:1])
    return out


_COMPARE_NAMES = ("Comparison", "check_same_sets", "check_tolerance", "compare_runs")


def __getattr__(name: str):
    # TABLE2 / HEADLINE: derived from the dataset declarations at each access (a corpus registered later
    # is included). Comparison, compare_runs, check_same_sets, check_tolerance: re-exported from
    # harness.compare (imported lazily: that module imports this one).
    if name in _COMPARE_NAMES:
        from harness import compare

        return getattr(compare, name)
    if name == "TABLE2":
        return table2()
    if name == "HEADLINE":
        return headline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def aggregate(values: pd.Series, labels: pd.Series, how: str, item_ids: pd.Series | None = None) -> float:
    """One aggregate of a metric column (:func:`harness.aggregations.apply`).

    Args:
        values: metric values of the usable rows (NaN ignored).
        labels: the rows' class labels (for ``class-median-mean``, ``track-median-stem-mean``).
        how: an aggregation name of :data:`harness.aggregations.AGGREGATIONS`.
        item_ids: the rows' item ids (the track of ``track-median-stem-mean``).

    Returns:
        the aggregate, NaN when no finite value is left.

    Raises:
        ConfigError: unknown aggregation ("did you mean …").
    """
    return aggregations.apply(how, values.to_numpy(dtype=float), labels.to_numpy(),
                              None if item_ids is None else item_ids.to_numpy())


def aggregate_kind(dataset: str, metric: str | None = None) -> str:
    """How a dataset's ``metric`` is aggregated: the aggregation of its declared report column for that
    metric, else the dataset's declared ``aggregate``; ``class-median-mean`` for a dataset that is not
    registered (the rows of an older run)."""
    from harness.datasets import CORPORA

    if dataset not in CORPORA:
        return "class-median-mean"
    cfg = load_dataset_config(dataset)
    return next((c["aggregate"] for c in cfg["columns"] if c["metric"] == metric), cfg["aggregate"])


def dataset_aggregate(items: pd.DataFrame, dataset: str, metric: str, condition: str | None = None,
                      how: str | None = None) -> float:
    """The aggregate of ``metric`` on ``dataset`` over its usable rows
    (:func:`harness.metric_registry.usable_mask`; optional condition filter), by ``how`` (default: the
    declared one, :func:`aggregate_kind`). NaN when the column is absent (an older run)."""
    rows = items[items["dataset"] == dataset]
    if condition is not None:
        rows = rows[rows["condition"] == condition]
    rows = rows[usable_mask(rows, metric)]
    if rows.empty:
        return float("nan")
    return aggregate(rows[metric], rows["label"], how or aggregate_kind(dataset, metric), rows["item_id"])


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


def table2_row(items: pd.DataFrame, aggregate: str | None = None) -> dict[str, float]:
    """The Table 2 cells of one system's items (NaN for datasets not evaluated); ``aggregate`` replaces
    each column's declared aggregation."""
    row = {}
    for key, _, dataset, metric, prefs, how in table2():
        sub = items[items["dataset"] == dataset]
        cond = cell_condition(sub, prefs)
        row[key] = dataset_aggregate(items, dataset, metric, cond, aggregate or how) if cond else float("nan")
    return row


def paper_rows(name: str | None = None) -> list[tuple[str, dict[str, float]]]:
    """``[(label, {column key: value})]`` of the paper's row shown beside ours (:func:`harness.paper.paper_row`:
    the default system's row unless ``name``); the values cover all 14 columns of the paper's tables.

    Raises:
        ConfigError: an unknown row name ("did you mean …" and the list). MetadataError: a bad paper CSV.
    """
    from harness.paper import paper_row

    row = paper_row(name)
    return [(row.label, dict(row.values))]


def paper_protocol_markdown(name: str | None = None) -> str:
    """The paper's row beside ours, column by column: its value, its protocol as far as known, and the
    aggregation of our cell (so a reader sees which cells are comparable); then the paper's columns that
    have no cell of ours (MUSDB18 wSDR/wSDRi).

    Raises:
        see :func:`paper_rows`.
    """
    from harness.paper import PAPER_SOURCE, paper_row, protocol_table

    row = paper_row(name)
    ours = {key: how for key, _h, _d, _m, _p, how in table2()}
    rows = [[r["header"], _fmt(r["value"]), r["unit"], r["protocol"], r["ours"] or "(no column of ours)", r["same"]]
            for r in protocol_table(row, ours)]
    return "\n".join([
        f"Paper row `{row.name}` (Table {row.table}: {row.caption}; {PAPER_SOURCE}; choose another with "
        "`uss-bench report --paper-row \"Table N: SYSTEM\"`, rows in reports/paper/):", "",
        markdown_table(["column", "paper", "unit", "paper's protocol", "ours", "same protocol"], rows, "lrllll")])


def _fmt(x: float, digits: int = 2) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub Markdown table (first column left-aligned, the others right-aligned)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table2_cells(items: pd.DataFrame, aggregate: str | None = None) -> dict[str, tuple[float, int, int]]:
    """The Table 2 cells of one system's items with their coverage (``aggregate`` replaces each column's
    declared aggregation; a column absent from ``items``, from an older run, gives NaN).

    Returns:
        ``{column key: (value, ok rows, rows)}``: the aggregate (NaN when not computed), and how many of
        the rows of the cell's dataset and condition it was computed on. ``ok < rows`` marks a cell
        computed on part of the set (items without a query, unscorable items); ``rows == 0``: the dataset
        was not evaluated.
    """
    out = {}
    for key, _, dataset, metric, prefs, how in table2():
        sub = items[items["dataset"] == dataset]
        cond = cell_condition(sub, prefs)
        if cond is None:
            out[key] = (float("nan"), 0, 0)
            continue
        rows = sub[sub["condition"] == cond]
        ok = int(usable_mask(rows, metric).sum())
        out[key] = (dataset_aggregate(items, dataset, metric, cond, aggregate or how), ok, len(rows))
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


def write_sources(out: Path, sources: list[RunSource]) -> None:
    """Write ``<out>/sources.json`` (atomically): the runs behind a report, read back by :func:`run_sources`."""
    atomic_write_text(Path(out) / SOURCES_JSON,
                      json.dumps({"runs": [s.as_json() for s in sources]}, indent=2) + "\n")


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


def report_runs(runs: list[str | Path], out: str | Path | None = None, allow_different_sets: bool = False,
                aggregate: str | None = None, paper_row: str | None = None) -> Report:
    """Render one report of several runs (or folders of runs) side by side into ``out``.

    With one run and no ``out`` (or ``out`` the run itself) the run's own folder is re-rendered. Otherwise
    ``out`` receives the merged ``items.parquet`` and ``sources.json`` (the runs, their systems and set
    digests), then the report files (:func:`render_report`). ``paper_row`` names the paper's row shown
    beside ours (:func:`harness.paper.paper_row`; the default system's when ``None``).

    Raises:
        UssBenchError: see :func:`merge_runs`; several runs without ``out``; an unknown ``paper_row``
            (checked before anything is written).
    """
    from harness.paper import paper_row as _check_row

    _check_row(paper_row)
    expanded = expand_runs(runs)
    if len(expanded) == 1 and (out is None or Path(out).resolve() == expanded[0].resolve()):
        return render_report(expanded[0], aggregate, paper_row)
    if out is None:
        raise UssBenchError(f"{len(expanded)} runs make one report: name its folder with --out DIR")
    from harness.datasets.store import atomic_write_parquet

    items, sources = merge_runs(expanded, allow_different_sets)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(items, out / "items.parquet")
    write_sources(out, sources)
    return render_report(out, aggregate, paper_row)


def table2_markdown(items: pd.DataFrame, systems: list[str], aggregate: str | None = None,
                    paper_row: str | None = None) -> tuple[str, dict[str, dict]]:
    """The Table 2 section's table (ours with coverage markers, then the paper's row ``paper_row``, all
    12 cells) and its cells; ``aggregate`` replaces the columns' declared aggregations."""
    cols = table2()
    header = ["system", *[h for _, h, *_ in cols]]
    rows, cells = [], {}
    for system in systems:
        sub = items[items["system"] == system]
        cells[system] = table2_cells(sub, aggregate)
        own = [c for c in dict.fromkeys(sub["condition"]) if c not in ("average", "oracle", "none")]
        name = f"**{system}**" + (f" (query mode: {', '.join(own)})" if own else "")  # Table 2 names the mode
        rows.append([name, *[format_cell(cells[system][k]) for k, *_ in cols]])
    for name, paper in paper_rows(paper_row):
        rows.append([name, *[_fmt(paper.get(k, float("nan")), 2) for k, *_ in cols]])
    return markdown_table(header, rows), cells


def detail_rows(items: pd.DataFrame, systems: list[str]) -> list[dict]:
    """Per system, dataset, condition and headline metric: counts, aggregates and the mean's 95 % CI.

    Returns:
        dicts with ``system, dataset, condition, metric, rows, ok, classes, class_median_mean, median,
        mean, ci_low, ci_high`` (floats NaN when nothing is ``ok``).
    """
    out = []
    heads = headline()
    for system in systems:
        sub_sys = items[items["system"] == system]
        for dataset in heads:
            for metric in heads[dataset]:
                for cond, sub in sub_sys[sub_sys["dataset"] == dataset].groupby("condition", sort=False):
                    ok = sub[usable_mask(sub, metric)]
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
    "`track-median-stem-mean` (median over tracks per stem, mean over the four stems); "
    "Voicebank PESQ (P.862.2 wide band, MOS-LQO) and SSNR (dB) at 16 kHz are the median over "
    "utterances, as the upstream (means below). Baselines take no query, so the same number stands "
    "in both AudioSet columns. Only `ok` rows are aggregated; the others are counted below. A cell "
    "computed on part of its rows shows `(ok/rows)`, e.g. `3.03 (20/140)`. "
    "Numbers on the dev or demo corpora are not comparable with the paper's.")


def render_report(run_dir: str | Path, aggregate: str | None = None, paper_row: str | None = None) -> Report:
    """(Re-)render a report folder from its ``items.parquet``.

    ``aggregate`` (an aggregation name) replaces every column's declared aggregation; default: the one
    the run was evaluated with (``run.json`` ``options.aggregate``), else the declarations'. The name used
    is recorded in ``results.json`` (``convention``) and stated under the table.

    Writes ``summary.md`` (Table 2 with coverage markers, detail with CIs, item status), ``per_class.md``,
    the figures ``table2.png`` and ``per_class_<dataset>.png`` (:mod:`harness.figures`) and the
    self-contained ``report.html`` (:mod:`harness.report_html`; audio players when the runs saved
    estimates under ``<run>/estimates/<dataset>/``). Every file is written atomically. ``paper_row``
    names the paper's row shown beside ours (:func:`harness.paper.paper_row`; the default system's when
    ``None``); ``summary.md`` shows its 12 Table 2 cells and, per column, its protocol beside ours.

    Raises:
        UssBenchError: ``run_dir`` has no readable ``items.parquet``; unreadable ``run.json`` /
            ``sources.json``; an unknown ``paper_row`` (ConfigError) or a bad paper CSV (MetadataError).
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
    aggregate = aggregate or run.get("options", {}).get("aggregate")
    if aggregate is not None:
        aggregations.aggregation(aggregate)
    parts = [f"# uss-bench report: {', '.join(systems) or 'no items'}", ""]
    if run.get("git_revision") or run.get("checkpoint_sha256"):
        parts.append(f"harness {run.get('versions', {}).get('harness', '?')}, git {run.get('git_revision')}, "
                     f"checkpoint sha256 {run.get('checkpoint_sha256')}")
        parts.append("")
    if (run_dir / SOURCES_JSON).is_file():
        parts.append("Runs: " + "; ".join(f"`{s.label}` ({s.path})" for s in sources))
        parts.append("")
    table2_md, cells = table2_markdown(items, systems, aggregate, paper_row)
    from harness.results import write_results

    write_results(run_dir, all_items, aggregate, paper_row)  # the same cells for machines
    conventions = CONVENTIONS if aggregate is None else (
        f"Aggregation: every column is `{aggregate}` ({aggregations.aggregation(aggregate).description}), "
        "chosen with --aggregate, not the declared per-column conventions. " + CONVENTIONS)
    from harness.musdb_protocols import protocol_note

    musdb_note = protocol_note(run_dir, items)
    parts += ["## Table 2 (paper layout)", "", table2_md, "", paper_protocol_markdown(paper_row), "",
              *([musdb_note, ""] if musdb_note else []), conventions, "",
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
    from harness import rollups, snr_sweep

    sweep = snr_sweep.sweep_table(snr_sweep.sweep_items(sources))  # issue 12: <run>/snr/* sub-runs
    parts += snr_sweep.sweep_markdown(sweep)
    rolled = rollups.report_rollups(items, sources)  # issue 12: AudioSet / FSD50K ontology roll-ups
    parts += rollups.markdown(rolled)
    for dataset, blocks in rolled.items():
        if blocks:
            atomic_write_bytes(run_dir / f"ontology_{dataset}.csv", rollups.node_csv(blocks))
    colors = F.system_colors(systems)
    pngs: dict[str, bytes] = {}
    with F.figure_style():
        paper = paper_rows(paper_row)
        present = set(items["dataset"])
        fig = F.table2_figure(cells, [(k, h) for k, h, d, *_ in table2() if d in present], paper[0][1] if paper else {},
                              colors,
                              paper[0][0] if paper else "paper")
        if fig is not None:
            pngs["table2.png"] = F.png_bytes(fig)
        for dataset in F.ordered_datasets(items):
            fig = F.dataset_figure(items, dataset, systems, colors)
            if fig is not None:
                pngs[f"per_class_{dataset}.png"] = F.png_bytes(fig)
        fig = F.snr_figure(sweep, systems, colors)
        if fig is not None:
            pngs[snr_sweep.FIGURE] = F.png_bytes(fig)
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
    sections = {d: rollups.html(blocks, d) for d, blocks in rolled.items()}
    sections[snr_sweep.SECTION] = snr_sweep.sweep_html(sweep, pngs)
    html = write_html(run_dir, items, sources, systems, cells, pngs, colors, sections, paper_row=paper_row)
    return Report(summary=summary, per_class=per_class, figure=figure_paths[0] if pngs.get("table2.png") else None,
                  figures=figure_paths, html=html)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file through a temporary name and a rename (:func:`harness.datasets.store.atomic_write`)."""
    from harness.datasets.store import atomic_write

    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _class_table_metrics(dataset: str, sub: pd.DataFrame) -> list[str]:
    """The per-class table's metrics of a dataset (its declared ``class_table_metrics``; ``sdri`` for a
    dataset no longer registered), those present in ``sub``."""
    from harness.datasets import CORPORA

    wanted = load_dataset_config(dataset)["class_table_metrics"] if dataset in CORPORA else ["sdri"]
    return [m for m in wanted if m in sub.columns]


def per_class_markdown(items: pd.DataFrame) -> str:
    """Median SDR / SDRi (MUSDB: framewise SDR; Voicebank: PESQ, SSNR) per class, per system and dataset."""
    parts = ["# Per-class results", "", "Medians over the `ok` items of each class.", ""]
    for (system, dataset, cond), sub in items.groupby(["system", "dataset", "condition"], sort=False):
        metrics = _class_table_metrics(dataset, sub)
        ok = sub.assign(**{m: sub[m].where(usable_mask(sub, m)) for m in metrics})
        ok = ok[(ok["status"] == "ok") | ok[list(metrics)].notna().any(axis=1)]
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
    heads = headline()
    for (system, dataset, cond), sub in ok.groupby(["system", "dataset", "condition"], sort=True):
        for metric in heads.get(dataset, ("sdri",)):
            how = aggregate_kind(dataset, metric)
            value = aggregate(sub[metric], sub["label"], how, sub["item_id"]) if metric in sub else float("nan")
            lines.append(f"{system},{dataset},{cond},{metric},{how},{len(sub)},{value:.4f}")
    atomic_write_text(out / "aggregates.csv", "\n".join(lines) + "\n")
    render_report(out)
    return out



