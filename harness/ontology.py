"""Hierarchical separation by AudioSet ontology level, detect-then-separate, and example-clip queries.

Sources: Kong, Chen et al. 2023, *Universal Source Separation with Weakly Labelled Data*, §3.5
(Algorithm 3: separate every ontology node of a level that is active in the mixture; Algorithm 4:
detect the active chunks of a class, then separate them) and §3.4.3 (latent-embedding query: the
average query-net output of example clips); reference/SEMANTICS.md §7 (chunking, the 0.2 activity
threshold and the masked clipwise condition of ``separate_by_class_ids``) and §4 (Cnn14).

The ontology (:class:`Ontology`) is read from the repository's ``datasets/audioset/ontology.json``
(Google's AudioSet ontology, 632 nodes) and ``datasets/audioset/class_labels_indices.csv`` (the 527
classes the models output). Rules the paper does not spell out are **ours**:

- Level 1 is the ontology's root nodes (the 7 nodes that are nobody's child), level n + 1 the children
  of level-n nodes. The ontology is a DAG, not a tree (38 nodes have several parents, e.g. "Bell" is a
  child of "Sounds of things" and of "Musical instrument"), so a node is on *every* level at which a
  path from a root reaches it ("Bell" is on levels 2 and 3), once per level.
- The class ids of a node are the 527-class indices of the node itself and of all its descendants along
  every ``child_ids`` edge (sorted, no repeats). A node whose subtree holds none of the 527 classes
  (e.g. an abstract grouping node with only blacklisted children) is skipped by the separation.
- The upstream ``uss/parse_ontology.py`` instead builds a *tree* by attaching every node under the
  first parent it finds, so a multi-parent node appears once and is missing from its other parents'
  subtrees (upstream, "Music" does not contain the "Bell" classes and level 2 has no "Bell"). We keep
  the full DAG: a parent's class set is then exactly the classes that are kinds of it.
- In class-id mode (Algorithm 4 with ``ids = [k]``) one track is made per requested class; the upstream
  ``separate_by_class_ids`` makes one track for the union of the requested ids.

The separation itself follows SEMANTICS §7: the mixture is cut into ``ceil(L / 64000)`` non-overlapping
2-s chunks (the last zero-padded); the query net (Cnn14) tags each chunk once; a chunk is active for a
set of class ids if the max of its clipwise probabilities over those ids is ≥ 0.2; an active chunk is
separated with its own clipwise vector, every entry outside the ids set to 0, as the condition; an
inactive chunk gives zeros. The upstream tags with a separately loaded PANNs Cnn14 and conditions with
the query net's Cnn14; for the at_soft model both are the same pretrained Cnn14 (SEMANTICS §4,
``Cnn14_Wrapper``), so one pass of ``query_net`` serves both.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import soundfile
import torch
from torch import nn

from harness import SAMPLE_RATE, SEGMENT_SAMPLES
from harness.audio import fix_length, read_audio
from harness.errors import AudioError, CheckpointError, ConfigError, MetadataError, UssBenchError
from harness.models.separator import embed, eval_inference, module_device, separate, separate_batch

AUDIOSET_DIR = Path(__file__).resolve().parents[1] / "datasets" / "audioset"
ONTOLOGY_PATH = AUDIOSET_DIR / "ontology.json"
"""The repository's copy of Google's AudioSet ontology (632 nodes)."""

CLASS_LABELS_PATH = AUDIOSET_DIR / "class_labels_indices.csv"
"""The repository's copy of the 527-class list (``index,mid,display_name``)."""

NUM_CLASSES = 527
"""Classes of the AudioSet tagging head, and size of the at_soft condition."""

ACTIVITY_THRESHOLD = 0.2
"""A chunk is active for a set of class ids when its max clipwise probability over them is ≥ this (§7)."""

DEFAULT_LEVELS = (1, 2, 3)
"""Levels separated when none are given (the upstream ``inference.py`` default)."""

EMB_MODEL_MESSAGE = (
    "hierarchical / class-id separation needs the at_soft model (condition size 527: the condition is the "
    "chunk's masked AudioSet clipwise output), but this separator has condition_type {ctype!r} "
    "(condition size {size}); use --query-audio (example query clips) with an emb model"
)


# ----------------------------------------------------------------------------------------------------
# Ontology
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OntologyNode:
    """One node of the AudioSet ontology.

    Attributes:
        id: the node's machine id (``mid``), e.g. ``"/m/09x0r"``.
        name: display name, e.g. ``"Speech"``.
        child_ids: the ids of its children, in file order.
        restrictions: ``"abstract"`` and/or ``"blacklist"`` as the ontology marks them.
        class_index: its index among the 527 classes, or ``None`` when it is not one of them.
    """

    id: str
    name: str
    child_ids: tuple[str, ...]
    restrictions: tuple[str, ...]
    class_index: int | None


class Ontology:
    """The AudioSet ontology as a DAG, with levels and the 527-class ids of every subtree.

    Build it with :meth:`load` (cached: the repository files are parsed once per process). The object
    is read-only. See the module docstring for the level and class-id rules.

    Attributes:
        nodes: node id → :class:`OntologyNode`, in file order.
        roots: the level-1 node ids (nodes that are nobody's child), in file order.
        class_mids: the 527 class mids in index order.
        class_names: the 527 display names in index order (``class_labels_indices.csv``).
    """

    def __init__(self, nodes: Sequence[OntologyNode], class_mids: Sequence[str], class_names: Sequence[str]):
        """Index the nodes; see :meth:`load` for the normal way to get one.

        Raises:
            MetadataError: a duplicate node id, a child id that is not a node, or a cycle.
        """
        by_id: dict[str, OntologyNode] = {}
        for node in nodes:
            if node.id in by_id:
                raise MetadataError(f"AudioSet ontology: node id {node.id!r} appears twice")
            by_id[node.id] = node
        parents: dict[str, list[str]] = {node_id: [] for node_id in by_id}
        for node in by_id.values():
            for child in node.child_ids:
                if child not in by_id:
                    raise MetadataError(f"AudioSet ontology: {node.id!r} ({node.name}) lists unknown child {child!r}")
                parents[child].append(node.id)
        self.nodes: Mapping[str, OntologyNode] = MappingProxyType(by_id)
        self.class_mids: tuple[str, ...] = tuple(class_mids)
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.roots: tuple[str, ...] = tuple(node_id for node_id in by_id if not parents[node_id])
        self._parents = {node_id: tuple(ids) for node_id, ids in parents.items()}
        self._subtree_ids = self._class_id_closure()
        self._levels = self._level_lists()

    @classmethod
    def load(cls, ontology_path: str | Path | None = None, labels_path: str | Path | None = None) -> Ontology:
        """The ontology from ``ontology.json`` and ``class_labels_indices.csv`` (the repository's copies).

        Args:
            ontology_path: defaults to :data:`ONTOLOGY_PATH`.
            labels_path: defaults to :data:`CLASS_LABELS_PATH`.

        Returns:
            A shared, read-only :class:`Ontology` (one per pair of paths per process).

        Raises:
            MetadataError: a file is missing or malformed (not a list of nodes with ``id``, ``name``,
                ``child_ids``; not 527 rows ``index,mid,display_name`` with indices 0..526; a class mid
                absent from the ontology; a cycle).
        """
        return _load_ontology(str(Path(ontology_path or ONTOLOGY_PATH).resolve()),
                              str(Path(labels_path or CLASS_LABELS_PATH).resolve()))

    # -- lookups -------------------------------------------------------------------------------------

    def node(self, node_id: str) -> OntologyNode:
        """The node with this id.

        Raises:
            ConfigError: no such node.
        """
        try:
            return self.nodes[node_id]
        except KeyError:
            raise ConfigError(f"{node_id!r} is not an AudioSet ontology node id") from None

    def name(self, node_id: str) -> str:
        """Display name of a node (raises :class:`ConfigError` for an unknown id)."""
        return self.node(node_id).name

    def find(self, name: str) -> OntologyNode:
        """The node whose display name is ``name`` (case-insensitive; names are unique in the ontology).

        Raises:
            ConfigError: no node has that name.
        """
        wanted = name.strip().casefold()
        for node in self.nodes.values():
            if node.name.casefold() == wanted:
                return node
        raise ConfigError(f"no AudioSet ontology node is named {name!r}")

    def parents(self, node_id: str) -> tuple[str, ...]:
        """Ids of the node's parents (empty for a root; several for the 38 multi-parent nodes)."""
        self.node(node_id)
        return self._parents[node_id]

    def class_ids(self, node_id: str) -> list[int]:
        """The 527-class indices of the node and all its descendants, sorted ascending, no repeats.

        Empty for a node whose subtree holds none of the 527 classes.

        Raises:
            ConfigError: unknown node id.
        """
        self.node(node_id)
        return list(self._subtree_ids[node_id])

    def class_node(self, index: int) -> OntologyNode:
        """The ontology node of class ``index`` (0 ≤ index < 527).

        Raises:
            ConfigError: index out of range.
        """
        _check_class_ids([index])
        return self.nodes[self.class_mids[index]]

    @property
    def num_levels(self) -> int:
        """Deepest level (the AudioSet ontology has 6)."""
        return len(self._levels)

    def level_nodes(self, level: int) -> list[OntologyNode]:
        """The nodes on ``level`` (1 = roots), in breadth-first file order, each once.

        Includes nodes without any of the 527 classes (see :meth:`class_ids`); a multi-parent node is on
        every level some path reaches it at.

        Raises:
            ConfigError: ``level`` is not an integer in 1..:attr:`num_levels`.
        """
        if isinstance(level, bool) or not isinstance(level, int | np.integer) or not 1 <= level <= self.num_levels:
            raise ConfigError(f"ontology level must be an integer in 1..{self.num_levels}, got {level!r}")
        return [self.nodes[node_id] for node_id in self._levels[int(level) - 1]]

    # -- construction helpers ------------------------------------------------------------------------

    def _class_id_closure(self) -> dict[str, tuple[int, ...]]:
        """Node id → sorted class indices of its subtree (iterative post-order DFS; rejects cycles)."""
        closure: dict[str, tuple[int, ...]] = {}
        for start in self.nodes:
            if start in closure:
                continue
            on_path = {start}
            stack: list[tuple[str, Iterator[str]]] = [(start, iter(self.nodes[start].child_ids))]
            while stack:
                node_id, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    on_path.discard(node_id)
                    ids = set() if self.nodes[node_id].class_index is None else {self.nodes[node_id].class_index}
                    for c in self.nodes[node_id].child_ids:
                        ids.update(closure[c])
                    closure[node_id] = tuple(sorted(ids))
                elif child in on_path:
                    raise MetadataError(f"AudioSet ontology has a cycle through {child!r}")
                elif child not in closure:
                    on_path.add(child)
                    stack.append((child, iter(self.nodes[child].child_ids)))
        return closure

    def _level_lists(self) -> list[tuple[str, ...]]:
        """Level n (index n − 1) → node ids reached from a root by a path of n − 1 child edges."""
        levels: list[tuple[str, ...]] = []
        current = list(self.roots)
        while current:
            levels.append(tuple(current))
            seen: set[str] = set()
            following = []
            for node_id in current:
                for child in self.nodes[node_id].child_ids:
                    if child not in seen:
                        seen.add(child)
                        following.append(child)
            current = following
        return levels


@functools.lru_cache(maxsize=4)
def _load_ontology(ontology_path: str, labels_path: str) -> Ontology:
    """Parse and validate both files (cached per resolved path pair)."""
    try:
        with open(labels_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise MetadataError(f"cannot read the AudioSet class list {labels_path}: {exc}") from exc
    try:
        indexed = sorted((int(row["index"]), row["mid"], row["display_name"]) for row in rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise MetadataError(f"{labels_path}: expected columns index,mid,display_name with integer index ({exc})") from exc
    if [index for index, _, _ in indexed] != list(range(NUM_CLASSES)):
        raise MetadataError(f"{labels_path}: expected {NUM_CLASSES} rows with indices 0..{NUM_CLASSES - 1}")
    mids = [mid for _, mid, _ in indexed]
    index_of = {mid: index for index, mid, _ in indexed}

    try:
        with open(ontology_path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as exc:
        raise MetadataError(f"cannot read the AudioSet ontology {ontology_path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{ontology_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise MetadataError(f"{ontology_path}: expected a JSON list of ontology nodes")
    try:
        nodes = [OntologyNode(id=str(item["id"]), name=str(item["name"]),
                              child_ids=tuple(str(c) for c in item.get("child_ids", ())),
                              restrictions=tuple(str(r) for r in item.get("restrictions", ())),
                              class_index=index_of.get(str(item["id"])))
                 for item in raw]
    except (KeyError, TypeError, AttributeError) as exc:
        raise MetadataError(f"{ontology_path}: every node needs 'id', 'name' and a 'child_ids' list ({exc!r})") from exc
    missing = sorted(set(mids) - {node.id for node in nodes})
    if missing:
        raise MetadataError(f"{ontology_path}: {len(missing)} of the 527 class mids are not ontology nodes, "
                            f"e.g. {missing[:3]}")
    return Ontology(nodes, mids, [name for _, _, name in indexed])


# ----------------------------------------------------------------------------------------------------
# Separation
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Track:
    """One separated source.

    Attributes:
        level: the ontology level (1 = roots) in hierarchy mode; ``None`` in class-id mode.
        node_id: the ontology node's mid (class-id mode: the class's mid).
        name: its display name.
        class_ids: the 527-class indices whose clipwise outputs formed the condition (sorted).
        waveform: ``(L,)`` float32 at 32 kHz, the same length as the mixture; zeros in inactive chunks.
        active_chunks: how many 2-s chunks were active (≥ 1 in hierarchy mode; may be 0 in class-id mode,
            where the waveform is then all zeros).
    """

    level: int | None
    node_id: str
    name: str
    class_ids: tuple[int, ...]
    waveform: np.ndarray
    active_chunks: int


def _as_waveform(waveform: np.ndarray) -> np.ndarray:
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"waveform must be 1-D (L,), got shape {x.shape}")
    return x


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")


def _check_class_ids(class_ids: Sequence[int]) -> list[int]:
    """Sorted unique class ids, each an integer in 0..526 (ConfigError otherwise, or if empty)."""
    ids = list(class_ids)
    if not ids:
        raise ConfigError("no class ids given; pass at least one AudioSet class index (0..526)")
    bad = [k for k in ids if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k < NUM_CLASSES]
    if bad:
        raise ConfigError(f"class ids must be integers in 0..{NUM_CLASSES - 1} (AudioSet class indices), got {bad}")
    return sorted({int(k) for k in ids})


def require_at_soft(separator: nn.Module) -> None:
    """Check that ``separator`` takes the 527-d at_soft condition (detect-then-separate needs it).

    Raises:
        ConfigError (a :class:`UssBenchError`): an emb (2048) or other separator.
    """
    ctype = getattr(separator, "condition_type", None)
    size = getattr(separator, "condition_size", None)
    if size != NUM_CLASSES or ctype not in (None, "at_soft"):
        raise ConfigError(EMB_MODEL_MESSAGE.format(ctype=ctype, size=size))


def chunk_mixture(waveform: np.ndarray) -> np.ndarray:
    """Cut ``(L,)`` into ``(ceil(L / 64000), 64000)`` float32 non-overlapping chunks, last zero-padded (§7)."""
    x = _as_waveform(waveform)
    num_chunks = -(-len(x) // SEGMENT_SAMPLES)
    return fix_length(x, num_chunks * SEGMENT_SAMPLES, mode="pad").reshape(num_chunks, SEGMENT_SAMPLES)


def tag_chunks(query_net: nn.Module, waveform: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Cnn14 clipwise probabilities of each 2-s chunk of the mixture (SEMANTICS §7 step 1, §4).

    The chunks are those of :func:`chunk_mixture` (zero-padded, not tiled: the upstream
    ``calculate_segment_at_probs``); the net runs on its own device in eval mode without gradients.

    Args:
        query_net: a :class:`~harness.models.panns.Cnn14` (``module(x (B, L))["clipwise_output"]``).
        waveform: ``(L,)`` float32 mixture at 32 kHz.
        batch_size: chunks per forward pass.

    Returns:
        ``(ceil(L / 64000), 527)`` float32 probabilities in [0, 1] (``(0, 527)`` for an empty signal).

    Raises:
        ValueError: non-1-D waveform or bad batch size.
        CheckpointError: the net's ``clipwise_output`` is not ``(b, 527)``.
    """
    _check_batch_size(batch_size)
    chunks = chunk_mixture(waveform)
    target = module_device(query_net)
    outputs = []
    with eval_inference(query_net):
        for start in range(0, len(chunks), batch_size):
            batch = torch.from_numpy(chunks[start:start + batch_size]).to(target)
            clipwise = query_net(batch)["clipwise_output"]
            if tuple(clipwise.shape) != (len(batch), NUM_CLASSES):
                raise CheckpointError(f"the query net's clipwise_output has shape {tuple(clipwise.shape)}, expected "
                                      f"({len(batch)}, {NUM_CLASSES}); is it an AudioSet Cnn14?")
            outputs.append(clipwise.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), dtype=np.float32)


def _detect_and_separate(separator: nn.Module, chunks: np.ndarray, clipwise: np.ndarray, ids: list[int],
                         threshold: float, batch_size: int, length: int) -> tuple[np.ndarray, int]:
    """Core of :func:`detect_and_separate` on pre-cut chunks and pre-computed tags; returns (out, n_active)."""
    active = np.flatnonzero(clipwise[:, ids].max(axis=1) >= threshold)
    out = np.zeros_like(chunks)
    if len(active):
        conditions = np.zeros((len(active), clipwise.shape[1]), dtype=np.float32)
        conditions[:, ids] = clipwise[np.ix_(active, ids)]
        out[active] = separate_batch(separator, chunks[active], conditions, batch_size=batch_size)
    return out.reshape(-1)[:length], len(active)


def detect_and_separate(separator: nn.Module, query_net: nn.Module, waveform: np.ndarray, class_ids: Sequence[int],
                        threshold: float = ACTIVITY_THRESHOLD, batch_size: int = 8, *,
                        clipwise: np.ndarray | None = None) -> np.ndarray:
    """Detect the chunks where ``class_ids`` are active, separate them with masked conditions (Alg. 4).

    SEMANTICS §7 (``separate_by_class_ids``): cut the mixture into ``ceil(L / 64000)`` non-overlapping
    2-s chunks (last zero-padded); tag each with the query net; a chunk is active when
    ``max(clipwise[chunk, class_ids]) ≥ threshold``; an active chunk is separated (batched) with the
    condition = its own clipwise vector with every entry outside ``class_ids`` set to 0; an inactive
    chunk outputs exact zeros. Outputs are concatenated in order and cut to L (hard chunk boundaries).

    Args:
        separator: an at_soft separator (``condition_size`` 527), ``module((b, 1, 64000), (b, 527))``.
        query_net: the Cnn14 query net (``clipwise_output`` of ``(b, 64000)`` chunks).
        waveform: ``(L,)`` float32 mixture at 32 kHz.
        class_ids: AudioSet class indices (0..526); repeats are ignored.
        threshold: activity threshold on the clipwise probability (paper / upstream: 0.2).
        batch_size: chunks per forward pass (tagging and separation).
        clipwise: optional ``(ceil(L / 64000), 527)`` tags from :func:`tag_chunks` on this waveform, to
            tag once and separate several id sets.

    Returns:
        ``(L,)`` float32 at 32 kHz.

    Raises:
        ConfigError (a :class:`UssBenchError`): the separator is not an at_soft model (an emb model needs
            :func:`separate_by_query_audio`); empty or out-of-range ``class_ids``.
        ValueError: non-1-D waveform, bad batch size, or ``clipwise`` of the wrong shape.
        CheckpointError: the query net does not output ``(b, 527)`` clipwise probabilities.
    """
    require_at_soft(separator)
    ids = _check_class_ids(class_ids)
    _check_batch_size(batch_size)
    x = _as_waveform(waveform)
    chunks = chunk_mixture(x)
    tags = _checked_tags(query_net, x, batch_size, clipwise, len(chunks))
    return _detect_and_separate(separator, chunks, tags, ids, threshold, batch_size, len(x))[0]


def _checked_tags(query_net: nn.Module, x: np.ndarray, batch_size: int, clipwise: np.ndarray | None,
                  num_chunks: int) -> np.ndarray:
    if clipwise is None:
        return tag_chunks(query_net, x, batch_size)
    tags = np.asarray(clipwise, dtype=np.float32)
    if tags.shape != (num_chunks, NUM_CLASSES):
        raise ValueError(f"clipwise must be ({num_chunks}, {NUM_CLASSES}) for this waveform, got {tags.shape}")
    return tags


def separate_hierarchical(separator: nn.Module, query_net: nn.Module, waveform: np.ndarray,
                          levels: Sequence[int] | None = DEFAULT_LEVELS, class_ids: Sequence[int] | None = None,
                          threshold: float = ACTIVITY_THRESHOLD, batch_size: int = 8, *,
                          ontology: Ontology | None = None) -> list[Track]:
    """Separate a mixture into ontology nodes level by level (Alg. 3), or into given classes (Alg. 4).

    The mixture is tagged once (:func:`tag_chunks`). Hierarchy mode (``class_ids is None``): for each
    level in ``levels`` and each node on it (:meth:`Ontology.level_nodes` order) with a non-empty
    :meth:`Ontology.class_ids`, run :func:`detect_and_separate` with those ids; a node active in at least
    one chunk gives a :class:`Track`, the others are left out. Class-id mode (``class_ids`` given; it
    takes precedence over ``levels``): one track per requested class ``k`` (in the order given, repeats
    dropped), detect-then-separate with ``ids = [k]``, returned even when no chunk is active (all zeros,
    ``active_chunks == 0``). Nodes with the same class-id set (a parent whose only classes are its
    child's) are separated once and share the waveform.

    Args:
        separator: an at_soft separator (``condition_size`` 527).
        query_net: the Cnn14 query net.
        waveform: ``(L,)`` float32 mixture at 32 kHz.
        levels: ontology levels, 1 = the 7 root nodes (repeats dropped); ``None``: :data:`DEFAULT_LEVELS`.
        class_ids: AudioSet class indices for class-id mode, else ``None``.
        threshold: activity threshold (0.2).
        batch_size: chunks per forward pass.
        ontology: defaults to :meth:`Ontology.load`.

    Returns:
        The tracks, level by level (hierarchy mode) or in request order (class-id mode).

    Raises:
        ConfigError (a :class:`UssBenchError`): not an at_soft separator; a level outside 1..6; empty or
            out-of-range class ids.
        ValueError, CheckpointError: as :func:`detect_and_separate`.
    """
    require_at_soft(separator)
    _check_batch_size(batch_size)
    ontology = ontology or Ontology.load()
    if class_ids is not None:
        _check_class_ids(class_ids)
        requested = list(dict.fromkeys(int(k) for k in class_ids))
        jobs = [(None, ontology.class_node(k), [k]) for k in requested]
    else:
        wanted = list(dict.fromkeys(DEFAULT_LEVELS if levels is None else levels))
        if not wanted:
            raise ConfigError("no ontology levels given; pass e.g. levels 1 2 3")
        jobs = [(level, node, ontology.class_ids(node.id))
                for level in wanted for node in ontology.level_nodes(level)]
        jobs = [job for job in jobs if job[2]]
    x = _as_waveform(waveform)
    chunks = chunk_mixture(x)
    tags = tag_chunks(query_net, x, batch_size)
    done: dict[tuple[int, ...], tuple[np.ndarray, int]] = {}
    tracks = []
    for level, node, ids in jobs:
        key = tuple(ids)
        if key not in done:
            done[key] = _detect_and_separate(separator, chunks, tags, ids, threshold, batch_size, len(x))
        out, n_active = done[key]
        if level is None or n_active > 0:
            name = ontology.class_names[ids[0]] if level is None else node.name
            tracks.append(Track(level=level, node_id=node.id, name=name, class_ids=key, waveform=out,
                                active_chunks=n_active))
    return tracks


def query_condition(query_net: nn.Module, query_files: Sequence[str | Path], condition_type: str,
                    batch_size: int = 8, remove_silence: bool = False) -> np.ndarray:
    """Average query-net output of example clips: per-file :func:`embed`, then the mean over files (§3.4.3).

    Each file is read mono at 32 kHz (:func:`~harness.audio.read_audio`); :func:`embed` averages over
    its 2-s chunks (each tiled to 2 s); the file vectors are then averaged with equal weight (upstream
    ``calculate_query_emb``; paper eq. 9).

    Args:
        query_net: the Cnn14 query net.
        query_files: one or more audio files.
        condition_type: ``"at_soft"`` (527 clipwise) or ``"emb"`` (2048 embedding).
        batch_size: chunks per forward pass.
        remove_silence: drop silent 0.1-s frames first (the upstream ``--queries_dir`` inference does).

    Returns:
        ``(527,)`` or ``(2048,)`` float32.

    Raises:
        ConfigError: no query files.
        AudioError: a file is missing, unreadable, empty, or (``remove_silence``) silent.
    """
    paths = [Path(p) for p in query_files]
    if not paths:
        raise ConfigError("no query audio files given")
    vectors = []
    for path in paths:
        clip = read_audio(path, SAMPLE_RATE)
        if len(clip) == 0:
            raise AudioError(f"query file {path} has no samples")
        try:
            vectors.append(embed(query_net, clip, condition_type, batch_size=batch_size,
                                 remove_silence=remove_silence))
        except ValueError as exc:  # the clip is 1-D and non-empty, so this is "no frame left after silence removal"
            raise AudioError(f"query file {path}: {exc}") from exc
    return np.mean(np.stack(vectors), axis=0, dtype=np.float64).astype(np.float32)


def separate_by_query_audio(separator: nn.Module, query_net: nn.Module, waveform: np.ndarray,
                            query_files: Sequence[str | Path], batch_size: int = 8,
                            remove_silence: bool = False) -> np.ndarray:
    """Separate a mixture with the average condition of example query clips (paper §3.4.3, eq. 9).

    The condition is :func:`query_condition` of the files with the separator's ``condition_type``
    (at_soft: clipwise probabilities; emb: the 2048-d embedding); the whole mixture is then separated
    with it by :func:`~harness.models.separator.separate` (SEMANTICS §7 chunking, one condition for every
    chunk, no activity detection). Works with both models.

    Args:
        separator: the loaded separator (``condition_type`` ``"at_soft"`` or ``"emb"``).
        query_net: the Cnn14 query net.
        waveform: ``(L,)`` float32 mixture at 32 kHz.
        query_files: example clips of the target source (any rate; resampled to 32 kHz, down-mixed).
        batch_size: chunks per forward pass.
        remove_silence: drop silent 0.1-s frames of the query clips first (default off, as
            :func:`~harness.models.separator.embed`; the upstream ``--queries_dir`` path turns it on).

    Returns:
        ``(L,)`` float32 at 32 kHz.

    Raises:
        ConfigError: no query files, or the separator has no known ``condition_type``.
        AudioError: an unreadable or (``remove_silence``) silent query file.
        ValueError: non-1-D waveform.
    """
    ctype = getattr(separator, "condition_type", None)
    if ctype not in ("at_soft", "emb"):
        raise ConfigError(f"the separator's condition_type must be 'at_soft' or 'emb', got {ctype!r}")
    x = _as_waveform(waveform)
    condition = query_condition(query_net, query_files, ctype, batch_size=batch_size,
                                remove_silence=remove_silence)
    return separate(separator, x, condition, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file-name-safe form of a display name: runs of characters other than ASCII letters, digits,
    ``.``, ``_``, ``-`` become ``_``; leading/trailing ``._-`` are stripped (``"node"`` if nothing is left).

    E.g. ``"Channel, environment and background"`` → ``"Channel_environment_and_background"``,
    ``"Bee, wasp, etc."`` → ``"Bee_wasp_etc"``, ``"AC/DC"`` → ``"AC_DC"``.
    """
    return _UNSAFE.sub("_", name).strip("._-") or "node"


def track_path(track: Track, out_dir: str | Path) -> Path:
    """Where :func:`write_tracks` puts a track: ``out_dir/level_<n>/<safe name>.wav`` (hierarchy mode) or
    ``out_dir/class_<id>_<safe name>.wav`` (class-id mode)."""
    out_dir = Path(out_dir)
    if track.level is None:
        return out_dir / f"class_{track.class_ids[0]}_{safe_name(track.name)}.wav"
    return out_dir / f"level_{track.level}" / f"{safe_name(track.name)}.wav"


def write_tracks(tracks: Sequence[Track], out_dir: str | Path, sample_rate: int = SAMPLE_RATE) -> list[Path]:
    """Write each track as a float32 WAV at :func:`track_path`, atomically (temporary name, then rename).

    Existing files of the same name are replaced; other files in ``out_dir`` are left alone.

    Args:
        tracks: from :func:`separate_hierarchical`.
        out_dir: created if needed.
        sample_rate: Hz written in the header (the tracks are at 32 kHz).

    Returns:
        The written paths, in track order.

    Raises:
        ValueError: two tracks would get the same path.
        UssBenchError: a file cannot be written (the message names it).
    """
    paths = [track_path(track, out_dir) for track in tracks]
    seen: dict[Path, Track] = {}
    for track, path in zip(tracks, paths, strict=True):
        if path in seen:
            raise ValueError(f"tracks {seen[path].node_id} ({seen[path].name}) and {track.node_id} ({track.name}) "
                             f"would both be written to {path}")
        seen[path] = track
    for track, path in zip(tracks, paths, strict=True):
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(str(tmp), np.asarray(track.waveform, dtype=np.float32), sample_rate,
                            subtype="FLOAT", format="WAV")
            os.replace(tmp, path)
        except Exception as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise UssBenchError(f"cannot write {path}: {exc}") from exc
    return paths
