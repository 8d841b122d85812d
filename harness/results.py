"""``results.json``: the run's aggregates for machines, beside ``items.parquet``.

One record per (system, dataset, condition, metric) of the rows in ``items.parquet``:

- ``value``: the aggregate under its ``convention`` (the aggregation its dataset declares for the metric,
  :func:`harness.reports.aggregate_kind`, or the one ``report --aggregate`` / ``eval --aggregate`` chose),
  over the usable rows (:func:`harness.metric_registry.usable_mask`: ``ok``, or another metric failed);
  ``unit`` and ``higher_is_better`` from the metric registry;
- ``ci95``: ``[low, high]``, a percentile bootstrap of that aggregate (:data:`CI_METHOD`);
- ``items_ok``, ``rows`` (items evaluated), ``items_in_set``, ``classes``, ``coverage`` (= ``items_ok /
  items_in_set``), ``statuses`` ({status: count});
- ``table2``: the Table 2 column keys of ``summary.md`` whose cell this record is (``[]`` for none; a
  system without queries fills both AudioSet columns from one record; :func:`harness.reports.cell_condition`
  picks the condition);
- ``build_digest``: the evaluation set's digest; ``system``: name, registry name, arguments, sample rate,
  checkpoint sha256 (from the run's ``run.json``).

The top level carries the provenance of the run(s): uss-bench version, git revision, host, device, start and
end time; and ``paper_row``, the paper's row shown beside ours (:mod:`harness.paper`: its name, table, caption,
all 14 values and, per column, the paper's protocol as far as known). Written atomically by :func:`write_results` (called by the eval runner and by
:func:`harness.reports.render_report`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import harness
from harness.datasets.store import atomic_write_text
from harness.query_protocols import ABSENT, results_section

SCHEMA = "uss-bench/results/1"

CI_RESAMPLES = 1000
CI_SEED = 0
CI_METHOD = (f"percentile bootstrap (2.5th, 97.5th) of the aggregate over {CI_RESAMPLES} resamples, seed {CI_SEED}: "
             "items resampled with replacement within each class for class-median-mean, over all items for median")


def bootstrap_ci(values: np.ndarray, labels: np.ndarray, how: str, resamples: int = CI_RESAMPLES,
                 seed: int = CI_SEED) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of an aggregate (deterministic for a seed).

    Args:
        values: float ``(N,)`` finite metric values.
        labels: ``(N,)`` class labels (strata for ``class-median-mean``).
        how: ``class-median-mean`` (per resample: median per class, mean over classes; classes resampled
            within, so every class stays) or ``median`` / ``mean`` (all items resampled together).

    Returns:
        ``(low, high)``; NaNs when ``values`` is empty.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    from harness.aggregations import aggregation

    rng = np.random.default_rng(seed)
    how = {"class": "class-median-mean", "median": "median", "mean": "mean"}[aggregation(how).ci]
    if how == "class-median-mean":
        labels = np.asarray(labels)
        per_class = []
        for c in pd.unique(labels):
            v = values[labels == c]
            per_class.append(_resample_stats(v, rng, resamples, np.median))
        stats = np.mean(per_class, axis=0)
    else:
        stats = _resample_stats(values, rng, resamples, np.median if how == "median" else np.mean)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


BOOTSTRAP_BLOCK = 1 << 18
"""Resampled values drawn and gathered at once by :func:`_resample_stats` (2 MiB of float64)."""


def _resample_stats(values: np.ndarray, rng: np.random.Generator, resamples: int, stat: Callable) -> np.ndarray:
    """``stat(values[rng.integers(0, N, size=(resamples, N))], axis=1)``, a block of resamples at a time.

    The same numbers as the one-shot expression, in memory bounded by :data:`BOOTSTRAP_BLOCK` instead of
    three ``(resamples, N)`` arrays (the index, the gathered values and the median's partitioned copy),
    which made the eval's peak memory grow with the items (issue 14): each row's statistic depends on
    that row only, and numpy's ``Generator.integers`` draws a ``(r1 + r2, N)`` array as the concatenation
    of a ``(r1, N)`` and a ``(r2, N)`` draw (its 32-bit buffer lives in the bit generator; numpy 2.x,
    checked by ``tests/harness/test_results.py``)."""
    n = len(values)
    rows = max(1, BOOTSTRAP_BLOCK // max(1, n))
    return np.concatenate([stat(values[rng.integers(0, n, size=(min(rows, resamples - i), n))], axis=1)
                           for i in range(0, resamples, rows)])


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _metrics(dataset: str, items: pd.DataFrame) -> list[str]:
    """The metric columns of ``items`` that have a value on ``dataset`` (declared or opt-in metrics alike;
    a column an older run lacks is left out)."""
    from harness.config import load_dataset_config
    from harness.datasets import CORPORA
    from harness.metric_registry import metric_columns

    declared = set(load_dataset_config(dataset)["metrics"]) if dataset in CORPORA else set()
    sub = items[items["dataset"] == dataset]
    return [m for m in metric_columns() if m in sub.columns and (m in declared or sub[m].notna().any())]


def _run_jsons(run_dir: Path, items: pd.DataFrame) -> dict[str, dict]:
    """``{system in items: its run.json}`` (a report of several runs: each source's)."""
    from harness.reports import run_sources

    out: dict[str, dict] = {}
    for src in run_sources(run_dir, items):
        path = Path(src.path) / "run.json"
        run = json.loads(path.read_text()) if path.is_file() else {}
        for reported in src.systems.values():
            out[reported] = run
    return out


def paper_record(name: str | None = None) -> dict[str, Any]:
    """The ``paper_row`` record of ``results.json``: the paper's row ``name`` (default system's when ``None``).

    Raises:
        ConfigError: an unknown row. MetadataError: a bad paper CSV (:mod:`harness.paper`).
    """
    from harness.paper import PAPER_SOURCE, paper_row

    row = paper_row(name)
    return {"name": row.name, "table": row.table, "caption": row.caption, "system": row.system,
            "source": PAPER_SOURCE, "values": dict(row.values),
            "protocols": {k: row.protocol(k) for k in row.values}}


def results(run_dir: str | Path, items: pd.DataFrame | None = None, aggregate_name: str | None = None,
            paper_row: str | None = None) -> dict[str, Any]:
    """The ``results.json`` content of a run or report folder (see the module docstring); ``aggregate_name``
    replaces every metric's declared aggregation (``report --aggregate``); ``paper_row``: :func:`paper_record`."""
    from harness.metric_registry import metric_spec, usable_mask
    from harness.musdb_protocols import run_protocol
    from harness.reports import aggregate, aggregate_kind, cell_condition, load_items, table2, table2_cells

    run_dir = Path(run_dir)
    items = load_items(run_dir) if items is None else items
    runs = _run_jsons(run_dir, items)
    records = []
    for system, sub_sys in items.groupby("system", sort=False):
        run = runs.get(system, {})
        cells = table2_cells(sub_sys, aggregate_name)
        sources = {}
        for key, _, dataset, metric, prefs, _how in table2():
            cond = cell_condition(sub_sys[sub_sys["dataset"] == dataset], prefs)
            if cond is not None and cells[key][2]:
                sources.setdefault((dataset, cond, metric), []).append(key)
        info = run.get("system_info") or {"name": system, "checkpoint_sha256": run.get("checkpoint_sha256")}
        for (dataset, cond), sub in sub_sys.groupby(["dataset", "condition"], sort=False):
            if cond == ABSENT:  # no SDR family: its own aggregates under "query_protocols"
                continue
            in_set = run.get("set_items", {}).get(dataset, len(sub))
            statuses = {str(k): int(v) for k, v in sub["status"].value_counts().items()}
            for metric in _metrics(dataset, sub_sys):
                how = aggregate_name or aggregate_kind(dataset, metric)
                ok = sub[usable_mask(sub, metric)]
                lo, hi = bootstrap_ci(ok[metric].to_numpy(), ok["label"].to_numpy(), how)
                spec = metric_spec(metric)
                records.append({
                    "system": system, "dataset": dataset, "condition": cond, "metric": metric,
                    "unit": spec.unit, "higher_is_better": spec.higher_is_better,
                    "value": _finite(aggregate(ok[metric], ok["label"], how, ok["item_id"])), "convention": how,
                    "ci95": [_finite(lo), _finite(hi)], "ci_method": CI_METHOD,
                    "items_ok": len(ok), "rows": len(sub), "items_in_set": int(in_set),
                    "classes": int(ok["label"].nunique()), "classes_in_rows": int(sub["label"].nunique()),
                    "coverage": len(ok) / in_set if in_set else None, "statuses": statuses,
                    "table2": sources.get((dataset, cond, metric), []),
                    "build_digest": run.get("builds", {}).get(dataset, {}).get("digest"),
                    "system_info": info,
                    **({"musdb_protocol": run_protocol(run)} if metric.startswith("musdb_") else {}),
                })
    provenance = [{"system": s, "uss_bench_version": r.get("versions", {}).get("harness"),
                   "git_revision": r.get("git_revision"), "host": r.get("host"),
                   "device": r.get("device") or r.get("options", {}).get("extra", {}).get("device"),
                   "started_at": r.get("started_at"), "finished_at": r.get("finished_at")} for s, r in runs.items()]
    out = {"schema": SCHEMA, "uss_bench_version": harness.__version__, "runs": provenance, "results": records,
           "paper_row": paper_record(paper_row)}
    protocols = results_section(items, runs)
    if protocols is not None:  # eval --query-protocol absent / --query-modes (harness.query_protocols)
        out["query_protocols"] = protocols
    return out


def write_results(run_dir: str | Path, items: pd.DataFrame | None = None, aggregate: str | None = None,
                  paper_row: str | None = None) -> Path:
    """Write ``<run_dir>/results.json`` atomically; returns its path (``aggregate``, ``paper_row``: see
    :func:`results`)."""
    path = Path(run_dir) / "results.json"
    atomic_write_text(path, json.dumps(results(run_dir, items, aggregate, paper_row), indent=2, allow_nan=False)
                      + "\n")
    return path
