"""Training a query-conditioned separator: the paper's Algorithms 1–2 with the upstream recipe.

One step (paper §3, Alg. 1–2; bytedance/uss ``train.py`` with its ResUNet30 configs):

1. **Balanced sampling** (:class:`BalancedSampler`): draw B distinct classes uniformly without
   replacement, then one clip of each class from that class's own shuffled queue (reshuffled when used
   up), as the upstream ``BalancedSampler``.
2. **Anchor segment mining** (:func:`mine_segment`): cut a 2-s segment out of each clip, where the
   SED model says the sampled class is most active (``sed``: Cnn14_DecisionLevelMax, SEMANTICS §6), or
   where the clip is loudest (``energy``), or at random (``random``).
3. **Mixing** (:func:`mix_segments`): segment n is mixed with the next ``mix_num − 1`` segments of the
   batch (cyclically), each scaled to the target's energy, ``gain = clip(sqrt(E_t/E_i), 0.02, 50)``; with
   ``exclude_overlapping_tags`` a segment whose clip shares a tag with the target's clip is skipped
   (Alg. 1 step 3). A mixture whose peak exceeds 1 is scaled down with its target.
4. **Condition**: the frozen query net on the target segment (``at_soft``: Cnn14 clipwise, ``emb``: an
   embedding, ``onehot``: the sampled class's one-hot vector, paper §3.4.1).
5. **Loss and update**: L1 between the separated and the target waveform; AdamW (amsgrad, no weight
   decay) at ``lr · warm_up_scale(step)`` (:func:`warm_up_scale`, the upstream ``constant_warm_up``).

A run folder holds ``config.toml`` (the resolved config), ``metrics.csv`` (step, lr, loss, validation
SDRi), ``checkpoints/step_NNNNNNNN.safetensors`` (the model: a ``uss-bench/1`` file that ``eval``,
``embed-queries`` and ``separate`` load) with ``step_NNNNNNNN.state.safetensors`` beside it (optimizer
and sampler state), ``model.safetensors`` (the latest model) and ``train.json`` (summary). ``--resume``
continues from the latest complete checkpoint; on CPU it is bit-identical to an uninterrupted run. A run
killed before its first checkpoint starts over from step 0, with or without ``--resume``; resuming a run
that already reached its steps rewrites ``train.json`` with its last loss (non-finite numbers are written as
``null``: the file is strict JSON); ``--steps`` must be at least 1.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank draws its own batches (sampler streams
keyed by rank), gradients are averaged by DDP (NCCL on CUDA, gloo on CPU) and BatchNorms are
synchronised on CUDA (``SyncBatchNorm``; it has no CPU kernel, so CPU ranks keep per-rank statistics).
Rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import platform
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import harness
from harness import SAMPLE_RATE
from harness.audio import AudioRef, fix_length
from harness.config import REPO_ROOT, class_labels, load_dataset_config, read_toml
from harness.datasets import get_corpus
from harness.datasets.base import resolve_root
from harness.datasets.store import atomic_write_text, share_like_new_file
from harness.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

ENERGY_GAIN_RANGE = (0.02, 50.0)
"""Clamp of the energy-matching gain (the upstream ``get_energy_ratio``; DESIGN §4)."""

STATE_FORMAT = "uss-bench-train-state/1"
"""``format`` metadata of the ``*.state.safetensors`` files (optimizer + sampler state)."""

QUERY_NETS = ("cnn14", "logmel_stats", "onehot")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """A training recipe, read from ``models/<name>.toml`` (sections ``[model] [query] [data] [optim] [run]``).

    Paths in the file are relative to the repository root.
    """

    name: str
    channels: tuple[int, ...] = (32, 64, 128, 256, 384, 384)
    n_fft: int = 2048
    query_net: str = "cnn14"
    condition: str = "at_soft"
    query_checkpoint: str | None = None
    sources: list[dict[str, str]] = field(default_factory=lambda: [{"dataset": "audioset", "split": "train"}])
    clip_seconds: float = 10.0
    segment_seconds: float = 2.0
    anchor: str = "sed"
    sed_checkpoint: str | None = None
    mix_num: int = 2
    exclude_overlapping_tags: bool = True
    batch_size: int = 16
    learning_rate: float = 1e-3
    warm_up_steps: int = 10000
    reduce_lr_steps: int = 1_000_000
    weight_decay: float = 0.0
    amsgrad: bool = True
    steps: int = 1_000_000
    checkpoint_every: int = 20000
    validate_every: int = 10000
    val_items: int = 64
    log_every: int = 100
    seed: int = 1234
    cache_mb: int = 4096

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a config file.

        Raises:
            ConfigError: the file is missing, not TOML, has unknown keys or bad values (named).
        """
        path = Path(path)
        raw = read_toml(path, f"training config {path} does not exist; see models/*.toml for examples")
        flat: dict[str, Any] = {"name": raw.pop("name", path.stem)}
        mapping = {
            "model": {"channels": "channels", "n_fft": "n_fft", "architecture": None},
            "query": {"net": "query_net", "condition": "condition", "checkpoint": "query_checkpoint"},
            "data": {"sources": "sources", "clip_seconds": "clip_seconds", "segment_seconds": "segment_seconds",
                     "anchor": "anchor", "sed_checkpoint": "sed_checkpoint", "mix_num": "mix_num",
                     "exclude_overlapping_tags": "exclude_overlapping_tags", "cache_mb": "cache_mb"},
            "optim": {"batch_size": "batch_size", "learning_rate": "learning_rate",
                      "warm_up_steps": "warm_up_steps", "reduce_lr_steps": "reduce_lr_steps",
                      "weight_decay": "weight_decay", "amsgrad": "amsgrad", "optimizer": None},
            "run": {"steps": "steps", "checkpoint_every": "checkpoint_every", "validate_every": "validate_every",
                    "val_items": "val_items", "log_every": "log_every", "seed": "seed"},
        }
        for section, values in raw.items():
            if section not in mapping or not isinstance(values, dict):
                raise ConfigError(f"{path}: unknown section [{section}]; expected {', '.join(mapping)}")
            for key, value in values.items():
                if key not in mapping[section]:
                    raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
                if section == "model" and key == "architecture" and value != "ResUNet30":
                    raise ConfigError(f"{path}: [model] architecture must be ResUNet30, got {value!r}")
                if section == "optim" and key == "optimizer" and value != "AdamW":
                    raise ConfigError(f"{path}: [optim] optimizer must be AdamW, got {value!r}")
                if mapping[section][key]:
                    flat[mapping[section][key]] = value
        for key in ("query_checkpoint", "sed_checkpoint"):
            flat[key] = flat.get(key) or None
        if "channels" in flat:
            flat["channels"] = tuple(flat["channels"])
        cfg = cls(**flat)
        cfg.validate(path)
        return cfg

    def validate(self, where: str | Path = "config") -> None:
        """Raise :class:`ConfigError` naming the first inconsistent value."""
        problems = []
        if self.query_net not in QUERY_NETS:
            problems.append(f"[query] net must be one of {', '.join(QUERY_NETS)}, got {self.query_net!r}")
        allowed = {"cnn14": ("at_soft", "emb"), "logmel_stats": ("emb",), "onehot": ("onehot",)}
        if self.query_net in allowed and self.condition not in allowed[self.query_net]:
            problems.append(f"[query] condition {self.condition!r} does not fit net {self.query_net!r} "
                            f"(use {' or '.join(allowed[self.query_net])})")
        if self.anchor not in ("sed", "energy", "random"):
            problems.append(f"[data] anchor must be sed, energy or random, got {self.anchor!r}")
        if self.mix_num < 2:
            problems.append(f"[data] mix_num must be ≥ 2, got {self.mix_num}")
        if self.batch_size < 2 or self.batch_size < self.mix_num:
            problems.append(f"[optim] batch_size must be ≥ 2 and ≥ mix_num, got {self.batch_size}")
        if not self.sources or any(set(s) - {"dataset", "split", "root"} or "dataset" not in s for s in self.sources):
            problems.append("[data] sources must be a list of {dataset, split[, root]} tables")
        for name in ("steps", "checkpoint_every", "validate_every", "log_every", "warm_up_steps", "reduce_lr_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1")
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * SAMPLE_RATE))

    def to_toml(self) -> str:
        """The resolved config as TOML (written to ``<run>/config.toml``)."""

        def val(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, str):
                return json.dumps(v)
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(val(x) for x in v) + "]"
            if isinstance(v, dict):
                return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
            return repr(v)

        d = asdict(self)
        sections = {
            "model": {"architecture": "ResUNet30", "channels": d["channels"], "n_fft": d["n_fft"]},
            "query": {"net": d["query_net"], "condition": d["condition"], "checkpoint": d["query_checkpoint"] or ""},
            "data": {k: d[k] if d[k] is not None else "" for k in (
                "sources", "clip_seconds", "segment_seconds", "anchor", "sed_checkpoint", "mix_num",
                "exclude_overlapping_tags", "cache_mb")},
            "optim": {"optimizer": "AdamW", **{k: d[k] for k in (
                "batch_size", "learning_rate", "warm_up_steps", "reduce_lr_steps", "weight_decay", "amsgrad")}},
            "run": {k: d[k] for k in ("steps", "checkpoint_every", "validate_every", "val_items", "log_every",
                                     "seed")},
        }
        lines = [f"name = {val(self.name)}"]
        for section, values in sections.items():
            lines += ["", f"[{section}]"] + [f"{k} = {val(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


def warm_up_scale(step: int, warm_up_steps: int, reduce_lr_steps: int) -> float:
    """Learning-rate factor at ``step``: the upstream ``constant_warm_up`` schedule.

    0.001 for steps [0, W), 0.01 for [W, 2W), 0.1 for [2W, 3W), then 1; W = ``warm_up_steps``.
    ``reduce_lr_steps`` is accepted for the upstream's signature and, as there, unused by this schedule.
    """
    del reduce_lr_steps
    if step < warm_up_steps:
        return 0.001
    if step < 2 * warm_up_steps:
        return 0.01
    if step < 3 * warm_up_steps:
        return 0.1
    return 1.0


# --------------------------------------------------------------------------------------------------
# Data: labelled clips, the balanced sampler, anchors and mixing
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainClip:
    """One labelled recording: its audio, its tags (for overlap exclusion) and its class indices."""

    key: str
    audio: AudioRef
    dataset: str
    labels: tuple[str, ...]
    class_ids: tuple[int, ...]


class TrainingData:
    """The labelled recordings of one or more corpora, indexed by class (the training vocabulary).

    Clip corpora give their clips (AudioSet: every tag counts; FSD corpora: the primary label, as their
    evaluation sets); track corpora give each source with its label (a MUSDB18 stem, a Slakh2100 plugin,
    clean Voicebank speech). The vocabulary is the union of the corpora's vocabularies in source order.

    Raises:
        ConfigError: no clip at all, or fewer classes with clips than the batch size.
        LayoutError, MetadataError: a corpus root is not its layout.
    """

    def __init__(self, sources: list[dict[str, str]], roots: dict[str, Path], cache_mb: int = 4096):
        self.vocabulary: list[str] = []
        index: dict[str, int] = {}
        self.clips: list[TrainClip] = []
        self.corpora = {}
        for source in sources:
            dataset, split = source["dataset"], source.get("split", "train")
            corpus = get_corpus(dataset, roots[dataset])
            corpus.check()
            corpus.check_split(split)
            self.corpora[dataset] = corpus
            for label in corpus.vocabulary():
                if label not in index:
                    index[label] = len(self.vocabulary)
                    self.vocabulary.append(label)
            if corpus.kind == "clips":
                for clip in corpus.clips(split):
                    labels = class_labels(load_dataset_config(dataset), clip.labels)
                    self.clips.append(TrainClip(f"{dataset}/{clip.clip_id}", clip.audio, dataset, clip.labels,
                                                tuple(index[label] for label in labels)))
            else:
                for track in corpus.tracks(split):
                    for src in track.sources:
                        self.clips.append(TrainClip(f"{dataset}/{track.track_id}/{src.source_id}", src.audio,
                                                    dataset, (src.label,), (index[src.label],)))
        self.per_class: dict[int, list[int]] = {}
        for i, clip in enumerate(self.clips):
            for k in clip.class_ids:
                self.per_class.setdefault(k, []).append(i)
        if not self.clips:
            where = ", ".join(f"{s['dataset']}/{s.get('split', 'train')}" for s in sources)
            raise ConfigError(f"no training clip found in {where}")
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_mb * 2**20

    @property
    def classes(self) -> list[int]:
        """Class indices that have at least one clip, ascending."""
        return sorted(self.per_class)

    def audio(self, i: int) -> np.ndarray:
        """Clip ``i`` as ``(L,)`` float32 mono at 32 kHz (decoded once, kept in a bounded LRU cache)."""
        clip = self.clips[i]
        if clip.key in self._cache:
            self._cache.move_to_end(clip.key)
            return self._cache[clip.key]
        x = self.corpora[clip.dataset].read(clip.audio, SAMPLE_RATE)
        self._cache[clip.key] = x
        self._cache_bytes += x.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return x


class BalancedSampler:
    """Balanced class sampling (paper Alg. 1 step 1; the upstream ``BalancedSampler``).

    Each batch draws ``batch_size`` distinct classes uniformly without replacement from the classes
    that have clips, then takes the next clip of each class's queue. A class's queue is a permutation
    of its clips drawn from its own stream ``SeedSequence([seed, rank, class, epoch])`` and redrawn
    (``epoch + 1``) when used up, so the whole state is one generator state and two small arrays.

    Raises:
        ConfigError: fewer classes with clips than ``batch_size``.
    """

    def __init__(self, per_class: dict[int, list[int]], batch_size: int, seed: int, rank: int = 0):
        self.per_class = {k: list(v) for k, v in sorted(per_class.items())}
        self.classes = np.array(sorted(self.per_class), dtype=np.int64)
        if len(self.classes) < batch_size:
            raise ConfigError(
                f"balanced sampling draws {batch_size} distinct classes per batch, but only "
                f"{len(self.classes)} classes have clips; lower [optim] batch_size or add data"
            )
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank, 0x5A3])))
        self.pointer = {int(k): 0 for k in self.classes}
        self.epoch = {int(k): 0 for k in self.classes}

    def _queue(self, k: int) -> np.ndarray:
        ss = np.random.SeedSequence([self.seed, self.rank, k, self.epoch[k]])
        return np.random.Generator(np.random.PCG64(ss)).permutation(self.per_class[k])

    def next_batch(self) -> list[tuple[int, int]]:
        """``batch_size`` pairs ``(clip index, class index)`` with distinct classes."""
        out = []
        for k in self.rng.choice(self.classes, size=self.batch_size, replace=False):
            k = int(k)
            if self.pointer[k] >= len(self.per_class[k]):
                self.pointer[k], self.epoch[k] = 0, self.epoch[k] + 1
            out.append((int(self._queue(k)[self.pointer[k]]), k))
            self.pointer[k] += 1
        return out

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (generator, queue pointers and epochs)."""
        return {"rng": self.rng.bit_generator.state, "pointer": self.pointer, "epoch": self.epoch,
                "rank": self.rank, "seed": self.seed}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.pointer = {int(k): int(v) for k, v in state["pointer"].items()}
        self.epoch = {int(k): int(v) for k, v in state["epoch"].items()}


def mine_segment(x: np.ndarray, class_label: str, anchor: str, segment_samples: int, clip_samples: int,
                 rng: np.random.Generator, sed_anchor: Callable | None = None, key: str = "") -> np.ndarray:
    """Cut the anchor segment of one clip (paper Alg. 1 step 2).

    The clip is first cut to ``clip_samples`` (10 s); a clip not longer than a segment is tiled to it.
    ``sed`` uses the Cnn14_DecisionLevelMax rule of ``build-mixtures`` (SEMANTICS §6, with our
    in-audio restriction for short clips); ``energy`` the loudest window (:func:`~harness.anchors.energy_anchor`);
    ``random`` a uniform start drawn from ``rng``.

    Args:
        x: ``(L,)`` float32 clip at 32 kHz.
        class_label: the sampled class (AudioSet display name, for ``sed``).
        key: the clip's id (caches its SED anchors).

    Returns:
        ``(segment_samples,)`` float32.
    """
    from harness.anchors import energy_anchor, random_anchor

    x = x[:clip_samples]
    if len(x) <= segment_samples:
        return fix_length(x, segment_samples, mode="tile")
    if anchor == "sed":
        if sed_anchor is None:
            raise ConfigError("anchor = 'sed' needs a SED checkpoint: [data] sed_checkpoint or --sed-checkpoint")
        return sed_anchor(x, class_label, key, segment_samples)
    if anchor == "energy":
        begin, _ = energy_anchor(x, segment_samples=segment_samples)
    else:
        begin, _ = random_anchor(len(x), rng, segment_samples=segment_samples)
    return x[begin: begin + segment_samples].copy()


def mix_segments(segments: np.ndarray, tags: list[set[str]], mix_num: int, exclude_overlapping_tags: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixtures and targets of one batch (paper Alg. 1 steps 3–4; the upstream in-batch mixer).

    Segment n is the target of mixture n; the interferers are the next segments ``n+1, n+2, …`` of the
    batch (cyclically) until ``mix_num − 1`` are taken, skipping, with ``exclude_overlapping_tags``, a
    segment whose clip shares a tag with the target's clip. Each interferer is scaled by
    ``clip(sqrt(E_t/E_i), 0.02, 50)`` (float64 energies). If the mixture's peak exceeds 1, mixture and
    target are both divided by it, so nothing clips and the target stays the mixture's exact component.

    Args:
        segments: ``(B, S)`` float32.
        tags: the B clips' tag sets.

    Returns:
        ``(mixtures, targets, sources)``: float32 ``(B, S)``, float32 ``(B, S)``, int64 ``(B,)`` the
        number of sources in each mixture (< ``mix_num`` only when exclusion left too few candidates).
    """
    from harness.mixtures import energy_gain

    b = len(segments)
    mixtures = segments.astype(np.float32, copy=True)
    targets = segments.astype(np.float32, copy=True)
    counts = np.ones(b, dtype=np.int64)
    for n in range(b):
        for offset in range(1, b):
            if counts[n] == mix_num:
                break
            j = (n + offset) % b
            if exclude_overlapping_tags and tags[n] & tags[j]:
                continue
            gain = energy_gain(segments[n], segments[j], *ENERGY_GAIN_RANGE)
            mixtures[n] += np.float32(gain) * segments[j]
            counts[n] += 1
        peak = float(np.max(np.abs(mixtures[n])))
        if peak > 1.0:
            mixtures[n] /= np.float32(peak)
            targets[n] /= np.float32(peak)
    return mixtures, targets, counts


# --------------------------------------------------------------------------------------------------
# Query nets and the batch producer
# --------------------------------------------------------------------------------------------------
def build_query_net(cfg: TrainConfig, vocabulary: list[str], device: torch.device) -> nn.Module:
    """The frozen query net of the recipe (eval mode, no gradients).

    Raises:
        ConfigError: ``cnn14`` without a checkpoint.
        CheckpointError: the checkpoint cannot be loaded.
    """
    from harness.models import load_query_net
    from harness.models.querynets import LogMelStats, OneHotQuery

    if cfg.query_net == "cnn14":
        if not cfg.query_checkpoint:
            raise ConfigError("[query] net = 'cnn14' needs a Cnn14 checkpoint: [query] checkpoint or "
                              "--query-checkpoint (e.g. Cnn14_mAP=0.431.pth)")
        net = load_query_net(_repo_path(cfg.query_checkpoint), device)
    elif cfg.query_net == "logmel_stats":
        net = LogMelStats()
    else:
        net = OneHotQuery(vocabulary)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def condition_size(cfg: TrainConfig, vocabulary: list[str]) -> int:
    """Condition size D: 527 (at_soft), 2048 (Cnn14 emb), 128 (LogMelStats), |vocabulary| (onehot)."""
    from harness.models.querynets import LOGMEL_STATS_SIZE

    if cfg.query_net == "cnn14":
        return 527 if cfg.condition == "at_soft" else 2048
    return LOGMEL_STATS_SIZE if cfg.query_net == "logmel_stats" else len(vocabulary)


class BatchMaker:
    """Sampler → anchor segments → mixtures → query conditions: one training (or validation) batch."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, sampler: BalancedSampler, query_net: nn.Module,
                 device: torch.device, sed_anchor: Callable | None):
        self.cfg, self.data, self.sampler, self.query_net, self.device = cfg, data, sampler, query_net, device
        self.sed_anchor = sed_anchor

    def make(self) -> dict[str, torch.Tensor | np.ndarray]:
        cfg, data = self.cfg, self.data
        picks = self.sampler.next_batch()
        segments = np.stack([
            mine_segment(data.audio(i), data.vocabulary[k], cfg.anchor, cfg.segment_samples,
                         int(round(cfg.clip_seconds * SAMPLE_RATE)), self.sampler.rng, self.sed_anchor,
                         data.clips[i].key)
            for i, k in picks
        ])
        tags = [set(data.clips[i].labels) for i, _ in picks]
        mixtures, targets, counts = mix_segments(segments, tags, cfg.mix_num, cfg.exclude_overlapping_tags)
        with torch.inference_mode():
            if cfg.query_net == "onehot":
                cond = torch.stack([self.query_net.condition([data.vocabulary[k]]) for _, k in picks])
            else:
                out = self.query_net(torch.from_numpy(targets).to(self.device))
                cond = out["clipwise_output" if cfg.condition == "at_soft" else "embedding"]
        return {"mixture": torch.from_numpy(mixtures), "target": torch.from_numpy(targets),
                "condition": cond.detach().float().cpu().clone(), "sources": counts}


def _sed_anchor_by_label(checkpoint: str | None, device: torch.device) -> Callable | None:
    """``(clip, label, key) -> segment`` for ``anchor = 'sed'``; the label must be an AudioSet class name.

    The SED rule is deterministic, so each (clip, class) anchor is computed once and its start sample
    kept (a few bytes per pair), not re-run every time the clip is drawn.
    """
    if checkpoint is None:
        return None
    import pandas as pd

    from harness.datasets.audioset import BUNDLED_CLASS_LABELS
    from harness.mixtures import CLIP_SAMPLES, _sed_anchor_fn

    names = list(pd.read_csv(BUNDLED_CLASS_LABELS)["display_name"])
    fn = _sed_anchor_fn(str(_repo_path(checkpoint)))
    begins: dict[tuple[str, str], int] = {}

    def anchor(x: np.ndarray, label: str, key: str, segment_samples: int) -> np.ndarray:
        if label not in names:
            raise ConfigError(f"anchor = 'sed' needs AudioSet labels; {label!r} is not one (use energy or random)")
        if (key, label) not in begins:
            begins[(key, label)] = fn(x, names.index(label))[1]
        begin = begins[(key, label)]
        return fix_length(x, CLIP_SAMPLES, mode="pad")[begin: begin + segment_samples].copy()

    return anchor


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"optimizer.{idx}.{name}": t.detach().cpu().contiguous()
               for idx, st in sd["state"].items() for name, t in st.items()}
    return tensors, {"param_groups": sd["param_groups"], "state_keys": {str(i): sorted(st) for i, st in sd["state"].items()}}


def _load_optimizer(opt: torch.optim.Optimizer, path: Path, meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        for idx, names in meta["optimizer"]["state_keys"].items():
            state[int(idx)] = {n: f.get_tensor(f"optimizer.{idx}.{n}") for n in names}
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def latest_checkpoint(run: Path) -> tuple[int, Path, Path] | None:
    """``(step, model file, state file)`` of the newest checkpoint whose two files both exist."""
    found = []
    for model in (run / "checkpoints").glob("step_*.safetensors"):
        if model.name.endswith(".state.safetensors"):
            continue
        state = model.with_name(model.name.replace(".safetensors", ".state.safetensors"))
        if state.is_file():
            found.append((int(model.stem.split("_")[1]), model, state))
    return max(found) if found else None


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, total steps, the last step's loss, the last validation
    SDRi (dB; ``None`` when no validation ran), wall seconds (summed over resumed sessions) and the model file."""

    run: Path
    steps: int
    final_loss: float
    val_sdri: float | None
    seconds: float
    model: Path


def _dist() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _repo_path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else REPO_ROOT / p


def resolve_source_roots(cfg: TrainConfig, roots: list[str]) -> dict[str, Path]:
    """The corpus root of every source: ``--root DIR`` (one source), ``--root DATASET=DIR``, the
    config's ``root`` (relative to the repo), then ``USS_BENCH_<NAME>_ROOT`` / ``uss-bench.toml``.

    Raises:
        ConfigError: a bare ``--root DIR`` with several sources, or a ``DATASET=`` naming no source.
    """
    datasets = [s["dataset"] for s in cfg.sources]
    given: dict[str, str] = {}
    for r in roots:
        name, sep, path = r.partition("=")
        if sep and name in datasets:
            given[name] = path
        elif sep and name.isidentifier():
            raise ConfigError(f"--root {r}: {name!r} is not a source of this config ({', '.join(datasets)})")
        elif len(set(datasets)) == 1:
            given[datasets[0]] = r
        else:
            raise ConfigError(f"--root {r}: the config trains on {', '.join(datasets)}; write --root DATASET=DIR")
    out = {}
    for s in cfg.sources:
        d = s["dataset"]
        if d in given:
            out[d] = resolve_root(d, given[d])
        elif s.get("root"):
            out[d] = resolve_root(d, _repo_path(s["root"]))
        else:
            out[d] = resolve_root(d)
    return out


def train(cfg: TrainConfig, roots: dict[str, Path], out: Path, *, steps: int | None = None, device: str = "auto",
          resume: bool = False, progress: bool = True, console: Any = None) -> TrainResult:
    """Train (or continue training) a separator; see the module docstring for the recipe and the files.

    Args:
        cfg: the recipe.
        roots: corpus root of every source dataset (:func:`resolve_source_roots`).
        out: the run folder.
        steps: total steps to reach (overrides ``cfg.steps``).
        device: ``auto``, ``cpu`` or ``cuda`` (``cuda:LOCAL_RANK`` under torchrun).
        resume: continue from the newest complete checkpoint in ``out``.

    Returns:
        :class:`TrainResult` (rank 0's view).

    Raises:
        ConfigError: bad config, too few classes, or ``out`` already holds a run and ``resume`` is off.
        CheckpointError: resuming from a checkpoint that does not fit the config or world size.
    """
    from harness.metrics import sdr_batch
    from harness.models import ResUNet30, resolve_device
    from harness.models.checkpoints import load_separator, save_checkpoint
    from harness.models.fast import checked_forward

    rank, world, local_rank = _dist()
    distributed = world > 1
    dev = resolve_device(device)
    if distributed:
        import torch.distributed as tdist

        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    total_steps = check_steps(cfg.steps if steps is None else steps)
    out = Path(out)
    started = _started_without_checkpoint(out)  # before this run creates anything
    if rank == 0:
        if not resume and latest_checkpoint(out) is not None:
            raise ConfigError(f"{out} already holds a training run; pass --resume {out} or choose another --out")
        if started:
            log.warning("%s holds a run killed before its first checkpoint: starting it over from step 0", out)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not resume or not (out / "config.toml").exists():  # `train --resume RUN` reads it, even before
            atomic_write_text(out / "config.toml", cfg.to_toml())  # the first checkpoint

    data = TrainingData(cfg.sources, roots, cfg.cache_mb)
    size = condition_size(cfg, data.vocabulary)
    query_net = build_query_net(cfg, data.vocabulary, dev)
    sed = _sed_anchor_by_label(cfg.sed_checkpoint, dev) if cfg.anchor == "sed" else None
    if cfg.anchor == "sed" and sed is None:
        raise ConfigError("anchor = 'sed' needs a SED checkpoint: [data] sed_checkpoint or --sed-checkpoint "
                          "(Cnn14_DecisionLevelMax_mAP=0.385.pth), or set anchor = 'energy'")
    sampler = BalancedSampler(data.per_class, cfg.batch_size, cfg.seed, rank)
    maker = BatchMaker(cfg, data, sampler, query_net, dev, sed)

    torch.manual_seed(cfg.seed)
    model = ResUNet30(size, cfg.channels, cfg.condition, n_fft=cfg.n_fft)
    start_step, history = 0, []
    found = latest_checkpoint(out) if resume else None
    if resume and found is None and not started:
        raise CheckpointError(f"--resume {out}: no complete checkpoint (model + state files) in {out}/checkpoints; "
                              "start the run without --resume")
    state_meta = None
    if found:
        start_step, model_file, state_file = found
        loaded = load_separator(model_file)
        if loaded.channels != model.channels or loaded.condition_size != size or loaded.n_fft != model.n_fft:
            raise CheckpointError(f"{model_file} does not fit {cfg.name}: channels {loaded.channels}, "
                                  f"condition {loaded.condition_size}, n_fft {loaded.n_fft}")
        model.load_state_dict(loaded.state_dict(), strict=True)
        with safe_open(str(state_file), framework="pt") as f:
            state_meta = json.loads(f.metadata()["state"])
        if state_meta["world_size"] != world:
            raise CheckpointError(f"{state_file} was written by {state_meta['world_size']} rank(s); "
                                  f"resume with the same number (now {world})")
        sampler.load_state(state_meta["samplers"][rank])
        if start_step > total_steps:
            raise ConfigError(f"--resume {out}: its newest checkpoint is at step {start_step}, past the {total_steps} "
                              f"steps asked for; pass --steps {start_step} or more")
    model = model.to(dev).train()
    trainable: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        if dev.type == "cuda":
            trainable = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trainable = DistributedDataParallel(trainable, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)
    if found:
        _load_optimizer(opt, found[2], state_meta)
        history = _read_metrics(out / "metrics.csv", start_step)

    # A fixed validation set: its own sampler stream, drawn once (from the training corpora).
    val_batches = []
    if rank == 0 and cfg.val_items > 0:
        val_sampler = BalancedSampler(data.per_class, cfg.batch_size, cfg.seed + 1, 0)
        val_maker = BatchMaker(cfg, data, val_sampler, query_net, dev, sed)
        for _ in range(math.ceil(cfg.val_items / cfg.batch_size)):
            val_batches.append(val_maker.make())

    def validate() -> float:
        model.eval()
        sdris = []
        with torch.inference_mode():
            for b in val_batches:
                est = checked_forward(model, b["mixture"][:, None].to(dev), b["condition"].to(dev))
                est = est[:, 0].float().cpu().numpy()
                tgt, mix = b["target"].numpy(), b["mixture"].numpy()
                sdris.append(sdr_batch(tgt, est) - sdr_batch(tgt, mix))
        model.train()
        return float(np.mean(np.concatenate(sdris)[: cfg.val_items]))

    t0, last_loss, losses = time.perf_counter(), float("nan"), []
    elapsed0 = history[-1]["seconds"] if history else 0.0
    bar = _progress(console, progress and rank == 0, start_step, total_steps)
    val_sdri = None
    try:
        for step in range(start_step, total_steps):
            lr = cfg.learning_rate * warm_up_scale(step, cfg.warm_up_steps, cfg.reduce_lr_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = maker.make()
            est = trainable(batch["mixture"][:, None].to(dev), batch["condition"].to(dev))[:, 0]
            loss = torch.mean(torch.abs(est - batch["target"].to(dev)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last_loss = float(loss.detach())
            losses.append(last_loss)
            done = step + 1
            if rank == 0:
                validating = bool(val_batches) and (done % cfg.validate_every == 0 or done == total_steps)
                if validating:
                    val_sdri = validate()
                if done % cfg.log_every == 0 or validating or done == total_steps:
                    history.append({"step": done, "lr": lr, "loss": float(np.mean(losses)),
                                    "val_sdri": val_sdri if validating else None,
                                    "seconds": round(elapsed0 + time.perf_counter() - t0, 3)})
                    losses = []
                    _write_metrics(out / "metrics.csv", history)
                if bar:
                    bar[0].update(bar[1], completed=done, loss=last_loss)
            if done % cfg.checkpoint_every == 0 or done == total_steps:
                _save(cfg, out, done, model, opt, sampler, world, rank, save_checkpoint, query_net, last_loss)
    finally:
        if bar:
            bar[0].stop()
    seconds = elapsed0 + time.perf_counter() - t0
    if found and start_step == total_steps:  # a finished run resumed: no step ran, report its last ones
        last_loss, val_sdri = _finished_run_summary(found[1], history)
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
    digests = [digest]
    if distributed:
        import torch.distributed as tdist

        digests = [None] * world
        tdist.all_gather_object(digests, digest)
    final = out / "model.safetensors"
    if rank == 0:
        summary = {
            "config": cfg.name, "steps": total_steps, "resumed_from": start_step, "final_loss": last_loss,
            "val_sdri": val_sdri, "wall_seconds": round(seconds, 1), "world_size": world, "device": str(dev),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None},
            "parameter_sha256_per_rank": digests, "classes": len(data.classes), "clips": len(data.clips),
            "harness_version": harness.__version__, "torch": torch.__version__,
        }
        atomic_write_text(out / "train.json", json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    if distributed:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return TrainResult(out, total_steps, last_loss, val_sdri, seconds, final)


def check_steps(steps: int) -> int:
    """``steps`` (total steps to reach) as an int ≥ 1.

    Raises:
        ConfigError: 0 or negative (``--steps 0`` used to mean the config's steps, silently).
    """
    if int(steps) < 1:
        raise ConfigError(f"--steps {steps}: the total number of steps must be at least 1 (omit --steps for the "
                          "config's [run] steps)")
    return int(steps)


def _started_without_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds a run that was killed before its first complete checkpoint (its log or its
    checkpoint folder exist, no complete checkpoint does): it can be started over, with or without
    ``--resume`` (issue 15 #13: each error pointed to the other)."""
    begun = (out / "metrics.csv").exists() or (out / "checkpoints").is_dir()
    return begun and latest_checkpoint(out) is None


def _finished_run_summary(model_file: Path, history: list[dict[str, Any]]) -> tuple[float, float | None]:
    """``(final loss, last validation SDRi)`` of a run that had already reached its steps: the loss the
    checkpoint recorded (its last step's), the last SDRi of ``metrics.csv`` (``None`` when none)."""
    loss = float("nan")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with safe_open(str(model_file), framework="pt") as f:
            loss = float(json.loads(f.metadata()["config"])["training"]["loss"])
    vals = [r["val_sdri"] for r in history if r.get("val_sdri") is not None]
    return loss, (vals[-1] if vals else None)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, so that ``json.dumps``
    writes valid JSON (``NaN`` is not JSON; ``train.json`` had it after resuming a finished run)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _save(cfg: TrainConfig, out: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer,
          sampler: BalancedSampler, world: int, rank: int, save_checkpoint: Callable, query_net: nn.Module,
          loss: float) -> None:
    """Write ``step_N.safetensors`` (model) then ``step_N.state.safetensors`` (optimizer, samplers)."""
    samplers = [sampler.state()]
    if world > 1:
        import torch.distributed as tdist

        samplers = [None] * world
        tdist.all_gather_object(samplers, sampler.state())
    if rank != 0:
        return
    ckpt_dir = out / "checkpoints"
    model_file = ckpt_dir / f"step_{step:08d}.safetensors"
    save_checkpoint(model_file, {"separator": model, "query_net": query_net},
                    extra_config={"recipe": cfg.name, "step": step, "loss": loss, "config_toml": cfg.to_toml()})
    tensors, optim_meta = _optimizer_tensors(opt)
    meta = {"format": STATE_FORMAT, "state": json.dumps({
        "step": step, "world_size": world, "samplers": samplers, "optimizer": optim_meta,
        "model_file": model_file.name})}
    state_file = ckpt_dir / f"step_{step:08d}.state.safetensors"
    tmp = state_file.with_name(f".{state_file.name}.{os.getpid()}.tmp")
    save_file(tensors or {"optimizer.empty": torch.zeros(0)}, str(tmp), metadata=meta)
    share_like_new_file(tmp)  # safetensors writes 0600
    os.replace(tmp, state_file)
    _atomic_copy(model_file, out / "model.safetensors")
    if not (out / "config.toml").exists():
        atomic_write_text(out / "config.toml", cfg.to_toml())


METRICS_FIELDS = ("step", "lr", "loss", "val_sdri", "seconds")


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in METRICS_FIELDS})
    atomic_write_text(path, buf.getvalue())


def _read_metrics(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Rows of ``metrics.csv`` up to ``up_to_step`` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if int(r["step"]) <= up_to_step:
                rows.append({"step": int(r["step"]), "lr": float(r["lr"]), "loss": float(r["loss"]),
                             "val_sdri": float(r["val_sdri"]) if r["val_sdri"] else None,
                             "seconds": float(r["seconds"])})
    return rows


def _progress(console: Any, enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                   TimeRemainingColumn(), console=console, transient=False)
    task = bar.add_task("train", total=total, completed=start, loss=float("nan"))
    bar.start()
    return bar, task
