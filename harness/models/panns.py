"""PANNs Cnn14 (the query net and audio tagger) and Cnn14_DecisionLevelMax (the SED model for anchors).

Inference-only re-implementations of ``panns_inference`` 0.1.0 with the torchlibrosa 0.1.0 front end, as
described in reference/SEMANTICS.md §2, §4 and §5 (Kong et al., "PANNs", 2020). Module and parameter
names equal the PANNs checkpoint keys (``bn0``, ``conv_block1.conv1.weight``, …, ``fc_audioset.bias``),
so a PANNs ``{"model": state_dict}`` loads without renaming. The front end's DFT kernels and mel
filterbank are not parameters here: :class:`LogMel` computes them (``torch.stft`` and
:func:`mel_filterbank`), and the loaders check the checkpoints' stored copies against them.

Dropout, SpecAugment and mixup are training-time only and absent here; the models are always used in
eval mode (the USS query net is frozen).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness import SAMPLE_RATE
from harness.models import spectral

WINDOW_SIZE = 1024
"""STFT size of the PANNs front end (samples); 513 bins."""

HOP_SIZE = 320
"""STFT hop (samples): 100 frames per second at 32 kHz."""

MEL_BINS = 64
FMIN = 50.0
FMAX = 14000.0
CLASSES_NUM = 527
"""AudioSet classes."""

EMBEDDING_SIZE = 2048

FRAMEWISE_RATIO = 32
"""Cnn14_DecisionLevelMax: log-mel frames per segment frame after the five (2, 2) poolings."""


def _hz_to_mel(hz: float) -> float:
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    f_sp = 200.0 / 3
    if hz >= 1000.0:
        return 1000.0 / f_sp + math.log(hz / 1000.0) / (math.log(6.4) / 27.0)
    return hz / f_sp


def _mel_to_hz(mel: float) -> float:
    """Inverse of :func:`_hz_to_mel`."""
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    if mel >= min_log_mel:
        return 1000.0 * math.exp(math.log(6.4) / 27.0 * (mel - min_log_mel))
    return f_sp * mel


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = WINDOW_SIZE,
    n_mels: int = MEL_BINS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> torch.Tensor:
    """Slaney-style triangular mel filterbank with Slaney area normalisation (``htk=False``).

    The float64 recipe of reference/FORMULA.md §4 (``mel_filterbank``): ``n_mels + 2`` points evenly
    spaced on the mel scale between ``fmin`` and ``fmax``, triangles over the FFT bin frequencies stored
    as float32, then scaled by ``2 / (f[m+2] − f[m])`` in float64 and rounded to float32 again. Equals
    ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax).T`` and the torchlibrosa ``melW`` of the PANNs
    checkpoints.

    Returns:
        ``(n_fft // 2 + 1, n_mels)`` float32; ``power (…, n_fft//2+1) @ W`` gives mel power.
    """
    fft_freqs = np.arange(n_fft // 2 + 1, dtype=np.float64) * (1.0 / (n_fft * (1.0 / sample_rate)))
    mels = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    hz = np.array([_mel_to_hz(m) for m in mels])
    weights = np.zeros((n_mels, len(fft_freqs)), dtype=np.float32)
    for m in range(n_mels):
        lower = -(hz[m] - fft_freqs) / (hz[m + 1] - hz[m])
        upper = (hz[m + 2] - fft_freqs) / (hz[m + 2] - hz[m + 1])
        triangle = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
        weights[m] = (triangle.astype(np.float64) * (2.0 / (hz[m + 2] - hz[m]))).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(weights.T))


class LogMel(nn.Module):
    """Log-mel spectrogram of the PANNs front end (SEMANTICS §2, "Log-mel").

    Power STFT (n_fft 1024, hop 320, periodic Hann, centred, reflect padding) → Slaney mel filterbank
    (64 bands, 50–14000 Hz) → ``10·log10(max(mel, 1e-10))`` dB, no reference offset, no top_db.

    Shape:
        - waveform: ``(B, L)`` float32 at 32 kHz, ``L > 512``
        - output: ``(B, 1, T, 64)`` in dB, ``T = L // 320 + 1``
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(WINDOW_SIZE, periodic=True), persistent=False)
        self.register_buffer("mel_basis", mel_filterbank(), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        stft = spectral.stft(waveform, self.window, HOP_SIZE)
        power = (stft.real**2 + stft.imag**2).transpose(1, 2)
        mel = torch.matmul(power, self.mel_basis)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))[:, None]


class ConvBlock(nn.Module):
    """Two ``conv 3×3 (no bias) → BatchNorm → ReLU`` layers, then average pooling (floors odd sizes).

    Shape:
        - x: ``(B, in_channels, T, F)``
        - output: ``(B, out_channels, T // pool[0], F // pool[1])``
    """

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int]):
        super().__init__()
        self.pool = pool
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=self.pool)


class _Cnn14Body(nn.Module):
    """What Cnn14 and Cnn14_DecisionLevelMax share: log-mel, bn0 per mel bin, six ConvBlocks, fc1, fc_audioset.

    The two PANNs classes have exactly the same 84 state-dict keys; only the head differs.
    """

    def __init__(self):
        super().__init__()
        self.front_end = LogMel()
        self.bn0 = nn.BatchNorm2d(MEL_BINS)
        self.conv_block1 = ConvBlock(1, 64, (2, 2))
        self.conv_block2 = ConvBlock(64, 128, (2, 2))
        self.conv_block3 = ConvBlock(128, 256, (2, 2))
        self.conv_block4 = ConvBlock(256, 512, (2, 2))
        self.conv_block5 = ConvBlock(512, 1024, (2, 2))
        self.conv_block6 = ConvBlock(1024, EMBEDDING_SIZE, (1, 1))
        self.fc1 = nn.Linear(EMBEDDING_SIZE, EMBEDDING_SIZE)
        self.fc_audioset = nn.Linear(EMBEDDING_SIZE, CLASSES_NUM)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """The log-mel intermediate (torchlibrosa ``logmel_extractor`` output, before bn0).

        Shape:
            - waveform: ``(B, L)`` float32 at 32 kHz
            - output: ``(B, 1, T, 64)`` dB, ``T = L // 320 + 1``
        """
        return self.front_end(waveform)

    def feature_map(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel → bn0 → six ConvBlocks → mean over mel (SEMANTICS §4 steps 1–4).

        Shape:
            - waveform: ``(B, L)``
            - output: ``(B, 2048, T')``, ``T'`` = T halved (floored) five times
        """
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be (B, L), got {tuple(waveform.shape)}")
        x = self.bn0(self.log_mel(waveform).transpose(1, 3)).transpose(1, 3)
        for block in (
            self.conv_block1,
            self.conv_block2,
            self.conv_block3,
            self.conv_block4,
            self.conv_block5,
            self.conv_block6,
        ):
            x = block(x)
        return torch.mean(x, dim=3)


class Cnn14(_Cnn14Body):
    """PANNs Cnn14 audio tagger: the USS query net (SEMANTICS §4).

    Clip head: ``max over time + mean over time`` of the feature map, ``embedding = relu(fc1(·))``,
    ``clipwise_output = sigmoid(fc_audioset(embedding))``. The at_soft separator is conditioned on
    ``clipwise_output``, the emb separator on ``embedding``.

    Shape:
        - waveform: ``(B, L)`` float32 at 32 kHz (the query net sees 2-s chunks, L = 64000)
        - output: ``{"clipwise_output": (B, 527) probabilities, "embedding": (B, 2048)}``
    """

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.feature_map(waveform)
        x = torch.amax(x, dim=2) + torch.mean(x, dim=2)
        embedding = F.relu(self.fc1(x))
        return {"clipwise_output": torch.sigmoid(self.fc_audioset(embedding)), "embedding": embedding}


class Cnn14DecisionLevelMax(_Cnn14Body):
    """PANNs Cnn14_DecisionLevelMax sound-event detector: the anchor-segment SED model (SEMANTICS §5).

    Frame head: ``max_pool1d + avg_pool1d`` (kernel 3, stride 1, padding 1; the average counts the zero
    padding) along time, ``relu(fc1)``, ``sigmoid(fc_audioset)`` per segment frame; ``clipwise_output`` is
    the max over time and ``framewise_output[t] = segmentwise[min(t // 32, T' − 1)]``.

    Shape:
        - waveform: ``(B, L)`` float32 at 32 kHz (10-s clips, L = 320000, in anchor mining)
        - output: ``{"framewise_output": (B, T, 527), "clipwise_output": (B, 527)}``, ``T = L // 320 + 1``
    """

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = waveform.shape[-1] // HOP_SIZE + 1
        x = self.feature_map(waveform)
        x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1)
        segmentwise = torch.sigmoid(self.fc_audioset(F.relu(self.fc1(x.transpose(1, 2)))))
        segment_of_frame = torch.arange(frames, device=x.device) // FRAMEWISE_RATIO
        index = torch.clamp(segment_of_frame, max=segmentwise.shape[1] - 1)
        return {"framewise_output": segmentwise[:, index], "clipwise_output": torch.amax(segmentwise, dim=1)}
