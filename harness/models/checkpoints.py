"""Checkpoint loaders for the separator, the query net and the SED model, and our own safetensors format.

Accepted files (reference/SEMANTICS.md §1, DESIGN.md §5):

- **USS Lightning checkpoint** (``.ckpt``): ``{"state_dict": sd, …}`` with the prefixes ``ss_model.``
  (separator), ``query_net.base.`` (Cnn14 query net) and ``anchor_segment_detector.sed_model.`` (the
  Cnn14_DecisionLevelMax SED) plus ``anchor_segment_detector.anchor_segment_scorer.smooth_filter``.
  Every other top-level entry (optimizer state, loops, callbacks, …) is ignored.
- **PANNs checkpoint** (``.pth``): ``{"model": sd}`` with the bare Cnn14 / Cnn14_DecisionLevelMax keys.
  The two classes have the same keys, so the file cannot say which one it holds: load a
  ``Cnn14_mAP=*.pth`` with :func:`load_query_net` and a ``Cnn14_DecisionLevelMax_mAP=*.pth`` with
  :func:`load_sed`. A ``{"state_dict": sd}`` re-save of either layout is accepted too.
- **uss-bench safetensors** (:data:`FORMAT`, written by :func:`export_checkpoint` and by training):
  a flat safetensors file whose keys are our modules' state-dict keys prefixed ``separator.``,
  ``query_net.`` and (optionally) ``sed.``, with string metadata ``format``, ``condition_size``,
  ``condition_type`` (``at_soft``/``emb``), ``source_sha256``, ``source_file`` and ``config`` (JSON).
  It holds no derived constants and no unused upstream tensors.

Rules: ``torch.load(map_location="cpu", weights_only=True)`` only (no arbitrary unpickling); every key
of the loaded component is checked, and all missing, unexpected and mis-shaped keys are reported together
in one :class:`~harness.errors.CheckpointError`. The stored "derived constants" (DFT kernels, ISTFT
window, mel filterbank, anchor box filter; FORMULA.md §4) are not needed: when present they are compared
with what uss-bench computes (within 1e-5 of their peak), and a mismatch is reported in the same error.
The upstream decoder ``bn2`` and ``->beta2`` tensors, unused by its forward pass, are accepted and dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from harness.errors import CheckpointError
from harness.models import panns, resunet
from harness.models.panns import Cnn14, Cnn14DecisionLevelMax
from harness.models.querynets import LogMelStats, OneHotQuery
from harness.models.resunet import CONDITION_TYPES, ResUNet30
from harness.models.separator import resolve_device

logger = logging.getLogger(__name__)

FORMAT = "uss-bench/1"
"""``format`` metadata value of our safetensors checkpoints."""

COMPONENTS = ("separator", "query_net", "sed")

LIGHTNING_PREFIXES = {
    "separator": "ss_model.",
    "query_net": "query_net.base.",
    "sed": "anchor_segment_detector.sed_model.",
}
"""Key prefix of each component in the upstream Lightning ``state_dict``."""

SMOOTH_FILTER_KEY = "anchor_segment_detector.anchor_segment_scorer.smooth_filter"
"""The anchor scorer's 201-tap box filter: a derived constant of the Lightning checkpoint."""

_DERIVED_TOLERANCE = 1e-5
"""Allowed max |stored − computed| of a derived constant, relative to the computed tensor's peak."""

_UNUSED_SEPARATOR_KEY = re.compile(
    r"ss_model\.(base\.decoder_block[1-6]\.bn2\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|film\.decoder_block[1-6]->beta2\.(weight|bias))"
)
"""The 42 upstream separator tensors its forward pass never uses (SEMANTICS §1); accepted and dropped."""

_FILM_NAMES = ("beta1", "beta2")

CONDITION_KINDS = ("at_soft", "emb", "onehot")
"""Condition types of our checkpoints (paper §3.4): AudioSet probabilities, an embedding, labels."""


def upstream_key(component: str, key: str) -> str:
    """The Lightning-checkpoint key of one of our state-dict keys.

    ``separator``: ``X`` → ``ss_model.base.X``, except the FiLM layers: ``A.B.beta1.weight`` →
    ``ss_model.film.A->B->beta1.weight``. ``query_net`` / ``sed``: the Lightning prefix + the PANNs key
    (our Cnn14 keys are the PANNs keys).

    Raises:
        ValueError: unknown component.
    """
    if component not in LIGHTNING_PREFIXES:
        raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
    if component != "separator":
        return LIGHTNING_PREFIXES[component] + key
    module, param = key.rsplit(".", 1)
    if module.rsplit(".", 1)[-1] in _FILM_NAMES:
        return f"ss_model.film.{module.replace('.', '->')}.{param}"
    return f"ss_model.base.{key}"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks).

    Raises:
        CheckpointError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Derived constants: what the upstream stores, recomputed (FORMULA.md §4).
# --------------------------------------------------------------------------------------------------
def _dft_tables(n_fft: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 ``cos(2πm/N)``, ``sin(2πm/N)`` for m = 0..N−1 and the periodic Hann window."""
    angle = 2.0 * torch.pi * torch.arange(n_fft, dtype=torch.float64) / n_fft
    return torch.cos(angle), torch.sin(angle), torch.hann_window(n_fft, periodic=True, dtype=torch.float64)


def _stft_kernel(n_fft: int, part: str) -> torch.Tensor:
    """torchlibrosa STFT Conv1d weight ``(N/2+1, 1, N)``: ``w[n]·cos(2πkn/N)`` / ``−w[n]·sin(2πkn/N)``."""
    cos, sin, window = _dft_tables(n_fft)
    index = (torch.arange(n_fft // 2 + 1)[:, None] * torch.arange(n_fft)[None, :]) % n_fft
    table = cos if part == "real" else -sin
    return (table[index] * window[None, :]).to(torch.float32)[:, None, :]


def _istft_kernel(n_fft: int, part: str) -> torch.Tensor:
    """torchlibrosa ISTFT Conv1d weight ``(N, N, 1)``: ``(cos|sin)(2πij/N) / N · w[j]`` at ``[j, i]``."""
    cos, sin, window = _dft_tables(n_fft)
    index = (torch.arange(n_fft)[:, None] * torch.arange(n_fft)[None, :]) % n_fft
    table = cos if part == "real" else sin
    return (table[index] / n_fft * window[:, None]).to(torch.float32)[:, :, None]


def _derived_constants(prefix: str, kind: str) -> dict[str, Callable[[], torch.Tensor]]:
    """Full key → recompute function, for a separator (``kind="resunet"``) or a PANNs model at ``prefix``."""
    if kind == "resunet":
        n = resunet.N_FFT
        return {
            f"{prefix}base.stft.conv_real.weight": lambda: _stft_kernel(n, "real"),
            f"{prefix}base.stft.conv_imag.weight": lambda: _stft_kernel(n, "imag"),
            f"{prefix}base.istft.conv_real.weight": lambda: _istft_kernel(n, "real"),
            f"{prefix}base.istft.conv_imag.weight": lambda: _istft_kernel(n, "imag"),
            f"{prefix}base.istft.ola_window": lambda: (
                torch.hann_window(n, dtype=torch.float64) ** 2
            ).float(),
        }
    n = panns.WINDOW_SIZE
    return {
        f"{prefix}spectrogram_extractor.stft.conv_real.weight": lambda: _stft_kernel(n, "real"),
        f"{prefix}spectrogram_extractor.stft.conv_imag.weight": lambda: _stft_kernel(n, "imag"),
        f"{prefix}logmel_extractor.melW": panns.mel_filterbank,
    }


def _box_filter() -> torch.Tensor:
    """The anchor scorer's ``(1, 1, 201)`` box filter, ``1/201`` per tap (float32 division)."""
    return torch.ones(1, 1, 201) / 201


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------
@dataclass
class _Checkpoint:
    """A checkpoint file read safely: its format and its flat tensor mapping (lazy for safetensors)."""

    path: Path
    format: str  # "lightning" | "panns" | FORMAT
    tensors: Mapping[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def _read_checkpoint(path: str | Path, trust_pickle: bool = False) -> _Checkpoint:
    """Open ``path`` as a Lightning, PANNs or uss-bench checkpoint (see the module docstring).

    ``trust_pickle`` (export only) lets ``torch.load`` unpickle arbitrary objects.

    Raises:
        CheckpointError: missing file, unreadable file, a file that needs arbitrary unpickling, or an
            unknown container layout.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    is_zip = head[:4] == b"PK\x03\x04"
    if not is_zip and head[8:9] == b"{":
        return _read_safetensors(path)
    if not is_zip and head[:1] != b"\x80":  # neither torch's zip format nor a (legacy) pickle stream
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint nor a safetensors file")
    try:
        # mmap keeps only the tensors we copy into a model in memory; legacy (non-zip) files cannot mmap.
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} cannot be loaded safely: besides tensors it stores pickled Python objects, which "
            f"torch.load(weights_only=True) refuses ({_unpickling_reason(exc)}). uss-bench does not unpickle "
            f"arbitrary objects. Convert the file once, in an environment you trust: re-save only the weights, "
            f"e.g. `torch.save({{'state_dict': torch.load(PATH, weights_only=False)['state_dict']}}, 'clean.ckpt')` "
            f"('model' instead of 'state_dict' for PANNs files), or write a safetensors copy with "
            f"`harness.models.export_checkpoint(PATH, 'out.safetensors', trust_pickle=True)`."
        ) from exc
    except Exception as exc:  # corrupt zip, truncated file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    return _container(path, obj)


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """The informative part of torch's weights-only refusal, e.g. ``it references __main__.TrainConfig``."""
    text = str(exc)
    # torch ≤ 2.5: "Unsupported global: GLOBAL m.f was not an allowed global"; torch 2.6-2.13 also
    # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    found = re.search(r"unsupported global(?::\s*GLOBAL)?\s+(\S+)", text, flags=re.IGNORECASE)
    if found:
        blocked = re.search(r"whose module (\S+) is blocked", text)
        return f"it references {found.group(1)}" + (f", from the blocked module {blocked.group(1)}" if blocked else "")
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip()
    else:  # skip torch's generic preamble ("Weights only load failed. … In PyTorch 2.6, we changed …")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if not ln.startswith(("Weights only load failed", "(1)", "(2)", "Check the "))),
                      "")
    return detail.splitlines()[0] if detail else type(exc).__name__


def _container(path: Path, obj: object) -> _Checkpoint:
    """Classify a ``torch.load`` result: ``{"state_dict": …}`` (Lightning or re-saved PANNs) or ``{"model": …}``."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        sd = obj["model"]
    else:
        found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a USS Lightning checkpoint ({{'state_dict': …}}) nor a PANNs checkpoint "
            f"({{'model': …}}) nor a {FORMAT} safetensors file; it holds {found}"
        )
    bad = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state-dict entries that are not tensors: {', '.join(bad[:10])}")
    upstream = any(str(k).startswith(("ss_model.", "query_net.", "anchor_segment_detector.")) for k in sd)
    return _Checkpoint(path, "lightning" if upstream else "panns", sd)


class _LazySafetensors(Mapping):
    """Read-only mapping over a safetensors file that loads a tensor only when it is accessed."""

    def __init__(self, path: Path):
        self._path = path
        with safe_open(str(path), framework="pt", device="cpu") as f:
            self._keys = dict.fromkeys(f.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        with safe_open(str(self._path), framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _read_safetensors(path: Path) -> _Checkpoint:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
        tensors = _LazySafetensors(path)
    except Exception as exc:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a {FORMAT} checkpoint "
            f"(metadata format = {metadata.get('format')!r}); write one with `uss-bench export-checkpoint`"
        )
    return _Checkpoint(path, FORMAT, tensors, metadata)


# --------------------------------------------------------------------------------------------------
# Matching a file's tensors to a module
# --------------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    """Where one component's tensors live in a file."""

    prefix: str
    file_key: Callable[[str], str]  # our state-dict key -> the file's key
    derived: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    unused: Callable[[str], bool] = lambda key: False


def _layout(ckpt: _Checkpoint, component: str) -> _Layout:
    """How ``component`` is stored in ``ckpt``; raises when the file cannot hold it at all."""
    if ckpt.format == FORMAT:
        prefix = f"{component}."
        return _Layout(prefix, lambda key: prefix + key)
    if ckpt.format == "panns":
        if component == "separator":
            raise CheckpointError(
                f"{ckpt.path} is a PANNs checkpoint (Cnn14 weights, no ss_model.*); it holds no separator. "
                "Pass a USS Lightning .ckpt or a uss-bench .safetensors file"
            )
        return _Layout("", lambda key: key, _derived_constants("", "panns"))
    prefix = LIGHTNING_PREFIXES[component]
    if component == "separator":
        return _Layout(
            prefix,
            lambda key: upstream_key("separator", key),
            _derived_constants(prefix, "resunet"),
            lambda key: _UNUSED_SEPARATOR_KEY.fullmatch(key) is not None,
        )
    derived = _derived_constants(prefix, "panns")
    if component == "sed":
        derived[SMOOTH_FILTER_KEY] = _box_filter
    return _Layout(prefix, lambda key: prefix + key, derived)


def _foreign_keys(ckpt: _Checkpoint) -> list[str]:
    """Keys that belong to no component the file format may hold (reported as unexpected)."""
    if ckpt.format == "panns":
        return []
    if ckpt.format == FORMAT:
        prefixes = tuple(f"{c}." for c in COMPONENTS)
        return [k for k in ckpt.tensors if not k.startswith(prefixes)]
    prefixes = tuple(LIGHTNING_PREFIXES.values())
    return [k for k in ckpt.tensors if not k.startswith(prefixes) and k != SMOOTH_FILTER_KEY]


def _load_component(ckpt: _Checkpoint, component: str, module: nn.Module, what: str) -> None:
    """Check every key of ``component`` in ``ckpt`` against ``module`` and load it (strict).

    Floating tensors of another precision (float64, float16, bfloat16) are cast, with a warning listing
    them; integer or bool tensors for float weights (or floats for an integer buffer) are refused.

    Raises:
        CheckpointError: one error listing all missing, unexpected, mis-shaped and wrongly typed keys and
            mismatching derived constants (keys as spelled in the file).
    """
    layout = _layout(ckpt, component)
    expected = {layout.file_key(k): (k, v.shape, v.dtype) for k, v in module.state_dict().items()}
    relevant = [k for k in ckpt.tensors if k.startswith(layout.prefix) or k in layout.derived]
    state, unexpected, misshaped, wrong_constants, dropped = {}, list(_foreign_keys(ckpt)), [], [], []
    wrong_kind, casts = [], []
    for key in relevant:
        if key in expected:
            ours, shape, dtype = expected[key]
            tensor = ckpt.tensors[key]
            if tensor.shape != shape:
                misshaped.append(f"{key} (file {list(tensor.shape)}, expected {list(shape)})")
            if tensor.dtype != dtype:
                if tensor.dtype.is_floating_point and dtype.is_floating_point:
                    casts.append(f"{key} ({_dtype_name(tensor.dtype)} → {_dtype_name(dtype)})")
                else:  # integer / bool weights cast to float (or floats into a counter): not a real checkpoint
                    wrong_kind.append(f"{key} (file {_dtype_name(tensor.dtype)}, expected {_dtype_name(dtype)})")
            state[ours] = tensor
        elif key in layout.derived:
            problem = _check_derived(key, ckpt.tensors[key], layout.derived[key])
            if problem:
                wrong_constants.append(problem)
        elif layout.unused(key):
            dropped.append(key)
        else:
            unexpected.append(key)
    missing = [k for k in expected if k not in ckpt.tensors]
    problems = [
        (f"{len(items)} {label}", items)
        for label, items in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("key(s) with the wrong shape", misshaped),
            ("key(s) of an integer or bool dtype where a float is expected (or the reverse)", wrong_kind),
            ("derived constant(s) that differ from what uss-bench computes", wrong_constants),
        )
        if items
    ]
    if problems:
        lines = [f"{ckpt.path} does not match {what}:"]
        for title, items in problems:
            lines.append(f"  {title}:")
            lines.extend(f"    {item}" for item in items[:50])
            if len(items) > 50:
                lines.append(f"    … and {len(items) - 50} more")
        raise CheckpointError("\n".join(lines))
    if casts:
        logger.warning("%s: %d tensor(s) of %s cast to the model's dtype, e.g. %s", ckpt.path, len(casts), what,
                       "; ".join(casts[:3]))
    if dropped:
        logger.debug(
            "%s: dropped %d unused upstream tensors (decoder bn2 / ->beta2)", ckpt.path, len(dropped)
        )
    module.load_state_dict(state, strict=True)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_derived(key: str, stored: torch.Tensor, compute: Callable[[], torch.Tensor]) -> str | None:
    """Compare a stored derived constant with our value; return a problem line, or None (logged) when it agrees."""
    ours = compute()
    if stored.shape != ours.shape:
        return f"{key} (file shape {list(stored.shape)}, computed {list(ours.shape)})"
    diff = float((stored.float() - ours).abs().max())
    peak = float(ours.abs().max())
    if diff > _DERIVED_TOLERANCE * peak:
        return (
            f"{key} (max |file − computed| = {diff:.3g}, peak {peak:.3g}): built for other spectral settings?"
        )
    logger.debug(
        "derived constant %s agrees with ours (max diff %.3g); the stored copy is not used", key, diff
    )
    return None


def model_config(ckpt: _Checkpoint) -> dict:
    """The ``config`` metadata of a :data:`FORMAT` file (``{}`` for upstream files and old exports).

    Raises:
        CheckpointError: the metadata is not valid JSON.
    """
    if ckpt.format != FORMAT or "config" not in ckpt.metadata:
        return {}
    try:
        return json.loads(ckpt.metadata["config"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt.path}: the 'config' metadata is not valid JSON ({exc})") from exc


def _condition_size(ckpt: _Checkpoint) -> int:
    """Condition size D of the separator, read from the first FiLM layer's in-features.

    Upstream files hold D = 527 (``at_soft``) or 2048 (``emb``). Our files may hold any D, with the
    condition type recorded in the metadata (e.g. 128 for the ``LogMelStats`` demo query net).
    """
    ours = "encoder_block1.conv_block1.beta1.weight"
    key = f"separator.{ours}" if ckpt.format == FORMAT else upstream_key("separator", ours)
    if key not in ckpt.tensors:
        if not any(k.startswith(_layout(ckpt, "separator").prefix) for k in ckpt.tensors):
            raise CheckpointError(
                f"{ckpt.path} holds no separator (no {_layout(ckpt, 'separator').prefix}* keys)"
            )
        raise CheckpointError(f"{ckpt.path}: missing key {key}, which gives the separator's condition size")
    size = int(ckpt.tensors[key].shape[-1])
    if ckpt.format == FORMAT:
        recorded = (ckpt.metadata.get("condition_size"), ckpt.metadata.get("condition_type"))
        if recorded[0] != str(size) or recorded[1] not in CONDITION_KINDS:
            raise CheckpointError(
                f"{ckpt.path}: metadata says condition_size/condition_type = {recorded}, "
                f"but the weights have condition size {size} (types: {', '.join(CONDITION_KINDS)})"
            )
        if recorded[1] == "at_soft" and size != 527:
            raise CheckpointError(f"{ckpt.path}: an at_soft condition has 527 entries, the weights have {size}")
        return size
    if size not in CONDITION_TYPES:
        raise CheckpointError(
            f"{ckpt.path}: condition size {size} (from {key}) is neither 527 (at_soft) nor 2048 (emb)"
        )
    return size


def _separator_from(ckpt: _Checkpoint) -> ResUNet30:
    size = _condition_size(ckpt)
    arch = model_config(ckpt).get("separator", {})
    channels = tuple(arch.get("channels", resunet.PAPER_CHANNELS))
    ctype = ckpt.metadata.get("condition_type") if ckpt.format == FORMAT else CONDITION_TYPES[size]
    try:
        model = ResUNet30(size, channels, ctype, n_fft=int(arch.get("n_fft", resunet.N_FFT)))
    except ValueError as exc:
        raise CheckpointError(f"{ckpt.path}: its separator config {arch} is not a ResUNet30: {exc}") from exc
    what = f"ResUNet30 (condition size {size}, channels {list(channels)}, n_fft {model.n_fft})"
    _load_component(ckpt, "separator", model, what)
    return model.eval()


def _panns_from(ckpt: _Checkpoint, component: str, model: nn.Module) -> nn.Module:
    prefix = _layout(ckpt, component).prefix
    if prefix and not any(k.startswith(prefix) for k in ckpt.tensors):
        raise CheckpointError(f"{ckpt.path} holds no {type(model).__name__} (no {prefix}* keys)")
    _load_component(ckpt, component, model, type(model).__name__)
    return model.eval()


def _query_net_from(ckpt: _Checkpoint) -> nn.Module:
    """The query net a checkpoint declares: Cnn14 (upstream and exported files), LogMelStats or OneHot."""
    arch = model_config(ckpt).get("query_net") or {"architecture": "Cnn14"}
    name = arch.get("architecture")
    if name == "Cnn14":
        return _panns_from(ckpt, "query_net", Cnn14())
    if name in ("LogMelStats", "OneHot"):
        model = LogMelStats() if name == "LogMelStats" else OneHotQuery(arch.get("vocabulary") or [])
        _load_component(ckpt, "query_net", model, f"the weight-free {name} query net")
        return model.eval()
    raise CheckpointError(
        f"{ckpt.path}: unknown query net {name!r} in its config; uss-bench knows Cnn14, LogMelStats, OneHot"
    )


# --------------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------------
def load_separator(path: str | Path, device: str | torch.device = "cpu") -> ResUNet30:
    """Load the ResUNet30 separator from a USS Lightning ``.ckpt`` or a uss-bench ``.safetensors``.

    The condition size (527 → ``at_soft``, 2048 → ``emb``) is read from the FiLM weights and exposed as
    ``model.condition_size`` / ``model.condition_type``.

    Args:
        path: checkpoint file.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a torch.device.

    Returns:
        :class:`ResUNet30` in eval mode on ``device``.

    Raises:
        CheckpointError: missing/unreadable/unsafe file, no separator in it, or any key problem (all
            listed in one error).
    """
    return _separator_from(_read_checkpoint(path)).to(resolve_device(device))


def load_query_net(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load the query net: a Lightning ``.ckpt`` (``query_net.base.*``), a PANNs Cnn14 ``.pth``, or ours.

    Our files may instead declare a weight-free :class:`~harness.models.querynets.LogMelStats` or
    :class:`~harness.models.querynets.OneHotQuery` in their ``config`` metadata.

    Returns:
        the query net (usually :class:`~harness.models.panns.Cnn14`) in eval mode on ``device``.

    Raises:
        CheckpointError: as :func:`load_separator`.
    """
    ckpt = _read_checkpoint(path)
    if ckpt.format == "panns":
        return _panns_from(ckpt, "query_net", Cnn14()).to(resolve_device(device))
    return _query_net_from(ckpt).to(resolve_device(device))


def load_sed(path: str | Path, device: str | torch.device = "cpu") -> Cnn14DecisionLevelMax:
    """Load the SED model: a PANNs Cnn14_DecisionLevelMax ``.pth``, a Lightning ``.ckpt``
    (``anchor_segment_detector.sed_model.*``), or ours (when exported with one).

    Returns:
        :class:`~harness.models.panns.Cnn14DecisionLevelMax` in eval mode on ``device``.

    Raises:
        CheckpointError: as :func:`load_separator`.
    """
    return _panns_from(_read_checkpoint(path), "sed", Cnn14DecisionLevelMax()).to(resolve_device(device))


def load_separator_and_query_net(path: str | Path, device: str | torch.device = "cpu"
                                 ) -> tuple[ResUNet30, nn.Module]:
    """:func:`load_separator` and :func:`load_query_net` from one read of the file (a USS ``.ckpt`` or ours).

    Returns:
        ``(separator, query_net)``, both in eval mode on ``device``.

    Raises:
        CheckpointError: as :func:`load_separator`, for either component.
    """
    ckpt = _read_checkpoint(path)
    target = resolve_device(device)
    return _separator_from(ckpt).to(target), _query_net_from(ckpt).to(target)


def load_checkpoint_state(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every component a checkpoint holds, as our modules' state dicts, after the full key check.

    Returns:
        ``{"separator": …, "query_net": …, "sed": …}`` restricted to the components present (a PANNs
        file gives ``query_net`` and ``sed``, the same weights under both names).

    Raises:
        CheckpointError: as :func:`load_separator`, for any component present.
    """
    ckpt = _read_checkpoint(path)
    return {name: model.state_dict() for name, model in _components(ckpt).items()}


def _components(ckpt: _Checkpoint) -> dict[str, nn.Module]:
    """Load every component that ``ckpt`` holds."""
    models: dict[str, nn.Module] = {}
    prefixes = {
        c: _layout(ckpt, c).prefix for c in COMPONENTS if not (ckpt.format == "panns" and c == "separator")
    }
    if "separator" in prefixes and any(k.startswith(prefixes["separator"]) for k in ckpt.tensors):
        models["separator"] = _separator_from(ckpt)
    if ckpt.format == FORMAT and (model_config(ckpt).get("query_net") or {}).get("architecture", "Cnn14") != "Cnn14":
        models["query_net"] = _query_net_from(ckpt)
    for name, cls in (("query_net", Cnn14), ("sed", Cnn14DecisionLevelMax)):
        if name in models:
            continue
        if not prefixes[name] or any(k.startswith(prefixes[name]) for k in ckpt.tensors):
            models[name] = _panns_from(ckpt, name, cls())
    return models


def export_checkpoint(src: str | Path, dst: str | Path, *, trust_pickle: bool = False) -> dict[str, str]:
    """Write a slim, safe :data:`FORMAT` safetensors copy of a USS checkpoint.

    Keeps the separator, the query net and the SED model when ``src`` has one; drops optimizer state,
    derived constants and the unused upstream tensors. Writes ``dst`` under a temporary name in the same
    folder, then renames it.

    Args:
        src: a USS Lightning ``.ckpt`` or a uss-bench ``.safetensors``.
        dst: output ``.safetensors`` path.
        trust_pickle: load ``src`` with ``torch.load(weights_only=False)``, which can run arbitrary code
            from the file. Only for a file from a source you trust that the safe loader refuses.

    Returns:
        The metadata written: ``format``, ``condition_size``, ``condition_type``, ``source_file``,
        ``source_sha256``, ``config`` (JSON string).

    Raises:
        CheckpointError: ``src`` is unreadable, has no separator or query net, or fails the key check.
    """
    src, dst = Path(src), Path(dst)
    ckpt = _read_checkpoint(src, trust_pickle=trust_pickle)
    models = _components(ckpt)
    for needed in ("separator", "query_net"):
        if needed not in models:
            raise CheckpointError(
                f"{src} has no {needed}; export needs a USS checkpoint (separator + query net)"
            )
    metadata = save_checkpoint(dst, models, source=src, extra_config=model_config(ckpt).get("training"))
    logger.info("exported %s (%s) to %s: %s", src, metadata["source_sha256"][:12], dst, ", ".join(models))
    return metadata


def query_net_config(query_net: nn.Module, condition_type: str) -> dict:
    """The ``config["query_net"]`` entry that describes ``query_net`` (what :func:`load_query_net` rebuilds)."""
    if isinstance(query_net, LogMelStats):
        return {"architecture": "LogMelStats", **_panns_config(), "output": "embedding",
                "condition_size": LogMelStats.condition_size}
    if isinstance(query_net, OneHotQuery):
        return {"architecture": "OneHot", "vocabulary": query_net.vocabulary}
    return {"architecture": "Cnn14", **_panns_config(),
            "output": "clipwise_output" if condition_type == "at_soft" else "embedding"}


def save_checkpoint(dst: str | Path, models: Mapping[str, nn.Module], *, source: str | Path | None = None,
                    extra_config: dict | None = None) -> dict[str, str]:
    """Write ``models`` (``separator``, ``query_net``, optional ``sed``) as one :data:`FORMAT` file.

    The file gets the tensors of every module's state dict under ``<component>.`` and the metadata
    ``format``, ``condition_size``, ``condition_type``, ``source_file``/``source_sha256`` (when
    ``source`` is given) and ``config`` (JSON: the architecture of each component, plus
    ``extra_config`` under ``"training"``). Written under a temporary name, then renamed.

    Returns:
        the metadata written.

    Raises:
        CheckpointError: ``models`` has no separator or no query net.
    """
    dst = Path(dst)
    for needed in ("separator", "query_net"):
        if needed not in models:
            raise CheckpointError(f"cannot write {dst}: no {needed} given")
    separator = models["separator"]
    config = {
        "separator": {
            "architecture": "ResUNet30",
            "condition_size": separator.condition_size,
            "condition_type": separator.condition_type,
            "channels": list(separator.channels),
            "n_fft": separator.n_fft,
            "hop_size": resunet.HOP_SIZE,
            "input_channels": 1,
            "output_channels": 1,
        },
        "query_net": query_net_config(models["query_net"], separator.condition_type),
        "sed": {"architecture": "Cnn14_DecisionLevelMax", **_panns_config()} if "sed" in models else None,
        "sample_rate": 32000,
        "segment_samples": 64000,
    }
    if extra_config:
        config["training"] = extra_config
    metadata = {
        "format": FORMAT,
        "condition_size": str(separator.condition_size),
        "condition_type": separator.condition_type,
        "config": json.dumps(config, sort_keys=True),
    }
    if source is not None:
        metadata["source_file"] = Path(source).name
        metadata["source_sha256"] = file_sha256(source)
    tensors = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, model in models.items()
        for key, value in model.state_dict().items()
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        from harness.datasets.store import share_like_new_file

        share_like_new_file(tmp)  # safetensors writes 0600
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return metadata


def _panns_config() -> dict[str, float | int]:
    return {
        "sample_rate": 32000,
        "window_size": panns.WINDOW_SIZE,
        "hop_size": panns.HOP_SIZE,
        "mel_bins": panns.MEL_BINS,
        "fmin": panns.FMIN,
        "fmax": panns.FMAX,
        "classes_num": panns.CLASSES_NUM,
    }
