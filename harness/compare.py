"""``compare``: two runs item by item, with each metric's own tolerance and a paired test per dataset.

For every (system, dataset, condition, headline metric) the two runs' aggregates are compared on the items
``ok`` in both (the dataset's Table 2 aggregation, :func:`harness.reports.aggregate_kind`). The tolerance and
unit of each metric come from the metric registry (:mod:`harness.metric_registry`); ``--tolerance`` overrides
them all, in each metric's own unit.

Beside the aggregate, each row carries:

- **per-class regressions**: a class whose median over the paired items is worse by more than the metric's
  tolerance is listed (:attr:`Comparison.class_regressions`; they fail only with ``fail_on_class``);
- **a paired test** over the items both runs scored (finite value in both): the mean of the differences
  ``candidate − base`` with a 95 % paired percentile-bootstrap interval (``scipy.stats.bootstrap`` over the
  per-item differences, :data:`BOOTSTRAP_RESAMPLES` resamples, seed :data:`BOOTSTRAP_SEED`: deterministic), and
  the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, zero differences dropped as in
  Wilcoxon's original test; every difference zero → p = 1), Holm-corrected (:func:`holm`, our own few lines;
  scipy has no Holm, statsmodels is not needed for it) over every row of the comparison that has a p-value,
  i.e. across datasets (and systems, conditions, metrics). ``significant`` = Holm p < :data:`ALPHA`.

Significance does not change the exit status: the gate stays the aggregates' tolerance (and, with
``fail_on_class``, the classes'); the test says whether a difference is distinguishable from item noise.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import UssBenchError

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
ALPHA = 0.05
"""Family-wise error rate of the Holm-corrected tests."""

METHODS = {
    "ci": f"paired percentile bootstrap of the mean difference (candidate - base), scipy.stats.bootstrap, "
          f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, 95 %",
    "p": "two-sided Wilcoxon signed-rank test of the differences (scipy.stats.wilcoxon, zero_method='wilcox'; "
         "all differences zero: p = 1)",
    "p_holm": f"Holm step-down correction over every row with a p-value (harness.compare.holm); "
              f"significant: p_holm < {ALPHA}",
}


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    With the m finite p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of the i-th is
    ``max_{j ≤ i} min(1, (m − j + 1) · p_(j))``. Rejecting where it is < α controls the family-wise error rate
    at α.

    Args:
        pvalues: float ``(k,)``; NaN entries are not part of the family and stay NaN.

    Returns:
        float64 ``(k,)``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def wilcoxon_p(diff) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (``scipy.stats.wilcoxon``).

    Args:
        diff: float ``(n,)`` finite differences.

    Returns:
        the p-value; 1.0 when every difference is zero (nothing to rank); NaN when ``diff`` is empty.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(diff, dtype=np.float64)
    if len(d) == 0:
        return float("nan")
    if not np.any(d):
        return 1.0
    with warnings.catch_warnings():  # scipy warns when ties/zeros force the normal approximation
        warnings.simplefilter("ignore", UserWarning)
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_bootstrap_ci(diff, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of paired differences (``scipy.stats.bootstrap``).

    Resampling the pairs' differences with replacement is the paired bootstrap: each resample keeps an
    item's two scores together. Deterministic for a seed.

    Args:
        diff: float ``(n,)`` finite differences (candidate − base), in the metric's unit.
        resamples, seed, confidence: the bootstrap's settings.

    Returns:
        ``(low, high)`` in the metric's unit; ``(0, 0)`` when every difference is zero; NaNs for n < 2.
    """
    from scipy.stats import bootstrap

    d = np.asarray(diff, dtype=np.float64)
    if len(d) < 2:
        return float("nan"), float("nan")
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
                    vectorized=True, batch=max(1, min(resamples, 2**22 // len(d))),
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass
class Comparison:
    """Per-aggregate deltas between two runs on their paired items, with per-class drops and paired tests."""

    table: pd.DataFrame
    """One row per (system, dataset, condition, metric): ``label, unit, aggregate, items, base, candidate,
    delta, tolerance, note`` (``""``, ``"missing in candidate"``, ``"missing in base"``, ``"missing in
    both"``: the run has no such metric column), and the paired test: ``pairs`` (items with a finite value in
    both), ``mean_diff``, ``ci_low``, ``ci_high``, ``p``, ``p_holm``, ``significant`` (:data:`METHODS`)."""
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
    class_regressions: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Classes whose median over the paired items is worse by more than the metric's tolerance: ``system,
    dataset, condition, metric, label, unit, items, base, candidate, delta, tolerance``."""
    fail_on_class: bool = False
    """A class regression fails the comparison (``--fail-on-class``)."""
    base: str = ""
    candidate: str = ""
    tolerance: float | None = None
    """The ``--tolerance`` override (each metric's unit), ``None``: each metric's registry tolerance."""
    two_sided: bool = False

    @property
    def failed(self) -> bool:
        """Whether the comparison fails: a regression, an item that stopped scoring, rows missing, or (with
        :attr:`fail_on_class`) a class regression."""
        return bool(len(self.regressions) or self.newly_failing or (self.missing and not self.allow_missing)
                    or (self.fail_on_class and len(self.class_regressions)))

    def as_json(self) -> dict:
        """The ``compare.json`` content (NaN → null)."""
        def records(frame: pd.DataFrame) -> list[dict]:
            return [{k: _jsonable(v) for k, v in r.items()} for r in frame.to_dict("records")]

        return {"schema": "uss-bench/compare/1", "base": self.base, "candidate": self.candidate,
                "tolerance_override": self.tolerance, "two_sided": self.two_sided, "methods": METHODS,
                "failed": self.failed, "rows": records(self.table), "regressions": records(self.regressions),
                "class_regressions": records(self.class_regressions), "fail_on_class": self.fail_on_class,
                "unpaired": self.unpaired, "newly_failing": self.newly_failing, "missing": self.missing,
                "missing_datasets": self.missing_datasets, "allow_missing": self.allow_missing}


def _jsonable(v):
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


def write_compare_json(cmp: Comparison, path: str | Path) -> Path:
    """Write :meth:`Comparison.as_json` to ``path`` atomically; returns the path."""
    from harness.datasets.store import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(cmp.as_json(), indent=2, allow_nan=False) + "\n")
    return path


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` as a float when it is finite and ≥ 0.

    Raises:
        UssBenchError: NaN (it would disable the gate: every comparison with NaN is false), ±inf or a
            negative value.
    """
    tol = float(tolerance)
    if not np.isfinite(tol) or tol < 0:
        raise UssBenchError(f"--tolerance {tolerance}: the tolerance must be a finite number ≥ 0, in each "
                            "metric's own unit (dB; MOS for PESQ), e.g. --tolerance 0.1; omit it to use each "
                            "metric's default")
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
        UssBenchError: names both runs, the dataset(s) and both digests.
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
    """``{dataset: build digests}`` of a run folder or report folder (:func:`harness.reports.run_sources`)."""
    from harness.reports import run_sources

    out: dict[str, set[str]] = {}
    for src in run_sources(_run_folder(run)):
        for dataset, digest in src.digests.items():
            out.setdefault(dataset, set()).add(digest)
    return out


def _metric_note(metric: str, a: pd.DataFrame, b: pd.DataFrame) -> str:
    where = [name for name, frame in (("base", a), ("candidate", b)) if metric not in frame.columns]
    return "" if not where else "missing in both" if len(where) == 2 else f"missing in {where[0]}"


def _class_drops(sub: pd.DataFrame, metric: str, sign: float, tol: float) -> list[dict]:
    """Classes of ``sub`` (paired rows) whose median is worse by more than ``tol`` (``sign`` = +1 when higher
    is better)."""
    va, vb = sub[f"{metric}_base"].to_numpy(dtype=float), sub[f"{metric}_cand"].to_numpy(dtype=float)
    pairs = pd.DataFrame({"label": sub["label_base"].to_numpy(), "a": va, "b": vb}).dropna()
    out = []
    for label, grp in pairs.groupby("label", sort=True):
        ma, mb = float(grp["a"].median()), float(grp["b"].median())
        if sign * (mb - ma) < -tol:
            out.append({"label": str(label), "items": len(grp), "base": ma, "candidate": mb, "delta": mb - ma})
    return out


def compare_runs(base: str | Path, cand: str | Path, tolerance: float | None = None, two_sided: bool = False,
                 allow_missing: bool = False, allow_different_sets: bool = False,
                 fail_on_class: bool = False) -> Comparison:
    """Pair rows by ``(dataset, condition, item_id)`` and compare each Table 2 aggregate.

    Runs holding one system each are paired whatever the systems' names (a new checkpoint against an old
    one). Runs holding several systems (e.g. the demo: baselines and the demo model) are paired per
    system too, by ``(system, dataset, condition, item_id)``.

    A regression is an aggregate of the candidate worse than the baseline's by more than the metric's
    tolerance (:func:`harness.metric_registry.metric_spec`, in the metric's unit and direction; ``tolerance``
    overrides every metric's, in its own unit); with ``two_sided`` any change beyond it counts (a golden table,
    such as the demo's, must be refreshed deliberately, also when it improves). Aggregates use the rows that
    are ``ok`` in both runs. A metric column that a run lacks gives NaN (noted in ``table.note``); lost by the
    candidate while the baseline has values, it is a regression. Baseline rows that the candidate lacks (items,
    whole datasets) make :attr:`Comparison.failed` true unless ``allow_missing``; class regressions do with
    ``fail_on_class``. Each row also gets the paired test of the module docstring.

    Raises:
        UssBenchError: unreadable inputs, no item in common, a tolerance that is not finite and ≥ 0,
            duplicate keys, a metric not in the registry, or (unless ``allow_different_sets``) runs on sets
            with different build digests (names both runs and both digests).
    """
    from harness.metric_registry import metric_spec
    from harness.reports import aggregate, aggregate_kind, headline, load_items

    if tolerance is not None:
        tolerance = check_tolerance(tolerance)
    a, b = load_items(base), load_items(cand)
    if not allow_different_sets:
        check_same_sets(base, cand)
    heads = headline()
    metrics = sorted({m for ms in heads.values() for m in ms} | {"sdri"})
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
    rows, class_rows = [], []
    for (system, dataset, cond), sub in both_ok.groupby(["system", "dataset", "condition"], sort=False):
        for metric in heads.get(dataset, ("sdri",)):
            how = aggregate_kind(dataset, metric)
            spec = metric_spec(metric)
            tol = spec.tolerance if tolerance is None else tolerance
            va = aggregate(sub[f"{metric}_base"], sub["label_base"], how, sub["item_id"])
            vb = aggregate(sub[f"{metric}_cand"], sub["label_base"], how, sub["item_id"])
            xa, xb = sub[f"{metric}_base"].to_numpy(dtype=float), sub[f"{metric}_cand"].to_numpy(dtype=float)
            both = np.isfinite(xa) & np.isfinite(xb)
            diff = xb[both] - xa[both]
            lo, hi = paired_bootstrap_ci(diff)
            rows.append({"system": system, "dataset": dataset, "condition": cond, "metric": metric,
                         "label": spec.label, "unit": spec.unit, "higher_is_better": spec.higher_is_better,
                         "aggregate": how, "items": len(sub), "base": va, "candidate": vb, "delta": vb - va,
                         "tolerance": tol, "note": notes[metric], "pairs": int(both.sum()),
                         "mean_diff": float(diff.mean()) if len(diff) else float("nan"), "ci_low": lo,
                         "ci_high": hi, "p": wilcoxon_p(diff)})
            sign = 1.0 if spec.higher_is_better else -1.0
            class_rows += [{"system": system, "dataset": dataset, "condition": cond, "metric": metric,
                            "unit": spec.unit, "tolerance": tol, **r} for r in _class_drops(sub, metric, sign, tol)]
    failing = (merged["status_base"] == "ok") & (merged["status_cand"] != "ok")
    for dataset, n in merged[failing].groupby("dataset").size().items():
        unpaired[f"{dataset}: ok in base, not scored in candidate"] = int(n)
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table["p"].to_numpy())
        table["significant"] = table["p_holm"] < ALPHA
        sign = np.where(table["higher_is_better"], 1.0, -1.0)
        worse = -sign * table["delta"]
        off = table["delta"].abs() > table["tolerance"] if two_sided else worse > table["tolerance"]
        regressions = table[off | ~np.isfinite(table["delta"]) & np.isfinite(table["base"])]
    else:
        regressions = table
    class_cols = ["system", "dataset", "condition", "metric", "label", "unit", "items", "base", "candidate",
                  "delta", "tolerance"]
    return Comparison(table=table, regressions=regressions, unpaired=unpaired, newly_failing=int(failing.sum()),
                      missing=unpaired["base_only"], missing_datasets=missing_datasets, allow_missing=allow_missing,
                      class_regressions=pd.DataFrame(class_rows, columns=class_cols), fail_on_class=fail_on_class,
                      base=str(base), candidate=str(cand), tolerance=tolerance, two_sided=two_sided)
