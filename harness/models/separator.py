"""Inference: chunked, batched separation and query embeddings (reference/SEMANTICS.md §7).

:func:`separate` is the one path from a waveform and a condition to a separated waveform; evaluation,
the ``separate`` command and the demo all go through it or through :func:`separate_batch` (its batched
core, for evaluation sets whose items are single 2-s chunks with their own conditions). :func:`embed`
turns a query recording into a condition vector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from harness import SAMPLE_RATE, SEGMENT_SAMPLES
from harness.audio import fix_length
from harness.errors import ConfigError
from harness.models.fast import checked_forward

SILENCE_FRAME_SAMPLES = SAMPLE_RATE // 10
"""Query silence removal works on non-overlapping 0.1-s frames (3,200 samples)."""

SILENCE_THRESHOLD = 0.02
"""A query frame is kept when its max |x| exceeds this (upstream ``calculate_query_emb``)."""

QUERY_OUTPUTS = {"at_soft": "clipwise_output", "emb": "embedding"}
"""Condition type → the Cnn14 output used as the condition (upstream ``Cnn14_Wrapper``, SEMANTICS §4)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``, a torch.device) into a torch.device.

    ``"auto"`` is CUDA when available, else the CPU.

    Raises:
        ConfigError: unknown name, or CUDA requested but not available.
    """
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} requested but CUDA is not available; use --device cpu or auto"
            )
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise ConfigError(f"invalid device {device!r}: {exc}") from exc
    raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module without any)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_inference(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; restores the module's training flag afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)


def separate_batch(
    separator: nn.Module,
    chunks: np.ndarray,
    conditions: np.ndarray,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Separate N equal-length chunks, each with its own condition or all with one (SEMANTICS §7 step 2).

    The chunks go through ``separator`` in batches of ``batch_size`` as ``(b, 1, S)``; a ``(1, D)``
    condition is broadcast to every batch as the upstream does, an ``(N, D)`` one is sliced with the chunks.
    A ResUNet30 runs through the checked fast path (:func:`harness.models.fast.checked_forward`: prepared
    once per process, compared with the plain module on the first batch; ``USS_BENCH_FAST=0`` turns it
    off); the separator is left in the training mode it had.

    Args:
        separator: a :class:`~harness.models.resunet.ResUNet30` (or any module with its call signature).
        chunks: ``(N, S)`` float32 waveforms at 32 kHz (evaluation sets: S = 64000).
        conditions: ``(N, D)`` or ``(1, D)`` float32.
        batch_size: chunks per forward pass.
        device: where to run; ``None`` keeps the separator's device. When given, the separator is moved
            there (in place).

    Returns:
        ``(N, S)`` float32 separated chunks.

    Raises:
        ValueError: bad shapes or batch size.
        FastPathError: the fast path's first batch differs from the plain module's beyond 1e-4 of peak.
    """
    chunks = np.asarray(chunks, dtype=np.float32)
    conditions = np.asarray(conditions, dtype=np.float32)
    if chunks.ndim != 2:
        raise ValueError(f"chunks must be (N, S), got shape {chunks.shape}")
    if conditions.ndim != 2 or conditions.shape[0] not in (1, len(chunks)):
        raise ValueError(f"conditions must be ({len(chunks)}, D) or (1, D), got shape {conditions.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if device is not None:
        separator.to(resolve_device(device))
    target = module_device(separator)
    shared = torch.from_numpy(conditions).to(target) if len(conditions) == 1 else None
    outputs = []
    for start in range(0, len(chunks), batch_size):
        mixture = torch.from_numpy(chunks[start : start + batch_size]).to(target)[:, None, :]
        condition = (
            shared
            if shared is not None
            else torch.from_numpy(conditions[start : start + batch_size]).to(target)
        )
        outputs.append(checked_forward(separator, mixture, condition)[:, 0].float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros_like(chunks)


def separate(
    separator: nn.Module,
    waveform: np.ndarray,
    condition: np.ndarray,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Separate a signal of any length with one condition: the upstream ``separate_by_query_condition``.

    SEMANTICS §7: cut into ``ceil(L / 64000)`` non-overlapping 2-s chunks, zero-pad the last one,
    separate them in batches with the condition broadcast as ``(1, D)``, concatenate in order and cut to
    L. Chunk boundaries are hard cuts (no overlap-add, no cross-fade).

    Args:
        separator: the loaded separator.
        waveform: ``(L,)`` float32 at 32 kHz.
        condition: ``(D,)`` float32, D = ``separator.condition_size``.
        batch_size: chunks per forward pass (upstream: 8).
        device: as in :func:`separate_batch`.

    Returns:
        ``(L,)`` float32.

    Raises:
        ValueError: ``waveform`` or ``condition`` is not 1-D.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    condition = np.asarray(condition, dtype=np.float32)
    if waveform.ndim != 1 or condition.ndim != 1:
        raise ValueError(
            f"waveform and condition must be 1-D, got shapes {waveform.shape} and {condition.shape}"
        )
    length = len(waveform)
    num_chunks = -(-length // SEGMENT_SAMPLES)
    chunks = fix_length(waveform, num_chunks * SEGMENT_SAMPLES, mode="pad").reshape(
        num_chunks, SEGMENT_SAMPLES
    )
    separated = separate_batch(separator, chunks, condition[None, :], batch_size=batch_size, device=device)
    return separated.reshape(-1)[:length]


def embed(
    query_net: nn.Module,
    waveform: np.ndarray,
    condition_type: str,
    batch_size: int = 8,
    remove_silence: bool = False,
) -> np.ndarray:
    """Condition vector of one query recording: the upstream ``calculate_query_emb`` for one file.

    SEMANTICS §7: optionally keep only the 0.1-s frames (3,200 samples, trailing partial frame dropped)
    whose max |x| > 0.02; split into 2-s chunks, each **tiled** (not zero-padded) to 64,000 samples; run
    the query net in batches; average its output over the chunks. Averaging over several files (paper
    eq. 9) is the caller's job (``harness.queries``).

    Args:
        query_net: a :class:`~harness.models.panns.Cnn14`, run on its own device.
        waveform: ``(L,)`` float32 at 32 kHz.
        condition_type: ``"at_soft"`` (returns the 527 clipwise probabilities) or ``"emb"`` (the 2048-d
            embedding); use ``separator.condition_type``.
        batch_size: chunks per forward pass.
        remove_silence: drop the silent 0.1-s frames first.

    Returns:
        ``(527,)`` or ``(2048,)`` float32.

    Raises:
        ValueError: unknown ``condition_type``, a non-1-D or empty waveform, or no frame left after
            silence removal.
    """
    if condition_type not in QUERY_OUTPUTS:
        raise ValueError(f"condition_type must be one of {sorted(QUERY_OUTPUTS)}, got {condition_type!r}")
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1 or len(waveform) == 0:
        raise ValueError(f"waveform must be a non-empty 1-D array, got shape {waveform.shape}")
    if remove_silence:
        frames = waveform[: len(waveform) // SILENCE_FRAME_SAMPLES * SILENCE_FRAME_SAMPLES]
        frames = frames.reshape(-1, SILENCE_FRAME_SAMPLES)
        waveform = frames[np.abs(frames).max(axis=1) > SILENCE_THRESHOLD].reshape(-1)
        if len(waveform) == 0:
            raise ValueError(f"no 0.1-s frame of the query exceeds |x| = {SILENCE_THRESHOLD}; it is silent")
    chunks = np.stack(
        [
            fix_length(waveform[start : start + SEGMENT_SAMPLES], SEGMENT_SAMPLES, mode="tile")
            for start in range(0, len(waveform), SEGMENT_SAMPLES)
        ]
    )
    target = module_device(query_net)
    outputs = []
    for start in range(0, len(chunks), batch_size):  # a Cnn14 runs through the checked fast path
        batch = torch.from_numpy(chunks[start : start + batch_size]).to(target)
        outputs.append(checked_forward(query_net, batch)[QUERY_OUTPUTS[condition_type]].float().cpu())
    return torch.cat(outputs).mean(dim=0).numpy()
