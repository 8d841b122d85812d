"""Named aggregations of a metric column over a set's items (DESIGN §6): one :class:`Aggregation` each.

A dataset TOML names the aggregation of each report column (``[[report]] aggregate = "…"``) and its
default (``aggregate = "…"``); ``report --aggregate NAME`` / ``eval --aggregate NAME`` replace them for a
whole report, and the name used is recorded in ``results.json`` (``convention``) and ``run.json``.

- ``class-median-mean``: the median over each class's items, then the mean over classes (the paper's,
  for AudioSet, FSDKaggle2018, FSD50K, Slakh2100; the upstream ``calculate_sdr`` per class, then
  ``np.mean`` over classes).
- ``track-median-stem-mean``: MUSDB18 (SiSEC 2018 convention): per track the value of its item (the
  framewise-median SDR; the median when a track has several rows), the median over tracks of each stem,
  then the mean over the stems. With one row per (track, stem), as the MUSDB18 sets are built, it equals
  ``class-median-mean`` with the stems as classes.
- ``median`` / ``mean``: over all items (Voicebank-Demand: the upstream reports the median over the 824
  utterances, the speech-enhancement literature the mean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Aggregation:
    """One named aggregation.

    Attributes:
        name: its name (``"class-median-mean"``).
        description: one line, with its source.
        fn: ``fn(frame) -> float`` over a frame of finite values with columns ``v`` (float64 value),
            ``c`` (class label) and ``t`` (track: the ``item_id`` up to its first ``/``).
        ci: the statistic its bootstrap interval resamples: ``"class"`` (per-class medians, mean),
            ``"median"`` or ``"mean"`` (:func:`harness.results.bootstrap_ci`).
    """

    name: str
    description: str
    fn: Callable[[pd.DataFrame], float]
    ci: str


def _class_median_mean(f: pd.DataFrame) -> float:
    return float(f.groupby("c")["v"].median().mean())


def _track_median_stem_mean(f: pd.DataFrame) -> float:
    per_track = f.groupby(["c", "t"])["v"].median()
    return float(per_track.groupby(level="c").median().mean())


AGGREGATIONS: dict[str, Aggregation] = {a.name: a for a in (
    Aggregation("class-median-mean", "median over each class's items, then mean over classes (paper Table 2)",
                _class_median_mean, "class"),
    Aggregation("track-median-stem-mean", "per-track value, median over tracks per stem, mean over stems "
                "(SiSEC 2018 / MUSDB18)", _track_median_stem_mean, "class"),
    Aggregation("median", "median over items (upstream Voicebank-Demand)", lambda f: float(f["v"].median()), "median"),
    Aggregation("mean", "mean over items (speech-enhancement literature)", lambda f: float(f["v"].mean()), "mean"),
)}
"""Every aggregation, by name."""


def aggregation(name: str) -> Aggregation:
    """The aggregation called ``name``.

    Raises:
        ConfigError: unknown name, with "did you mean …" and the list.
    """
    try:
        return AGGREGATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown aggregation {name!r}{did_you_mean(name, AGGREGATIONS)} "
                          f"(choose from {', '.join(AGGREGATIONS)})") from None


def track_of(item_ids: pd.Series | np.ndarray) -> np.ndarray:
    """The track of each item: its ``item_id`` up to the first ``/`` (``"A - B/vocals"`` → ``"A - B"``)."""
    return np.array([str(i).split("/", 1)[0] for i in item_ids], dtype=object)


def apply(name: str, values, labels, item_ids=None) -> float:
    """Aggregate ``values`` (NaN dropped) with aggregation ``name``.

    Args:
        values: metric values (float, any NaN ignored).
        labels: the rows' class labels.
        item_ids: the rows' item ids (for the track of ``track-median-stem-mean``); default: one track per row.

    Returns:
        the aggregate, NaN when no finite value is left.

    Raises:
        ConfigError: unknown aggregation.
    """
    agg = aggregation(name)
    v = np.asarray(values, dtype=float)
    t = track_of(item_ids) if item_ids is not None else np.arange(len(v))
    frame = pd.DataFrame({"v": v, "c": np.asarray(labels), "t": t})
    frame = frame[np.isfinite(frame["v"].to_numpy())]
    if frame.empty:
        return float("nan")
    return agg.fn(frame)
