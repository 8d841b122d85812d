"""``build-mixtures``: corpus records → deterministic evaluation sets, protocol ``uss-paper``.

Two steps, as in descript audiotools' "sample a spec, persist it, then render it":

1. **Plan** (serial, metadata only, except Slakh's frame scan): every random choice is drawn from
   ``numpy.random.default_rng(SeedSequence([seed, key(dataset), key(split), key(label)]))``, one stream
   per class, and written into an :class:`ItemSpec`. A spec holds everything needed to render its item.
2. **Render** (parallel with joblib, ``--jobs N``): a pure function of the spec. Results come back in
   spec order, so the set is bit-identical for any number of workers. Clip corpora are rendered source
   first (:func:`_render_clip_window`): each source file a window of items needs is decoded and resampled
   once, every distinct 2-s segment cut from it once, then the items are summed from those segments;
   the bytes are those of :func:`render_item` applied to each spec. The sha256 hashes and the
   ``mixtures.h5`` row writes run on a writer thread (:class:`_RowSink`) fed in spec order while later
   sources still decode: the same bytes as a serial write (``WRITER_QUEUE = 0``).

Protocol ``uss-paper`` (DESIGN §4, the paper §5.1 and the upstream evaluation scripts):

- AudioSet / FSDKaggle2018 / FSD50K: for each class, up to ``items_per_class`` target clips of that class,
  each mixed with an interferer clip that does not carry the class. Targets are 2-s segments at 32 kHz:
  AudioSet anchors by ``energy`` (the loudest 2 s), ``random``, or ``sed`` (Cnn14_DecisionLevelMax);
  FSD clips are cut or tiled from their start. The interferer is scaled by
  ``gain = clip(sqrt(E_target / E_interferer), 0.02, 50)`` (energy matching) and added.
- Slakh2100: 2-s frames of each stem with peak > 0.1, grouped by ``plugin_name``; the mixture is the same
  2 s of the track's real ``mix.flac``.
- MUSDB18: every test track × {vocals, drums, bass, other} against its ``mixture.wav`` (virtual items).
- Voicebank-Demand: every clean utterance against its noisy twin (virtual items).

SNR-sweep sets (``--snr-db``, :mod:`harness.snr_sweep`, issue 12): the same plan and segments, the interferer
scaled to a given target-to-interferer ratio instead of energy matched, in ``<split>@snr<±x>``.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from joblib import delayed

import harness
from harness.audio import AudioRef, audio_info, fix_length, read_audio, resample, resolve_audio_path
from harness.config import class_labels, load_dataset_config
from harness.datasets import get_corpus
from harness.datasets.base import Clip, Corpus, Track
from harness.datasets.store import (
    MANIFEST_COLUMNS,
    SetIntegrityError,
    array_sha256,
    atomic_dir,
    check_output_folder,
    check_set,
    corpus_fingerprint,
    file_sha256,
    items_digest,
    manifest_sha256,
    no_space_error,
    open_set,
    set_dir,
)
from harness.errors import ConfigError, UssBenchError
from harness.parallel import parallel

log = logging.getLogger(__name__)

PROTOCOL = "uss-paper"
PROTOCOL_VERSION = 1
ANCHOR_MODES = ("sed", "energy", "random")


def stream_key(text: str) -> int:
    """A stable 64-bit integer for a string (first 8 bytes of its sha256), used to key RNG streams."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def class_rng(seed: int, dataset: str, split: str, label: str) -> np.random.Generator:
    """The random stream of one class: independent of other classes, workers and iteration order."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream_key(dataset), stream_key(split),
                                                         stream_key(label)]))


@dataclass(frozen=True)
class ItemSpec:
    """Everything needed to render one item; all randomness is already drawn.

    Attributes:
        item_id: stable id ``"<dataset>-<split>-<class_id:03d>-<k:03d>"`` (clips, Slakh) or the
            track / utterance / stem name (virtual items).
        class_id, label: the target's class in the corpus vocabulary.
        target: the target recording; ``mixture``: a real mixture (Slakh ``mix.flac``, virtual items).
        target_start: for Slakh, the frame start in samples at the file's rate; else ``None``.
        interferer, interferer_label: the other source of a clip mixture.
        anchor_seeds: per-source seeds of ``random`` anchors (target, interferer).
    """

    item_id: str
    class_id: int
    label: str
    target: AudioRef
    source_id: str | None = None
    mixture: AudioRef | None = None
    target_start: int | None = None
    interferer: AudioRef | None = None
    interferer_label: str | None = None
    interferer_class_id: int | None = None
    anchor_seeds: tuple[int, int] = (0, 0)


@dataclass
class BuildOptions:
    """Options of one build (recorded in ``build.json``)."""

    dataset: str
    split: str = "test"
    seed: int | None = None
    per_class: int | None = None
    anchor: str | None = None
    sed_checkpoint: str | None = None
    jobs: int = 1
    snr_db: float | None = None
    """Target-to-interferer ratio of an SNR-sweep set (dB, :mod:`harness.snr_sweep`); ``None``: the paper's
    energy matching. The set is then ``<dataset>/<split>@snr<±x>`` (:func:`set_split`)."""


def set_split(opts: BuildOptions) -> str:
    """The folder (and ``split`` field) of the set ``opts`` builds: the corpus split, or for an SNR sweep
    ``<split>@snr<±x>`` (:func:`harness.snr_sweep.snr_split`). Item ids keep the corpus split, so the items
    of every SNR pair with each other and with the paper's set."""
    if opts.snr_db is None:
        return opts.split
    from harness.snr_sweep import snr_split

    return snr_split(opts.split, opts.snr_db)


@dataclass
class Plan:
    """The specs of a set plus what the plan decided per class (for ``build.json``)."""

    specs: list[ItemSpec]
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- planning ---------------------------------------------------------------------------------------


def _pick_targets(rng: np.random.Generator, n_clips: int, n_items: int) -> list[int]:
    """Indices of target clips: without replacement when possible, else whole permutations in turn."""
    if n_clips >= n_items:
        return [int(i) for i in rng.choice(n_clips, size=n_items, replace=False)]
    picks: list[int] = []
    while len(picks) < n_items:
        picks.extend(int(i) for i in rng.permutation(n_clips))
    return picks[:n_items]


def plan_clips(corpus: Corpus, clips: list[Clip], cfg: dict, opts: BuildOptions) -> Plan:
    """Plan the mixtures of a clip corpus (AudioSet, FSDKaggle2018, FSD50K).

    A clip is a target candidate of class ``k`` when it carries ``k`` (AudioSet: any of its labels, as
    the upstream balanced sampler; FSD: its primary label, as the upstream ``labels.split(",")[0]``).
    Interferers are drawn uniformly from the clips that do not carry ``k``; an exact repeat of a
    (target, interferer) pair is redrawn while another interferer is available.
    """
    vocab = corpus.vocabulary()
    per_class = opts.per_class or cfg["items_per_class"]
    small = cfg.get("small_classes", {})
    max_uses = int(small.get("max_uses_per_clip", 1))
    plan = Plan(specs=[])
    by_label: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        for label in class_labels(cfg, clip.labels):
            by_label.setdefault(label, []).append(i)
    for class_id, label in enumerate(vocab):
        candidates = by_label.get(label, [])
        if not candidates:
            continue
        pool = [i for i, c in enumerate(clips) if label not in c.labels]
        info: dict[str, Any] = {"class_id": class_id, "clips": len(candidates)}
        plan.classes[label] = info
        if not pool:
            info.update(items=0, skipped="no interferer clip without this class")
            continue
        n_items = per_class if len(candidates) >= per_class else min(per_class, max_uses * len(candidates))
        info.update(items=n_items, reuse=len(candidates) < per_class)
        rng = class_rng(plan_seed(cfg, opts), corpus.name, opts.split, label)
        seen: set[tuple[int, int]] = set()
        for k, t in enumerate(_pick_targets(rng, len(candidates), n_items)):
            target = candidates[t]
            interferer = pool[int(rng.integers(len(pool)))]
            for _ in range(len(pool)):
                if (target, interferer) not in seen:
                    break
                interferer = pool[int(rng.integers(len(pool)))]
            seen.add((target, interferer))
            seeds = tuple(int(s) for s in rng.integers(0, 2**63 - 1, size=2))
            other = clips[interferer]
            plan.specs.append(ItemSpec(
                item_id=f"{corpus.name}-{opts.split}-{class_id:03d}-{k:03d}",
                class_id=class_id, label=label, target=clips[target].audio,
                source_id=clips[target].clip_id,
                interferer=other.audio, interferer_label=other.labels[0],
                interferer_class_id=vocab.index(other.labels[0]), anchor_seeds=seeds,
            ))
    present = set(by_label)
    plan.notes.append(f"{len(vocab) - len(present & set(vocab))} of {len(vocab)} classes have no clip "
                      f"in split {opts.split!r}")
    return plan


def _active_frames(corpus: Corpus, ref: AudioRef, frame_peak: float, seconds: float) -> list[int]:
    """Start samples (at the file's rate) of the non-overlapping frames whose peak exceeds ``frame_peak``."""
    rate = audio_info(ref.path).samplerate
    x = corpus.read(ref, rate)
    n = int(rate * seconds)
    frames = len(x) // n
    if frames == 0:
        return []
    peaks = np.abs(x[: frames * n].reshape(frames, n)).max(axis=1)
    return [int(i * n) for i in np.flatnonzero(peaks > frame_peak)]


def plan_slakh(corpus: Corpus, tracks: list[Track], cfg: dict, opts: BuildOptions) -> Plan:
    """Plan Slakh2100 items: active 2-s stem frames grouped by ``plugin_name`` (upstream rule).

    The frame scan decodes every stem (in parallel with ``opts.jobs``); it is deterministic.
    """
    vocab = corpus.vocabulary()
    per_class = opts.per_class or cfg["items_per_class"]
    jobs = [(track, src) for track in tracks for src in track.sources]
    scans = parallel(opts.jobs)(
        delayed(_active_frames)(corpus, src.audio, cfg["frame_peak"], cfg["segment_seconds"]) for _, src in jobs
    )
    frames: dict[str, list[tuple[Track, Any, int]]] = {}
    for (track, src), starts in zip(jobs, scans, strict=True):
        frames.setdefault(src.label, []).extend((track, src, s) for s in starts)
    plan = Plan(specs=[])
    for label in sorted(frames):
        found = frames[label]
        info: dict[str, Any] = {"class_id": vocab.index(label), "frames": len(found)}
        plan.classes[label] = info
        if len(found) <= cfg["min_frames"]:
            info.update(items=0, skipped=f"{len(found)} active frames, a class needs more than {cfg['min_frames']}")
            continue
        rng = class_rng(plan_seed(cfg, opts), corpus.name, opts.split, label)
        picks = range(len(found)) if len(found) <= per_class else sorted(
            int(i) for i in rng.choice(len(found), size=per_class, replace=False))
        info["items"] = len(picks)
        for k, i in enumerate(picks):
            track, src, start = found[i]
            plan.specs.append(ItemSpec(
                item_id=f"{corpus.name}-{opts.split}-{info['class_id']:03d}-{k:03d}",
                class_id=info["class_id"], label=label, target=src.audio, mixture=track.mixture,
                source_id=f"{track.track_id}/{src.source_id}", target_start=start,
            ))
    return plan


def plan_virtual(corpus: Corpus, tracks: list[Track], cfg: dict, opts: BuildOptions) -> Plan:
    """Plan MUSDB18 / Voicebank-Demand: one item per (track, source), whole signals."""
    vocab = corpus.vocabulary()
    plan = Plan(specs=[])
    for track in tracks:
        for src in track.sources:
            item_id = track.track_id if len(track.sources) == 1 else f"{track.track_id}/{src.source_id}"
            plan.specs.append(ItemSpec(item_id=item_id, class_id=vocab.index(src.label), label=src.label,
                                       target=src.audio, mixture=track.mixture, source_id=src.source_id))
    for label in vocab:
        n = sum(s.label == label for s in plan.specs)
        plan.classes[label] = {"class_id": vocab.index(label), "items": n}
    return plan


def plan_seed(cfg: dict, opts: BuildOptions) -> int:
    """The build's seed: ``--seed``, else the dataset TOML's."""
    return int(opts.seed if opts.seed is not None else cfg["seed"])


# -- rendering --------------------------------------------------------------------------------------


def energy_gain(target: np.ndarray, interferer: np.ndarray, lo: float, hi: float) -> float:
    """Energy matching: ``clip(sqrt(E_target / E_interferer), lo, hi)`` with energies in float64.

    A silent interferer gets ``hi`` (it stays silent). Source: the upstream ``get_energy_ratio``.
    """
    return _gain_from_energies(signal_energy(target), signal_energy(interferer), lo, hi)


def signal_energy(x: np.ndarray) -> float:
    """``Σ x²`` in float64 (the energies of :func:`energy_gain`)."""
    return float(np.sum(np.square(x, dtype=np.float64)))


def _gain_from_energies(e_t: float, e_i: float, lo: float, hi: float) -> float:
    ratio = math.sqrt(e_t / e_i) if e_i > 0 else hi
    return float(min(max(ratio, lo), hi))


def _mixing_gain(e_t: float, e_i: float, mix_cfg: dict, snr_db: float | None) -> float:
    """The interferer's gain: the paper's energy matching (``snr_db`` None, the TOML's ``[mixing]``), or the
    gain giving a target-to-interferer ratio of ``snr_db`` (:func:`harness.snr_sweep.snr_gain`, unclipped)."""
    if snr_db is not None:
        from harness.snr_sweep import snr_gain

        return snr_gain(e_t, e_i, snr_db)
    return _gain_from_energies(e_t, e_i, mix_cfg["gain_min"], mix_cfg["gain_max"]) \
        if mix_cfg.get("energy_match", True) else 1.0


def _segment(x: np.ndarray, seg: int, anchor: str, seed: int, class_id: int,
             anchor_fn: Callable | None) -> tuple[np.ndarray, int]:
    """Cut one 2-s segment out of a clip by the anchor rule; returns ``(segment, begin_sample)``."""
    if len(x) <= seg:
        return fix_length(x, seg, mode="tile"), 0
    if anchor == "sed" and anchor_fn is not None:
        return anchor_fn(x, class_id)
    if anchor == "start":
        begin = 0
    elif anchor == "energy":
        from harness.anchors import energy_anchor

        begin, _ = energy_anchor(x, segment_samples=seg)
    elif anchor == "random":
        from harness.anchors import random_anchor

        begin, _ = random_anchor(len(x), np.random.default_rng(seed), segment_samples=seg)
    else:
        raise ConfigError(f"anchor mode {anchor!r} is not available here")
    return x[begin: begin + seg].copy(), int(begin)


def render_item(spec: ItemSpec, corpus: Corpus, cfg: dict, anchor: str,
                anchor_fn: Callable | None = None, snr_db: float | None = None) -> dict[str, Any]:
    """Render one item of a fixed-length set. Pure: the same spec gives the same bytes.

    ``snr_db``: the target-to-interferer ratio of an SNR-sweep set (dB), else energy matching.

    Returns:
        a dict with ``mixture`` and ``target`` (float32 ``(64000,)`` at 32 kHz), the manifest fields
        (onsets in seconds at 32 kHz, ``interferer_gain``) and both sha256 hashes.
    """
    sr = cfg["sample_rate"]
    seg = int(round(sr * cfg["segment_seconds"]))
    row: dict[str, Any] = {}
    if spec.mixture is not None:  # Slakh: the same frame of a stem and of the real mix
        rate = audio_info(spec.target.path).samplerate
        n = int(round(rate * cfg["segment_seconds"]))
        pieces = []
        for ref in (spec.target, spec.mixture):
            native = read_audio(ref.path, None, start=spec.target_start, frames=n)
            pieces.append(fix_length(resample(native, rate, sr), seg, mode="pad"))
        target, mixture = pieces
        row.update(target_onset_s=spec.target_start / rate)
    else:
        t_full = corpus.read(spec.target, sr)
        i_full = corpus.read(spec.interferer, sr)
        target, t_on = _segment(t_full, seg, anchor, spec.anchor_seeds[0], spec.class_id, anchor_fn)
        interferer, i_on = _segment(i_full, seg, anchor, spec.anchor_seeds[1], spec.interferer_class_id, anchor_fn)
        gain = _mixing_gain(signal_energy(target), signal_energy(interferer), cfg["mixing"], snr_db)
        mixture = target + np.float32(gain) * interferer
        row.update(target_onset_s=t_on / sr, interferer_onset_s=i_on / sr, interferer_gain=gain)
    row.update(mixture=mixture.astype(np.float32), target=target.astype(np.float32),
               sha256_mixture=array_sha256(mixture), sha256_target=array_sha256(target), num_samples=seg)
    return row


def _render_batch(specs: list[ItemSpec], corpus: Corpus, cfg: dict, anchor: str,
                  sed_checkpoint: str | None) -> list[dict[str, Any]]:
    anchor_fn = _sed_anchor_fn(sed_checkpoint) if anchor == "sed" else None
    return [render_item(s, corpus, cfg, anchor, anchor_fn) for s in specs]


RENDER_WINDOW = 512
"""Items rendered together from one decode of their sources (clip corpora).

A window holds at most ``2 × RENDER_WINDOW`` distinct segments (256 KiB each at 2 s, 32 kHz: ≤ 256 MiB),
so memory stays bounded by the window, not by the set. A source used by items of several windows is
decoded once per window; every dev set fits in one window (each file is read once).
"""

SOURCE_BATCH = 8
"""Source files per joblib task in the decode step."""


def _segment_key(anchor: str, seed: int, class_id: int) -> int | None:
    """What a segment depends on besides the clip: the seed (``random``), the class (``sed``), or nothing.

    Two uses of one clip with the same key get the same :func:`_segment` output, so it is cut once.
    """
    if anchor == "random":
        return int(seed)
    if anchor == "sed":
        return int(class_id)
    return None


def _cut_sources(sources: list[tuple[AudioRef, list[tuple[int, int]]]], corpus: Corpus, cfg: dict,
                 anchor: str, sed_checkpoint: str | None) -> list[dict[Any, tuple[np.ndarray, int]]]:
    """Decode each source once and cut its distinct segments.

    Args:
        sources: ``(ref, [(seed, class_id), ...])`` per source file: the segment requests of its uses.

    Returns:
        per source, ``{segment key: (segment float32 (seg,), begin sample)}`` (:func:`_segment_key`).
    """
    sr = cfg["sample_rate"]
    seg = int(round(sr * cfg["segment_seconds"]))
    anchor_fn = _sed_anchor_fn(sed_checkpoint) if anchor == "sed" else None
    out = []
    for ref, requests in sources:
        x = corpus.read(ref, sr)
        cuts: dict[Any, tuple[np.ndarray, int]] = {}
        for seed, class_id in requests:
            key = _segment_key(anchor, seed, class_id)
            if key not in cuts:
                cuts[key] = _segment(x, seg, anchor, seed, class_id, anchor_fn)
        out.append(cuts)
    return out


def _render_clip_window(specs: list[ItemSpec], corpus: Corpus, cfg: dict, anchor: str, opts: BuildOptions,
                        buffer: Callable[[], np.ndarray] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, Any, dict[str, Any]]]:
    """Render clip items (AudioSet, FSDKaggle2018, FSD50K) source first; bit-identical to :func:`render_item`.

    Each distinct source file of ``specs`` is decoded and resampled once (in parallel with
    ``opts.jobs``), each distinct segment cut once (:func:`_segment_key`), and the energy of a segment
    used by several items is computed once. Items are then summed in spec order exactly as
    :func:`render_item` does (same segments, same float32 gain and sum). Sources are decoded in the order
    of their first use by the specs and items are yielded as soon as both their sources are decoded, so
    the consumer (hashing and writing, :class:`_RowSink`) works while later sources are still decoding.

    Args:
        buffer: returns the float32 ``(seg,)`` array each mixture is summed into (default: a new array;
            :meth:`_RowSink.buffer` recycles a few, so that no 256-KiB array is mapped afresh per item).

    Yields:
        per item, in spec order, ``(mixture, target, target_key, row)``: float32 ``(seg,)`` arrays, a
        hashable key naming the target segment (equal keys, equal target bytes: its sha256 can be
        reused) and the manifest fields without the hashes. ``mixture`` comes from ``buffer``; ``target`` is
        shared between items with the same segment: never modify it.
    """
    sr = cfg["sample_rate"]
    seg = int(round(sr * cfg["segment_seconds"]))
    requests: dict[AudioRef, list[tuple[int, int]]] = {}
    for spec in specs:  # insertion order = first use: item i needs only sources of items 0..i
        requests.setdefault(spec.target, []).append((spec.anchor_seeds[0], spec.class_id))
        requests.setdefault(spec.interferer, []).append((spec.anchor_seeds[1], spec.interferer_class_id))
    sources = list(requests.items())
    batches = [sources[i: i + SOURCE_BATCH] for i in range(0, len(sources), SOURCE_BATCH)]
    done = parallel(opts.jobs, return_as="generator")(
        delayed(_cut_sources)(b, corpus, cfg, anchor, opts.sed_checkpoint) for b in batches
    )
    mix_cfg = cfg["mixing"]
    cuts: dict[AudioRef, dict[Any, tuple[np.ndarray, int]]] = {}
    energies: dict[tuple[AudioRef, Any], float] = {}

    def energy(key: tuple[AudioRef, Any], x: np.ndarray) -> float:
        if key not in energies:
            energies[key] = signal_energy(x)
        return energies[key]

    pending = iter(specs)
    spec = next(pending, None)
    for b, out in zip(batches, done, strict=True):
        cuts.update({ref: c for (ref, _), c in zip(b, out, strict=True)})
        while spec is not None and spec.target in cuts and spec.interferer in cuts:
            t_key = (spec.target, _segment_key(anchor, spec.anchor_seeds[0], spec.class_id))
            i_key = (spec.interferer, _segment_key(anchor, spec.anchor_seeds[1], spec.interferer_class_id))
            target, t_on = cuts[t_key[0]][t_key[1]]
            interferer, i_on = cuts[i_key[0]][i_key[1]]
            gain = _mixing_gain(energy(t_key, target), energy(i_key, interferer), mix_cfg, opts.snr_db)
            # target + float32(gain)·interferer in float32 (IEEE addition commutes: the bytes of render_item)
            mixture = buffer() if buffer is not None else np.empty(seg, dtype=np.float32)
            np.multiply(interferer, np.float32(gain), out=mixture)
            np.add(mixture, target, out=mixture)
            yield mixture, target, t_key, dict(target_onset_s=t_on / sr, interferer_onset_s=i_on / sr,
                                               interferer_gain=gain, num_samples=seg)
            spec = next(pending, None)
    if spec is not None:  # cannot happen: every source of every spec was requested
        raise RuntimeError(f"item {spec.item_id}: its sources were not decoded")


CLIP_SAMPLES = 320000
"""AudioSet clips are 10 s at 32 kHz; the SED anchor rule works on a whole clip (1001 frames)."""


@functools.lru_cache(maxsize=2)
def _sed_model(checkpoint: str):
    """The SED model, loaded once per process (joblib workers reuse it)."""
    import torch

    from harness.models import load_sed

    torch.set_num_threads(1)  # the same float rounding, hence the same argmax, for any --jobs
    return load_sed(checkpoint, "cpu")


def _sed_anchor_fn(checkpoint: str | None) -> Callable:
    """``(clip, class_id) -> (segment, begin)`` by the paper's SED rule (SEMANTICS §6).

    The clip is zero-padded (or cut) to 10 s like the PANNs waveform packs and Cnn14_DecisionLevelMax
    gives its framewise probabilities; the segment centre is the first argmax of the 201-frame box-filtered
    score (:func:`harness.anchors.best_anchor_centre`, on exact sums). For a whole 10-s clip this is exactly the upstream rule
    (:func:`harness.anchors.find_anchor`, clamp to [100, 900]). Ours for a shorter clip: the argmax is
    taken over the centres whose 2-s segment lies inside the real audio, so that an anchor never falls in
    the zero padding (the upstream, whose packs pad short clips, can pick a silent segment there).
    """
    import torch

    from harness.anchors import best_anchor_centre

    if checkpoint is None:
        raise ConfigError("--anchor sed needs --sed-checkpoint PTH (a Cnn14_DecisionLevelMax checkpoint)")
    model = _sed_model(checkpoint)

    def anchor(x: np.ndarray, class_id: int) -> tuple[np.ndarray, int]:
        clip = fix_length(x, CLIP_SAMPLES, mode="pad")
        with torch.inference_mode():
            framewise = model(torch.from_numpy(clip)[None])["framewise_output"][0].numpy()
        half = 100  # segment frames // 2
        last = min(len(framewise) - 1 - half, len(x) // 320 - half)  # (c + 100) * 320 <= len(x)
        centre = best_anchor_centre(framewise, class_id, half, last)
        begin = (centre - half) * 320
        return clip[begin: begin + 64000].copy(), int(begin)

    return anchor


# -- the build --------------------------------------------------------------------------------------


def _rel(ref: AudioRef | None, root: Path) -> str | None:
    if ref is None:
        return None
    try:
        path = str(ref.path.relative_to(root))
    except ValueError:
        path = str(ref.path)
    return f"{path}#{ref.h5_index}" if ref.h5_index is not None else path


def _fingerprint(refs: Iterable[AudioRef], root: Path) -> dict[str, Any]:
    """File list + sizes of what the build reads (the corpus fingerprint in ``build.json``)."""
    return corpus_fingerprint({resolve_audio_path(r.path) if r.h5_index is None else r.path for r in refs}, root)


def resolve_anchor(corpus: Corpus, cfg: dict, opts: BuildOptions) -> str:
    """The anchor rule of a build: a dataset whose declaration has no ``anchor`` (FSD clips) starts at 0
    (tiled); one that declares it (AudioSet) per ``--anchor``.

    ``sed`` is the default when a SED checkpoint is given (the paper's rule), else the TOML's.
    """
    if cfg.get("anchor") is None:
        if opts.anchor not in (None, "start"):
            raise ConfigError(f"--anchor applies to datasets that declare an anchor (AudioSet) only; "
                              f"{corpus.title} segments start at 0 s")
        return "start"
    anchor = opts.anchor or ("sed" if opts.sed_checkpoint else cfg.get("anchor", "energy"))
    if anchor not in ANCHOR_MODES:
        raise ConfigError(f"--anchor {anchor!r}: choose one of {', '.join(ANCHOR_MODES)}")
    if anchor == "sed" and not opts.sed_checkpoint:
        raise ConfigError("--anchor sed needs --sed-checkpoint PTH (a Cnn14_DecisionLevelMax checkpoint)")
    return anchor


def plan_build(corpus: Corpus, cfg: dict, opts: BuildOptions) -> Plan:
    """Plan the items of ``opts.dataset`` / ``opts.split`` (see the module docstring)."""
    corpus.check()
    corpus.check_split(opts.split)
    if corpus.kind == "clips":
        return plan_clips(corpus, corpus.clips(opts.split), cfg, opts)
    tracks = corpus.tracks(opts.split)
    if cfg.get("virtual"):
        return plan_virtual(corpus, tracks, cfg, opts)
    return plan_slakh(corpus, tracks, cfg, opts)


def build_mixtures(root: str | Path, workdir: str | Path, opts: BuildOptions,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build (or rebuild) ``<workdir>/mixtures/<dataset>/<split>/`` and return its ``build.json``.

    Args:
        root: the corpus root (its own layout).
        workdir: the harness work folder.
        opts: dataset, split, seed, items per class, anchor mode, jobs.
        progress: called as ``progress(done, total)`` while rendering.

    Raises:
        LayoutError, MetadataError, AudioError: bad corpus input (the message names the file).
        ConfigError: bad options.
        UssBenchError: the plan has no item (e.g. fewer than two classes); ``workdir`` is a file; the disk
            is (or becomes) too full for the set: "no space left on <mount> … (needs ≈ N MB)", the temporary
            set removed and a previous set kept.
    """
    t0 = time.perf_counter()
    check_output_folder(workdir, "--workdir")
    cfg = load_dataset_config(opts.dataset)
    corpus = get_corpus(opts.dataset, root)
    anchor = resolve_anchor(corpus, cfg, opts)
    if opts.snr_db is not None:
        from harness.snr_sweep import check_sweepable

        check_sweepable(opts.dataset, cfg, opts.snr_db)
    plan = plan_build(corpus, cfg, opts)
    if not plan.specs:
        raise UssBenchError(
            f"{corpus.title} split {opts.split!r} under {corpus.root} gives no evaluation item "
            f"(classes: {json.dumps(plan.classes)}); it needs at least two classes with audio"
        )
    root = corpus.root
    virtual = bool(cfg.get("virtual"))
    rows: list[dict[str, Any]] = []
    out_dir = set_dir(workdir, opts.dataset, set_split(opts))
    needed = set_bytes(plan.specs, cfg, virtual)
    check_free_space(out_dir.parent, needed)
    try:
        with atomic_dir(out_dir) as tmp:
            if virtual:
                rows = _virtual_rows(plan.specs, cfg, opts.jobs, progress)
            else:
                rows = _render_to_h5(plan.specs, corpus, cfg, anchor, opts, tmp / "mixtures.h5", progress)
            manifest = _manifest(plan.specs, rows, opts, cfg, root)
            manifest.to_parquet(tmp / "manifest.parquet", index=False, engine="pyarrow")
            refs = [s.target for s in plan.specs] + [s.interferer for s in plan.specs if s.interferer] + \
                [s.mixture for s in plan.specs if s.mixture]
            build = {
                "protocol": PROTOCOL,
                "protocol_version": PROTOCOL_VERSION,
                "dataset": opts.dataset,
                "split": set_split(opts),
                "seed": plan_seed(cfg, opts),
                "virtual": virtual,
                "options": {"per_class": opts.per_class or cfg.get("items_per_class"), "anchor": anchor,
                            "sed_checkpoint": opts.sed_checkpoint},
                "declaration": cfg,
                "corpus": _fingerprint(refs, root),
                "counts": {"items": len(manifest), "classes": sum(1 for c in plan.classes.values() if c.get("items")),
                           "per_class": plan.classes, "notes": plan.notes},
                "digest": items_digest(manifest),
                "manifest_sha256": manifest_sha256(manifest),
                "harness_version": harness.__version__,
                "jobs": opts.jobs,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if opts.snr_db is not None:  # only SNR-sweep sets carry it: the paper's build.json keeps its keys
                from harness.snr_sweep import sweep_record

                build["snr_sweep"] = sweep_record(opts.split, opts.snr_db)
                build["snr_db"] = float(opts.snr_db)
            (tmp / "build.json").write_text(json.dumps(build, indent=2, sort_keys=True, default=str) + "\n")
    except OSError as exc:  # h5py / pyarrow / json on a full disk; atomic_dir has removed the temporary set
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space_error(out_dir.parent, needed, exc) from None
        raise
    return build


def set_bytes(specs: list[ItemSpec], cfg: dict, virtual: bool) -> int:
    """The bytes a set of ``specs`` takes on disk, an upper estimate: ``mixtures.h5`` holds two float32
    ``(N, L)`` arrays (uncompressed, 1-row chunks: + ~1 kB a row of HDF5 overhead), the manifest ≤ 1 kB a row."""
    n = len(specs)
    seg = int(round(cfg["sample_rate"] * cfg["segment_seconds"])) if not virtual else 0
    return n * (2 * 4 * seg + 2048) + 65536


def check_free_space(folder: Path, needed: int) -> None:
    """Raise the "no space left" error before any work when ``folder``'s file system has less than ``needed``
    bytes free (``folder`` is created).

    Raises:
        UssBenchError: :func:`harness.datasets.store.no_space_error`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < needed:
        raise no_space_error(folder, needed)


def _render_to_h5(specs: list[ItemSpec], corpus: Corpus, cfg: dict, anchor: str, opts: BuildOptions,
                  path: Path, progress: Callable | None) -> list[dict[str, Any]]:
    """Render fixed-length items in parallel and stream them into ``mixtures.h5`` in spec order.

    The file's bytes are reserved first (:func:`reserve_bytes`), so a full disk fails there, with a plain
    ``OSError`` (ENOSPC) before HDF5 has written any row: HDF5 objects whose writes failed with ENOSPC
    crashed the interpreter (a segfault) when they were released later (issue 15, defect 10). The
    reservation beyond the file's end is cut off after closing (:func:`trim_hdf5`): the same bytes as an
    unreserved write.
    """
    seg = int(round(cfg["sample_rate"] * cfg["segment_seconds"]))
    with h5py.File(path, "w") as h5:
        reserve_bytes(path, len(specs) * (2 * 4 * seg + 1024) + (1 << 20))
        rows = _write_h5(h5, specs, corpus, cfg, anchor, opts, progress)
    trim_hdf5(path)
    return rows


def reserve_bytes(path: Path, size: int) -> None:
    """Allocate ``size`` bytes of disk for the file ``path`` (``posix_fallocate``; its size grows to ``size``
    with zeros when smaller).

    Raises:
        OSError: ENOSPC / EDQUOT when the file system cannot hold them.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def trim_hdf5(path: Path) -> None:
    """Cut a closed HDF5 file to the end-of-file address its superblock records (versions 0-3), removing
    bytes reserved past it; a file of another format is left as it is."""
    import struct

    with open(path, "rb") as f:
        head = f.read(48)
    if len(head) < 48 or head[:8] != b"\x89HDF\r\n\x1a\n":
        return
    version = head[8]
    if version in (0, 1) and head[13] == 8:  # size of offsets 8
        offset = 40 + (4 if version == 1 else 0)
    elif version in (2, 3) and head[9] == 8:
        offset = 28
    else:
        return
    eoa = struct.unpack("<Q", head[offset: offset + 8])[0]
    if 0 < eoa < path.stat().st_size:
        os.truncate(path, eoa)


WRITER_QUEUE = 64
"""Rendered items that may wait for the writer thread (:class:`_RowSink`; 2 × 256 KiB each at 2 s,
32 kHz). ``0`` hashes and writes in the rendering thread (the serial path the tests compare with)."""


def _write_h5(h5: h5py.File, specs: list[ItemSpec], corpus: Corpus, cfg: dict, anchor: str, opts: BuildOptions,
              progress: Callable | None) -> list[dict[str, Any]]:
    seg = int(round(cfg["sample_rate"] * cfg["segment_seconds"]))
    n = len(specs)
    batch = 16
    batches = [specs[i: i + batch] for i in range(0, n, batch)]
    h5.attrs["sample_rate"] = cfg["sample_rate"]
    mix = h5.create_dataset("mixture", shape=(n, seg), dtype="float32", chunks=(1, seg))
    tgt = h5.create_dataset("target", shape=(n, seg), dtype="float32", chunks=(1, seg))
    with _RowSink(mix, tgt, WRITER_QUEUE) as sink:
        if all(s.mixture is None for s in specs):  # clip corpora: decode each source once per window
            for start in range(0, n, RENDER_WINDOW):
                window = specs[start: start + RENDER_WINDOW]
                for mixture, target, t_key, row in _render_clip_window(window, corpus, cfg, anchor, opts,
                                                                        sink.buffer):
                    # the key is local to the window: a later window decodes (and hashes) its segments anew
                    sink.put(mixture, target, (start // RENDER_WINDOW, t_key), row)
                if progress:
                    progress(sink.count, n)
        else:
            results = parallel(opts.jobs, return_as="generator")(
                delayed(_render_batch)(b, corpus, cfg, anchor, opts.sed_checkpoint) for b in batches
            )
            for out in results:
                for r in out:
                    sink.put(r.pop("mixture"), r.pop("target"), None, r,
                             hashes=(r.pop("sha256_mixture"), r.pop("sha256_target")))
                if progress:
                    progress(sink.count, n)
    return sink.rows


class _RowSink:
    """Hash and write rendered items, in the order given, on a writer thread.

    ``put(mixture, target, target_key, row)`` queues item ``count``; the writer thread computes
    ``sha256_mixture`` and ``sha256_target`` (:func:`array_sha256`; a target key seen before reuses its
    hash) into ``row`` and writes the two rows of ``mixtures.h5`` (mixture then target, row by row: the
    file's chunk order, so the same bytes as a serial write). hashlib releases the GIL on large buffers,
    decoding (soundfile, soxr) too, so with two cores the hashing and writing overlap the decode. Leaving
    the ``with`` block waits for the writer; an error on either side stops both and is raised in the
    caller's thread (the writer's error first). ``queue_size`` 0: hash and write at ``put`` instead.

    Attributes:
        rows: the manifest fields with the hashes, in ``put`` order (complete after the ``with`` block).
        count: items put so far.
    """

    def __init__(self, mix: h5py.Dataset, tgt: h5py.Dataset, queue_size: int):
        self._write_mix, self._write_tgt = _RowWriter(mix), _RowWriter(tgt)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(queue_size + 2):
            self._free.put(np.empty(mix.shape[1], dtype=np.float32))
        self._target_hashes: dict[Any, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._queue: queue.Queue | None = queue.Queue(queue_size) if queue_size > 0 else None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _RowSink:
        if self._queue is not None:
            self._thread = threading.Thread(target=self._run, name="uss-bench-h5-writer", daemon=True)
            self._thread.start()
        return self

    def buffer(self) -> np.ndarray:
        """A float32 ``(seg,)`` array to render the next mixture into (handed back once it is written)."""
        while True:
            if self._error is not None:
                raise self._error
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                continue

    def put(self, mixture: np.ndarray, target: np.ndarray, target_key: Any, row: dict[str, Any],
            hashes: tuple[str, str] | None = None) -> None:
        """Queue one item (``hashes`` given: already hashed; blocks while the queue is full)."""
        self.count += 1
        if self._queue is None:
            self._consume((mixture, target, target_key, row, hashes))
            if target_key is not None:  # a mixture from buffer(): free again
                self._free.put(mixture)
            return
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put((mixture, target, target_key, row, hashes), timeout=0.5)
                return
            except queue.Full:
                continue

    def _consume(self, item: tuple) -> None:
        mixture, target, key, row, hashes = item
        if hashes is None:
            if key not in self._target_hashes:
                self._target_hashes[key] = array_sha256(target)
            hashes = (array_sha256(mixture), self._target_hashes[key])
        i = len(self.rows)
        self._write_mix(i, mixture)
        self._write_tgt(i, target)
        row["sha256_mixture"], row["sha256_target"] = hashes
        self.rows.append(row)

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self._error is None:
                    self._consume(item)
            except BaseException as exc:  # re-raised in the caller's thread
                self._error = exc
            finally:
                if item[2] is not None:  # a mixture from buffer(): free again
                    self._free.put(item[0])

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is not None:
            self._queue.put(None)  # the writer drains the queue (dropping items after an error) and ends
            self._thread.join()  # before the caller closes the HDF5 file
        if exc is None and self._error is not None:
            raise self._error


class _RowWriter:
    """``dataset[row] = values`` for a float32 ``(N, L)`` dataset: the same ``H5Dwrite`` of one row (so
    the same file bytes) without h5py's per-call Python selection parsing and dataspace objects.

    (``write_direct_chunk`` would be cheaper still but allocates the chunks elsewhere in the file, which
    changes the file's bytes.)
    """

    def __init__(self, dataset: h5py.Dataset):
        self._id = dataset.id
        self._length = dataset.shape[1]
        self._file_space = dataset.id.get_space()
        self._mem_space = h5py.h5s.create_simple((1, self._length))

    def __call__(self, row: int, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(1, self._length)
        self._file_space.select_hyperslab((row, 0), (1, self._length))
        self._id.write(self._mem_space, self._file_space, values)


def _virtual_row(spec: ItemSpec, sr: int) -> dict[str, Any]:
    info = audio_info(spec.mixture.path)
    return {
        "num_samples": int(math.ceil(info.frames * sr / info.samplerate)),
        "sha256_mixture": file_sha256(resolve_audio_path(spec.mixture.path)),
        "sha256_target": file_sha256(resolve_audio_path(spec.target.path)),
    }


def _virtual_rows(specs: list[ItemSpec], cfg: dict, jobs: int, progress: Callable | None) -> list[dict]:
    """Rows of virtual items: length at 32 kHz and the sha256 of the corpus files' bytes."""
    rows = parallel(jobs)(delayed(_virtual_row)(s, cfg["sample_rate"]) for s in specs)
    if progress:
        progress(len(rows), len(rows))
    return rows


def _manifest(specs: list[ItemSpec], rows: list[dict], opts: BuildOptions, cfg: dict, root: Path) -> pd.DataFrame:
    records = []
    for spec, row in zip(specs, rows, strict=True):
        records.append({
            "item_id": spec.item_id, "dataset": opts.dataset, "split": set_split(opts),
            "class_id": spec.class_id, "label": spec.label, "source_id": spec.source_id,
            "mixture_file": _rel(spec.mixture, root), "target_file": _rel(spec.target, root),
            "target_onset_s": row.get("target_onset_s"),
            "interferer_file": _rel(spec.interferer, root), "interferer_label": spec.interferer_label,
            "interferer_onset_s": row.get("interferer_onset_s"), "interferer_gain": row.get("interferer_gain"),
            "sample_rate": cfg["sample_rate"], "num_samples": row["num_samples"],
            "sha256_mixture": row["sha256_mixture"], "sha256_target": row["sha256_target"],
        })
    df = pd.DataFrame.from_records(records, columns=list(MANIFEST_COLUMNS))
    for col in ("target_onset_s", "interferer_onset_s", "interferer_gain"):
        df[col] = df[col].astype("float64")
    return df


def verify_build(root: str | Path, workdir: str | Path, opts: BuildOptions) -> list[str]:
    """Rebuild a set into a temporary workdir and compare it with the existing one.

    Returns:
        the differences (empty when the digests and every item hash agree).

    Raises:
        UssBenchError: no existing set to verify.
    """
    import tempfile

    existing = open_set(workdir, opts.dataset, set_split(opts), check=False)
    try:
        check_set(existing)
        integrity = []
    except SetIntegrityError as exc:
        integrity = [f"integrity: {exc}"]
    with tempfile.TemporaryDirectory(prefix="uss-bench-verify-") as tmp:
        fresh_build = build_mixtures(root, tmp, opts)
        fresh = open_set(tmp, opts.dataset, set_split(opts))
        problems = list(integrity)
        if fresh_build["digest"] != existing.build["digest"]:
            problems.append(f"digest {existing.build['digest'][:16]}… ≠ rebuilt {fresh_build['digest'][:16]}…")
        if not existing.virtual:
            problems += _rehash_rows(existing)
        a = existing.manifest.set_index("item_id")
        b = fresh.manifest.set_index("item_id")
        for item in sorted(set(a.index) ^ set(b.index)):
            problems.append(f"{item}: present in only one of the builds")
        problems += _manifest_differences(a, b)
        if existing.build.get("counts", {}).get("per_class") != fresh_build["counts"]["per_class"]:
            problems.append("build.json: the per-class counts (labels, items) differ from the rebuild's")
        return problems


def _manifest_differences(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """``"<item>: <column> differs (x ≠ rebuilt y)"`` for every manifest column of the items of both
    manifests (indexed by ``item_id``); nulls equal nulls, floats compare exactly (the build is deterministic)."""
    problems = []
    for item in sorted(set(a.index) & set(b.index)):
        for col in MANIFEST_COLUMNS[1:]:
            x, y = a.at[item, col], b.at[item, col]
            if not ((pd.isna(x) and pd.isna(y)) or (not pd.isna(x) and not pd.isna(y) and x == y)):
                problems.append(f"{item}: {col} differs ({x!r} ≠ rebuilt {y!r})")
    return problems


def _rehash_rows(evalset) -> list[str]:
    """Items of an existing set whose stored audio no longer matches its manifest hashes."""
    problems = []
    with h5py.File(evalset.path / "mixtures.h5", "r") as h5:
        for i, item in enumerate(evalset.manifest.iloc[: h5["mixture"].shape[0]].itertuples()):
            if array_sha256(h5["mixture"][i]) != item.sha256_mixture:
                problems.append(f"{item.item_id}: stored mixture does not match its manifest hash")
            if array_sha256(h5["target"][i]) != item.sha256_target:
                problems.append(f"{item.item_id}: stored target does not match its manifest hash")
    return problems
