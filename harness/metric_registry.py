# PLACEHOLDER: replaced by helper A's registry at merge
"""The metric columns' declarations (placeholder with the columns of the absent-query protocol only)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class MetricSpec:
    """One metric column: ``name`` (column), ``label`` (report header), ``unit``, direction, compare tolerance."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    tolerance: float


METRICS: dict[str, MetricSpec] = {
    "residual_db": MetricSpec("residual_db", "Residual (absent query)", "dB", False, 0.1),
    "false_activation": MetricSpec("false_activation", "False activation", "rate", False, 0.0),
}


def metric_spec(name: str) -> MetricSpec:
    """The :class:`MetricSpec` of a column. Raises ConfigError naming the known columns."""
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}{did_you_mean(name, list(METRICS))}")
    return METRICS[name]
