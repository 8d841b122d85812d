"""Audio I/O: reading (soundfile), resampling (soxr, high quality), mono down-mix, fixed length.

Every reader returns ``float32`` mono arrays of shape ``(L,)``. The rules follow what the upstream
evaluation does with ``librosa.load(sr=32000, mono=True)`` (down-mix by the channel mean, then a
soxr "HQ" resample; librosa 0.10's default ``res_type`` is ``soxr_hq``), so our sets match its sets up
to the resampler's float rounding.

Corpus metadata names files as the corpus ships them (``X.wav``); a copy that stores ``X.flac`` instead
(lossless, same samples) is accepted: :func:`resolve_audio_path` falls back to the ``.flac`` twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from harness.errors import AudioError

AUDIO_SUFFIXES = (".wav", ".flac")
"""Suffixes a corpus file may have; ``X.wav`` in metadata resolves to ``X.flac`` when only that exists."""


def resolve_audio_path(path: str | Path) -> Path:
    """Return the file that stands for ``path`` on disk.

    ``X.wav`` resolves to ``X.flac`` (and ``X.flac`` to ``X.wav``) when only the twin exists.

    Raises:
        AudioError: neither the file nor its twin exists (the message names both).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.suffix.lower() in AUDIO_SUFFIXES:
        for suffix in AUDIO_SUFFIXES:
            twin = path.with_suffix(suffix)
            if twin.is_file():
                return twin
    tried = " or ".join(str(path.with_suffix(s)) for s in AUDIO_SUFFIXES) if path.suffix else str(path)
    raise AudioError(f"audio file not found: {tried}. Check the corpus root and that the file was extracted.")


def audio_info(path: str | Path) -> soundfile._SoundFileInfo:
    """soundfile's header info (``samplerate``, ``channels``, ``frames``) of the resolved file.

    Raises:
        AudioError: missing, unreadable or truncated file (see :func:`wav_header_frames`).
    """
    path = resolve_audio_path(path)
    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError on corrupt headers
        raise AudioError(f"cannot read audio header of {path}: {exc}. Is the file corrupt or truncated?") from exc
    _check_complete(path, info.frames)
    return info


def wav_header_frames(path: str | Path) -> int | None:
    """The frame count a RIFF/WAVE file's header claims: its ``data`` chunk size over the ``fmt`` block align.

    libsndfile clamps a ``data`` chunk that runs past the end of the file to the bytes present, so a WAV
    truncated in transfer reads "successfully" with fewer frames; comparing with this count tells.

    Returns:
        the claimed frames, or ``None`` when ``path`` is not a plain RIFF/WAVE file (RF64, FLAC, …) or its
        ``data`` size is a streaming placeholder (0 or 0xFFFFFFFF).
    """
    import struct

    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size + (size & 1))
                if len(fmt) < 14:
                    return None
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif cid == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), 1)


def _check_complete(path: Path, frames_in_file: int) -> None:
    """AudioError when ``path`` is a WAV whose header claims more frames than the file holds."""
    if path.suffix.lower() != ".wav":
        return
    try:
        claimed = wav_header_frames(path)
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if claimed is not None and claimed > frames_in_file:
        raise AudioError(f"{path} is truncated: its header claims {claimed} frames, the file holds "
                         f"{frames_in_file}; copy or extract it again")


def read_audio(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    start: int = 0,
    frames: int = -1,
) -> np.ndarray:
    """Read an audio file as mono float32, optionally resampled.

    Args:
        path: a ``.wav`` or ``.flac`` file (see :func:`resolve_audio_path`).
        sample_rate: target rate in Hz; ``None`` keeps the file's rate.
        start, frames: region to read, in samples **at the file's rate** (``frames=-1``: to the end).

    Returns:
        ``(L,)`` float32 in [-1, 1] (PCM files), channel mean when the file has several channels.

    Raises:
        AudioError: missing, unreadable, corrupt or truncated file (a WAV whose header claims more frames
            than it holds, :func:`wav_header_frames`); NaN or infinite samples.
    """
    path = resolve_audio_path(path)
    try:
        with soundfile.SoundFile(str(path)) as f:
            _check_complete(path, f.frames)
            f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
            file_rate = f.samplerate
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"cannot decode {path}: {exc}. Is the file corrupt or truncated?") from exc
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"{path} contains NaN or infinite samples; re-export or remove it from the corpus.")
    if sample_rate is not None and sample_rate != file_rate:
        mono = resample(mono, file_rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono signal with soxr's "HQ" quality (the default of ``librosa.load``).

    Args:
        x: ``(L,)`` float array.
        orig_sr, target_sr: rates in Hz.

    Returns:
        ``(ceil(L * target_sr / orig_sr),)`` float32 (soxr's output length).
    """
    if orig_sr == target_sr:
        return np.asarray(x, dtype=np.float32)
    y = soxr.resample(np.asarray(x, dtype=np.float32), orig_sr, target_sr, quality="HQ")
    return np.asarray(y, dtype=np.float32)


def read_hdf5_waveform(path: str | Path, index: int, sample_rate: int = 32000) -> np.ndarray:
    """Read row ``index`` of a PANNs/USS waveform pack (``waveform`` int16 ``(N, L)`` at 32 kHz).

    Returns:
        ``(L,)`` float32, ``int16 / 32768`` (the PANNs convention).

    Raises:
        AudioError: missing file, missing ``waveform`` dataset, index out of range, or a pack whose
            ``sample_rate`` attribute differs from ``sample_rate``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"HDF5 waveform pack not found: {path}")
    try:
        with h5py.File(path, "r") as h5:
            if "waveform" not in h5:
                raise AudioError(f"{path} has no 'waveform' dataset; is it a PANNs waveform pack?")
            pack_rate = h5.attrs.get("sample_rate")
            if pack_rate is not None and int(pack_rate) != sample_rate:
                raise AudioError(f"{path} is packed at {int(pack_rate)} Hz, expected {sample_rate} Hz")
            n = h5["waveform"].shape[0]
            if not 0 <= index < n:
                raise AudioError(f"{path}: row {index} out of range (pack has {n} rows)")
            row = h5["waveform"][index]
    except OSError as exc:
        raise AudioError(f"cannot open HDF5 pack {path}: {exc}") from exc
    if row.dtype == np.int16:
        return row.astype(np.float32) / np.float32(32768.0)
    return row.astype(np.float32)


def fix_length(x: np.ndarray, length: int, mode: str = "tile") -> np.ndarray:
    """Cut or extend a signal to exactly ``length`` samples.

    ``mode="tile"`` repeats the signal from its start and then cuts (the upstream
    ``trunc_or_repeat_to_length`` used for FSD clips and query chunks); ``mode="pad"`` appends
    zeros (librosa ``fix_length``, used for the separator's last chunk).

    Raises:
        AudioError: ``mode="tile"`` on an empty signal.
        ValueError: unknown mode.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) >= length:
        return x[:length].copy()
    if mode == "pad":
        return np.concatenate([x, np.zeros(length - len(x), dtype=np.float32)])
    if mode == "tile":
        if len(x) == 0:
            raise AudioError("cannot tile an empty signal to a fixed length")
        reps = -(-length // len(x))
        return np.tile(x, reps)[:length].copy()
    raise ValueError(f"unknown fix_length mode {mode!r}; use 'tile' or 'pad'")


@dataclass(frozen=True)
class AudioRef:
    """Where one recording lives: a file, or a row of a PANNs HDF5 waveform pack.

    Attributes:
        path: audio file (``.wav``/``.flac``), or the ``.h5`` pack when ``h5_index`` is set.
        h5_index: row in the pack's ``waveform`` dataset, else ``None``.
    """

    path: Path
    h5_index: int | None = None

    def load(self, sample_rate: int) -> np.ndarray:
        """Decode to ``(L,)`` float32 mono at ``sample_rate`` Hz (see :func:`read_audio`)."""
        if self.h5_index is not None:
            x = read_hdf5_waveform(self.path, self.h5_index)
            return resample(x, 32000, sample_rate)
        return read_audio(self.path, sample_rate)

    def key(self) -> str:
        """A stable string naming this recording (used in manifests and hashes)."""
        return f"{self.path}#{self.h5_index}" if self.h5_index is not None else str(self.path)
