"""Ontology roll-ups of per-class results (issue 12 item 4): which branches of the AudioSet ontology are hard.

For AudioSet and FSD50K (whose 200 classes are AudioSet classes, matched by their ``mid``), per system and
query condition:

- **class medians**: the median SDRi (dB) over the ``ok`` items of each target class;
- **roll-up to every ontology node**: the median of the class medians of the node's classes, i.e. the node
  itself when it is a class and all its descendants (:meth:`harness.ontology.Ontology.class_ids`, the DAG the
  hierarchical separation builds; a multi-parent class counts under each parent), over the classes that have
  a value; a node without any is absent. Written for every node to ``ontology_<dataset>.csv``.
- **hardest / easiest nodes**: the :data:`EXTREMES` nodes of levels 1–3 (a node's level is the shallowest it
  is reached at, :meth:`~harness.ontology.Ontology.level_nodes`) with the lowest and highest roll-up median;
  ties by level, then name.
- **interferer × target matrix** by top-level category (the ontology's roots): cell (A, B) is the median SDRi
  of the ``ok`` items whose target class lies under A and whose interferer's class (the manifest's
  ``interferer_label``) lies under B; an item whose classes lie under several roots counts in each.

The interferer labels come from the evaluated set's ``manifest.parquet`` (``run.json`` ``builds``); without
it the matrix is left out with a note.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

ROLLUP_DATASETS = ("audioset", "fsd50k")
"""Datasets whose vocabulary is AudioSet's (FSD50K's classes are AudioSet mids)."""

ROLLUP_METRIC = "sdri"
"""The metric rolled up (SDRi, dB, paper eq. 13)."""

EXTREMES = 10
"""Hardest and easiest nodes listed."""

MAX_LEVEL = 3
"""Nodes of levels 1..MAX_LEVEL are ranked."""


def node_levels(ontology) -> dict[str, int]:
    """Node id → the shallowest level it is reached at (1 = a root)."""
    out: dict[str, int] = {}
    for level in range(1, ontology.num_levels + 1):
        for node in ontology.level_nodes(level):
            out.setdefault(node.id, level)
    return out


def class_medians(items: pd.DataFrame, metric: str = ROLLUP_METRIC) -> pd.Series:
    """Median of ``metric`` over the ``ok`` items with a finite value, per 527-class index (``class_index``).

    Args:
        items: rows of one system, dataset and condition with a ``class_index`` column (int, or NaN when
            the label is not an AudioSet class: those rows are dropped).
    """
    ok = items[(items["status"] == "ok") & np.isfinite(items[metric].astype("float64"))
               & items["class_index"].notna()]
    return ok.groupby(ok["class_index"].astype(int))[metric].median()


def rollup(medians: pd.Series | dict[int, float], ontology) -> pd.DataFrame:
    """Roll class medians up to every ontology node.

    Args:
        medians: 527-class index → class median (dB).
        ontology: :class:`harness.ontology.Ontology`.

    Returns:
        one row per node with at least one class value, in the ontology's file order: ``node_id, name, level``
        (shallowest), ``classes`` (how many of its classes have a value), ``median`` (dB: median of those
        class medians).
    """
    values = {int(k): float(v) for k, v in dict(medians).items() if np.isfinite(v)}
    levels = node_levels(ontology)
    rows = []
    for node_id, node in ontology.nodes.items():
        vals = [values[i] for i in ontology.class_ids(node_id) if i in values]
        if vals:
            rows.append({"node_id": node_id, "name": node.name, "level": levels.get(node_id, 0),
                         "classes": len(vals), "median": float(np.median(vals))})
    return pd.DataFrame(rows, columns=["node_id", "name", "level", "classes", "median"])


def extremes(nodes: pd.DataFrame, k: int = EXTREMES, max_level: int = MAX_LEVEL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(hardest, easiest)``: the ``k`` nodes of levels 1..``max_level`` with the lowest / highest median
    (ties: shallower level first, then name)."""
    top = nodes[(nodes["level"] >= 1) & (nodes["level"] <= max_level)]
    hardest = top.sort_values(["median", "level", "name"], ascending=[True, True, True], kind="stable").head(k)
    easiest = top.sort_values(["median", "level", "name"], ascending=[False, True, True], kind="stable").head(k)
    return hardest.reset_index(drop=True), easiest.reset_index(drop=True)


def interferer_matrix(items: pd.DataFrame, ontology, metric: str = ROLLUP_METRIC) -> pd.DataFrame:
    """Median ``metric`` of the ``ok`` items by (target root, interferer root).

    Args:
        items: rows with ``class_index`` (the target's 527 index) and ``interferer_index`` (the interferer's),
            NaN when unknown (such rows are dropped).

    Returns:
        a frame indexed by target root name, columns the interferer root names (the ontology's roots in file
        order), values the median (dB; NaN for an empty cell); ``attrs["counts"]`` the item counts.
    """
    roots = list(ontology.roots)
    under = {r: set(ontology.class_ids(r)) for r in roots}
    names = [ontology.name(r) for r in roots]
    ok = items[(items["status"] == "ok") & np.isfinite(items[metric].astype("float64"))
               & items["class_index"].notna() & items["interferer_index"].notna()]
    t_idx, i_idx = ok["class_index"].astype(int).to_numpy(), ok["interferer_index"].astype(int).to_numpy()
    vals = ok[metric].astype("float64").to_numpy()
    med = np.full((len(roots), len(roots)), np.nan)
    counts = np.zeros((len(roots), len(roots)), dtype=int)
    for a, ra in enumerate(roots):
        in_a = np.isin(t_idx, list(under[ra]))
        for b, rb in enumerate(roots):
            sel = in_a & np.isin(i_idx, list(under[rb]))
            counts[a, b] = int(sel.sum())
            if counts[a, b]:
                med[a, b] = float(np.median(vals[sel]))
    out = pd.DataFrame(med, index=names, columns=names)
    out.attrs["counts"] = pd.DataFrame(counts, index=names, columns=names)
    return out


# -- label → class index ---------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(name).casefold()).strip()


def label_index(dataset: str, labels, ontology, corpus_root: str | Path | None = None) -> dict[str, int]:
    """Label → 527-class index for ``labels`` of ``dataset`` (labels without a class are absent).

    AudioSet labels are the display names (``class_labels_indices.csv``). FSD50K labels map through the
    ``mid`` of ``FSD50K.ground_truth/vocabulary.csv`` under ``corpus_root`` when it is readable; otherwise by
    the display name with case and punctuation ignored (``Accelerating_and_revving_and_vroom`` has no such
    match: it is then left out of the roll-up, and the report lists it).
    """
    by_name = {name: i for i, name in enumerate(ontology.class_names)}
    by_norm = {_norm(name): i for i, name in enumerate(ontology.class_names)}
    by_mid = {mid: i for i, mid in enumerate(ontology.class_mids)}
    known: dict[str, int] = {}
    vocab = Path(corpus_root) / "FSD50K.ground_truth" / "vocabulary.csv" if corpus_root else None
    if dataset != "audioset" and vocab is not None and vocab.is_file():
        with open(vocab, newline="", encoding="utf-8") as f:
            for fields in csv.reader(f):
                if len(fields) == 3 and fields[2] in by_mid:
                    known[fields[1]] = by_mid[fields[2]]
    out = {}
    for label in {str(x) for x in labels if x is not None and x == x}:
        index = by_name.get(label) if dataset == "audioset" else known.get(label, by_norm.get(_norm(label)))
        if index is not None:
            out[label] = index
    return out


def _set_info(sources, dataset: str) -> tuple[pd.DataFrame | None, str | None]:
    """The evaluated set's manifest (``item_id``, ``interferer_label``) and corpus root, from the runs'
    ``run.json`` ``builds`` paths; ``(None, None)`` when no set folder is readable."""
    for src in sources:
        folder = src.sets.get(dataset)
        if not folder:
            continue
        path = Path(folder)
        try:
            manifest = pd.read_parquet(path / "manifest.parquet", columns=["item_id", "interferer_label"])
            root = json.loads((path / "build.json").read_text()).get("corpus", {}).get("root")
        except Exception:  # a moved or deleted set: the report says the matrix is absent
            continue
        return manifest, root
    return None, None


def dataset_rollups(items: pd.DataFrame, dataset: str, sources, ontology=None) -> list[dict]:
    """Every roll-up of one dataset, per system and condition.

    Returns:
        dicts with ``system, condition, nodes`` (:func:`rollup`), ``hardest, easiest`` (:func:`extremes`),
        ``matrix`` (:func:`interferer_matrix`, ``None`` without the manifest), ``unmatched`` (labels without
        an AudioSet class).
    """
    from harness.ontology import Ontology

    ontology = ontology or Ontology.load()
    sub = items[items["dataset"] == dataset]
    if not len(sub):
        return []
    manifest, root = _set_info(sources, dataset)
    labels = set(sub["label"].astype(str)) | (set(manifest["interferer_label"].dropna().astype(str))
                                              if manifest is not None else set())
    lookup = label_index(dataset, labels, ontology, root)
    sub = sub.assign(class_index=sub["label"].map(lambda x: lookup.get(x)).astype("float64"))
    if manifest is not None:
        inter = dict(zip(manifest["item_id"], manifest["interferer_label"], strict=True))
        sub = sub.assign(interferer_index=sub["item_id"].map(
            lambda i: lookup.get(inter.get(i)) if inter.get(i) is not None else None).astype("float64"))
    unmatched = sorted(set(sub.loc[sub["class_index"].isna(), "label"].astype(str)))
    out = []
    for (system, cond), g in sub.groupby(["system", "condition"], sort=False):
        nodes = rollup(class_medians(g), ontology)
        hardest, easiest = extremes(nodes)
        matrix = interferer_matrix(g, ontology) if manifest is not None else None
        out.append({"system": system, "condition": cond, "nodes": nodes, "hardest": hardest, "easiest": easiest,
                    "matrix": matrix, "unmatched": unmatched})
    return out


# -- rendering ------------------------------------------------------------------------------------

TITLE = {"audioset": "AudioSet", "fsd50k": "FSD50K"}


def _f(x: float) -> str:
    return f"{x:.2f}" if x == x else "—"


def markdown(rollups: dict[str, list[dict]]) -> list[str]:
    """The summary.md sections (``## AudioSet: ontology roll-ups`` …), or ``[]`` when there is nothing."""
    from harness.reports import markdown_table

    parts: list[str] = []
    for dataset, blocks in rollups.items():
        if not blocks:
            continue
        parts += [f"## {TITLE.get(dataset, dataset)}: ontology roll-ups", "",
                  f"SDRi (dB) per AudioSet ontology node: the median of the class medians of its classes (itself "
                  f"and its descendants). The {EXTREMES} hardest and easiest nodes of levels 1–{MAX_LEVEL}; every "
                  f"node in `ontology_{dataset}.csv`. Then the median SDRi by the top-level category of the "
                  "target (rows) and of the interferer (columns).", ""]
        for b in blocks:
            parts += [f"### {b['system']} · condition {b['condition']}", ""]
            if b["unmatched"]:
                parts += [f"Labels without an AudioSet class (left out): {', '.join(b['unmatched'][:10])}"
                          + (" …" if len(b["unmatched"]) > 10 else ""), ""]
            rows = []
            for k in range(max(len(b["hardest"]), len(b["easiest"]))):
                row = []
                for t in (b["hardest"], b["easiest"]):
                    row += ([str(t["name"].iloc[k]), str(int(t["level"].iloc[k])), str(int(t["classes"].iloc[k])),
                             _f(t["median"].iloc[k])] if k < len(t) else ["", "", "", ""])
                rows.append(row)
            parts += [markdown_table(["hardest node", "level", "classes", "SDRi", "easiest node", "level",
                                      "classes", "SDRi"], rows, "lrrrlrrr"), ""]
            m = b["matrix"]
            if m is None:
                parts += ["(interferer × target matrix: the set's manifest is not readable)", ""]
            else:
                counts = m.attrs["counts"]
                mrows = [[f"**{a}**", *[f"{_f(m.at[a, c])} ({counts.at[a, c]})" if counts.at[a, c] else "—"
                                        for c in m.columns]] for a in m.index]
                parts += ["Target (row) × interferer (column), median SDRi (items):", "",
                          markdown_table(["target \\ interferer", *m.columns], mrows, "l" + "r" * len(m.columns)), ""]
    return parts


def html(blocks: list[dict], dataset: str) -> str:
    """The HTML fragment of one dataset's roll-ups (inside its section of report.html), ``""`` when none."""
    from harness.report_html import _e, _table

    if not blocks:
        return ""
    out = [f"<h4>Ontology roll-ups ({_e(TITLE.get(dataset, dataset))}, SDRi dB)</h4>"]
    for b in blocks:
        out.append(f"<p><b>{_e(b['system'])}</b> · condition {_e(b['condition'])}</p>")
        rows = []
        for kind, t in (("hardest", b["hardest"]), ("easiest", b["easiest"])):
            for r in t.itertuples():
                rows.append([(kind, None), (_e(r.name), None), (str(r.level), str(r.level)),
                             (str(r.classes), str(r.classes)), (_f(r.median), f"{r.median:.4f}")])
        out.append(_table(["", "node", "level", "classes", "SDRi"], rows))
        m = b["matrix"]
        if m is not None:
            counts = m.attrs["counts"]
            mrows = [[(_e(a), None), *[(f"{_f(m.at[a, c])} ({counts.at[a, c]})" if counts.at[a, c] else "—",
                                        f"{m.at[a, c]:.4f}" if counts.at[a, c] else None) for c in m.columns]]
                     for a in m.index]
            out.append("<p>target (row) × interferer (column): median SDRi (items)</p>")
            out.append(_table(["target \\ interferer", *[_e(c) for c in m.columns]], mrows))
    return "\n".join(out)


def node_csv(blocks: list[dict]) -> bytes:
    """Every node's roll-up of every system and condition as CSV bytes (``ontology_<dataset>.csv``)."""
    frames = [b["nodes"].assign(system=b["system"], condition=b["condition"]) for b in blocks]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    cols = ["system", "condition", "node_id", "name", "level", "classes", "median"]
    return df.reindex(columns=cols).to_csv(index=False, float_format="%.6g").encode()


def report_rollups(items: pd.DataFrame, sources) -> dict[str, list[dict]]:
    """:func:`dataset_rollups` of each of :data:`ROLLUP_DATASETS` present in ``items``."""
    present = set(items["dataset"]) if len(items) else set()
    return {d: dataset_rollups(items, d, sources) for d in ROLLUP_DATASETS if d in present}
