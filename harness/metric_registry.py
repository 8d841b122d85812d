# PLACEHOLDER: replaced by helper A's registry at merge
"""Metric registry (placeholder with the shared contract's API, for the columns ``compare`` gates on)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import check_choice


@dataclass(frozen=True)
class MetricSpec:
    """One metric column."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    tolerance: float
    """Default ``compare`` tolerance in the metric's own unit."""


METRICS: dict[str, MetricSpec] = {s.name: s for s in (
    MetricSpec("sdr", "SDR", "dB", True, 0.1),
    MetricSpec("sdri", "SDRi", "dB", True, 0.1),
    MetricSpec("si_sdr", "SI-SDR", "dB", True, 0.1),
    MetricSpec("si_sdri", "SI-SDRi", "dB", True, 0.1),
    MetricSpec("musdb_sdr", "SDR", "dB", True, 0.1),
    MetricSpec("musdb_sdri", "SDRi", "dB", True, 0.1),
    MetricSpec("pesq", "PESQ", "MOS", True, 0.02),
    MetricSpec("ssnr", "SSNR", "dB", True, 0.1),
)}


def metric_spec(name: str) -> MetricSpec:
    """The record of column ``name``. Raises ConfigError with "did you mean"."""
    return METRICS[check_choice("metric", name, METRICS)]
