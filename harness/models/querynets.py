"""Query nets other than Cnn14: what turns a query into the separator's condition (paper §3.4).

The paper's query nets are the frozen PANNs Cnn14 (``at_soft``: 527 clipwise probabilities, ``emb``:
the 2048-d embedding; :mod:`harness.models.panns`) and hard one-hot labels (§3.4.1). This module adds:

- :class:`LogMelStats` (**ours**, no weights): the mean and standard deviation over time of the PANNs
  log-mel spectrogram, in bels, a 128-d ``emb`` condition. It needs no pretrained tagger, so a small
  model can be trained and shipped without the 300-MB Cnn14 weights: it is the query net of the demo
  model (``models/demo_tiny.toml``). It describes a query by its long-term spectral envelope and
  spread, which is what a small separator can use; it knows nothing of AudioSet's classes.
- :class:`OneHotQuery` (paper §3.4.1): the condition of class ``k`` is the one-hot vector ``e_k`` over
  the training vocabulary. It has no audio input: the average embedding of a class is its one-hot
  vector when the class is in the vocabulary, and there is none otherwise.

Every query net maps ``(B, L)`` float32 waveforms at 32 kHz to a dict whose ``"embedding"`` entry is
the condition (``at_soft`` Cnn14 nets use ``"clipwise_output"``), as :func:`harness.models.embed` expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.models.panns import MEL_BINS, LogMel

LOGMEL_STATS_SIZE = 2 * MEL_BINS
"""Condition size of :class:`LogMelStats`: 64 means and 64 standard deviations."""


class LogMelStats(nn.Module):
    """Frozen, weight-free query net: per-band mean and std over time of the PANNs log-mel, in bels.

    ``x = LogMel(waveform) / 10`` (bels: dB / 10, so values lie in about [−10, 2]); output
    ``embedding = [mean_t x, std_t x]`` (population std). Source: ours (see the module docstring).

    Shape:
        - waveform: ``(B, L)`` float32 at 32 kHz, ``L > 512``
        - output: ``{"embedding": (B, 128)}`` float32
    """

    condition_size = LOGMEL_STATS_SIZE

    def __init__(self):
        super().__init__()
        self.logmel = LogMel()

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        bels = self.logmel(waveform)[:, 0] / 10.0  # (B, T, 64)
        mean = bels.mean(dim=1)
        std = torch.sqrt(torch.clamp(((bels - mean[:, None]) ** 2).mean(dim=1), min=0.0))
        return {"embedding": torch.cat([mean, std], dim=1)}


class OneHotQuery(nn.Module):
    """Hard condition (paper §3.4.1): class ``k`` of the training vocabulary → one-hot ``e_k``.

    Args:
        vocabulary: the class labels, in condition-index order.

    Raises:
        ValueError: an empty vocabulary or a repeated label.
    """

    def __init__(self, vocabulary: Sequence[str]):
        super().__init__()
        self.vocabulary = list(vocabulary)
        if not self.vocabulary or len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("a one-hot vocabulary must be non-empty with distinct labels")
        self.index = {label: i for i, label in enumerate(self.vocabulary)}
        self.condition_size = len(self.vocabulary)

    def condition(self, labels: Sequence[str]) -> torch.Tensor:
        """The multi-hot vector of ``labels`` (labels outside the vocabulary are ignored).

        Shape:
            - output: ``(len(vocabulary),)`` float32
        """
        out = torch.zeros(self.condition_size)
        for label in labels:
            if label in self.index:
                out[self.index[label]] = 1.0
        return out

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        raise TypeError("a one-hot query net has no audio input: its conditions come from class labels")
