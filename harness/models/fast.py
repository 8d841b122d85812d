"""The fast CPU/GPU inference path of the separator (and the Cnn14 query net), and the check that it is faithful.

Evaluation time is the separator's forward pass. :func:`prepare_for_inference` rewrites a
:class:`~harness.models.resunet.ResUNet30` for inference without changing what it computes:

- every residual block's ``bn2`` is folded into the ``conv1`` before it (eval-mode BatchNorm is the affine
  map ``s·h + t`` per channel, so ``bn2(conv1(a)) = conv1'(a) + t`` with ``conv1'`` = ``conv1``'s weights
  scaled by ``s`` per output channel; exact in real arithmetic, a rounding per weight in float32);
- the remaining pre-activation BatchNorms plus their FiLM offset become one ``addcmul``
  (``x·s + (t + β)``), and the leaky ReLUs run in place;
- 4-D weights and activations are channels-last (oneDNN's fast layout on CPU);
- it runs under :func:`torch.inference_mode`, float32 throughout (no reduced precision anywhere).

:func:`prepare_query_net` does the same for Cnn14 / Cnn14_DecisionLevelMax (each ``conv → BatchNorm``
pair folded into one biased convolution, in-place ReLUs, channels-last).

:func:`checked_forward` is what the inference entry points call: it prepares a model once per process
(again only when its weights changed, e.g. between training validations), compares the prepared model
with the plain float32 module on the first batch (``max|Δ| / max|ref|`` ≤ :data:`FIDELITY_LIMIT`, else
:class:`FastPathError`), and records the figure on the model as ``model.inference_report`` (``run.json``
copies it). :func:`tune_allocator` stops glibc from mapping large blocks once per process, so the large
activations are reused instead of being mapped, zero-filled by the kernel and unmapped on every call.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import os
import sys
import time
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UssBenchError
from harness.models.resunet import _LEAKY_SLOPE, ConvBlockRes, DecoderBlockRes1B, ResUNet30

FIDELITY_LIMIT = 1e-4
"""Largest accepted ``max|prepared − plain| / max|plain|`` on the first batch (the reference tests' 1e-4;
folding and channels-last reassociate float32 sums: measured ≈ 1e-6–1e-5 of peak)."""

FAST_ENV = "USS_BENCH_FAST"
"""``0`` turns the fast path off process-wide (the plain eager module runs instead)."""

BACKEND_ENV = "USS_BENCH_BACKEND"
"""``openvino`` runs the separator's U-Net core (``ResUNet30.mask_logits``) in OpenVINO (float32, CPU;
the optional extra ``uss-bench[openvino]``); unset or ``torch``: PyTorch. See :class:`OpenVINOCore`."""

BACKENDS = ("torch", "openvino")

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4  # glibc <malloc.h>
MALLOPT_SETTINGS = {"M_MMAP_MAX": (_M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, 2**31 - 1),
                    "M_TOP_PAD": (_M_TOP_PAD, 256 * 2**20)}
"""What :func:`tune_allocator` sets. ``M_MMAP_MAX = 0``: no block is ``mmap``ed (raising
``M_MMAP_THRESHOLD`` is not enough: glibc caps it at 32 MiB, and the top-level activations are 29 MB per
item, the decoder concatenation 58 MB); ``M_TRIM_THRESHOLD`` at its maximum: freed memory stays in the
heap for the next batch; ``M_TOP_PAD`` 256 MiB: the heap grows in large steps. Measured on the paper-size
model at batch 4: 1.9 M minor faults per forward → 0, 1.5–2× less CPU per item."""


class FastPathError(UssBenchError):
    """The prepared (fast) model's output differs from the plain float32 module's beyond the limit."""


_ALLOCATOR: dict[str, Any] | None = None


def tune_allocator() -> dict[str, Any]:
    """Keep freed memory in glibc's heap (:data:`MALLOPT_SETTINGS`, ``mallopt`` via ctypes), once per process.

    Without it glibc ``mmap``s every block above its (dynamic, ≤ 32 MiB) threshold and ``munmap``s it on
    free, so each forward pays page faults on gigabytes of fresh zeroed pages. With these settings freed
    activations stay in the heap and are reused; the cost is that the process keeps its peak heap until
    it exits (measured in ``benchmarks/bench_eval.py``). The numbers computed do not change. Call it
    before the first large allocation; a no-op off glibc (macOS, musl, Windows).

    Returns:
        ``{"applied": bool, "mallopt": {name: value}}``, or ``{"applied": False, "reason": ...}``.
    """
    global _ALLOCATOR
    if _ALLOCATOR is not None:
        return _ALLOCATOR
    info: dict[str, Any] = {"applied": False}
    if not sys.platform.startswith("linux"):
        info["reason"] = f"not glibc ({sys.platform})"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError) as exc:
            info["reason"] = f"no glibc mallopt: {exc}"
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            done = {name: value for name, (param, value) in MALLOPT_SETTINGS.items() if mallopt(param, value) == 1}
            info = {"applied": len(done) == len(MALLOPT_SETTINGS), "mallopt": done}
    _ALLOCATOR = info
    return info


def enabled() -> bool:
    """Whether the fast path is on (default) rather than turned off with ``USS_BENCH_FAST=0``."""
    return os.environ.get(FAST_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``(scale, shift)``: ``bn(x) = x·scale + shift`` per channel, ``(C,)`` each."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _as_4d(v: torch.Tensor) -> torch.Tensor:
    return v.detach().reshape(1, -1, 1, 1).clone()


def _channels_last(w: torch.Tensor) -> torch.Tensor:
    """A new tensor (never a view of ``w``), channels-last when 4-D."""
    return w.detach().clone(memory_format=torch.channels_last) if w.dim() == 4 else w.detach().clone()


class _PreAct(nn.Module):
    """``lrelu(bn(x) + β(condition))`` as ``lrelu_(addcmul(t + β, x, s))``; β from the block's FiLM Linear."""

    def __init__(self, bn: nn.BatchNorm2d, beta: nn.Linear):
        super().__init__()
        scale, shift = _bn_affine(bn)
        self.register_buffer("scale", _as_4d(scale))
        self.register_buffer("shift", _as_4d(shift))
        self.beta = beta

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        offset = self.beta(condition)[:, :, None, None] + self.shift
        return F.leaky_relu_(torch.addcmul(offset, x, self.scale), _LEAKY_SLOPE)


class FusedConvBlockRes(nn.Module):
    """:class:`~harness.models.resunet.ConvBlockRes` with ``bn2`` folded into ``conv1`` (same outputs).

    ``h = conv1'(lrelu(bn1(x) + β1)) + (t2 + β2)``, ``h = conv2(lrelu_(h))``, ``out = shortcut(x) + h``;
    ``conv1' = s2 ⊙ conv1`` per output channel, ``(s2, t2)`` the affine form of ``bn2``.

    Shape: as ConvBlockRes; activations are channels-last.
    """

    def __init__(self, block: ConvBlockRes):
        super().__init__()
        self.pre1 = _PreAct(block.bn1, block.beta1)
        scale2, shift2 = _bn_affine(block.bn2)
        self.conv1_weight = nn.Parameter(_channels_last(block.conv1.weight * scale2[:, None, None, None]),
                                         requires_grad=False)
        self.register_buffer("shift2", _as_4d(shift2))
        self.beta2 = block.beta2
        self.conv2_weight = nn.Parameter(_channels_last(block.conv2.weight), requires_grad=False)
        self.shortcut = None
        if block.shortcut is not None:
            self.shortcut = nn.Conv2d(block.shortcut.in_channels, block.shortcut.out_channels, kernel_size=1)
            self.shortcut.weight = nn.Parameter(_channels_last(block.shortcut.weight), requires_grad=False)
            self.shortcut.bias = nn.Parameter(block.shortcut.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        h = F.conv2d(self.pre1(x, condition), self.conv1_weight, padding=1)
        h += self.beta2(condition)[:, :, None, None] + self.shift2
        h = F.conv2d(F.leaky_relu_(h, _LEAKY_SLOPE), self.conv2_weight, padding=1)
        h += x if self.shortcut is None else self.shortcut(x)
        return h


class FusedDecoderBlockRes1B(nn.Module):
    """:class:`~harness.models.resunet.DecoderBlockRes1B` with the fused pre-activation and block (same outputs)."""

    def __init__(self, block: DecoderBlockRes1B):
        super().__init__()
        self.pre1 = _PreAct(block.bn1, block.beta1)
        self.up = block.conv1.stride
        self.conv1_weight = nn.Parameter(_channels_last(block.conv1.weight), requires_grad=False)
        self.conv_block2 = FusedConvBlockRes(block.conv_block2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = F.conv_transpose2d(self.pre1(x, condition), self.conv1_weight, stride=self.up)
        return self.conv_block2(torch.cat([h, skip], dim=1), condition)


def prepare_for_inference(model: ResUNet30) -> ResUNet30:
    """An eval-mode copy of ``model`` rewritten for inference (module docstring); ``model`` is untouched.

    The copy shares nothing mutable with ``model`` (folded weights are new tensors), has no gradients and
    keeps ``condition_size``, ``condition_type``, ``spectrum``/``resynthesise`` and the call signature.
    Call it under :func:`torch.inference_mode` for speed.

    Raises:
        TypeError: ``model`` is not a ResUNet30.
    """
    if not isinstance(model, ResUNet30):
        raise TypeError(f"prepare_for_inference needs a ResUNet30, got {type(model).__name__}")
    with torch.no_grad():
        # The convolution weights (nearly all of the model) are not copied here: the fused blocks make
        # their own new tensors from them, so the copy never holds the model twice over.
        memo = {id(p): p for p in model.parameters() if p.dim() == 4}
        prepared = copy.deepcopy(model, memo).eval()
        for name, module in list(prepared.named_children()):
            if hasattr(module, "conv_block1") and isinstance(module.conv_block1, ConvBlockRes):
                module.conv_block1 = FusedConvBlockRes(module.conv_block1)
            elif isinstance(module, DecoderBlockRes1B):
                setattr(prepared, name, FusedDecoderBlockRes1B(module))
        for conv in (prepared.pre_conv, prepared.after_conv):  # still shared with model: replace, never modify
            conv.weight = nn.Parameter(_channels_last(conv.weight), requires_grad=False)
        shared = {id(p) for p in model.parameters()} & {id(p) for p in prepared.parameters()}
        if shared:
            raise RuntimeError(f"internal: {len(shared)} parameters shared between the model and its prepared copy")
    for p in prepared.parameters():
        p.requires_grad_(False)
    prepared.fast_prepared = True
    return prepared


def backend() -> str:
    """The inference backend chosen by :data:`BACKEND_ENV` (default ``torch``).

    Raises:
        FastPathError: an unknown name, or ``openvino`` without the ``openvino`` package installed.
    """
    name = (os.environ.get(BACKEND_ENV) or "torch").strip().lower()
    if name not in BACKENDS:
        raise FastPathError(f"{BACKEND_ENV}={name!r} is not a backend; use one of {', '.join(BACKENDS)}")
    if name == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            raise FastPathError(f"{BACKEND_ENV}=openvino needs the openvino package: "
                                "pip install 'uss-bench[openvino]', or unset it") from exc
    return name


class OpenVINOCore:
    """``prepared.mask_logits`` (the U-Net, 99 % of the FLOPs) compiled by OpenVINO for the CPU, float32.

    Set as an instance attribute of a prepared ResUNet30 (:func:`prepare_for_inference` then
    :func:`use_openvino`), so that its ``forward`` runs the STFT, the magnitude/phase and the ISTFT in PyTorch
    (complex tensors, which OpenVINO's converter does not take) and the U-Net in OpenVINO. The model is
    converted once from a trace of the PyTorch core with dynamic shapes (any batch and length), compiled
    with ``INFERENCE_PRECISION_HINT=f32`` (no bf16 on CPUs that have it) and as many threads as torch
    uses. Checked like every preparation by :func:`checked_forward` (≤ 1e-4 of peak; measured ≈ 2e-7).
    Measured on a loaded 2-core Xeon (paper-size model, batch 8): 1.95× the PyTorch fast path in
    ``benchmarks/backend_trials.py``, but 1.10× through :func:`checked_forward` and 0.93× in a quick
    ``eval_throughput`` run: not a clear win, so opt-in. CUDA tensors run the PyTorch core.

    Shape: as :meth:`ResUNet30.mask_logits`.
    """

    def __init__(self, prepared: ResUNet30):
        self._prepared = prepared
        self._compiled = None

    def _torch_core(self, mag: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return ResUNet30.mask_logits(self._prepared, mag, condition)

    def _compile(self, mag: torch.Tensor, condition: torch.Tensor):
        import openvino as ov

        prepared = self._prepared

        class Core(nn.Module):
            def forward(self, m, c):
                return ResUNet30.mask_logits(prepared, m, c)

        with torch.inference_mode(False), torch.no_grad():
            example = (mag.clone(), condition.clone())
            model = ov.convert_model(Core().eval(), example_input=example)
        for i in range(2):  # any batch and length (the batch-size search and the last batch differ)
            model.inputs[i].get_node().set_partial_shape(ov.PartialShape([-1] * example[i].dim()))
        model.validate_nodes_and_infer_types()
        return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                       "INFERENCE_NUM_THREADS": torch.get_num_threads()})

    def __call__(self, mag: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if mag.device.type != "cpu":
            return self._torch_core(mag, condition)
        if self._compiled is None:
            self._compiled = self._compile(mag, condition)
        if condition.shape[0] == 1 and mag.shape[0] > 1:  # (1, D) broadcasts in PyTorch's FiLM
            condition = condition.expand(mag.shape[0], -1)
        out = self._compiled([mag.contiguous().numpy(), condition.contiguous().numpy()])[0]
        return torch.from_numpy(out.copy())


def use_openvino(prepared: ResUNet30) -> ResUNet30:
    """Run ``prepared``'s U-Net core in OpenVINO (:class:`OpenVINOCore`); returns ``prepared``."""
    prepared.mask_logits = OpenVINOCore(prepared)
    prepared.inference_backend = "openvino"
    return prepared


def _prepare_separator(model: ResUNet30) -> ResUNet30:
    """:func:`prepare_for_inference`, then the backend of :data:`BACKEND_ENV`."""
    prepared = prepare_for_inference(model)
    return use_openvino(prepared) if backend() == "openvino" else prepared


def relative_difference(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|actual − reference| / max|reference|`` in float64 (0 when both are all zero)."""
    a, r = actual.detach().double().cpu(), reference.detach().double().cpu()
    peak = float(r.abs().max()) if r.numel() else 0.0
    diff = float((a - r).abs().max()) if r.numel() else 0.0
    return diff / peak if peak > 0 else (0.0 if diff == 0 else float("inf"))


def _version(model: nn.Module) -> tuple:
    """Identity of the model's current weights: the in-place version counters of its tensors."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _preparer(model: nn.Module):
    """The preparation for ``model``'s class (separator or Cnn14 body), or None for any other module."""
    from harness.models.panns import _Cnn14Body

    if isinstance(model, ResUNet30):
        if backend() == "openvino":
            return _prepare_separator
        return prepare_for_inference  # looked up at call time: tests swap in a broken preparation
    if isinstance(model, _Cnn14Body):
        return prepare_query_net
    return None


def _max_relative_difference(out, reference) -> float:
    """:func:`relative_difference` of a tensor, or the largest over a dict of tensors (Cnn14's outputs)."""
    if isinstance(reference, dict):
        return max(relative_difference(out[k], v) for k, v in reference.items())
    return relative_difference(out, reference)


def checked_forward(model: nn.Module, *inputs: torch.Tensor):
    """``model(*inputs)`` in eval/inference mode through the checked fast path.

    A ResUNet30 (:func:`prepare_for_inference`) or a Cnn14 / Cnn14_DecisionLevelMax
    (:func:`prepare_query_net`) is prepared on first use (and again when its weights changed); that first
    batch also runs the plain module and the outputs are compared (for a dict of outputs: the largest of
    their differences). ``model.inference_report`` then holds ``{"fast_path", "fidelity_max_rel_diff",
    "fidelity_limit", "prepare_s", "allocator", ...}``. Any other module, or ``USS_BENCH_FAST=0``, runs as
    it is. The model's training flag is restored afterwards. On CUDA, preparing turns TF32 off for cuDNN
    convolutions and matmuls (process-wide; PyTorch's default allows it in convolutions), so the path is
    float32 as on the CPU.

    Shape: as the model's forward (separator: ``(B, 1, L)`` and ``(B or 1, D)`` → ``(B, 1, L)``).

    Raises:
        FastPathError: the prepared model's output differs by more than :data:`FIDELITY_LIMIT` of peak.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            prepare = _preparer(model)
            if prepare is None or not enabled():
                if prepare is not None:
                    model.inference_report = {"fast_path": False, "reason": f"{FAST_ENV}=0"}
                return model(*inputs)
            version = _version(model)
            entry = _CACHE.get(model)
            if entry is not None and entry[0] == version:
                return entry[1](*inputs)
            allocator = tune_allocator()
            if inputs[0].is_cuda:  # float32 means float32: PyTorch's default lets cuDNN convolutions use TF32
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
            t0 = time.perf_counter()
            prepared = prepare(model)
            prepare_s = time.perf_counter() - t0
            reference = model(*inputs)
            out = prepared(*inputs)
            rel = _max_relative_difference(out, reference)
            report = {"fast_path": True, "fidelity_max_rel_diff": rel, "fidelity_limit": FIDELITY_LIMIT,
                      "fidelity_batch": int(inputs[0].shape[0]), "prepare_s": round(prepare_s, 3),
                      "allocator": allocator, "memory_format": "channels_last", "dtype": "float32",
                      "backend": getattr(prepared, "inference_backend", "torch"),
                      "torch_threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "device": str(inputs[0].device)}
            if inputs[0].is_cuda:
                report["cuda_tf32"] = False
            prev = getattr(model, "inference_report", None) or {}
            model.inference_report = {**{k: v for k, v in prev.items() if k == "batch_size"}, **report}
            if not rel <= FIDELITY_LIMIT:
                raise FastPathError(
                    f"the fast inference path of {type(model).__name__} differs from the plain float32 model by "
                    f"{rel:.3g} of the output's peak on the first batch (limit {FIDELITY_LIMIT:g}): not used. "
                    f"Rerun with {FAST_ENV}=0 to run the plain model, and report this (torch version, CPU) as a bug"
                )
            _CACHE[model] = (version, prepared)
            del reference
            return out
    finally:
        model.train(was_training)


class FusedConvBlock(nn.Module):
    """Cnn14's :class:`~harness.models.panns.ConvBlock` with each BatchNorm folded into its convolution.

    ``relu_(conv1'(x) + t1)``, ``relu_(conv2'(·) + t2)``, average pooling; ``conv' = s ⊙ conv`` per output
    channel, ``(s, t)`` the affine form of the BatchNorm after it (exact in real arithmetic).
    """

    def __init__(self, block):
        super().__init__()
        self.pool = block.pool
        s1, t1 = _bn_affine(block.bn1)
        s2, t2 = _bn_affine(block.bn2)
        self.w1 = nn.Parameter(_channels_last(block.conv1.weight * s1[:, None, None, None]), requires_grad=False)
        self.b1 = nn.Parameter(t1.detach().clone(), requires_grad=False)
        self.w2 = nn.Parameter(_channels_last(block.conv2.weight * s2[:, None, None, None]), requires_grad=False)
        self.b2 = nn.Parameter(t2.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu_(F.conv2d(x, self.w1, self.b1, padding=1))
        x = F.relu_(F.conv2d(x, self.w2, self.b2, padding=1))
        return F.avg_pool2d(x, kernel_size=self.pool)


def prepare_query_net(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a Cnn14 / Cnn14_DecisionLevelMax with BatchNorms folded into the convolutions
    (:class:`FusedConvBlock`), channels-last; ``model`` is untouched. Same outputs up to float32 rounding.

    Raises:
        TypeError: ``model`` is not a Cnn14 body.
    """
    from harness.models.panns import ConvBlock, _Cnn14Body

    if not isinstance(model, _Cnn14Body):
        raise TypeError(f"prepare_query_net needs a Cnn14, got {type(model).__name__}")
    with torch.no_grad():
        memo = {id(p): p for p in model.parameters() if p.dim() == 4}
        prepared = copy.deepcopy(model, memo).eval()
        for name, module in list(prepared.named_children()):
            if isinstance(module, ConvBlock):
                setattr(prepared, name, FusedConvBlock(module))
    for p in prepared.parameters():
        p.requires_grad_(False)
    prepared.fast_prepared = True
    return prepared


BATCH_CANDIDATES = {"cpu": (1, 2, 4, 8, 16), "cuda": (8, 16, 32, 64, 128)}
"""Batch sizes ``--batch-size auto`` tries, in order (2-s items), per device type."""


def choose_batch_size(model: nn.Module, candidates: tuple[int, ...] | None = None, max_items: int | None = None,
                      length: int = 64000) -> int:
    """``--batch-size auto``: time the fast path at a few batch sizes, return the fastest per item.

    Each candidate (:data:`BATCH_CANDIDATES` for the model's device, at most ``max_items``) runs one
    untimed forward then one timed one on seeded noise (the forward's cost does not depend on the audio;
    the first call also prepares and checks the model). The search stops once a candidate is 10 % slower
    per item than the best so far. The choice and the timings go to ``model.inference_report["batch_size"]``.

    A different batch size can change the outputs in the last bits (oneDNN/cuDNN pick kernels per shape;
    measured ≤ 3e-7 of peak between batch 1 and 3): rerun with the recorded ``--batch-size N`` to repeat a
    run bit for bit. Returns an int ≥ 1.
    """
    device = next(model.parameters()).device
    cands = list(candidates or BATCH_CANDIDATES.get(device.type, BATCH_CANDIDATES["cpu"]))
    if max_items is not None:
        cands = [b for b in cands if b <= max(1, max_items)] or [1]
    size = int(getattr(model, "condition_size", 0))
    g = torch.Generator().manual_seed(0)
    per_item: dict[int, float] = {}
    for b in cands:
        x = (0.1 * torch.randn(b, 1, length, generator=g)).to(device)
        c = torch.rand(b, size, generator=g).to(device)
        checked_forward(model, x, c)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        checked_forward(model, x, c)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_item[b] = (time.perf_counter() - t0) / b
        if per_item[b] > 1.10 * min(per_item.values()):
            break
    best = min(per_item, key=lambda b: (per_item[b], b))
    report = getattr(model, "inference_report", None) or {}
    report["batch_size"] = {"mode": "auto", "chosen": best, "seconds_per_item": {str(k): round(v, 4)
                                                                              for k, v in per_item.items()}}
    model.inference_report = report
    return best
