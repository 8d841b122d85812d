"""Protocols beyond the paper's: the absent-query test and the query-modality matrix (issue 12 items 1-2).

The paper's Table 2 asks how well a *present* class is extracted. Two more questions are asked here on
the same built sets, so that every item is scored under each condition and the rows pair by ``item_id``:

- **Absent query** (``eval --query-protocol absent``): besides its usual rows, every item gets a row of
  condition :data:`ABSENT` whose query is a class in neither the target's nor the interferer's labels
  (AudioSet: none of either clip's labels; a track corpus: none of the track's sources). The class is drawn
  per item by ``numpy.random.default_rng(SeedSequence([seed, crc32(dataset), crc32(item_id)]))`` from the
  classes the system has a query for (sorted in vocabulary order), so the choice does not depend on the
  workers, the batch or the resume point; ``seed`` is the dataset TOML's ``seed``. The row's
  ``query_label`` is that class. It is scored by the output's energy relative to the mixture's,
  ``residual_db = 10 log10(Σŷ² / Σx²)`` (dB, lower is better; ``-inf`` for an all-zero output, kept as a
  value), and ``false_activation`` = 1 when ``residual_db > -20`` dB (FUSS's activity threshold), else 0.
  An item with no class left to query is a row of status :data:`NO_ABSENT_CLASS` (MUSDB18 and Voicebank
  mixtures hold every class of their vocabulary); ``no_query`` when the system has a query for no class.
- **Query-modality matrix** (``eval --query-modes oracle,average,audio-shots:1,audio-shots:5,label``):
  the same items under each listed query mode that the system declares; ``audio-shots:K`` is mode
  ``audio-shots`` with ``K`` example clips per class from the query split (:class:`harness.queries.ShotBank`,
  drawn with the dataset's seed; file list and digest recorded in ``run.json`` and ``results.json``). The
  report shows the Table 2 metric per mode and dataset with the paired difference to mode ``oracle``
  (95 % paired percentile bootstrap, seeded).

Both are put in front of a system by :func:`wrap_system` (a :class:`ProtocolSystem` that owns the extra
conditions); the paper protocol (no option given) runs the system itself, unchanged.

Which query an absent class gets, per query mode: ``average`` its eq. 9 embedding, ``label`` / ``text`` its
id / display name, ``audio-shots`` one example clip of it (``audio-shots:1``'s), ``oracle`` (a system with no other mode) one example
clip of it from the query split as the query source (the true "target" of an absent class is silence,
which has no meaningful embedding); an oracle *system* (``is_oracle``, e.g. the IRM) receives an all-zero
target, the absent class's true source. Modes ``none``: the query is ignored (the mixture baseline).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import ConfigError

ABSENT = "absent"
"""Condition of the absent-query rows (``eval --query-protocol absent``)."""

PROTOCOLS = ("present", ABSENT)
"""``eval --query-protocol`` choices: ``present`` is the paper's protocol (the default, unchanged)."""

RESIDUAL_COLUMNS = ("residual_db", "false_activation")
"""Metric columns of the absent rows (declared in :mod:`harness.metric_registry`); NaN on other rows."""

FALSE_ACTIVATION_DB = -20.0
"""An output above this energy relative to the mixture (dB) is a false activation (FUSS's threshold)."""

NO_ABSENT_CLASS = "no_absent_class"
"""Status of an absent row whose mixture already holds every class the system has a query for."""

SHOTS_PREFIX = "audio-shots:"

PAIRED_RESAMPLES = 1000
PAIRED_SEED = 0


# -- scoring ---------------------------------------------------------------------------------------


def residual_db(est: np.ndarray, mix: np.ndarray) -> float:
    """``10 log10(Σ est² / Σ mix²)`` in dB, sums in float64.

    Args:
        est: the output, float32 ``(L,)`` (or any shape; all samples are summed).
        mix: the mixture, same number of samples.

    Returns:
        the residual in dB; ``-inf`` when ``est`` is all zeros; NaN when ``mix`` is all zeros (no reference
        energy). Identical arrays give exactly ``0.0``.
    """
    e = float(np.sum(np.square(np.asarray(est, dtype=np.float64))))
    m = float(np.sum(np.square(np.asarray(mix, dtype=np.float64))))
    if m == 0.0:
        return float("nan")
    if e == 0.0:
        return float("-inf")
    return 10.0 * math.log10(e / m)


def score_absent(ests: Sequence[np.ndarray], mixes: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Rows of absent-query items: the SDR columns NaN, ``residual_db`` and ``false_activation`` set.

    Args:
        ests, mixes: ``N`` outputs and mixtures (float32 ``(L_i,)``), at the set's rate.

    Returns:
        ``N`` dicts of every metric column and ``status`` (``ok``; ``mix_silent`` when the mixture is all
        zeros: no residual is defined).
    """
    from harness.scoring import unscored

    out = []
    for est, mix in zip(ests, mixes, strict=True):
        row = unscored("ok")
        r = residual_db(est, mix)
        if np.isnan(r):
            row["status"] = "mix_silent"
        else:
            row["residual_db"] = r
            row["false_activation"] = float(r > FALSE_ACTIVATION_DB)
        out.append(row)
    return out


# -- conditions ------------------------------------------------------------------------------------


def parse_query_modes(text: str | None, shots: int = 3) -> list[str] | None:
    """``"oracle,average,audio-shots:1"`` → ``["oracle", "average", "audio-shots:1"]`` (``None`` for none).

    ``audio-shots`` without a count becomes ``audio-shots:<shots>`` (``eval --shots``).

    Raises:
        ConfigError: an unknown mode, a bad shot count, a mode given twice, or an empty list.
    """
    from harness.queries import QUERY_MODES

    if text is None:
        return None
    modes = []
    for raw in text.split(","):
        mode = raw.strip()
        base, sep, k = mode.partition(":")
        if base not in QUERY_MODES or (sep and base != "audio-shots"):
            from harness.errors import did_you_mean

            raise ConfigError(f"--query-modes: unknown mode {mode!r}{did_you_mean(base, QUERY_MODES)} (choose from "
                              f"{', '.join(QUERY_MODES)}; audio-shots:K for K example clips)")
        if base == "audio-shots":
            if sep and (not k.isdigit() or int(k) < 1):
                raise ConfigError(f"--query-modes: {mode!r}: write audio-shots:K with K ≥ 1 example clips")
            mode = f"{SHOTS_PREFIX}{int(k) if sep else int(shots)}"
        if mode in modes:
            raise ConfigError(f"--query-modes: {mode} given twice")
        modes.append(mode)
    if not modes:
        raise ConfigError("--query-modes: give at least one mode, e.g. oracle,average,audio-shots:1")
    return modes


def base_mode(condition: str) -> str:
    """The query mode of a condition: ``audio-shots:5`` → ``audio-shots``; others as written."""
    return "audio-shots" if condition.startswith(SHOTS_PREFIX) else condition


def shot_count(condition: str) -> int | None:
    """``K`` of ``audio-shots:K``, else ``None``."""
    return int(condition[len(SHOTS_PREFIX):]) if condition.startswith(SHOTS_PREFIX) else None


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def absent_rng(seed: int, dataset: str, item_id: str) -> np.random.Generator:
    """The generator of one item's absent class: ``SeedSequence([seed, crc32(dataset), crc32(item_id)])``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _crc(dataset), _crc(str(item_id))]))


def draw_absent(candidates: Sequence[str], present: set[str], seed: int, dataset: str, item_id: str) -> str | None:
    """The absent class of one item: uniform over ``candidates`` (in their order) minus ``present``.

    Returns:
        the label, or ``None`` when every candidate is present.
    """
    pool = [c for c in candidates if c not in present]
    if not pool:
        return None
    return pool[int(absent_rng(seed, dataset, item_id).integers(len(pool)))]


def present_labels(evalset) -> dict[str, set[str]]:
    """``{item_id: labels in its mixture}``: the target's and the interferer's labels.

    Clip corpora: every label of the target clip and of the interferer clip (AudioSet clips carry several);
    track corpora: the labels of every source of the track. The manifest's ``label`` and
    ``interferer_label`` always count.
    """
    from harness.datasets import get_corpus
    from harness.mixtures import _rel

    corpus = get_corpus(evalset.dataset, evalset.corpus_root)
    root = evalset.corpus_root
    by_file: dict[str, set[str]] = {}
    if corpus.kind == "clips":
        for clip in corpus.clips(evalset.split):
            by_file[_rel(clip.audio, root)] = set(clip.labels)
    else:
        for track in corpus.tracks(evalset.split):
            labels = {s.label for s in track.sources}
            for ref in (track.mixture, *(s.audio for s in track.sources)):
                if ref is not None:
                    by_file[_rel(ref, root)] = labels
    out = {}
    for row in evalset.manifest.itertuples(index=False):
        labels = {str(row.label)}
        if isinstance(getattr(row, "interferer_label", None), str):
            labels.add(row.interferer_label)
        for col in ("target_file", "interferer_file", "mixture_file"):
            f = getattr(row, col, None)
            if isinstance(f, str):
                labels |= by_file.get(f, set())
        out[str(row.item_id)] = labels
    return out


# -- the wrapper system ----------------------------------------------------------------------------


class ProtocolSystem:
    """A system under the extra protocols: its conditions are the requested modes (and :data:`ABSENT`).

    Everything but the conditions is the wrapped system's (name, rate, checkpoint, ``separate``), so the
    parts, resume and provenance rules are those of the system itself. Built by :func:`wrap_system`.

    Args:
        inner: the system evaluated.
        sets: the opened evaluation sets (for the corpus roots and manifests).
        modes: the ``--query-modes`` conditions (:func:`parse_query_modes`), or ``None`` for the system's own.
        absent: add the :data:`ABSENT` condition.

    Raises:
        ConfigError: a requested mode the system does not declare (names the modes it has).
    """

    def __init__(self, inner, sets: Sequence[Any], modes: list[str] | None, absent: bool):
        from harness.config import load_dataset_config

        object.__setattr__(self, "inner", inner)
        self.modes, self.absent = modes, absent
        self.sets = {s.dataset: s for s in sets}
        if modes:
            missing = [m for m in modes if base_mode(m) not in inner.query_modes]
            if missing:
                raise ConfigError(f"--query-modes {','.join(missing)}: system {inner.name!r} has query modes "
                                  f"{', '.join(inner.query_modes)} only")
        self.seeds = {d: int(load_dataset_config(d).get("seed", 0)) for d in self.sets}
        self._banks: dict[tuple[str, int], Any] = {}
        self._absent: dict[str, dict[str, str | None]] = {}
        self._absent_info: dict[str, dict[str, Any]] = {}
        self._vocab: dict[str, list[str]] = {}

    # attributes of the wrapped system (name, sample_rate, is_oracle, checkpoint_sha256, separator...)
    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "inner"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("name", "args", "registry_name"):
            setattr(self.inner, name, value)
        else:
            object.__setattr__(self, name, value)

    @property
    def primary_mode(self) -> str:
        return self.inner.primary_mode

    def conditions(self, dataset: str) -> tuple[str, ...]:
        """The requested modes (or the system's own conditions), then :data:`ABSENT` when asked."""
        own = tuple(self.modes) if self.modes else tuple(self.inner.conditions(dataset))
        return own + ((ABSENT,) if self.absent else ())

    def absent_mode(self, dataset: str) -> str:
        """The query mode of the absent rows: the system's first condition on the set that is not ``oracle``
        (``average`` for a checkpoint), else ``oracle`` (then an example clip is the query source)."""
        own = [base_mode(c) for c in self.inner.conditions(dataset)]
        return next((c for c in own if c != "oracle"), own[0] if own else self.inner.primary_mode)

    def query_mode(self, condition: str, dataset: str) -> str:
        if condition == ABSENT:
            return self.absent_mode(dataset)
        return base_mode(condition)

    def prepare(self, dataset: str) -> None:
        self.inner.prepare(dataset)

    def average_embeddings(self, dataset: str):
        return self.inner.average_embeddings(dataset)

    def bank(self, dataset: str, k: int):
        """The :class:`~harness.queries.ShotBank` of ``k`` clips per class of a set (built once)."""
        from harness.queries import ShotBank

        key = (dataset, int(k))
        if key not in self._banks:
            evalset = self.sets[dataset]
            self._banks[key] = ShotBank(dataset, evalset.corpus_root, k, int(self.inner.sample_rate),
                                        seed=self.seeds[dataset])
        return self._banks[key]

    def vocabulary(self, dataset: str) -> list[str]:
        """The set's class vocabulary (read once)."""
        from harness.datasets import get_corpus

        if dataset not in self._vocab:
            self._vocab[dataset] = list(get_corpus(dataset, self.sets[dataset].corpus_root).vocabulary())
        return self._vocab[dataset]

    def _candidates(self, dataset: str) -> list[str]:
        """Classes the system has a query for in the absent mode, in vocabulary order."""
        vocab = self.vocabulary(dataset)
        mode = self.absent_mode(dataset)
        if mode == "average":
            have = set(self.inner.average_embeddings(dataset) or {})
        elif mode in ("audio-shots", "oracle"):
            have = {label for label, refs in self.bank(dataset, 1).groups.items() if refs}
        else:  # none, label, text: every class of the vocabulary can be named
            have = set(vocab)
        return [c for c in vocab if c in have]

    def absent_labels(self, dataset: str) -> dict[str, str | None]:
        """``{item_id: absent class or None}`` of every item of the set (drawn once, :func:`draw_absent`)."""
        if dataset not in self._absent:
            evalset = self.sets[dataset]
            cands = self._candidates(dataset)
            present = present_labels(evalset)
            seed = self.seeds[dataset]
            chosen = {i: draw_absent(cands, present.get(i, set()), seed, dataset, i)
                      for i in evalset.manifest["item_id"].astype(str)}
            self._absent[dataset] = chosen
            digest = hashlib.sha256("".join(f"{i}\0{c}\n" for i, c in chosen.items()).encode()).hexdigest()
            self._absent_info[dataset] = {
                "query_mode": self.absent_mode(dataset), "seed": seed, "candidate_classes": len(cands),
                "rule": "numpy default_rng(SeedSequence([seed, crc32(dataset), crc32(item_id)])) uniform over "
                        "the candidate classes (vocabulary order) not in the target's or interferer's labels",
                "items_without_absent_class": sum(c is None for c in chosen.values()),
                "choices_sha256": digest}
        return self._absent[dataset]

    def unscorable(self, items: pd.DataFrame, condition: str) -> dict[str, str]:
        dataset = items["dataset"].iloc[0]
        if condition == ABSENT:
            chosen = self.absent_labels(dataset)
            # no class to query at all (no query set) is no_query; every queryable class present: no_absent_class
            why = NO_ABSENT_CLASS if self._absent_info[dataset]["candidate_classes"] else "no_query"
            return {i: why for i in items["item_id"] if chosen.get(str(i)) is None}
        k = shot_count(condition)
        if k is not None:
            skip = dict(self.inner.unscorable(items, "audio-shots"))
            groups = self.bank(dataset, k).groups
            skip.update({i: "no_query" for i, label in zip(items["item_id"], items["label"], strict=True)
                         if not groups.get(label) and i not in skip})
            return skip
        return self.inner.unscorable(items, condition)

    def _call(self, mix, target, items, condition, queries):
        from harness.evaluate import _takes_queries

        if _takes_queries(self.inner):
            return self.inner.separate(mix, target, items, condition, queries=queries)
        return self.inner.separate(mix, target, items, condition)

    def separate(self, mixture, target, items, condition, queries=None):
        """The wrapped system's ``separate`` with the condition's queries (see the module docstring)."""
        from harness.queries import Query, display_name

        dataset = items["dataset"].iloc[0]
        k = shot_count(condition)
        if k is not None:
            bank = self.bank(dataset, k)
            queries = [replace(q, mode="audio-shots", shots=bank.shots(q.label, q.class_id)) for q in queries]
            return self._call(mixture, target, items, "audio-shots", queries)
        if condition != ABSENT:
            return self._call(mixture, target, items, condition, queries)
        mode = self.absent_mode(dataset)
        vocab = self.vocabulary(dataset)
        chosen = self.absent_labels(dataset)
        labels = [chosen[str(i)] for i in items["item_id"]]
        ids = [vocab.index(label) for label in labels]
        table = self.inner.average_embeddings(dataset) if mode == "average" else None
        bank = self.bank(dataset, 1) if mode in ("audio-shots", "oracle") else None
        qs = []
        for label, cid in zip(labels, ids, strict=True):
            shots = bank.shots(label, cid) if bank is not None else None
            qs.append(Query(mode, cid, label, display_name(label),
                            embedding=table.get(label) if table is not None else None,
                            oracle_source=shots[0] if mode == "oracle" else None,
                            shots=shots if mode == "audio-shots" else None))
        asked = items.assign(label=labels, class_id=ids)
        zeros = np.zeros_like(mixture) if self.inner.is_oracle else None  # an absent class's source is silence
        return self._call(mixture, zeros, asked, mode, qs)

    def record(self) -> dict[str, Any]:
        """Provenance for ``run.json`` / ``results.json``: the protocol, the absent draws, the shots drawn."""
        shots: dict[str, dict[str, Any]] = {}
        for (dataset, k), bank in sorted(self._banks.items()):
            root = str(bank.corpus.root)
            files = {}
            for label in sorted(bank.groups):
                cid = self._class_id(dataset, label)
                files[label] = [r.key().removeprefix(root).lstrip("/") for r in bank.chosen(label, cid)]
            digest = hashlib.sha256("".join(f"{label}\0{f}\n" for label, fs in files.items() for f in fs)
                                    .encode()).hexdigest()
            shots.setdefault(dataset, {})[f"{SHOTS_PREFIX}{k}"] = {
                "k": k, "split": bank.split, "seed": bank.seed, "files": files, "files_sha256": digest,
                "rule": "numpy default_rng([seed, class_id]).choice without replacement over the class's query-split "
                        "files sorted by key (all when fewer than k)"}
        return {"query_protocol": ABSENT if self.absent else "present", "query_modes": self.modes,
                "absent": dict(self._absent_info), "shots": shots}

    def _class_id(self, dataset: str, label: str) -> int:
        return self.vocabulary(dataset).index(label)


def wrap_system(system, opts, sets: Sequence[Any]):
    """``system`` under the protocols of ``opts`` (``query_protocol``, ``query_modes``); ``system`` itself
    when neither is asked (the paper protocol runs untouched).

    Raises:
        ConfigError: an unknown protocol, or a mode the system does not declare.
    """
    from harness.errors import check_choice

    protocol = check_choice("--query-protocol", getattr(opts, "query_protocol", "present") or "present", PROTOCOLS)
    modes = getattr(opts, "query_modes", None)
    if protocol == "present" and not modes:
        return system
    if isinstance(system, ProtocolSystem):
        return system
    return ProtocolSystem(system, sets, list(modes) if modes else None, protocol == ABSENT)


# -- aggregates and report ---------------------------------------------------------------------------


def _num(x: float) -> float | str | None:
    """A JSON value of a float: the number; ``"-inf"`` / ``"inf"`` for infinities; ``None`` for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    return float(x)


def json_ready(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with their float values as JSON allows them (:func:`_num`: NaN → null, ±inf → ``"±inf"``)."""
    return [{k: _num(v) if isinstance(v, float) else v for k, v in r.items()} for r in records]


def absent_summary(items: pd.DataFrame) -> list[dict[str, Any]]:
    """Per system and dataset, over the ``ok`` absent rows: items, median ``residual_db`` (``-inf`` kept: the
    median of values some of which are ``-inf``, by sorting) and the false-activation rate.

    Returns:
        dicts ``system, dataset, rows, items_ok, median_residual_db, false_activation_rate`` (floats;
        NaN when nothing is ``ok``).
    """
    out = []
    if "condition" not in items.columns or "residual_db" not in items.columns:
        return out
    rows = items[items["condition"] == ABSENT]
    for (system, dataset), sub in rows.groupby(["system", "dataset"], sort=False):
        ok = sub[(sub["status"] == "ok") & sub["residual_db"].notna()]
        out.append({"system": system, "dataset": dataset, "rows": len(sub), "items_ok": len(ok),
                    "median_residual_db": _median(ok["residual_db"].to_numpy(float)),
                    "false_activation_rate": float(ok["false_activation"].mean()) if len(ok) else float("nan")})
    return out


def absent_per_class(items: pd.DataFrame) -> list[dict[str, Any]]:
    """Per system, dataset and *queried* (absent) class: items, median residual, false-activation rate."""
    out = []
    if "residual_db" not in items.columns or "query_label" not in items.columns:
        return out
    rows = items[(items["condition"] == ABSENT) & (items["status"] == "ok") & items["residual_db"].notna()]
    for (system, dataset, label), sub in rows.groupby(["system", "dataset", "query_label"], sort=True):
        out.append({"system": system, "dataset": dataset, "query_label": label, "items_ok": len(sub),
                    "median_residual_db": _median(sub["residual_db"].to_numpy(float)),
                    "false_activation_rate": float(sub["false_activation"].mean())})
    return out


def _median(v: np.ndarray) -> float:
    """``np.median`` of the non-NaN values, ``-inf`` kept (the mean of two middle values ``-inf`` and ``x`` is
    ``-inf``); NaN for none."""
    v = v[~np.isnan(v)]
    return float(np.median(v)) if len(v) else float("nan")


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, metric: str, how: str,
                      resamples: int = PAIRED_RESAMPLES, seed: int = PAIRED_SEED) -> dict[str, Any]:
    """``aggregate(a) − aggregate(b)`` over the items ``ok`` in both, with a 95 % paired percentile bootstrap.

    Items are resampled with replacement (the same draw for both conditions; within each class for
    ``class-median-mean``, so every class stays), the aggregate difference computed per resample.

    Args:
        a, b: rows of one system and dataset under two conditions (``item_id``, ``label``, ``status``,
            ``metric``).
        metric: the metric column; how: :func:`harness.reports.aggregate_kind`.

    Returns:
        ``{"delta", "ci95": [low, high], "items"}`` (NaN when no item pairs).
    """
    from harness.reports import aggregate

    ka = a[(a["status"] == "ok") & np.isfinite(a[metric].to_numpy(float))].set_index("item_id")
    kb = b[(b["status"] == "ok") & np.isfinite(b[metric].to_numpy(float))].set_index("item_id")
    common = ka.index.intersection(kb.index)
    if not len(common):
        return {"delta": float("nan"), "ci95": [float("nan"), float("nan")], "items": 0}
    va, vb = ka.loc[common, metric].to_numpy(float), kb.loc[common, metric].to_numpy(float)
    labels = ka.loc[common, "label"].to_numpy()
    delta = aggregate(pd.Series(va), pd.Series(labels), how) - aggregate(pd.Series(vb), pd.Series(labels), how)
    rng = np.random.default_rng(seed)
    if how == "class-median-mean":
        per = []
        for c in pd.unique(labels):
            idx = np.flatnonzero(labels == c)
            draw = idx[rng.integers(0, len(idx), size=(resamples, len(idx)))]
            per.append(np.median(va[draw], axis=1) - np.median(vb[draw], axis=1))
        stats = np.mean(per, axis=0)
    else:
        draw = rng.integers(0, len(va), size=(resamples, len(va)))
        stats = (np.median(va[draw], axis=1) - np.median(vb[draw], axis=1)) if how == "median" \
            else (va[draw] - vb[draw]).mean(axis=1)
    return {"delta": float(delta), "ci95": [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))],
            "items": int(len(common))}


def modes_matrix(items: pd.DataFrame) -> list[dict[str, Any]]:
    """Per system, dataset and query-mode condition (every condition but :data:`ABSENT`, when the system
    has an ``oracle`` condition and at least one other): the Table 2 aggregate of the dataset's first
    headline metric and the paired difference to ``oracle``."""
    from harness.reports import HEADLINE, aggregate, aggregate_kind

    out = []
    for (system, dataset), sub in items[items["condition"] != ABSENT].groupby(["system", "dataset"], sort=False):
        conds = list(dict.fromkeys(sub["condition"]))
        if "oracle" not in conds or len(conds) < 2:
            continue
        metric = HEADLINE.get(dataset, ("sdri",))[-1]
        how = aggregate_kind(dataset)
        ref = sub[sub["condition"] == "oracle"]
        for c in conds:
            rows = sub[sub["condition"] == c]
            ok = rows[(rows["status"] == "ok") & np.isfinite(rows[metric].to_numpy(float))]
            rec = {"system": system, "dataset": dataset, "condition": c, "metric": metric, "convention": how,
                   "value": aggregate(ok[metric], ok["label"], how), "items_ok": len(ok), "rows": len(rows)}
            if c != "oracle":
                d = paired_difference(rows, ref, metric, how)
                rec.update({"delta_vs_oracle": d["delta"], "delta_ci95": d["ci95"], "paired_items": d["items"]})
            out.append(rec)
    return out


def results_section(items: pd.DataFrame, runs: dict[str, dict]) -> dict[str, Any] | None:
    """The ``query_protocols`` entry of ``results.json`` (``None`` when no run used a protocol): the
    provenance each run recorded (absent draws, shots: file lists and digests), the absent-query aggregates
    per dataset and per queried class (infinities as ``"-inf"``), and the modes matrix."""
    recorded = {s: r["query_protocols"] for s, r in runs.items() if r.get("query_protocols")}
    absent = absent_summary(items)
    matrix = modes_matrix(items)
    if not recorded and not absent and not matrix:
        return None

    def clean(rec: dict) -> dict:
        return {k: (_num(v) if isinstance(v, float) else [_num(x) for x in v] if isinstance(v, list) else v)
                for k, v in rec.items()}

    return {"runs": recorded, "absent": [clean(r) for r in absent],
            "absent_per_class": [clean(r) for r in absent_per_class(items)],
            "absent_method": f"residual_db = 10 log10(sum est^2 / sum mix^2); false activation: residual_db > "
                             f"{FALSE_ACTIVATION_DB:g} dB (FUSS); median over ok rows, -inf kept",
            "modes": [clean(r) for r in matrix],
            "modes_method": f"paired percentile bootstrap (2.5th, 97.5th) of aggregate(mode) - aggregate(oracle) "
                            f"over items ok in both, {PAIRED_RESAMPLES} resamples, seed {PAIRED_SEED}"}


def _db(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return "−∞" if math.isinf(x) and x < 0 else f"{x:.2f}"


def _pct(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.0f} %"


def report_markdown(items: pd.DataFrame) -> str:
    """The summary's sections of the protocols (empty when the items hold none)."""
    from harness.reports import markdown_table

    parts = []
    absent = absent_summary(items)
    if absent:
        parts += ["## Absent-query test", "",
                  "Each item queried for a class in neither its target's nor its interferer's labels "
                  f"(`eval --query-protocol absent`). Residual = 10 log10(Σŷ²/Σx²) dB (lower is better; the "
                  f"mixture baseline is 0 dB, a perfect separator −∞); false activation: above "
                  f"{FALSE_ACTIVATION_DB:g} dB (FUSS).", "",
                  markdown_table(["system", "dataset", "items ok", "median residual (dB)", "false activation"],
                                 [[r["system"], r["dataset"], f"{r['items_ok']}/{r['rows']}",
                                   _db(r["median_residual_db"]), _pct(r["false_activation_rate"])] for r in absent],
                                 "llrrr"), ""]
        per_class = absent_per_class(items)
        if per_class:
            parts += ["Per queried class:", "",
                      markdown_table(["system", "dataset", "queried class", "items", "median residual (dB)",
                                      "false activation"],
                                     [[r["system"], r["dataset"], str(r["query_label"]), str(r["items_ok"]),
                                       _db(r["median_residual_db"]), _pct(r["false_activation_rate"])]
                                      for r in per_class], "lllrrr"), ""]
    matrix = modes_matrix(items)
    if matrix:
        parts += ["## Query-modality matrix", "",
                  "The same items under each query mode (`eval --query-modes`): the Table 2 aggregate "
                  "(`(ok/rows)` when computed on part of the rows); Δ is the paired difference to mode `oracle` "
                  f"on the items ok in both, with its 95 % paired bootstrap CI ({PAIRED_RESAMPLES} resamples, seed "
                  f"{PAIRED_SEED}).", ""]
        for system in dict.fromkeys(r["system"] for r in matrix):
            recs = [r for r in matrix if r["system"] == system]
            datasets = list(dict.fromkeys(r["dataset"] for r in recs))
            conds = list(dict.fromkeys(r["condition"] for r in recs))
            cell = {(r["condition"], r["dataset"]): r for r in recs}
            rows = []
            for c in conds:
                row = [c]
                for d in datasets:
                    r = cell.get((c, d))
                    if r is None:
                        row.append("—")
                    else:
                        text = _db(r["value"]) + (f" ({r['items_ok']}/{r['rows']})" if r["items_ok"] < r["rows"]
                                                  else "")
                        if c != "oracle":
                            lo, hi = r["delta_ci95"]
                            text += (f"; Δ {_db(r['delta_vs_oracle'])} [{_db(lo)}, {_db(hi)}], "
                                     f"{r['paired_items']} paired")
                        row.append(text)
                rows.append(row)
            metrics = ", ".join(f"{d}: {cell[(conds[0], d)]['metric'] if (conds[0], d) in cell else '?'}"
                                for d in datasets)
            parts += [f"**{system}** ({metrics})", "",
                      markdown_table(["mode", *datasets], rows, "l" + "r" * len(datasets)), ""]
    return "\n".join(parts)


def paper_rows(items: pd.DataFrame) -> pd.DataFrame:
    """The rows of the paper's protocol (every condition but :data:`ABSENT`): what Table 2 and the
    per-class tables are computed from."""
    if "condition" not in items.columns:
        return items
    return items[items["condition"] != ABSENT]


# -- hierarchical separation scored (issue 12 item 5) -----------------------------------------------


def level_references(ontology, level: int, sources: Sequence[tuple[int, np.ndarray]]) -> dict[str, np.ndarray]:
    """The true nodes of one ontology level and their reference signals.

    A node of ``level`` is true when the class of at least one source is in its subtree
    (:meth:`harness.ontology.Ontology.class_ids`); its reference is the sum of those sources (two sources
    under one node: their sum, the mixture). Ours: each source counts for the one class the set gives it
    (the item's ``label`` for the target, ``interferer_label`` for the interferer), not for every label
    its clip carries.

    Args:
        ontology: :class:`harness.ontology.Ontology`; level: 1 = the root nodes.
        sources: ``(527-class index, float32 (L,) waveform)`` per source.

    Returns:
        ``{node id: float32 (L,) reference}`` in :meth:`Ontology.level_nodes` order.
    """
    out: dict[str, np.ndarray] = {}
    for node in ontology.level_nodes(level):
        ids = set(ontology.class_ids(node.id))
        under = [w for k, w in sources if int(k) in ids]
        if under:
            out[node.id] = np.sum(under, axis=0, dtype=np.float64).astype(np.float32) if len(under) > 1 \
                else np.asarray(under[0], np.float32)
    return out


def class_aware_sdri(refs: dict[str, np.ndarray], ests: dict[str, np.ndarray], mix: np.ndarray) -> dict[str, Any]:
    """Class-aware SDRi of one mixture (DCASE 2025 Task 4, CA-SDRi) with the detection counts.

    ``CA-SDRi = 1/|C ∪ Ĉ| Σ_{k ∈ C ∪ Ĉ} P_k`` with ``C`` the true classes (keys of ``refs``), ``Ĉ`` the
    detected ones (keys of ``ests``), ``P_k = SDR(s_k, ŝ_k) − SDR(s_k, x)`` for ``k ∈ C ∩ Ĉ`` and
    ``P_k = 0`` for a missed class or a false detection (Nguyen et al., *Description and discussion on
    DCASE 2025 Challenge Task 4*, 2025). SDR is the paper's (:func:`harness.metrics.sdr`, dB).

    Args:
        refs: ``{class: float32 (L,) reference}``; ests: ``{class: float32 (L,) estimate}``; mix: ``(L,)``.

    Returns:
        ``{"ca_sdri", "tp", "fp", "fn", "precision", "recall", "sdri": {class: P_k of the matched}}``;
        ``ca_sdri`` NaN when both sets are empty, precision NaN with no detection, recall NaN with no
        true class.
    """
    from harness import metrics

    true, found = set(refs), set(ests)
    matched = sorted(true & found)
    sdri = {k: float(metrics.sdr(refs[k], ests[k]) - metrics.sdr(refs[k], mix)) for k in matched}
    union = true | found
    return {"ca_sdri": sum(sdri.values()) / len(union) if union else float("nan"),
            "tp": len(matched), "fp": len(found - true), "fn": len(true - found),
            "precision": len(matched) / len(found) if found else float("nan"),
            "recall": len(matched) / len(true) if true else float("nan"), "sdri": sdri}


HIERARCHICAL_COLUMNS = ("item_id", "label", "interferer_label", "level", "true_nodes", "detected_nodes", "tp", "fp",
                        "fn", "ca_sdri", "precision", "recall", "status")
"""Columns of ``hierarchical.parquet``: one row per item and level (node lists joined by ``;``)."""


def score_hierarchical(separator, query_net, evalset, levels: Sequence[int] = (1, 2, 3), limit: int | None = None,
                       batch_size: int = 8, ontology=None,
                       progress=None) -> pd.DataFrame:
    """``separate --levels`` scored on a built AudioSet set: per item and level, CA-SDRi, precision, recall.

    Each item's mixture goes through :func:`harness.ontology.separate_hierarchical`; the detected nodes of
    a level are its tracks on that level, the true nodes those of :func:`level_references` with the target
    (``label``) and the interferer (``mixture − target``, ``interferer_label``) as sources.

    Args:
        separator, query_net: an at_soft separator and its query net (:func:`harness.models.load_separator_and_query_net`).
        evalset: the opened AudioSet set (:func:`harness.datasets.store.open_set`).
        levels: ontology levels; limit: the first ``limit`` items.

    Returns:
        a frame of :data:`HIERARCHICAL_COLUMNS`; an item whose class is not one of the 527 is a row of status
        ``unknown_class`` per level.

    Raises:
        ConfigError: the set is not AudioSet, the separator is not at_soft, a level out of range.
    """
    from harness.ontology import Ontology, separate_hierarchical

    if evalset.dataset != "audioset":
        raise ConfigError(f"hierarchical separation is scored on the AudioSet set (its classes are ontology "
                          f"nodes), not {evalset.dataset}")
    ontology = ontology or Ontology.load()
    index = {name: i for i, name in enumerate(ontology.class_names)}
    manifest = evalset.manifest.iloc[:limit] if limit else evalset.manifest
    rows = []
    for pos in range(len(manifest)):
        item = manifest.iloc[pos]
        mix, ref = (a[0] for a in evalset.read_rows(np.array([pos])))
        base = {"item_id": item["item_id"], "label": item["label"], "interferer_label": item["interferer_label"]}
        if item["label"] not in index or item["interferer_label"] not in index:
            rows += [{**base, "level": int(lv), "status": "unknown_class"} for lv in levels]
            continue
        sources = [(index[item["label"]], ref), (index[item["interferer_label"]], (mix - ref).astype(np.float32))]
        tracks = separate_hierarchical(separator, query_net, mix, levels=tuple(levels), batch_size=batch_size,
                                       ontology=ontology)
        for lv in levels:
            refs = level_references(ontology, int(lv), sources)
            ests = {t.node_id: t.waveform for t in tracks if t.level == int(lv)}
            s = class_aware_sdri(refs, ests, mix)
            rows.append({**base, "level": int(lv), "true_nodes": ";".join(ontology.name(k) for k in refs),
                         "detected_nodes": ";".join(ontology.name(k) for k in ests),
                         **{k: s[k] for k in ("tp", "fp", "fn", "ca_sdri", "precision", "recall")}, "status": "ok"})
        if progress:
            progress(pos + 1, len(manifest))
    df = pd.DataFrame.from_records(rows, columns=list(HIERARCHICAL_COLUMNS))
    for c in ("ca_sdri", "precision", "recall"):
        df[c] = df[c].astype("float64")
    return df


def hierarchical_summary(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per level over the ``ok`` rows: items, mean CA-SDRi (dB; the DCASE average over mixtures) and the
    pooled (micro) detection precision ``Σtp / (Σtp + Σfp)`` and recall ``Σtp / (Σtp + Σfn)``."""
    out = []
    for level, sub in df[df["status"] == "ok"].groupby("level", sort=True):
        tp, fp, fn = (int(sub[c].sum()) for c in ("tp", "fp", "fn"))
        out.append({"level": int(level), "items": len(sub), "ca_sdri": float(sub["ca_sdri"].mean()),
                    "precision": tp / (tp + fp) if tp + fp else float("nan"),
                    "recall": tp / (tp + fn) if tp + fn else float("nan"), "tp": tp, "fp": fp, "fn": fn})
    return out


def hierarchical_markdown(summary: list[dict[str, Any]], title: str) -> str:
    """The ``hierarchical.md`` table: level, items, CA-SDRi, precision, recall."""
    from harness.reports import markdown_table

    rows = [[str(r["level"]), str(r["items"]), _db(r["ca_sdri"]), _pct(r["precision"]), _pct(r["recall"])]
            for r in summary]
    return "\n".join([f"# Hierarchical separation scored: {title}", "",
                      "Class-aware SDRi (DCASE 2025 Task 4): mean over items of Σ P_k / |C ∪ Ĉ| per ontology level, "
                      "P_k the SDRi of a detected true node, 0 dB for a missed node or a false detection; "
                      "precision and recall of the detected nodes, pooled over items.", "",
                      markdown_table(["level", "items", "CA-SDRi (dB)", "precision", "recall"], rows), ""])
