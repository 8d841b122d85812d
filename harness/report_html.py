"""``report.html``: one self-contained page per report folder (DESIGN §7).

The page holds Table 2 with the paper's row (coverage markers as in ``summary.md``), the Table 2 figure,
per dataset the detail table (aggregates, the mean's 95 % bootstrap CI, coverage) with its per-class
figure and, when estimates were saved, audio players, and the item-status table. Figures are embedded as
base64 PNG and audio as base64 FLAC, so the file needs nothing else (no network, no files beside it) at
view time. Tables sort by a click on a column header (a few lines of inline script).

Saved estimates (written by ``eval --save-estimates``) live in the run folder as::

    <run>/estimates/<dataset>/<item_id>.wav              the estimate (any rate; float32 WAV)
    <run>/estimates/<dataset>/<condition>/<item_id>.wav  the same, per query condition (looked up first)
    <run>/estimates/<dataset>/<item_id>.mixture.wav      optional: the mixture as separated
    <run>/estimates/<dataset>/<item_id>.target.wav       optional: the reference

When the mixture or target file is absent, it is read from the evaluation set that ``run.json`` records
(if that folder still exists). Per dataset the page features the best and the worst ``ok`` item (by the
dataset's figure metric) of one system with estimates (the figures' sort system), and plays the mixture,
the target and every system's estimate of those items.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.datasets.store import atomic_write_text

ESTIMATES_DIR = "estimates"
"""Folder of saved estimates inside a run folder."""

MAX_CLIP_S = 10.0
"""Longest embedded clip (s); longer items play the window with the loudest target, named in the caption."""

AUDIO_RATE = 32000
"""Embedded audio sample rate (Hz); 24-bit FLAC."""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir > 0 ? "asc" : "desc";
    var key = function (r) { var t = r.cells[col].dataset.v || r.cells[col].textContent;
      var x = parseFloat(t); return isNaN(x) ? t : x; };
    rows.sort(function (a, b) { var x = key(a), y = key(b);
      if (typeof x !== typeof y) { return typeof x === "number" ? -dir : dir; }
      return x < y ? -dir : x > y ? dir : 0; });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.querySelectorAll("audio").forEach(function (a) {
  var mark = function () { a.dataset.duration = a.duration.toFixed(3); };
  if (a.readyState >= 1) { mark(); } else { a.addEventListener("loadedmetadata", mark); }
  a.addEventListener("error", function () { a.dataset.error = "1"; });
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #eee; cursor: pointer; position: sticky; top: 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
tr.paper td { font-style: italic; background: #f7f7f7; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.sw { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; border: 1px solid #000; }
.players td { vertical-align: top; }
audio { width: 260px; }
small { color: #555; }
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(x: float, digits: int = 2) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[tuple[str, str | None]]], cls: str = "sortable",
           row_cls: list[str] | None = None) -> str:
    """An HTML table; each cell is ``(html, sort value or None)``; cells with a sort value align right."""
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in header)
           + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        rc = f' class="{row_cls[i]}"' if row_cls and row_cls[i] else ""
        tds = "".join(f'<td class="n" data-v="{_e(v)}">{c}</td>' if v is not None else f"<td>{c}</td>"
                      for c, v in r)
        out.append(f"<tr{rc}>{tds}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _swatch(system: str, colors: dict) -> str:
    r, g, b, _ = colors.get(system, (0.5, 0.5, 0.5, 1))
    return (f'<span class="sw" style="background: rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})"></span>'
            f"{_e(system)}")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def estimate_path(run_dir: Path, dataset: str, condition: str, item_id: str) -> Path | None:
    """The saved estimate of an item in a run folder (see the module docstring), or ``None``."""
    base = Path(run_dir) / ESTIMATES_DIR / dataset
    for p in (base / condition / f"{item_id}.wav", base / f"{item_id}.wav"):
        if p.is_file():
            return p
    return None


def _read(path: Path) -> np.ndarray | None:
    import soundfile as sf

    from harness.audio import resample

    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception:  # noqa: BLE001 - an unreadable file shows as "not available"
        return None
    x = x.mean(axis=1)
    return resample(x, sr, AUDIO_RATE) if sr != AUDIO_RATE else x


def _from_set(set_path: str | None, item_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mixture, target)`` of an item read from its evaluation set, or ``None`` when unavailable."""
    if not set_path or not (Path(set_path) / "build.json").is_file():
        return None
    try:
        from harness.audio import AudioRef, resample
        from harness.datasets import get_corpus
        from harness.datasets.store import EvalSet

        path = Path(set_path)
        manifest = pd.read_parquet(path / "manifest.parquet")
        es = EvalSet(path=path, manifest=manifest, build=json.loads((path / "build.json").read_text()))
        pos = np.flatnonzero(manifest["item_id"].to_numpy() == item_id)
        if len(pos) != 1:
            return None
        row = manifest.iloc[int(pos[0])]
        sr = int(row["sample_rate"])
        if es.virtual:
            corpus = get_corpus(es.dataset, es.corpus_root)
            mix = corpus.read(AudioRef(es.corpus_root / row["mixture_file"]), sr)
            ref = corpus.read(AudioRef(es.corpus_root / row["target_file"]), sr)
        else:
            m, t = es.read_rows(pos)
            mix, ref = m[0], t[0]
        if sr != AUDIO_RATE:
            mix, ref = resample(mix, sr, AUDIO_RATE), resample(ref, sr, AUDIO_RATE)
        return mix.astype(np.float32), ref.astype(np.float32)
    except Exception:  # noqa: BLE001 - a moved or changed set only costs the players
        return None


def _window(target: np.ndarray | None, n: int) -> int:
    """Start of the ``MAX_CLIP_S`` window with the most target energy (1-s hops); 0 when it all fits."""
    w = int(MAX_CLIP_S * AUDIO_RATE)
    if target is None or n <= w:
        return 0
    e = np.concatenate([[0.0], np.cumsum(target[:n].astype(np.float64) ** 2)])
    starts = np.arange(0, n - w + 1, AUDIO_RATE)
    return int(starts[np.argmax(e[starts + w] - e[starts])])


def _flac_uri(x: np.ndarray) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, AUDIO_RATE, format="FLAC", subtype="PCM_24")
    return "data:audio/flac;base64," + base64.b64encode(buf.getvalue()).decode()


def _players(dataset: str, items: pd.DataFrame, sources, systems: list[str]) -> str:
    """Audio players for the best and worst items of ``dataset`` (empty when no run saved estimates)."""
    from harness.figures import FIGURE_METRICS, dataset_series, sort_system

    run_of = {name: (src, orig) for src in sources for orig, name in src.systems.items()}
    have = [s for s in systems if s in run_of and (run_of[s][0].path / ESTIMATES_DIR / dataset).is_dir()]
    if not have:
        return ""
    metric = FIGURE_METRICS.get(dataset, ("sdri",))[0]

    def est(system: str, cond: str, item_id: str) -> Path | None:
        return estimate_path(run_of[system][0].path, dataset, cond, item_id)

    series = [s for s in dataset_series(items, dataset, have)]
    series = [s for s in series if any(est(s.system, s.condition, i) for i in s.ok["item_id"])]
    if not series:
        return ""
    lead = sort_system(series)
    ok = lead.ok[[est(lead.system, lead.condition, i) is not None for i in lead.ok["item_id"]]]
    ok = ok[np.isfinite(ok[metric].to_numpy(dtype=float))].sort_values([metric, "item_id"], ascending=[False, True])
    if ok.empty:
        return ""
    picks = [("best", ok.iloc[0])] + ([("worst", ok.iloc[-1])] if len(ok) > 1 else [])
    cond_of = {s.system: s.condition for s in dataset_series(items, dataset, have)}
    out = [f"<h4>Listen: best and worst {dataset} items of {_e(lead.system)} (by {metric})</h4>"]
    rows = []
    for which, row in picks:
        item_id = str(row["item_id"])
        estimates = {s: est(s, cond_of[s], item_id) for s in have if s in cond_of}
        folder = next(iter(p for p in estimates.values() if p is not None)).parent
        side = {k: _read(folder / f"{item_id}.{k}.wav") if (folder / f"{item_id}.{k}.wav").is_file() else None
                for k in ("mixture", "target")}
        if side["mixture"] is None or side["target"] is None:
            from_set = _from_set(run_of[lead.system][0].sets.get(dataset), item_id)
            if from_set is not None:
                side["mixture"] = side["mixture"] if side["mixture"] is not None else from_set[0]
                side["target"] = side["target"] if side["target"] is not None else from_set[1]
        clips = {"mixture": side["mixture"], "target": side["target"]}
        clips.update({f"estimate: {s}": _read(p) if p is not None else None for s, p in estimates.items()})
        n = max((len(c) for c in clips.values() if c is not None), default=0)
        start = _window(side["target"], n)
        stop = start + int(MAX_CLIP_S * AUDIO_RATE)
        cut = {k: c[start:stop] for k, c in clips.items() if c is not None}
        peak = max((float(np.max(np.abs(c))) for c in cut.values() if len(c)), default=0.0)
        gain = 0.99 / peak if peak > 0.99 else 1.0
        note = (f"{start / AUDIO_RATE:.0f}–{min(stop, n) / AUDIO_RATE:.0f} s of {n / AUDIO_RATE:.1f} s"
                if n > stop - start else f"{n / AUDIO_RATE:.1f} s")
        if gain != 1.0:
            note += f", all clips scaled by {20 * np.log10(gain):.1f} dB to avoid clipping"
        values = f"{metric} {_num(float(row[metric]))}"
        cells = [(f"<b>{which}</b><br>{_e(item_id)}<br><small>{_e(row['label'])}; {values}; {note}</small>", None)]
        for k in clips:
            if k in cut and len(cut[k]):
                sysname = k.split(": ", 1)[1] if k.startswith("estimate: ") else None
                score = ""
                if sysname is not None:
                    srow = items[(items["system"] == sysname) & (items["dataset"] == dataset)
                                 & (items["condition"] == cond_of[sysname]) & (items["item_id"] == item_id)]
                    if len(srow):
                        score = f" ({metric} {_num(float(srow[metric].iloc[0]))})"
                cells.append((f"<small>{_e(k)}{_e(score)}</small><br><audio controls preload=\"metadata\" "
                              f"data-kind=\"{_e(k)}\" src=\"{_flac_uri(cut[k] * gain)}\"></audio>", None))
            else:
                cells.append((f"<small>{_e(k)}: not available</small>", None))
        rows.append(cells)
    width = max(len(r) for r in rows)
    rows = [r + [("", None)] * (width - len(r)) for r in rows]
    out.append(_table(["item", *["" for _ in range(width - 1)]], rows, cls="players"))
    return "".join(out)


def write_html(run_dir: Path, items: pd.DataFrame, sources, systems: list[str], cells: dict,
               pngs: dict[str, bytes], colors: dict, sections: dict[str, str] | None = None,
               paper_row: str | None = None) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) and return its path.

    Args:
        run_dir: the report folder.
        items: the report's ``items.parquet`` rows.
        sources: :class:`harness.reports.RunSource` of each run (where estimates are looked up).
        systems: systems in report order.
        cells: ``{system: {Table 2 key: (value, ok, rows)}}`` (:func:`harness.reports.table2_cells`).
        pngs: ``{file name: PNG bytes}``: ``table2.png`` and ``per_class_<dataset>.png``.
        colors: :func:`harness.figures.system_colors` of the report.
        sections: extra HTML fragments: ``{dataset: fragment}`` at the end of the dataset's section (the
            ontology roll-ups, :mod:`harness.rollups`), ``{"snr-sweep": fragment}`` after the detail
            (:mod:`harness.snr_sweep`).
        paper_row: the paper's row beside ours (:func:`harness.paper.paper_row`; default system's when ``None``):
            its 12 Table 2 cells, then a table of every paper column with its protocol beside ours.
    """
    sections = sections or {}
    from harness.figures import ordered_datasets
    from harness.paper import PAPER_SOURCE, protocol_table
    from harness.paper import paper_row as _paper_row
    from harness.reports import CONVENTIONS, TABLE2, detail_rows, format_cell, paper_rows, status_rows

    title = f"uss-bench report: {', '.join(systems) or 'no items'}"
    body = [f"<h1>{_e(title)}</h1>"]
    if (Path(run_dir) / "sources.json").is_file():  # a report of runs rendered elsewhere: name them
        body.append("<p>Runs: " + "; ".join(f"<code>{_e(s.label)}</code> ({_e(s.path)})" for s in sources) + "</p>")
    body.append("<h2>Table 2 (paper layout)</h2>")
    rows, row_cls = [], []
    for system in systems:
        rows.append([(_swatch(system, colors), None)]
                    + [(_e(format_cell(cells[system][k])), _num(cells[system][k][0], 4)) for k, *_ in TABLE2])
        row_cls.append("")
    for name, paper in paper_rows(paper_row):
        rows.append([(_e(name), None)] + [(_e(_num(paper.get(k, np.nan))), _num(paper.get(k, np.nan), 4))
                                          for k, *_ in TABLE2])
        row_cls.append("paper")
    body.append(_table(["system", *[h for _, h, *_ in TABLE2]], rows, row_cls=row_cls))
    row = _paper_row(paper_row)
    ours = {key: how for key, _h, _d, _m, _p, how in TABLE2}
    body.append(f"<p>Paper row <code>{_e(row.name)}</code> (Table {row.table}: {_e(row.caption)}; "
                f"{_e(PAPER_SOURCE)}), column by column:</p>")
    prow = [[(_e(r["header"]), None), (_e(_num(r["value"])), _num(r["value"], 4)), (_e(r["unit"]), None),
             (_e(r["protocol"]), None), (_e(r["ours"] or "(no column of ours)"), None), (_e(r["same"]), None)]
            for r in protocol_table(row, ours)]
    body.append(_table(["column", "paper", "unit", "paper's protocol", "ours", "same protocol"], prow,
                       cls="paper-protocol"))
    from harness.musdb_protocols import protocol_note

    musdb_note = protocol_note(run_dir, items)
    if musdb_note:
        body.append(f"<p>{_e(musdb_note)}</p>")
    body.append(f"<p><small>{_e(CONVENTIONS)}</small></p>")
    if "table2.png" in pngs:
        body.append(_img(pngs["table2.png"], "Table 2 overview"))
    body.append("<h2>Detail per dataset</h2>")
    detail = detail_rows(items, systems)
    for dataset in ordered_datasets(items):
        body.append(f'<h3 id="{_e(dataset)}">{_e(dataset)}</h3>')
        drows = []
        for r in (r for r in detail if r["dataset"] == dataset):
            cov = f"{r['ok']}/{r['rows']}"
            drows.append([(_swatch(r["system"], colors), None), (_e(r["condition"]), None), (_e(r["metric"]), None),
                          (_e(cov), str(r["ok"] / r["rows"] if r["rows"] else 0)), (str(r["classes"]), str(r["classes"])),
                          *[(_num(r[k]), _num(r[k], 4)) for k in ("class_median_mean", "median", "mean")],
                          (f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]", _num(r["ci_low"], 4))])
        body.append(_table(["system", "condition", "metric", "coverage (ok/rows)", "classes", "class-median-mean",
                            "median", "mean", "mean 95% CI"], drows))
        name = f"per_class_{dataset}.png"
        if name in pngs:
            body.append(_img(pngs[name], f"{dataset} per-class distribution"))
        body.append(sections.get(dataset, ""))
        body.append(_players(dataset, items, sources, systems))
    body.append(sections.get("snr-sweep", ""))
    body.append("<h2>Item status</h2>")
    srows = [[(_swatch(r["system"], colors), None), (_e(r["dataset"]), None), (str(r["rows"]), str(r["rows"])),
              (str(r["ok"]), str(r["ok"])), (_e(", ".join(f"{k}: {v}" for k, v in r["other"].items()) or "—"), None)]
             for r in status_rows(items)]
    body.append(_table(["system", "dataset", "rows", "ok", "not scored (status: count)"], srows))
    body.append("<p><small>Per-class tables: per_class.md beside this file. Click a column header to sort."
                "</small></p>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n" + "\n".join(body)
            + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, page)
    return path
