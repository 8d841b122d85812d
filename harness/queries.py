"""Query conditions: average embeddings per class (paper eq. 9) and oracle embeddings (eq. 11).

``embed-queries`` runs the checkpoint's query net over the dataset's query split (its training split) and
stores one condition vector per class: each file is cut into 2-s chunks tiled to 64,000 samples, the
chunk outputs are averaged per file, then the files are averaged per class (the upstream
``calculate_query_emb`` rule; silence removal for MUSDB18 and Voicebank-Demand as the TOML says). The
condition is the query net's ``clipwise_output`` for an ``at_soft`` separator and its ``embedding`` for
an ``emb`` one.

Files: ``<workdir>/queries/<dataset>/<checkpoint sha256[:16]>/queries.npz`` (``labels``, ``class_ids``,
``conditions`` float32 ``(C, D)``, ``files`` per class) and ``queries.json`` (provenance: split, clip
list digest, checkpoint sha256, condition type, per-class counts, skipped files).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import harness
from harness.audio import AudioRef
from harness.config import class_labels, load_dataset_config
from harness.datasets import get_corpus
from harness.datasets.store import atomic_dir
from harness.errors import UssBenchError


def query_dir(workdir: str | Path, dataset: str, checkpoint_sha256: str) -> Path:
    """``<workdir>/queries/<dataset>/<sha256[:16]>``: query sets are keyed by the checkpoint's bytes."""
    return Path(workdir) / "queries" / dataset / checkpoint_sha256[:16]


def query_files(dataset: str, root: str | Path, split: str) -> dict[str, list[AudioRef]]:
    """The recordings of each class in the query split.

    Clips count by the dataset's ``label_rule``: every class it carries (AudioSet, ``all-tags``) or its
    primary label (FSD corpora, ``primary``), as the evaluation sets; track corpora: each source counts for its label (stem, plugin, speech).
    """
    corpus = get_corpus(dataset, root)
    corpus.check()
    corpus.check_split(split)
    cfg = load_dataset_config(dataset)
    groups: dict[str, list[AudioRef]] = {}
    if corpus.kind == "clips":
        for clip in corpus.clips(split):
            for label in class_labels(cfg, clip.labels):
                groups.setdefault(label, []).append(clip.audio)
    else:
        for track in corpus.tracks(split):
            for src in track.sources:
                groups.setdefault(src.label, []).append(src.audio)
    return groups


def embed_queries(dataset: str, checkpoint: str | Path, root: str | Path, workdir: str | Path,
                  split: str | None = None, batch_size: int = 8, device: str = "auto",
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Compute and store the average query condition of every class (eq. 9); returns ``queries.json``.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        LayoutError, MetadataError, AudioError: bad corpus input.
    """
    from harness.models import embed, file_sha256, load_separator_and_query_net
    from harness.models.querynets import OneHotQuery

    cfg = load_dataset_config(dataset)
    split = split or cfg["query_split"]
    sha = file_sha256(checkpoint)
    separator, query_net = load_separator_and_query_net(checkpoint, device)
    condition_type, size = separator.condition_type, separator.condition_size
    del separator  # only its condition type and size are needed here
    onehot = query_net if isinstance(query_net, OneHotQuery) else None
    corpus = get_corpus(dataset, root)
    groups = query_files(dataset, root, split)
    vocab = corpus.vocabulary()
    remove_silence = bool(cfg.get("silence_removal_for_queries", False))
    cache: dict[str, np.ndarray | None] = {}
    skipped: dict[str, str] = {}
    total = sum(len(v) for v in groups.values())
    done = 0
    labels, class_ids, conditions, counts = [], [], [], []
    digest = hashlib.sha256()
    for label in sorted(groups, key=vocab.index):
        per_file = []
        for ref in groups[label]:
            key = ref.key()
            digest.update(f"{label}\0{key.removeprefix(str(corpus.root))}\n".encode())
            if onehot is not None:  # paper §3.4.1: the label itself is the query; no audio is read
                cache[key] = onehot.condition([label]).numpy() if label in onehot.index else None
                if label not in onehot.index:
                    skipped[key] = f"label {label!r} is not in the model's one-hot vocabulary"
            if key not in cache:
                try:
                    cache[key] = embed(query_net, corpus.read(ref, harness.SAMPLE_RATE), condition_type,
                                       batch_size=batch_size, remove_silence=remove_silence)
                except ValueError as exc:  # silent after silence removal
                    cache[key] = None
                    skipped[key] = str(exc)
            if cache[key] is not None:
                per_file.append(cache[key])
            done += 1
            if progress:
                progress(done, total)
        if per_file:
            labels.append(label)
            class_ids.append(vocab.index(label))
            conditions.append(np.mean(per_file, axis=0).astype(np.float32))
            counts.append(len(per_file))
    provenance = {
        "dataset": dataset, "split": split, "corpus_root": str(Path(root).resolve()),
        "checkpoint": str(checkpoint), "checkpoint_sha256": sha,
        "condition_type": condition_type, "condition_size": size,
        "rule": ("one-hot of the class label (paper §3.4.1)" if onehot is not None else
                 "2-s chunks tiled to 64000 samples, mean per file, mean per class (paper eq. 9)"),
        "silence_removal": remove_silence, "clip_list_sha256": digest.hexdigest(),
        "classes": len(labels), "files_per_class": dict(zip(labels, counts, strict=True)),
        "skipped_files": skipped, "harness_version": harness.__version__,
    }
    with atomic_dir(query_dir(workdir, dataset, sha)) as tmp:
        np.savez(tmp / "queries.npz", labels=np.array(labels, dtype=str), class_ids=np.array(class_ids, np.int64),
                 conditions=np.stack(conditions) if conditions else np.zeros((0, size), np.float32),
                 files=np.array(counts, np.int64))
        (tmp / "queries.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def load_queries(workdir: str | Path, dataset: str, checkpoint_sha256: str) -> tuple[dict[str, np.ndarray], dict]:
    """The stored average conditions of ``dataset`` for a checkpoint: ``({label: (D,) float32}, provenance)``.

    Raises:
        UssBenchError: not computed yet (names the command to run).
    """
    path = query_dir(workdir, dataset, checkpoint_sha256)
    if not (path / "queries.npz").is_file():
        raise UssBenchError(
            f"no average query embeddings for {dataset} with this checkpoint (looked in {path}): run "
            f"`uss-bench embed-queries {dataset} --checkpoint CKPT --workdir {workdir}`, or pass --condition oracle"
        )
    data = np.load(path / "queries.npz")
    table = {str(label): data["conditions"][i] for i, label in enumerate(data["labels"])}
    return table, json.loads((path / "queries.json").read_text())


# -- query objects handed to a system ------------------------------------------------------------------

QUERY_MODES = ("none", "label", "text", "average", "oracle", "audio-shots")
"""What a system can be conditioned on (``System.query_modes``):

- ``none``: nothing (an enhancer, a baseline);
- ``label``: the class id and label (a one-hot / label-embedding model);
- ``text``: the ontology display name (a text-queried model, e.g. "Acoustic guitar");
- ``average``: the average embedding of the class over the query split (paper eq. 9; ``embed-queries``);
- ``oracle``: the target itself as the query source (paper eq. 11; oracle-capable systems only);
- ``audio-shots``: example clips of the class from the query split (an audio-queried model).
"""


def display_name(label: str) -> str:
    """The human-readable name of a class label: AudioSet labels already are ontology display names
    (``"Acoustic guitar"``); FSD labels use ``_`` for spaces (``"Acoustic_guitar"`` → ``"Acoustic guitar"``);
    stems and ``speech`` are returned as written."""
    return label.replace("_", " ")


@dataclass(frozen=True)
class Query:
    """What one item asks the system to separate; one per item, in batch order.

    Attributes:
        mode: the query mode of this evaluation condition (one of :data:`QUERY_MODES`).
        class_id: the target class's index in the dataset vocabulary (``class_id`` column).
        label: the target class label as the corpus writes it (``label`` column).
        text: its display name (for text-queried models), :func:`display_name`.
        embedding: float32 ``(D,)`` average condition of the class (eq. 9) in mode ``average`` when the
            system has a query set; else ``None``.
        oracle_source: float32 ``(L,)`` the target at the system's rate, in mode ``oracle`` only (eq. 11:
            the system embeds it with its own query net); else ``None``.
        shots: float32 ``(L_k,)`` example clips of the class at the system's rate, in mode ``audio-shots``;
            else ``None``.
    """

    mode: str
    class_id: int
    label: str
    text: str
    embedding: np.ndarray | None = None
    oracle_source: np.ndarray | None = None
    shots: tuple[np.ndarray, ...] | None = None


class ShotBank:
    """Example clips of each class from the dataset's query split, for mode ``audio-shots``.

    Per class, ``k`` recordings are drawn without replacement (all of them when the class has fewer) from
    :func:`query_files` sorted by file key, by ``numpy.random.default_rng([seed, class_id])``: the choice
    depends only on the seed, the class and the split's file list, never on the items, the batch or the
    workers. Each clip is read whole at ``sample_rate`` (mono float32; soxr from the file's rate) and kept
    for the run.

    Args:
        dataset: the dataset name; root: its corpus root; split: the query split [the TOML's ``query_split``].
        k: clips per class (``eval --shots``); seed: [the TOML's ``seed``]; sample_rate: the system's rate.

    Raises:
        LayoutError, MetadataError: the query split cannot be listed (at construction).
        ConfigError: ``k < 1``.
    """

    def __init__(self, dataset: str, root: str | Path, k: int, sample_rate: int, split: str | None = None,
                 seed: int | None = None):
        from harness.errors import ConfigError

        if int(k) < 1:
            raise ConfigError(f"--shots {k}: must be at least 1")
        cfg = load_dataset_config(dataset)
        self.dataset, self.k, self.sample_rate = dataset, int(k), int(sample_rate)
        self.split = split or cfg["query_split"]
        self.seed = int(cfg.get("seed", 0) if seed is None else seed)
        self.corpus = get_corpus(dataset, root)
        self.groups = {label: sorted(refs, key=lambda r: r.key()) for label, refs in
                       query_files(dataset, root, self.split).items()}
        self._cache: dict[str, tuple[np.ndarray, ...]] = {}

    def chosen(self, label: str, class_id: int) -> list[AudioRef]:
        """The ``k`` recordings of a class (``[]`` when the split has none)."""
        refs = self.groups.get(label, [])
        if len(refs) <= self.k:
            return list(refs)
        rng = np.random.default_rng([self.seed, int(class_id)])
        return [refs[i] for i in sorted(rng.choice(len(refs), size=self.k, replace=False))]

    def shots(self, label: str, class_id: int) -> tuple[np.ndarray, ...]:
        """The chosen clips as float32 ``(L_i,)`` arrays at ``sample_rate``."""
        if label not in self._cache:
            self._cache[label] = tuple(self.corpus.read(r, self.sample_rate) for r in self.chosen(label, class_id))
        return self._cache[label]
