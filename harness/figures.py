"""Report figures (DESIGN §7): per-class box plots per dataset and the Table 2 overview.

Every figure takes the colour of a system from one :func:`system_colors` mapping made once per report,
so a system has the same colour in every panel and every figure, and each figure carries its own legend
(drawn from that mapping, not from the first panel's artists).

Per-dataset figures (``per_class_<dataset>.png``) show the distribution over a class's ``ok`` items as
horizontal box plots (median line, quartile box, whiskers at 1.5 IQR, outliers as dots; classes with few
items also show every value as a diamond in the system's colour), classes sorted
by the median of one *sort system* (the first non-baseline system with ``ok`` rows on the dataset, else
the first system; named in the title), best at the top, as Fig. 2 of Kong et al. 2020. The metric is the
dataset's own (:func:`figure_metrics`, from its declaration): SDRi, MUSDB18's framewise SDR per stem, Voicebank-Demand's PESQ
and SSNR.

A dataset with more than :data:`MAX_NAMED_CLASSES` classes (AudioSet's 527, FSD50K's 200) cannot show
every class by name at a readable size on one page. Its figure shows the :data:`EXTREME_CLASSES` best and
the :data:`EXTREME_CLASSES` worst classes of the sort system as box plots, and beside them one curve per
system of all its class medians sorted (rank on x): the extremes name the classes a reader asks about,
and the curve shows the whole distribution without labels. The per-class tables hold every number.

Figures are rendered with matplotlib's Agg backend under the default style (a user's matplotlibrc does
not change them) and saved without a ``Software`` tag, so the same items give the same PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.config import dataset_names, load_dataset_config
from harness.metric_registry import METRICS


def figure_metrics() -> dict[str, tuple[str, ...]]:
    """The metric(s) of each dataset's per-class figure: its declaration's ``figure_metrics`` (the
    dataset's own headline metric). ``FIGURE_METRICS`` is this dict."""
    return {d: tuple(load_dataset_config(d)["figure_metrics"]) for d in dataset_names()}


def metric_axis() -> dict[str, str]:
    """Axis label of each metric column (its registry record's :attr:`~harness.metric_registry.MetricSpec.axis`).
    ``METRIC_AXIS`` is this dict."""
    return {name: spec.axis for name, spec in METRICS.items()}


def __getattr__(name: str):
    # Derived from the declarations at each access (a dataset or metric declared later is included).
    if name == "FIGURE_METRICS":
        return figure_metrics()
    if name == "METRIC_AXIS":
        return metric_axis()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _axis(metric: str) -> str:
    return METRICS[metric].axis if metric in METRICS else metric


CONDITION_PREFERENCE = ("average", "oracle", "none")
"""The condition a system's boxes are drawn from: the first it has ``ok`` rows for (as Table 2)."""

MAX_NAMED_CLASSES = 60
"""Datasets with more classes get the extremes + sorted-median-curve form."""

EXTREME_CLASSES = 30
"""Best and worst classes shown by name in that form."""

FEW_ITEMS = 10
"""Classes with at most this many values also show each value as a marker."""

PNG_METADATA = {"Software": None}
"""PNG text chunks: none that depend on the matplotlib version or the time (deterministic bytes)."""


def system_colors(systems: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One RGBA colour per system, in the given order (tab10, tab20 past ten systems, then repeating).

    Args:
        systems: system names in report order; duplicates are ignored.

    Returns:
        ``{system: (r, g, b, a)}`` with floats in [0, 1].
    """
    from matplotlib import colormaps

    names = list(dict.fromkeys(systems))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {s: tuple(float(c) for c in cmap(i % cmap.N)) for i, s in enumerate(names)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure_style() -> Iterator[None]:
    """Render (create and save) figures inside this: matplotlib's default style, fixed dpi and hash salt,
    whatever the user's matplotlibrc says."""
    plt = _pyplot()
    import matplotlib as mpl

    with plt.style.context("default"), mpl.rc_context({"svg.hashsalt": "uss-bench", "figure.dpi": 100,
                                                       "savefig.dpi": 100}):
        yield


def _legend(fig, systems: Sequence[str], colors: dict, extra: Sequence = ()) -> None:
    """A legend under the panels that fits: up to 3 columns, more rows beyond (never clipped: the figure is
    laid out with it and saved with a tight box)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colors[s], edgecolor="black", linewidth=0.5, label=s) for s in systems]
    handles += list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)) or 1, fontsize=8,
               frameon=False)


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (no ``Software`` chunk, tight box so nothing is clipped); closes it."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Series:
    """The values a dataset figure draws for one system."""

    system: str
    condition: str
    ok: pd.DataFrame
    """The system's ``ok`` rows on the dataset under ``condition``."""


def dataset_series(items: pd.DataFrame, dataset: str, systems: Sequence[str]) -> list[Series]:
    """Per system (in order) its ``ok`` rows on ``dataset`` under its preferred condition; systems
    without ``ok`` rows there are left out."""
    out = []
    sub = items[(items["dataset"] == dataset) & (items["status"] == "ok")]
    for system in systems:
        rows = sub[sub["system"] == system]
        cond = next((c for c in CONDITION_PREFERENCE if (rows["condition"] == c).any()), None)
        if cond is None and len(rows):
            cond = str(rows["condition"].iloc[0])
        if cond is not None:
            out.append(Series(system, cond, rows[rows["condition"] == cond]))
    return out


def is_baseline(series: Series) -> bool:
    """A ``baseline:`` system (by its name in the run it came from: ``source_system`` in merged reports)."""
    col = "source_system" if "source_system" in series.ok.columns else "system"
    return bool(len(series.ok)) and str(series.ok[col].iloc[0]).startswith("baseline:")


def sort_system(series: Sequence[Series]) -> Series:
    """The series classes are sorted by: the first non-baseline system, else the first."""
    return next((s for s in series if not is_baseline(s)), series[0])


def _class_order(series: Sequence[Series], metric: str) -> list[str]:
    """Class labels, by the sort system's class median (best first); classes it lacks follow by name."""
    ref = sort_system(series)
    med = ref.ok.groupby("label")[metric].median().dropna()
    order = sorted(med.index, key=lambda c: (-med[c], str(c)))
    rest = sorted({str(c) for s in series for c in s.ok["label"].unique()} - {str(c) for c in order})
    return [str(c) for c in order] + rest


def _box_panel(ax, series: Sequence[Series], classes: Sequence[str], metric: str, colors: dict) -> None:
    """Horizontal box plots: class ``i`` at y = i (top = first), one box per system with data."""
    n = len(series)
    width = 0.8 / n
    for j, s in enumerate(series):
        values = s.ok.assign(label=s.ok["label"].astype(str)).groupby("label")[metric]
        data, pos = [], []
        for i, c in enumerate(classes):
            if c in values.groups:
                v = values.get_group(c).to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                if len(v):
                    data.append(v)
                    pos.append(i - 0.4 + (j + 0.5) * width)
        if not data:
            continue
        parts = ax.boxplot(data, positions=pos, widths=width * 0.85, orientation="horizontal",
                           patch_artist=True, manage_ticks=False,
                           flierprops={"marker": ".", "markersize": 3, "markeredgecolor": colors[s.system]},
                           medianprops={"color": "black", "linewidth": 1.0},
                           whiskerprops={"linewidth": 0.7}, capprops={"linewidth": 0.7})
        for box in parts["boxes"]:
            box.set_facecolor(colors[s.system])
            box.set_edgecolor("black")
            box.set_linewidth(0.5)
        few = [(v, p) for v, p in zip(data, pos, strict=True) if len(v) <= FEW_ITEMS]
        if few:  # a box of one or two values is a line: show the values themselves, in the system's colour
            ax.scatter(np.concatenate([v for v, _ in few]), np.concatenate([np.full(len(v), p) for v, p in few]),
                       s=14, marker="D", color=colors[s.system], edgecolors="black", linewidths=0.4, zorder=3)
    ax.set_yticks(range(len(classes)), [_short(c) for c in classes],
                  fontsize=8 if len(classes) <= 20 else 6)
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.grid(axis="x", linewidth=0.3, alpha=0.6)
    ax.set_xlabel(_axis(metric))
    if metric in ("sdr", "sdri", "musdb_sdr", "musdb_sdri", "ssnr"):
        ax.axvline(0, color="black", linewidth=0.5)


def _title(fig, text: str) -> None:
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(text, 100)), fontsize=10)


def _short(label: str, n: int = 40) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _conditions_note(series: Sequence[Series]) -> str:
    odd = [f"{s.system}: {s.condition}" for s in series if s.condition not in ("none", "average")]
    return f"; queries: {', '.join(odd)}" if odd else ""


def dataset_figure(items: pd.DataFrame, dataset: str, systems: Sequence[str], colors: dict):
    """The per-class box-plot figure of one dataset (see the module docstring).

    Args:
        items: ``items.parquet`` rows (any systems and datasets; only ``ok`` rows are drawn).
        dataset: the dataset name.
        systems: report order of the systems (legend order, box order within a class).
        colors: :func:`system_colors` of the whole report.

    Returns:
        a matplotlib Figure, or ``None`` when no system has ``ok`` rows on ``dataset``.
    """
    series = dataset_series(items, dataset, systems)
    if not series:
        return None
    plt = _pyplot()
    present = [s.system for s in series]
    metrics = figure_metrics().get(dataset, ("sdri",))
    ref = sort_system(series)
    n_sys = len(series)
    row_h = max(0.28, 0.14 * n_sys)
    note = _conditions_note(series)
    if len(metrics) > 1:  # Voicebank: one panel per metric, side by side
        classes = _class_order(series, metrics[0])
        height = 1.8 + row_h * len(classes) + 0.25 * ((n_sys + 2) // 3)
        fig, axes = plt.subplots(1, len(metrics), figsize=(11, max(2.6, height)), squeeze=False,
                                 layout="constrained")
        for ax, metric in zip(axes[0], metrics, strict=True):
            _box_panel(ax, series, classes, metric, colors)
            ax.set_title(_axis(metric).split(" (")[0], fontsize=10)
        _title(fig, f"{dataset}: per-utterance distribution (median over utterances in Table 2){note}")
    else:
        metric = metrics[0]
        classes = _class_order(series, metric)
        if len(classes) <= MAX_NAMED_CLASSES:
            height = 1.6 + row_h * len(classes) + 0.25 * ((n_sys + 2) // 3)
            fig, ax = plt.subplots(figsize=(9, max(2.6, height)), layout="constrained")
            _box_panel(ax, series, classes, metric, colors)
            _title(fig, f"{dataset}: per-class distribution, {len(classes)} classes sorted by the median of "
                         f"{ref.system}{note}")
        else:
            k = EXTREME_CLASSES
            height = 2.4 + 2 * row_h * k + 0.25 * ((n_sys + 2) // 3)
            fig = plt.figure(figsize=(14, height), layout="constrained")
            grid = fig.add_gridspec(2, 2, width_ratios=(1.25, 1))
            ax_best, ax_worst = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0])
            _box_panel(ax_best, series, classes[:k], metric, colors)
            ax_best.set_title(f"{k} best classes of {ref.system}", fontsize=9)
            _box_panel(ax_worst, series, classes[-k:], metric, colors)
            ax_worst.set_title(f"{k} worst classes of {ref.system}", fontsize=9)
            ax_curve = fig.add_subplot(grid[:, 1])
            for s in series:
                med = np.sort(s.ok.groupby("label")[metric].median().dropna().to_numpy())[::-1]
                ax_curve.plot(np.arange(1, len(med) + 1), med, color=colors[s.system], linewidth=1.5)
            ax_curve.set_xlabel("class rank (each system's class medians sorted, best first)")
            ax_curve.set_ylabel(f"class median {_axis(metric)}")
            ax_curve.set_title(f"all {len(classes)} classes", fontsize=9)
            ax_curve.grid(linewidth=0.3, alpha=0.6)
            ax_curve.axhline(0, color="black", linewidth=0.5)
            _title(fig, f"{dataset}: per-class distribution, {len(classes)} classes{note}")
    _legend(fig, present, colors)
    return fig


def table2_figure(cells: dict[str, dict[str, tuple[float, int, int]]], columns: Sequence[tuple[str, str]],
                  paper: dict[str, float], colors: dict, paper_name: str = "paper"):
    """The Table 2 overview: one small panel per column, one horizontal bar per system.

    Args:
        cells: ``{system: {column key: (value, ok items, rows)}}`` (value NaN when not computed).
        columns: ``(column key, header)`` in Table 2 order.
        paper: ``{column key: published value}`` (NaN/absent: no reference mark).
        colors: :func:`system_colors` of the report (every system of ``cells`` must be in it).
        paper_name: legend text of the reference mark.

    Bars computed on part of a set (ok < rows) are hatched; systems without a value show "—".

    Returns:
        a matplotlib Figure, or ``None`` when ``cells`` is empty.
    """
    if not cells or not columns:
        return None
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    systems = list(cells)
    ncols = 4
    nrows = -(-len(columns) // ncols)
    panel_h = 0.9 + 0.3 * len(systems)
    fig, axes = plt.subplots(nrows, ncols, figsize=(14, 1.2 + panel_h * nrows), squeeze=False, layout="constrained")
    for ax, (key, header) in zip(axes.flat, columns, strict=False):
        values = [cells[s].get(key, (np.nan, 0, 0)) for s in systems]
        for i, (s, (v, ok, rows)) in enumerate(zip(systems, values, strict=True)):
            if np.isfinite(v):
                ax.barh(i, v, height=0.7, color=colors[s], edgecolor="black", linewidth=0.5,
                        hatch="///" if ok < rows else None)
                ax.annotate(f"{v:.2f}", (v, i), xytext=(2 if v >= 0 else -2, 0), textcoords="offset points",
                            ha="left" if v >= 0 else "right", va="center", fontsize=7)
            else:
                ax.annotate("—", (0, i), xytext=(2, 0), textcoords="offset points", va="center", fontsize=7)
        ref = paper.get(key, np.nan)
        if ref is not None and np.isfinite(ref):
            ax.axvline(ref, color="black", linestyle="--", linewidth=1.2)
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set_yticks(range(len(systems)), [""] * len(systems))
        ax.set_ylim(len(systems) - 0.5, -0.5)
        ax.set_title(header, fontsize=9)
        ax.margins(x=0.25)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", linewidth=0.3, alpha=0.6)
    for ax in list(axes.flat)[len(columns):]:
        ax.set_visible(False)
    extra = [Line2D([], [], color="black", linestyle="--", label=paper_name),
             Patch(facecolor="white", edgecolor="black", hatch="///", label="computed on part of the set")]
    _legend(fig, systems, colors, extra)
    _title(fig, "Table 2 overview (dB; PESQ in MOS)")
    return fig


def ordered_datasets(items: pd.DataFrame) -> list[str]:
    """The datasets of ``items`` in Table 2 order (unknown names last, sorted)."""
    present = set(items["dataset"].unique())
    names = dataset_names()
    return [d for d in names if d in present] + sorted(present - set(names))


def snr_figure(table: pd.DataFrame, systems: Sequence[str], colors: dict):
    """SDRi against the target-to-interferer ratio (SNR sweep, :mod:`harness.snr_sweep`): one panel per
    dataset, per system (and query condition) the median over the ``ok`` items as a line with markers and
    the interquartile range (25th–75th percentile) as a band in the system's colour.

    Args:
        table: :func:`harness.snr_sweep.sweep_table` rows (``system, dataset, condition, snr_db, items, q25,
            median, q75``; dB).
        systems: report order of the systems.
        colors: :func:`system_colors` of the report (systems absent from it get grey).

    Returns:
        a matplotlib Figure (``snr_sweep.png``), or ``None`` when ``table`` is empty.
    """
    if table is None or not len(table):
        return None
    plt = _pyplot()
    datasets = ordered_datasets(table)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets) + 0.6, 4.2), squeeze=False,
                             layout="constrained")
    shown: list[str] = []
    styles = ("-", "--", ":", "-.")
    for ax, dataset in zip(axes[0], datasets, strict=True):
        sub = table[table["dataset"] == dataset]
        for system in [s for s in systems if s in set(sub["system"])]:
            rows = sub[sub["system"] == system]
            for k, (cond, g) in enumerate(rows.groupby("condition", sort=False)):
                g = g.sort_values("snr_db")
                color = colors.get(system, (0.5, 0.5, 0.5, 1.0))
                ax.fill_between(g["snr_db"], g["q25"], g["q75"], color=color, alpha=0.18, linewidth=0)
                ax.plot(g["snr_db"], g["median"], styles[k % len(styles)], marker="o", markersize=4,
                        color=color, linewidth=1.6, label=f"{cond}" if rows["condition"].nunique() > 1 else None)
            if system not in shown:
                shown.append(system)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("target-to-interferer ratio of the mixture (dB)")
        ax.set_ylabel("SDRi (dB): median, band 25th–75th percentile")
        ax.set_xticks(sorted(sub["snr_db"].unique()))
        ax.set_title(dataset, fontsize=10)
        ax.grid(linewidth=0.3, alpha=0.6)
        if any(h.get_label() and not h.get_label().startswith("_") for h in ax.get_lines()):
            ax.legend(fontsize=7, title="query condition", title_fontsize=7)
    _legend(fig, shown, colors)
    _title(fig, "SNR sweep: SDRi against the target-to-interferer ratio (same items at every ratio)")
    return fig
