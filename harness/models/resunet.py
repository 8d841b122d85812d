"""ResUNet30 with additive FiLM conditioning: the USS separator (reference/SEMANTICS.md §3).

A 30-layer residual U-Net on the STFT magnitude (n_fft 2048, hop 320) that predicts a magnitude mask
and a phase rotation; every BatchNorm inside the residual blocks is followed by a per-channel offset
``β = Linear(condition)`` (FiLM without the multiplicative γ; paper §3.3, eq. 7).

Module names mirror the upstream ``ss_model.base.*`` keys, and each FiLM ``Linear`` sits in the block
whose BatchNorm it shifts, under the last component of its upstream name. The upstream key
``ss_model.film.encoder_block1->conv_block1->beta1.weight`` is therefore our
``encoder_block1.conv_block1.beta1.weight`` (``->`` becomes ``.``), and ``ss_model.base.X`` is ``X``;
:func:`harness.models.checkpoints.upstream_key` spells the mapping out.

The upstream decoder blocks also hold a BatchNorm ``bn2`` and a FiLM layer ``->beta2`` that its forward
pass never uses (SEMANTICS §1). They have no counterpart here; the loaders accept and drop them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import spectral

N_FFT = 2048
"""STFT size of the separator (samples); 1025 frequency bins."""

HOP_SIZE = 320
"""STFT hop of the separator (samples): 100 frames per second at 32 kHz."""

CONDITION_TYPES = {527: "at_soft", 2048: "emb"}
"""Condition size → query-net output that produces it in the upstream checkpoints: the 527 AudioSet
clipwise probabilities (``at_soft``) or the 2048-d Cnn14 embedding (``emb``)."""

PAPER_CHANNELS = (32, 64, 128, 256, 384, 384)
"""Output channels of encoder blocks 1–6 of the paper's ResUNet30 (``pre_conv`` has the first, the
bottleneck ``conv_block7a`` the last; the decoder mirrors them)."""

_TIME_MULTIPLE = 32
"""The U-Net downsamples time 5 times by 2; frames are zero-padded to a multiple of 2**5."""

_LEAKY_SLOPE = 0.01
_BN_MOMENTUM = 0.01


def _film(beta: nn.Linear, condition: torch.Tensor) -> torch.Tensor:
    """FiLM offset ``β = Linear(condition)`` shaped ``(B or 1, C, 1, 1)`` to broadcast over time and freq."""
    return beta(condition)[:, :, None, None]


class ConvBlockRes(nn.Module):
    """Pre-activation residual block with two FiLM offsets (SEMANTICS §3.3, ``ConvBlockRes``).

    ``h = conv1(lrelu(bn1(x) + β1))``, ``h = conv2(lrelu(bn2(h) + β2))``, ``out = shortcut(x) + h``;
    3×3 convolutions without bias, a biased 1×1 shortcut when the channel count changes.

    Shape:
        - x: ``(B, in_channels, T, F)``; condition: ``(B or 1, condition_size)``
        - output: ``(B, out_channels, T, F)``
    """

    def __init__(self, in_channels: int, out_channels: int, condition_size: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=_BN_MOMENTUM)
        self.beta1 = nn.Linear(condition_size, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM)
        self.beta2 = nn.Linear(condition_size, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.bn1(x) + _film(self.beta1, condition), _LEAKY_SLOPE))
        h = self.conv2(F.leaky_relu(self.bn2(h) + _film(self.beta2, condition), _LEAKY_SLOPE))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class EncoderBlockRes1B(nn.Module):
    """``ConvBlockRes`` then average pooling (kernel = stride = ``pool``); returns ``(pooled, skip)``.

    Shape:
        - x: ``(B, in_channels, T, F)``
        - output: ``(B, out_channels, T // pool[0], F // pool[1])`` and the skip ``(B, out_channels, T, F)``
    """

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int], condition_size: int):
        super().__init__()
        self.pool = pool
        self.conv_block1 = ConvBlockRes(in_channels, out_channels, condition_size)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.conv_block1(x, condition)
        return F.avg_pool2d(skip, kernel_size=self.pool), skip


class DecoderBlockRes1B(nn.Module):
    """Upsampling block: ``ConvTranspose2d(lrelu(bn1(x) + β1))``, concat ``[upsampled, skip]``, ConvBlockRes.

    The transposed convolution has kernel = stride = ``up`` and no bias (SEMANTICS §3.3 step 6).

    Shape:
        - x: ``(B, in_channels, T, F)``; skip: ``(B, out_channels, T·up[0], F·up[1])``
        - output: ``(B, out_channels, T·up[0], F·up[1])``
    """

    def __init__(self, in_channels: int, out_channels: int, up: tuple[int, int], condition_size: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=_BN_MOMENTUM)
        self.beta1 = nn.Linear(condition_size, in_channels)
        self.conv1 = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=up, stride=up, bias=False)
        self.conv_block2 = ConvBlockRes(2 * out_channels, out_channels, condition_size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.bn1(x) + _film(self.beta1, condition), _LEAKY_SLOPE))
        return self.conv_block2(torch.cat([h, skip], dim=1), condition)


class ResUNet30(nn.Module):
    """The USS separator: ResUNet30 with additive FiLM, one input and one output channel.

    Follows reference/SEMANTICS.md §3 (bytedance/uss ``ResUNet30`` + ``FiLM``, eval mode): STFT → bn0 per
    frequency bin on the linear magnitude → zero-pad time to a multiple of 32 frames → drop the Nyquist
    bin → U-Net (6 encoder blocks, ``conv_block7a``, 6 decoder blocks) → 3 mask logits → magnitude mask
    ``sigmoid(x₀)`` and phase rotation ``arg(tanh(x₁) + i·tanh(x₂))`` → ISTFT.

    Args:
        condition_size: D: 527 (``at_soft``: AudioSet clipwise probabilities) or 2048 (``emb``: Cnn14
            embedding) for the paper's models; any size with an explicit ``condition_type``.
        channels: output channels of encoder blocks 1–6; :data:`PAPER_CHANNELS` is the paper's model,
            smaller widths give the demo model (``models/demo_tiny.toml``).
        condition_type: ``at_soft``, ``emb`` or ``onehot``; inferred from 527/2048 when omitted.
        n_fft: STFT size in samples (hop 320 always); 2048 in the paper's model.

    Attributes:
        condition_size: ``D``.
        condition_type: the query-net output to feed (``at_soft``, ``emb`` or ``onehot``).
        channels: the six encoder widths.

    Shape:
        - mixture: ``(B, 1, L)`` float32 waveform at 32 kHz, any ``L > n_fft // 2``
        - condition: ``(B, D)``, or ``(1, D)`` broadcast over the batch
        - output: ``(B, 1, L)`` float32, the separated waveform

    Raises:
        ValueError: ``condition_size`` is neither 527 nor 2048 and no ``condition_type`` is given, or
            ``channels`` is not six positive widths.
    """

    def __init__(self, condition_size: int, channels: tuple[int, ...] = PAPER_CHANNELS,
                 condition_type: str | None = None, n_fft: int = N_FFT):
        super().__init__()
        if condition_type is None:
            if condition_size not in CONDITION_TYPES:
                raise ValueError(
                    f"condition_size {condition_size} is neither 527 (at_soft) nor 2048 (emb): "
                    "pass condition_type"
                )
            condition_type = CONDITION_TYPES[condition_size]
        if len(channels) != 6 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be 6 positive encoder widths, got {channels}")
        if n_fft < HOP_SIZE or n_fft % 128:
            raise ValueError(
                f"n_fft must be a multiple of 128 (the U-Net halves frequency 6 times) and at least the hop "
                f"({HOP_SIZE}), got {n_fft}"
            )
        self.n_fft = int(n_fft)
        self.condition_size = condition_size
        self.condition_type = condition_type
        self.channels = tuple(int(c) for c in channels)
        d = condition_size
        c1, c2, c3, c4, c5, c6 = self.channels
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        self.bn0 = nn.BatchNorm2d(self.n_fft // 2 + 1, momentum=_BN_MOMENTUM)
        self.pre_conv = nn.Conv2d(1, c1, kernel_size=1)
        self.encoder_block1 = EncoderBlockRes1B(c1, c1, (2, 2), d)
        self.encoder_block2 = EncoderBlockRes1B(c1, c2, (2, 2), d)
        self.encoder_block3 = EncoderBlockRes1B(c2, c3, (2, 2), d)
        self.encoder_block4 = EncoderBlockRes1B(c3, c4, (2, 2), d)
        self.encoder_block5 = EncoderBlockRes1B(c4, c5, (2, 2), d)
        self.encoder_block6 = EncoderBlockRes1B(c5, c6, (1, 2), d)
        self.conv_block7a = EncoderBlockRes1B(c6, c6, (1, 1), d)
        self.decoder_block1 = DecoderBlockRes1B(c6, c6, (1, 2), d)
        self.decoder_block2 = DecoderBlockRes1B(c6, c5, (2, 2), d)
        self.decoder_block3 = DecoderBlockRes1B(c5, c4, (2, 2), d)
        self.decoder_block4 = DecoderBlockRes1B(c4, c3, (2, 2), d)
        self.decoder_block5 = DecoderBlockRes1B(c3, c2, (2, 2), d)
        self.decoder_block6 = DecoderBlockRes1B(c2, c1, (2, 2), d)
        self.after_conv = nn.Conv2d(c1, 3, kernel_size=1)

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Separate the source described by ``condition`` from ``mixture`` (shapes in the class doc)."""
        if mixture.dim() != 3 or mixture.shape[1] != 1:
            raise ValueError(f"mixture must be (B, 1, L), got {tuple(mixture.shape)}")
        length = mixture.shape[-1]
        mag, cos_in, sin_in = self.spectrum(mixture[:, 0])
        frames = mag.shape[2]
        logits = self.mask_logits(mag, condition)
        # Re-insert the Nyquist bin as logit 0, crop the padded frames (SEMANTICS §3.3 step 8).
        logits = F.pad(logits, (0, 1))[:, :, :frames]
        return self.resynthesise(logits, mag, cos_in, sin_in, length)

    def spectrum(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Magnitude and phase of the mixture (SEMANTICS §3.2).

        ``mag = sqrt(max(re² + im², 1e-10))``, ``cos = re/mag``, ``sin = im/mag``; periodic Hann window,
        centred frames with reflect padding.

        Shape:
            - waveform: ``(B, L)``
            - outputs: three ``(B, 1, T, F)`` tensors, ``F = n_fft // 2 + 1`` (1025), ``T = L // 320 + 1``
        """
        stft = spectral.stft(waveform, self.window, HOP_SIZE)
        real = stft.real.transpose(1, 2)[:, None]
        imag = stft.imag.transpose(1, 2)[:, None]
        mag = torch.sqrt(torch.clamp(real**2 + imag**2, min=1e-10))
        return mag, real / mag, imag / mag

    def mask_logits(self, mag: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The U-Net: the three mask logits, i.e. the output of ``after_conv`` (SEMANTICS §3.3 steps 1–7).

        Shape:
            - mag: ``(B, 1, T, F)`` linear STFT magnitude (F = 1025 in the paper model)
            - condition: ``(B, D)`` or ``(1, D)``
            - output: ``(B, 3, T_pad, F − 1)``, ``T_pad`` = T rounded up to a multiple of 32; channels are
              (magnitude, real, imaginary) logits
        """
        if condition.dim() != 2 or condition.shape[1] != self.condition_size:
            raise ValueError(
                f"condition must be (B, {self.condition_size}) or (1, {self.condition_size}), "
                f"got {tuple(condition.shape)}"
            )
        x = self.bn0(mag.transpose(1, 3)).transpose(1, 3)
        x = F.pad(x, (0, 0, 0, -x.shape[2] % _TIME_MULTIPLE))
        x = self.pre_conv(x[..., :-1])
        skips = []
        for block in (
            self.encoder_block1,
            self.encoder_block2,
            self.encoder_block3,
            self.encoder_block4,
            self.encoder_block5,
            self.encoder_block6,
        ):
            x, skip = block(x, condition)
            skips.append(skip)
        x, _ = self.conv_block7a(x, condition)
        for block, skip in zip(
            (
                self.decoder_block1,
                self.decoder_block2,
                self.decoder_block3,
                self.decoder_block4,
                self.decoder_block5,
                self.decoder_block6,
            ),
            reversed(skips),
            strict=True,
        ):
            x = block(x, skip, condition)
        return self.after_conv(x)

    def resynthesise(
        self, logits: torch.Tensor, mag: torch.Tensor, cos_in: torch.Tensor, sin_in: torch.Tensor, length: int
    ) -> torch.Tensor:
        """Apply the mask and invert the STFT (SEMANTICS §3.4).

        ``|Y| = relu(mag·sigmoid(x₀))``; the phase of ``tanh(x₁) + i·tanh(x₂)`` (its modulus is discarded)
        rotates the mixture phase.

        Shape:
            - logits: ``(B, 3, T, F)``; mag, cos_in, sin_in: ``(B, 1, T, F)``
            - output: ``(B, 1, length)``
        """
        mask_mag = torch.sigmoid(logits[:, 0:1])
        mask_real = torch.tanh(logits[:, 1:2])
        mask_imag = torch.tanh(logits[:, 2:3])
        rho = torch.clamp(torch.sqrt(mask_real**2 + mask_imag**2), min=1e-10)
        mask_cos, mask_sin = mask_real / rho, mask_imag / rho
        out_cos = cos_in * mask_cos - sin_in * mask_sin
        out_sin = sin_in * mask_cos + cos_in * mask_sin
        out_mag = F.relu(mag * mask_mag)
        spec = torch.complex(out_mag * out_cos, out_mag * out_sin)[:, 0].transpose(1, 2)
        return spectral.istft(spec, self.window, length, HOP_SIZE)[:, None]

    def film_offsets(self, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every FiLM offset ``β`` for ``condition``, keyed by its upstream FiLM layer name.

        Names are those of the upstream ``ss_model.film.*`` layers (e.g.
        ``encoder_block1->conv_block1->beta1``), without the 6 unused ``decoder_blockN->beta2`` layers.

        Shape:
            - condition: ``(B, D)``
            - values: ``(B, C)``, C = the channel count of the BatchNorm the offset is added to
        """
        return {
            name.replace(".", "->"): module(condition)
            for name, module in self.named_modules()
            if name.rsplit(".", 1)[-1] in ("beta1", "beta2")
        }
