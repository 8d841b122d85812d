"""Dataset declarations: ``datasets/<name>.toml`` (protocol constants, label rule, metrics, report columns).

The TOML files are data, not code (DESIGN §2): changing a protocol constant is a reviewed change of a
declaration, and every build records the declaration it used in ``build.json``.

The corpus registry (:data:`harness.datasets.CORPORA`) is the only list of dataset names; everything that
differs between datasets is read from the declaration, which is validated against :data:`SCHEMA`: an
unknown key is an error naming the file and the key ("did you mean …"), every key is read somewhere.
Keys (top level unless said):

============================  ====================================================================
``name``                      the corpus name (must equal the file's)
``sample_rate``               Hz of the evaluation set (its rows, the SDR family)
``segment_seconds``           s, length of a fixed-length item
``items_per_class``           items per class of a clip (or Slakh) set
``seed``                      the build seed
``query_split``               the split the query embeddings are averaged over
``anchor``                    ``sed | energy | random``: the default anchor mode of a clip build
``label_rule``                ``all-tags`` (a clip is an item/query of every class it carries, AudioSet)
                              or ``primary`` (its first label only, FSD)
``query_modes``               the conditions a USS system runs on the set (``["oracle", "average"]``)
``virtual``                   whole tracks read from the corpus files (no audio copy)
``silence_removal_for_queries``  remove silence from query clips before embedding them
``frame_peak``/``min_frames`` Slakh2100 frame rule (peak of an active 2-s frame; frames a class needs)
``metrics``                   the metric columns scored (names of :mod:`harness.metric_registry`)
``aggregate``                 the default aggregation of its report columns (:mod:`harness.aggregations`)
``figure_metrics``            the metric(s) of its per-class figure
``class_table_metrics``       the metrics of its per-class table
``demo_folder``               its folder under ``datasets/demo``
``fit``                       ``"tile"``: how a short clip fills a segment (the only rule implemented)
``protocol``                  ``"uss-paper"``: the build protocol (the only one implemented)
``[mixing]``                  ``sources`` (2), ``exclude_target_class`` (true), ``energy_match``,
                              ``gain_min``, ``gain_max``
``[small_classes]``           ``rule`` (``"repeat"``), ``max_uses_per_clip``
``[[columns]]``               report columns: ``key``, ``header``, ``metric``, ``conditions``
                              (preference order), optional ``aggregate``
============================  ====================================================================

Keys marked with a single allowed value (``fit``, ``protocol``, ``sources``, ``exclude_target_class``,
``rule``) state the protocol the code implements; another value is refused rather than ignored.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, check_choice, did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout (or source tree) holding ``datasets/``, ``models/`` and ``reports/``."""

DATASETS_DIR = REPO_ROOT / "datasets"


def dataset_names() -> tuple[str, ...]:
    """Dataset names on the command line, in the corpus registry's order (the paper's Table 2 order),
    read at call time (a corpus registered later is included)."""
    from harness.datasets import CORPORA

    return tuple(CORPORA)


def __getattr__(name: str):
    # DATASET_NAMES is derived from the corpus registry at each access.
    if name == "DATASET_NAMES":
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def declaration_path(name: str) -> Path:
    """The TOML of dataset ``name``: its reader's ``declaration``, else ``datasets/<name>.toml``.

    Raises:
        ConfigError: unknown dataset name ("did you mean …").
    """
    from harness.datasets import CORPORA

    check_choice("dataset", name, CORPORA)
    own = getattr(CORPORA[name], "declaration", None)
    return Path(own) if own is not None else DATASETS_DIR / f"{name}.toml"


# -- the schema ------------------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_str_list(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_TYPES = {"int": (_is_int, "an integer"), "num": (_is_num, "a number"), "str": (lambda v: isinstance(v, str), "a string"),
          "bool": (lambda v: isinstance(v, bool), "true or false"), "strs": (_is_str_list, "a list of strings")}

TOP_KEYS: dict[str, tuple[str, Any]] = {
    # key: (type, required / default / fixed value); "required" keys must be present
    "name": ("str", "required"),
    "sample_rate": ("int", "required"),
    "segment_seconds": ("num", "required"),
    "seed": ("int", "required"),
    "metrics": ("strs", "required"),
    "aggregate": ("str", "required"),
    "items_per_class": ("int", None),
    "query_split": ("str", "train"),
    "anchor": ("str", None),
    "label_rule": ("str", "primary"),
    "query_modes": ("strs", ["average"]),
    "virtual": ("bool", False),
    "silence_removal_for_queries": ("bool", False),
    "frame_peak": ("num", None),
    "min_frames": ("int", None),
    "figure_metrics": ("strs", None),
    "class_table_metrics": ("strs", None),
    "demo_folder": ("str", None),
    "fit": ("str", ("fixed", "tile")),
    "protocol": ("str", ("fixed", "uss-paper")),
}
"""Top-level keys of a dataset TOML: ``(type, "required" | default | ("fixed", the only value))``."""

TABLE_KEYS: dict[str, dict[str, tuple[str, Any]]] = {
    "mixing": {"sources": ("int", ("fixed", 2)), "exclude_target_class": ("bool", ("fixed", True)),
               "energy_match": ("bool", True), "gain_min": ("num", "required"), "gain_max": ("num", "required")},
    "small_classes": {"rule": ("str", ("fixed", "repeat")), "max_uses_per_clip": ("int", 1)},
}
"""Keys of the ``[mixing]`` and ``[small_classes]`` tables."""

COLUMN_KEYS: dict[str, tuple[str, Any]] = {
    "key": ("str", "required"), "header": ("str", "required"), "metric": ("str", "required"),
    "conditions": ("strs", ["average", "oracle", "none"]), "aggregate": ("str", None),
}
"""Keys of each ``[[columns]]`` report column."""

LABEL_RULES = ("all-tags", "primary")
ANCHORS = ("sed", "energy", "random")


def _check_table(table: dict, spec: dict[str, tuple[str, Any]], path: Path, where: str) -> dict:
    """Unknown keys, types, fixed values and defaults of one table; returns it with defaults filled."""
    for key in table:
        if key not in spec:
            raise ConfigError(f"{path}: unknown key {where}{key!r}{did_you_mean(key, spec)} "
                              f"(known: {', '.join(spec)})")
    out = dict(table)
    for key, (kind, rule) in spec.items():
        if key not in table:
            if rule == "required":
                raise ConfigError(f"{path}: missing key {where}{key!r} ({_TYPES[kind][1]})")
            if isinstance(rule, tuple):
                out[key] = rule[1]
            else:
                out[key] = list(rule) if isinstance(rule, list) else rule
            continue
        check, what = _TYPES[kind]
        if not check(table[key]):
            raise ConfigError(f"{path}: {where}{key} = {table[key]!r} must be {what}")
        if isinstance(rule, tuple) and table[key] != rule[1]:
            raise ConfigError(f"{path}: {where}{key} = {table[key]!r} is not implemented; the only supported "
                              f"value is {rule[1]!r}")
    return out


def validate_dataset_config(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check a parsed dataset TOML against the schema and fill its defaults.

    Returns:
        the declaration with every optional key present (defaults), ``columns`` a list of dicts with
        ``aggregate`` filled from the top-level ``aggregate``.

    Raises:
        ConfigError: naming ``path`` and the key: unknown key ("did you mean …"), missing required key,
            wrong type, a value other than a fixed key's only value, an unknown metric, aggregation,
            label rule or anchor mode.
    """
    from harness.aggregations import aggregation
    from harness.metric_registry import metric_spec

    allowed = {**TOP_KEYS, **{k: ("table", None) for k in TABLE_KEYS}, "columns": ("columns", [])}
    for key in cfg:
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(key, allowed)} (known: {', '.join(allowed)})")
    out = _check_table({k: v for k, v in cfg.items() if k in TOP_KEYS}, TOP_KEYS, path, "")
    for name, spec in TABLE_KEYS.items():
        if name in cfg:
            if not isinstance(cfg[name], dict):
                raise ConfigError(f"{path}: {name} must be a table ([{name}])")
            out[name] = _check_table(cfg[name], spec, path, f"{name}.")
    columns = cfg.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        raise ConfigError(f"{path}: columns must be an array of tables ([[columns]])")
    out["columns"] = [_check_table(c, COLUMN_KEYS, path, f"columns[{i}].") for i, c in enumerate(columns)]

    def known(what: str, fn, value: str) -> None:
        try:
            fn(value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {what}: {exc}") from None

    for m in out["metrics"]:
        known("metrics", metric_spec, m)
    known("aggregate", aggregation, out["aggregate"])
    known("label_rule", lambda v: check_choice("label rule", v, LABEL_RULES), out["label_rule"])
    if out.get("anchor") is not None:
        known("anchor", lambda v: check_choice("anchor mode", v, ANCHORS), out["anchor"])
    for i, col in enumerate(out["columns"]):
        known(f"columns[{i}].metric", metric_spec, col["metric"])
        if col["metric"] not in out["metrics"]:
            raise ConfigError(f"{path}: columns[{i}].metric {col['metric']!r} is not in metrics {out['metrics']}")
        col["aggregate"] = col["aggregate"] or out["aggregate"]
        known(f"columns[{i}].aggregate", aggregation, col["aggregate"])
    headline = list(dict.fromkeys(c["metric"] for c in out["columns"])) or out["metrics"][:1]
    for key in ("figure_metrics", "class_table_metrics"):
        out[key] = out[key] if out[key] is not None else headline
        for m in out[key]:
            known(key, metric_spec, m)
    out["demo_folder"] = out["demo_folder"] or out["name"]
    return out


def load_dataset_config(name: str) -> dict[str, Any]:
    """Read and validate the declaration of dataset ``name`` (:func:`declaration_path`).

    Returns:
        The validated table with defaults filled (keys as in the module docstring: ``sample_rate`` Hz,
        ``segment_seconds`` s, ``items_per_class``, ``seed``, ``metrics``, ``aggregate``, ``columns``,
        ``[mixing]``, ``[small_classes]``…).

    Raises:
        ConfigError: unknown dataset name, missing or malformed TOML, a key the schema does not know
            (naming the file and the key), a wrong value.
    """
    path = declaration_path(name)
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is None or key not in _CACHE:
        cfg = read_toml(path, f"dataset declaration {path} is missing; is the checkout complete?")
        if cfg.get("name") != name:
            raise ConfigError(f"{path}: name = {cfg.get('name')!r}, expected {name!r}")
        cfg = validate_dataset_config(cfg, path)
        if key is None:
            return cfg
        _CACHE[key] = cfg
    return copy.deepcopy(_CACHE[key])


_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}
"""Validated declarations by (file, mtime, size): reports derive their columns from them many times."""


def class_labels(cfg: dict[str, Any], labels: tuple[str, ...]) -> tuple[str, ...]:
    """The classes a clip with ``labels`` (primary first) counts for under the dataset's ``label_rule``:
    all of them (``all-tags``) or the primary one (``primary``)."""
    return tuple(labels) if cfg["label_rule"] == "all-tags" else tuple(labels[:1])


def read_toml(path: Path, missing: str) -> dict:
    """Parse a TOML file.

    Args:
        path: the file.
        missing: the error message when the file does not exist (say what to do).

    Raises:
        ConfigError: ``missing`` when the file is absent; the file and the parser's message when it is not
            valid TOML.
    """
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
