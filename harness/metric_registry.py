"""The metric registry: one :class:`MetricSpec` per metric column of ``items.parquet`` (DESIGN §6).

Everything else about a metric is derived from its record: the metric columns and their order
(:func:`metric_columns`), report headers and figure axis labels (:attr:`MetricSpec.label`,
:attr:`MetricSpec.axis`), the rate it is computed at, the ``compare`` tolerance in its own unit, which
statuses it may record, whether it is opt-in (``eval --metrics +name`` or ``+group``), and the function
that computes it.

Adding a metric is one function and one declaration: a function ``fn(ref, est, mix, sample_rate, *,
interferer=None) -> (values, status)`` (``ref``/``est``/``mix``/``interferer``: float32 ``(n,)`` mono
or ``(n, c)`` at ``sample_rate`` Hz; ``values`` maps each column it produces to a float, NaN where not
computable; ``status`` is ``"ok"`` or one of the metric's declared statuses), and a
:class:`MetricSpec` passed to :func:`register_metric` (or added to :data:`METRICS` before the eval).
Functions are named as ``"module:function"`` strings and imported only when the metric is requested,
so a missing optional module (``speechmos``) fails only the run that asks for its metric.

Per-metric status: a metric that fails on one item leaves its own columns NaN and records its status in
the item's ``metric_status`` column (``"pesq=pesq_too_short;bss_sdr=bss_failed"``: ``column=status``
pairs for the metrics that are not ``ok``; ``""`` when all are ok); the other metrics of the item keep
their values. The row's ``status`` keeps its meaning (the signal checks; when they pass, the first
failing metric's status, as before), and aggregates use a row's value of a metric when the row's status is
``ok`` or a metric-level status and its ``metric_status`` does not name that metric
(:func:`usable_mask`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import bss as _bss  # light modules: statuses only; their libraries load lazily
from harness import speech as _speech
from harness.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class MetricSpec:
    """One metric column.

    Attributes:
        name: column name in ``items.parquet`` (``"sdri"``, ``"pesq"``, ``"csig"``).
        label: report header (``"SDRi"``).
        unit: ``"dB"``, ``"MOS"`` (1..5 mean-opinion-score-like), ``"rate"``, ``""`` (unitless).
        higher_is_better: the direction ``compare`` treats as an improvement.
        tolerance: default ``compare`` tolerance, in :attr:`unit`.
        sample_rate: the rate the metric is computed at: ``"set"`` (the evaluation set's rate),
            ``"system"`` (the system's output rate) or an int in Hz (the signals are resampled to it).
        improvement: the column is ``metric(est) − metric(mixture)`` of :attr:`base` (``sdri`` of ``sdr``).
        base: the metric an improvement column improves (``None`` otherwise).
        statuses: statuses other than ``"ok"`` the metric may record for an item.
        opt_in: computed only when asked for (``eval --metrics +name``), not by a dataset's default list.
        group: a name that selects several metrics at once (``+bss`` → ``bss_sdr``, ``bss_sir``, ``bss_sar``).
        fn: ``"module:function"`` computing it (see the module docstring); several columns may name the
            same function (it is called once per item for all of them); ``None``: computed elsewhere
            (the scoring core for the SDR family, a protocol such as the absent-query one).
        needs_interferer: the function needs the item's interferer (two-source items only).
        resamples_itself: the function is given the signals at the set's rate and resamples them
            itself (PESQ: float64 soxr HQ inside :func:`harness.metrics.pesq_wb_status`); otherwise the
            scoring core resamples them to :meth:`rate` with :func:`harness.audio.resample` first.
        in_every_part: every part file uss-bench ever wrote has this column (the eight columns of the
            first schema): a part without it was edited or truncated and ``--resume`` refuses it (issue 15
            #18). A metric declared later is ``False``: a part written before it existed lacks the column,
            and its rows get NaN (an older run folder still resumes).
        description: one line for docs and ``results.json``; the source of its definition.
        axis_label: figure axis label; default ``"<label> (<unit>)"``.
        options: keys of the scored dataset configuration passed to the function as keyword arguments
            when present (``musdb_protocol`` for the MUSDB SDR: ``eval --musdb-protocol``).
    """

    name: str
    label: str
    unit: str
    higher_is_better: bool
    tolerance: float
    sample_rate: str | int = "set"
    improvement: bool = False
    base: str | None = None
    statuses: tuple[str, ...] = ()
    opt_in: bool = False
    group: str | None = None
    fn: str | None = None
    needs_interferer: bool = False
    resamples_itself: bool = False
    in_every_part: bool = False
    description: str = ""
    axis_label: str | None = None
    options: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def axis(self) -> str:
        """Figure axis label (``"SDRi (dB)"``)."""
        if self.axis_label:
            return self.axis_label
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def rate(self, set_rate: int, system_rate: int | None = None) -> int:
        """The rate (Hz) this metric is computed at on a set of ``set_rate`` Hz."""
        if self.sample_rate == "set":
            return int(set_rate)
        if self.sample_rate == "system":
            return int(system_rate if system_rate is not None else set_rate)
        return int(self.sample_rate)

    def function(self) -> Callable:
        """The metric function, imported now.

        Raises:
            ConfigError: no function is declared, or its module/attribute cannot be imported (names the
                metric and the module, e.g. an optional package that is not installed).
        """
        if self.fn is None:
            raise ConfigError(f"metric {self.name!r} has no function: it is computed by the scoring core or a protocol")
        module, _, attr = self.fn.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"metric {self.name!r} needs {self.fn} which cannot be imported ({exc}); "
                              f"install the extra that provides it or drop the metric") from exc


_DB = "dB"
_SIG = ("length_mismatch", "ref_nonfinite", "est_nonfinite", "ref_silent", "metric_nonfinite")
"""Row-level statuses of the signal checks (:func:`harness.metrics.check_signals`) and of the SDR family."""

METRICS: dict[str, MetricSpec] = {}
"""Every metric column, keyed by column name, in ``items.parquet`` order."""


def register_metric(spec: MetricSpec, replace: bool = False) -> MetricSpec:
    """Add ``spec`` to :data:`METRICS`; returns it.

    Raises:
        ConfigError: a metric of that name exists (and not ``replace``), or an improvement names no base.
    """
    if spec.name in METRICS and not replace:
        raise ConfigError(f"metric {spec.name!r} is declared twice")
    if spec.improvement and spec.base is None:
        raise ConfigError(f"metric {spec.name!r}: an improvement column needs `base`")
    METRICS[spec.name] = spec
    return spec


for _spec in (
    MetricSpec("sdr", "SDR", _DB, True, 0.1, fn=None, in_every_part=True, statuses=_SIG,
               description="10 log10(mean(s²)/mean((s−ŝ)²)), 1e-10 floors (paper eq. 12)"),
    MetricSpec("sdri", "SDRi", _DB, True, 0.1, improvement=True, base="sdr", statuses=_SIG,
               in_every_part=True,
               description="SDR(s, ŝ) − SDR(s, x) (paper eq. 13)"),
    MetricSpec("si_sdr", "SI-SDR", _DB, True, 0.1, statuses=_SIG, in_every_part=True,
               description="scale-invariant SDR (Le Roux et al. 2019)"),
    MetricSpec("si_sdri", "SI-SDRi", _DB, True, 0.1, improvement=True, base="si_sdr", statuses=_SIG,
               in_every_part=True,
               description="SI-SDR(s, ŝ) − SI-SDR(s, x)"),
    MetricSpec("musdb_sdr", "SDR", _DB, True, 0.1, fn="harness.scoring:musdb_item", in_every_part=True, options=("musdb_protocol",),
               axis_label="SDR (dB, BSSEval v4 framewise median)",
               description="BSSEval v4 image SDR, 1-s frames, median over frames (museval)"),
    MetricSpec("musdb_sdri", "SDRi", _DB, True, 0.1, improvement=True, base="musdb_sdr", in_every_part=True,
               fn="harness.scoring:musdb_item", options=("musdb_protocol",), axis_label="SDRi (dB, framewise)",
               description="framewise-median SDR of the estimate minus that of the mixture"),
    MetricSpec("pesq", "PESQ", "MOS", True, 0.05, sample_rate=16000, fn="harness.scoring:pesq_item",
               resamples_itself=True, in_every_part=True,
               statuses=("pesq_too_short", "pesq_too_long", "pesq_est_silent", "pesq_no_utterances", "pesq_error",
                         "pesq_crashed"),
               axis_label="PESQ (MOS-LQO, P.862.2 wide band)",
               description="ITU-T P.862.2 wide-band PESQ, MOS-LQO (pesq package)"),
    MetricSpec("ssnr", "SSNR", _DB, True, 0.1, sample_rate=16000, fn="harness.scoring:ssnr_item", in_every_part=True,
               description="segmental SNR, 30-ms frames, 75 % overlap, clipped to [−10, 35] dB (Loizou)"),
    MetricSpec("csig", "CSIG", "MOS", True, 0.05, sample_rate=16000, fn="harness.speech:composite",
               statuses=_speech.COMPOSITE_STATUSES, description="composite signal distortion (Hu & Loizou 2008), 1..5"),
    MetricSpec("cbak", "CBAK", "MOS", True, 0.05, sample_rate=16000, fn="harness.speech:composite",
               statuses=_speech.COMPOSITE_STATUSES, description="composite background intrusiveness (Hu & Loizou 2008), 1..5"),
    MetricSpec("covl", "COVL", "MOS", True, 0.05, sample_rate=16000, fn="harness.speech:composite",
               statuses=_speech.COMPOSITE_STATUSES, description="composite overall quality (Hu & Loizou 2008), 1..5"),
    MetricSpec("stoi", "STOI", "", True, 0.01, sample_rate=16000, fn="harness.speech:stoi",
               statuses=_speech.STOI_STATUSES, description="short-time objective intelligibility (pystoi, 10 kHz inside), 0..1"),
    # opt-in: pystoi's ESTOI moves in its last bits (≤ 4e-16) with the memory alignment of the arrays numpy
    # allocates inside it, so it is the one metric not bit-identical between runs; STOI is.
    MetricSpec("estoi", "ESTOI", "", True, 0.01, sample_rate=16000, fn="harness.speech:stoi", opt_in=True,
               group="estoi", statuses=_speech.STOI_STATUSES,
               description="extended STOI (pystoi extended=True), 0..1; not bit-reproducible (last bits)"),
    MetricSpec("dnsmos_sig", "DNSMOS SIG", "MOS", True, 0.05, sample_rate=16000, fn="harness.speech:dnsmos",
               opt_in=True, group="dnsmos", statuses=_speech.DNSMOS_STATUSES,
               description="DNSMOS P.835 speech quality (speechmos, non-intrusive)"),
    MetricSpec("dnsmos_bak", "DNSMOS BAK", "MOS", True, 0.05, sample_rate=16000, fn="harness.speech:dnsmos",
               opt_in=True, group="dnsmos", statuses=_speech.DNSMOS_STATUSES,
               description="DNSMOS P.835 background quality (speechmos, non-intrusive)"),
    MetricSpec("dnsmos_ovrl", "DNSMOS OVRL", "MOS", True, 0.05, sample_rate=16000, fn="harness.speech:dnsmos",
               opt_in=True, group="dnsmos", statuses=_speech.DNSMOS_STATUSES,
               description="DNSMOS P.835 overall quality (speechmos, non-intrusive)"),
    MetricSpec("bss_sdr", "BSS SDR", _DB, True, 0.1, fn="harness.bss:bss_sources", opt_in=True, group="bss",
               statuses=_bss.BSS_STATUSES,
               description="BSS-eval sources SDR, target and interferer as references (mir_eval bss_eval_sources)"),
    MetricSpec("bss_sir", "BSS SIR", _DB, True, 0.1, fn="harness.bss:bss_sources", opt_in=True, group="bss",
               statuses=_bss.BSS_STATUSES,
               description="BSS-eval sources SIR (mir_eval bss_eval_sources)"),
    MetricSpec("bss_sar", "BSS SAR", _DB, True, 0.1, fn="harness.bss:bss_sources", opt_in=True, group="bss",
               statuses=_bss.BSS_STATUSES,
               description="BSS-eval sources SAR (mir_eval bss_eval_sources)"),
    MetricSpec("residual_db", "Residual", _DB, False, 0.1, fn=None, opt_in=True, group="absent",
               description="energy of the output for an absent query relative to the mixture (issue 12), lower is better"),
    MetricSpec("false_activation", "False activation", "rate", False, 0.01, fn=None, opt_in=True, group="absent",
               description="share of absent-query items whose output is not silent (issue 12), lower is better"),
):
    register_metric(_spec)
del _spec


def metric_spec(name: str) -> MetricSpec:
    """The record of metric column ``name``.

    Raises:
        ConfigError: unknown metric, with "did you mean …" and the list of metrics.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}{did_you_mean(name, METRICS)} "
                          f"(choose from {', '.join(METRICS)})") from None


def metric_columns() -> tuple[str, ...]:
    """Every metric column of ``items.parquet``, in declaration order (read at call time, so a metric
    registered later is included)."""
    return tuple(METRICS)


def metric_statuses() -> frozenset[str]:
    """Every metric-level status a metric may record (a row with one of them is still usable for the
    other metrics)."""
    return frozenset(s for m in METRICS.values() for s in m.statuses if s not in _SIG)


def groups() -> dict[str, tuple[str, ...]]:
    """``{group: its metrics}`` (``"bss"`` → ``("bss_sdr", "bss_sir", "bss_sar")``)."""
    out: dict[str, list[str]] = {}
    for m in METRICS.values():
        if m.group:
            out.setdefault(m.group, []).append(m.name)
    return {g: tuple(v) for g, v in out.items()}


def resolve_metrics(defaults: list[str] | tuple[str, ...], requested: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The metrics scored on a dataset: its declared ``defaults`` changed by ``requested``.

    ``requested`` items are ``+name`` / ``+group`` (add), ``-name`` / ``-group`` (remove) or a bare
    ``name``/``group`` (add). Returned in declaration order.

    Raises:
        ConfigError: an unknown metric or group ("did you mean …").
    """
    wanted = {metric_spec(m).name for m in defaults}
    grp = groups()
    for raw in requested:
        for tok in str(raw).split(","):
            tok = tok.strip()
            if not tok:
                continue
            sign, name = (tok[0], tok[1:]) if tok[0] in "+-" else ("+", tok)
            if name in grp:
                names = set(grp[name])
            elif name in METRICS:
                names = {name}
            else:
                choices = list(dict.fromkeys([*METRICS, *grp]))  # a group may share its metric's name (estoi)
                raise ConfigError(f"unknown metric or group {name!r}{did_you_mean(name, choices)} "
                                  f"(choose from {', '.join(choices)})")
            wanted = wanted | names if sign == "+" else wanted - names
    return [m for m in METRICS if m in wanted]


def format_metric_status(statuses: dict[str, str]) -> str:
    """``{"pesq": "pesq_too_short"}`` → ``"pesq=pesq_too_short"`` (ok entries left out, sorted by
    declaration order)."""
    order = {m: i for i, m in enumerate(METRICS)}
    bad = sorted(((k, v) for k, v in statuses.items() if v != "ok"), key=lambda kv: order.get(kv[0], len(order)))
    return ";".join(f"{k}={v}" for k, v in bad)


def parse_metric_status(text: str | None) -> dict[str, str]:
    """Inverse of :func:`format_metric_status` (``""``/``None``/NaN → ``{}``)."""
    if not isinstance(text, str) or not text:
        return {}
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def usable_mask(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """Rows whose value of ``metric`` may enter an aggregate: finite, the row's ``status`` is ``ok`` or a
    metric-level status (another metric failed), and its ``metric_status`` does not name ``metric``.

    A frame without the ``metric`` column (an older run) gives an all-False mask; without
    ``metric_status`` only ``status == "ok"`` rows count (as before per-metric statuses).
    """
    n = len(rows)
    if metric not in rows.columns:
        return np.zeros(n, bool)
    values = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(values)
    status = rows["status"].astype(str).to_numpy() if "status" in rows.columns else np.full(n, "ok")
    if "metric_status" not in rows.columns:
        return finite & (status == "ok")
    ms = rows["metric_status"].to_numpy()
    metric_level = metric_statuses()
    own = np.array([metric in parse_metric_status(s) for s in ms], bool) if n else np.zeros(0, bool)
    status_ok = (status == "ok") | np.isin(status, list(metric_level))
    return finite & status_ok & ~own
