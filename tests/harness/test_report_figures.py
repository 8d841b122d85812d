"""The report figures carry each system's own values (issue 13).

Three systems, one of which has no rows on some datasets, are rendered; the test reads the drawn artists
back the way a reader reads the figure (a box's colour → the legend entry of that colour → the system;
its height → the class tick label; its edges and median line → quartiles and median) and compares them
with quartiles, medians and Table 2 aggregates computed here with pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import PathPatch, Rectangle

from harness import figures as F
from harness.evaluate import items_frame
from harness.reports import TABLE2, paper_rows, render_report, table2_cells

SYSTEMS = ["baseline:mixture", "model-a", "model-b"]
MISSING = {"model-a": {"fsd50k", "musdb18"}}
"""model-a has no rows on these datasets (so model-b is the second system drawn there, not the third)."""
PARTIAL = "model-b"
"""Loses one item per class to ``no_query``."""


def _items(n_audioset: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shape = {"audioset": n_audioset, "fsd50k": 5, "musdb18": 4, "voicebank-demand": 1}
    rows = []
    for system in SYSTEMS:
        for dataset, n_cls in shape.items():
            if dataset in MISSING.get(system, ()):
                continue
            for c in range(n_cls):
                centre = rng.uniform(-2, 12)  # each (system, class) has its own distribution
                for k in range(7):
                    v = float(centre + rng.normal(0, 2))
                    status = "ok" if not (system == PARTIAL and k == 6) else "no_query"
                    rows.append({
                        "system": system, "dataset": dataset, "split": "test", "condition": "none",
                        "item_id": f"{dataset}-{c}-{k}", "class_id": c, "label": f"c{c:03d}",
                        "sdr": v + 1, "sdri": v if status == "ok" else np.nan, "musdb_sdr": v - 1,
                        "musdb_sdri": v + 2, "pesq": 1 + abs(v) / 5, "ssnr": v / 2,
                        "status": status, "seconds": 0.1})
    return items_frame(rows)


def _legend_colors(fig) -> dict[tuple, str]:
    (legend,) = fig.legends
    return {tuple(np.round(h.get_facecolor(), 4)): t.get_text()
            for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True)
            if isinstance(h, Rectangle) and not h.get_hatch()}


def _boxes(ax, legend: dict[tuple, str]) -> list[dict]:
    """Every drawn box: system (by colour via the legend), class (nearest y tick), q1, median, q3."""
    ticks = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()], strict=True))
    medians = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]
               and to_rgba(ln.get_color()) == to_rgba("black")]
    out = []
    for patch in ax.patches:
        if not isinstance(patch, PathPatch):
            continue
        verts = patch.get_path().vertices
        y0, y1 = verts[:, 1].min(), verts[:, 1].max()
        yc = (y0 + y1) / 2
        med = [ln.get_xdata()[0] for ln in medians  # the box-wide vertical line (caps are shorter)
               if np.allclose(sorted(ln.get_ydata()), (y0, y1), atol=1e-9)]
        assert len(med) == 1, "one median line per box"
        tick = min(ticks, key=lambda t: abs(t - yc))
        assert abs(tick - yc) < 0.5
        out.append({"system": legend[tuple(np.round(patch.get_facecolor(), 4))], "label": ticks[tick],
                    "q1": verts[:, 0].min(), "median": med[0], "q3": verts[:, 0].max(), "y": yc})
    return out


def _expected(items, dataset, metric):
    ok = items[(items["dataset"] == dataset) & (items["status"] == "ok")].dropna(subset=[metric])
    g = ok.groupby(["system", "label"])[metric]
    return pd.DataFrame({"q1": g.quantile(0.25), "median": g.median(), "q3": g.quantile(0.75)})


def test_every_box_carries_its_own_systems_values():
    items = _items()
    colors = F.system_colors(SYSTEMS)
    seen_colors: dict[str, tuple] = {}
    with F.figure_style():
        for dataset in ("audioset", "fsd50k", "musdb18", "voicebank-demand"):
            fig = F.dataset_figure(items, dataset, SYSTEMS, colors)
            legend = _legend_colors(fig)
            present = [s for s in SYSTEMS if dataset not in MISSING.get(s, ())]
            assert sorted(legend.values()) == sorted(present), dataset
            for rgba, system in legend.items():  # one colour per system across every figure
                assert seen_colors.setdefault(system, rgba) == rgba
            axes = [ax for ax in fig.axes if ax.patches]
            metrics = F.FIGURE_METRICS[dataset]
            assert len(axes) == len(metrics)  # Voicebank: PESQ and SSNR panels, the others one
            for ax, metric in zip(axes, metrics, strict=True):
                exp = _expected(items, dataset, metric)
                boxes = _boxes(ax, legend)
                assert {(b["system"], b["label"]) for b in boxes} == set(exp.index)
                for b in boxes:
                    e = exp.loc[(b["system"], b["label"])]
                    assert (b["q1"], b["median"], b["q3"]) == pytest.approx((e["q1"], e["median"], e["q3"]), abs=1e-9)
                # classes top to bottom by the first non-baseline system's median, best first
                ref = "model-a" if "model-a" in present else "model-b"
                order = exp.loc[ref]["median"].sort_values(ascending=False).index.tolist()
                labels = [t.get_text() for t in ax.get_yticklabels()]
                assert labels == order
            F.png_bytes(fig)


def test_many_classes_show_the_extremes_and_a_curve_of_all():
    items = _items(n_audioset=F.MAX_NAMED_CLASSES + 40, seed=3)
    colors = F.system_colors(SYSTEMS)
    with F.figure_style():
        fig = F.dataset_figure(items, "audioset", SYSTEMS, colors)
    legend = _legend_colors(fig)
    exp = _expected(items, "audioset", "sdri")
    order = exp.loc["model-a"]["median"].sort_values(ascending=False).index.tolist()
    k = F.EXTREME_CLASSES
    best, worst = (ax for ax in fig.axes if ax.patches)
    assert [t.get_text() for t in best.get_yticklabels()] == order[:k]
    assert [t.get_text() for t in worst.get_yticklabels()] == order[-k:]
    for ax in (best, worst):
        for b in _boxes(ax, legend):
            assert b["median"] == pytest.approx(exp.loc[(b["system"], b["label"]), "median"], abs=1e-9)
    (curve,) = (ax for ax in fig.axes if not ax.patches)
    by_color = {tuple(np.round(to_rgba(ln.get_color()), 4)): ln for ln in curve.lines if len(ln.get_xdata()) > 2}
    for rgba, system in legend.items():
        ydata = by_color[rgba].get_ydata()
        want = np.sort(exp.loc[system]["median"].to_numpy())[::-1]
        np.testing.assert_allclose(ydata, want, atol=1e-12)
    F.png_bytes(fig)


def _hand_table2(items, system, dataset, metric, how):
    ok = items[(items["system"] == system) & (items["dataset"] == dataset) & (items["status"] == "ok")]
    ok = ok.dropna(subset=[metric])
    if ok.empty:
        return np.nan
    return ok[metric].median() if how == "median" else ok.groupby("label")[metric].median().mean()


def test_table2_figure_bars_are_their_systems_cells():
    items = _items()
    colors = F.system_colors(SYSTEMS)
    cells = {s: table2_cells(items[items["system"] == s]) for s in SYSTEMS}
    paper = paper_rows()[0][1]
    with F.figure_style():
        fig = F.table2_figure(cells, [(k, h) for k, h, *_ in TABLE2], paper, colors)
    legend = _legend_colors(fig)
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    for key, header, dataset, metric, _prefs, how in TABLE2:
        ax = by_title[header]
        bars = {legend[tuple(np.round(p.get_facecolor(), 4))]: p for p in ax.patches if isinstance(p, Rectangle)}
        for system in SYSTEMS:
            want = _hand_table2(items, system, dataset, metric, how)
            if np.isnan(want):
                assert system not in bars, (header, system)
            else:
                assert bars[system].get_width() == pytest.approx(want, abs=1e-9), (header, system)
                # PARTIAL lost one item per class to no_query: its bars are hatched (partial coverage)
                assert bool(bars[system].get_hatch()) == (system == PARTIAL), (header, system)
        marks = [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]
        assert marks == ([paper[key]] if np.isfinite(paper.get(key, np.nan)) else []), header
    F.png_bytes(fig)


def test_rendered_report_figures_are_deterministic(tmp_path):
    items = _items()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        items.to_parquet(tmp_path / name / "items.parquet")
    ra, rb = render_report(tmp_path / "a"), render_report(tmp_path / "b")
    assert [p.name for p in ra.figures] == ["table2.png", "per_class_audioset.png", "per_class_fsd50k.png",
                                             "per_class_musdb18.png", "per_class_voicebank-demand.png"]
    for pa, pb in zip(ra.figures, rb.figures, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
        assert b"Software" not in pa.read_bytes()
    assert "model-a" in ra.summary.read_text()


def test_runs_named_by_folder_still_sort_by_the_first_non_baseline_system():
    items = _items()
    renamed = {"baseline:mixture": "run1", "model-a": "run2", "model-b": "run3"}
    items = items.assign(source_system=items["system"], system=items["system"].map(renamed))
    order = ["run1", "run2", "run3"]
    assert F.sort_system(F.dataset_series(items, "audioset", order)).system == "run2"
    assert F.sort_system(F.dataset_series(items, "fsd50k", order)).system == "run3"  # run2 has no fsd50k rows
