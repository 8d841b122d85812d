"""Aggregation, Markdown tables, the per-class figure, and ``compare`` (DESIGN §6–7).

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
from dataclasses import dataclass
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


def table2_row(items: pd.DataFrame) -> dict[str, float]:
    """The Table 2 cells of one system's items (NaN for datasets not evaluated)."""
    row = {}
    for key, _, dataset, metric, prefs, _how in TABLE2:
        sub = items[items["dataset"] == dataset]
        cond = next((c for c in prefs if (sub["condition"] == c).any()), None)
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


@dataclass
class Report:
    """What ``render_report`` wrote."""

    summary: Path
    per_class: Path
    figure: Path | None


def render_report(run_dir: str | Path) -> Report:
    """(Re-)render ``summary.md``, ``per_class.md`` and ``per_class_sdri.png`` from ``items.parquet``.

    Raises:
        UssBenchError: ``run_dir`` has no ``items.parquet``.
    """
    run_dir = Path(run_dir)
    items = load_items(run_dir)
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    systems = list(dict.fromkeys(items["system"]))
    parts = [f"# uss-bench report: {', '.join(systems) or 'no items'}", ""]
    if run.get("git_revision") or run.get("checkpoint_sha256"):
        parts.append(f"harness {run.get('versions', {}).get('harness', '?')}, git {run.get('git_revision')}, "
                     f"checkpoint sha256 {run.get('checkpoint_sha256')}")
        parts.append("")
    parts += ["## Table 2 (paper layout)", ""]
    header = ["system", *[h for _, h, *_ in TABLE2]]
    rows = []
    for system in systems:
        cells = table2_row(items[items["system"] == system])
        rows.append([f"**{system}**", *[_fmt(cells[k], 2) for k, *_ in TABLE2]])
    for name, cells in paper_rows():
        rows.append([name, *[_fmt(cells.get(k, float("nan")), 2) for k, *_ in TABLE2]])
    parts += [markdown_table(header, rows), ""]
    parts += ["Conventions: SDR and SDRi in dB (paper eq. 12–13, upstream constants 1e-10); "
              "AudioSet, FSDK2018, FSD50K and Slakh2100 are `class-median-mean` (median per class, mean over "
              "classes); MUSDB18 is the BSSEval-v4 image SDR (median over 1-s frames at 32 kHz) with "
              "`class-median-mean` over the four stems (median over tracks per stem, mean over stems); "
              "Voicebank PESQ (P.862.2 wide band, MOS-LQO) and SSNR (dB) at 16 kHz are the median over "
              "utterances, as the upstream (means below). Baselines take no query, so the same number stands "
              "in both AudioSet columns. Only `ok` rows are aggregated; the others are counted below. "
              "Numbers on the dev or demo corpora are not comparable with the paper's.", ""]
    parts += ["## Detail per dataset", ""]
    detail = []
    for system in systems:
        sub_sys = items[items["system"] == system]
        for dataset in DATASET_NAMES:
            for metric in HEADLINE[dataset]:
                for cond, sub in sub_sys[sub_sys["dataset"] == dataset].groupby("condition", sort=False):
                    ok = sub[sub["status"] == "ok"]
                    mean, lo, hi = bootstrap_mean(ok[metric].to_numpy())
                    detail.append([system, dataset, cond, metric, str(len(ok)), str(ok["label"].nunique()),
                                   _fmt(aggregate(ok[metric], ok["label"], "class-median-mean")),
                                   _fmt(float(ok[metric].median()) if len(ok) else float("nan")),
                                   f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"])
    parts += [markdown_table(["system", "dataset", "condition", "metric", "items ok", "classes",
                              "class-median-mean", "median", "mean [95% CI]"], detail, "llll" + "r" * 5), ""]
    parts += ["## Item status", ""]
    status_rows = []
    for (system, dataset), sub in items.groupby(["system", "dataset"], sort=False):
        counts = sub["status"].value_counts()
        other = ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "ok") or "—"
        status_rows.append([system, dataset, str(len(sub)), str(int(counts.get("ok", 0))), other])
    parts += [markdown_table(["system", "dataset", "rows", "ok", "not scored (status: count)"], status_rows,
                             "llrrl"), ""]
    parts += ["Per-class tables: [per_class.md](per_class.md). Figure: `per_class_sdri.png`.", ""]
    summary = run_dir / "summary.md"
    atomic_write_text(summary, "\n".join(parts))
    per_class = run_dir / "per_class.md"
    atomic_write_text(per_class, per_class_markdown(items))
    figure = per_class_figure(items, run_dir / "per_class_sdri.png")
    return Report(summary=summary, per_class=per_class, figure=figure)


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


def per_class_figure(items: pd.DataFrame, path: Path) -> Path | None:
    """Per-class median SDRi (MUSDB: framewise SDRi) bars, one panel per dataset; ``None`` if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = items[items["status"] == "ok"]
    panels = []
    for dataset in DATASET_NAMES:
        metric = "musdb_sdri" if dataset == "musdb18" else "sdri"
        sub = ok[ok["dataset"] == dataset]
        if len(sub):
            panels.append((dataset, sub.groupby(["system", "label"])[metric].median().unstack(0)))
    if not panels:
        return None
    height = sum(max(1.5, 0.18 * len(t)) for _, t in panels) + 1
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, min(height, 60)), squeeze=False)
    for ax, (dataset, table) in zip(axes[:, 0], panels, strict=True):
        table.sort_index().plot.barh(ax=ax, width=0.8, legend=False)
        ax.set_title(dataset)
        ax.set_xlabel("median SDRi (dB)")
        ax.set_ylabel("")
        ax.tick_params(axis="y", labelsize=6)
        ax.axvline(0, color="black", linewidth=0.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


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
    regressions: pd.DataFrame
    unpaired: dict[str, int]
    newly_failing: int
    """Items ``ok`` in the baseline but not in the candidate (they count as a regression)."""


def compare_runs(base: str | Path, cand: str | Path, tolerance_db: float = 0.1, two_sided: bool = False
                 ) -> Comparison:
    """Pair rows by ``(dataset, condition, item_id)`` and compare each Table 2 aggregate.

    Runs holding one system each are paired whatever the systems' names (a new checkpoint against an old
    one). Runs holding several systems (e.g. the demo: baselines and the demo model) are paired per
    system too, by ``(system, dataset, condition, item_id)``.

    A regression is an aggregate of the candidate lower than the baseline's by more than
    ``tolerance_db`` (applied as is to PESQ, in MOS); with ``two_sided`` any change beyond the tolerance
    counts (a golden table, such as the demo's, must be refreshed deliberately, also when it improves).
    Aggregates use the rows that are ``ok`` in both runs.

    Raises:
        UssBenchError: unreadable inputs, or no item in common.
    """
    a, b = load_items(base), load_items(cand)
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
    both_ok = merged[(merged["status_base"] == "ok") & (merged["status_cand"] == "ok")]
    rows = []
    for (system, dataset, cond), sub in both_ok.groupby(["system", "dataset", "condition"], sort=False):
        how = aggregate_kind(dataset)
        for metric in HEADLINE.get(dataset, ("sdri",)):
            va = aggregate(sub[f"{metric}_base"], sub["label_base"], how)
            vb = aggregate(sub[f"{metric}_cand"], sub["label_base"], how)
            rows.append({"system": system, "dataset": dataset, "condition": cond, "metric": metric,
                         "aggregate": how, "items": len(sub), "base": va, "candidate": vb, "delta": vb - va})
    failing = (merged["status_base"] == "ok") & (merged["status_cand"] != "ok")
    for dataset, n in merged[failing].groupby("dataset").size().items():
        unpaired[f"{dataset}: ok in base, not scored in candidate"] = int(n)
    table = pd.DataFrame(rows)
    if len(table):
        off = table["delta"].abs() > tolerance_db if two_sided else table["delta"] < -tolerance_db
        regressions = table[off | ~np.isfinite(table["delta"]) & np.isfinite(table["base"])]
    else:
        regressions = table
    return Comparison(table=table, regressions=regressions, unpaired=unpaired, newly_failing=int(failing.sum()))


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
