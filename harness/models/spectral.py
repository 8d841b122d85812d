"""The STFT convention shared by ResUNet30, the PANNs front end and the oracle mask (SEMANTICS §2).

Periodic Hann window of ``n_fft = len(window)`` samples, hop 320 samples (100 frames/s at 32 kHz),
centred frames with reflect padding, one-sided spectrum, no normalisation: the torchlibrosa 0.1.0
``STFT``/``ISTFT`` (``center=True``) as ``torch.stft``/``torch.istft`` compute them.
"""

from __future__ import annotations

import torch

HOP_SIZE = 320
"""Hop of every STFT here, in samples (10 ms at 32 kHz)."""


def stft(waveform: torch.Tensor, window: torch.Tensor, hop_length: int = HOP_SIZE) -> torch.Tensor:
    """Complex one-sided STFT.

    Shape:
        - waveform: ``(B, L)`` float32, ``L > len(window) // 2`` (reflect padding)
        - window: ``(N,)``, the periodic Hann window; N is the FFT size
        - output: ``(B, N // 2 + 1, T)`` complex64, ``T = L // hop_length + 1``
    """
    n_fft = window.shape[-1]
    return torch.stft(waveform, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window,
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)


def istft(spec: torch.Tensor, window: torch.Tensor, length: int, hop_length: int = HOP_SIZE) -> torch.Tensor:
    """Inverse of :func:`stft` (overlap-add divided by the summed squared window), cut to ``length``.

    Shape:
        - spec: ``(B, N // 2 + 1, T)`` complex
        - window: ``(N,)``
        - output: ``(B, length)`` float32
    """
    n_fft = window.shape[-1]
    return torch.istft(spec, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window, center=True,
                       length=length)
