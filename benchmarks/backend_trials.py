"""Trial of alternative CPU inference backends against the default fast path (issue 14, item 2).

Each candidate runs the paper-size ResUNet30 (seeded random weights: speed does not depend on them) on
the same batch, interleaved with the default prepared model (``harness.models.fast``) in one process,
medians of ``--repeat`` runs; its output is checked against the plain float32 eager module with the
fast path's own limit (``max|Δ| / max|ref| <= 1e-4``). Prints one line per candidate:
``ratio = default time / candidate time`` (> 1: the candidate is faster). From the repository root::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/backend_trials.py --batch 8 --repeat 5 [--openvino] [--onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _Core:
    """``prepared.mask_logits`` as a module of its own, for exporters (lazy torch import)."""

    def __new__(cls, prepared):
        import torch

        class Core(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = prepared

            def forward(self, mag, condition):
                return self.model.mask_logits(mag, condition)

        return Core().eval()


def _jit(prepared, mix, cond, candidates: dict, report: dict) -> None:
    """TorchScript candidates: ``torch.jit.freeze`` of a trace, and ``optimize_for_inference`` (MKLDNN)."""
    import torch

    t0 = time.perf_counter()
    traced = torch.jit.freeze(torch.jit.trace(prepared, (mix, cond), check_trace=False))
    report["jit_freeze_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    optimized = torch.jit.optimize_for_inference(torch.jit.trace(prepared, (mix, cond), check_trace=False))
    report["jit_optimize_build_s"] = time.perf_counter() - t0
    candidates["jit_freeze"] = lambda: traced(mix, cond)
    candidates["jit_optimize_for_inference"] = lambda: optimized(mix, cond)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--onnxruntime", action="store_true", help="also try ONNX Runtime (pip onnxruntime)")
    parser.add_argument("--openvino", action="store_true", help="also try OpenVINO (pip openvino)")
    parser.add_argument("--no-jit", action="store_true", help="skip the TorchScript candidates")
    parser.add_argument("--quick", action="store_true", help="tiny model (seconds; for a smoke test)")
    args = parser.parse_args(argv)

    from harness.models.fast import FIDELITY_LIMIT, prepare_for_inference, relative_difference, tune_allocator

    tune_allocator()
    import torch

    from harness.models.resunet import ResUNet30

    torch.manual_seed(0)
    kw = {"channels": (2, 4, 4, 4, 4, 4), "n_fft": 384} if args.quick else {}
    model = ResUNet30(527, **kw).eval()
    g = torch.Generator().manual_seed(1)
    mix = 0.1 * torch.randn(args.batch, 1, 64000, generator=g)
    cond = torch.rand(args.batch, 527, generator=g)
    with torch.inference_mode():
        reference = model(mix, cond)
        prepared = prepare_for_inference(model)
    candidates = {"default": lambda: prepared(mix, cond)}
    report = {}
    with torch.no_grad():  # tracing needs no_grad, not inference_mode
        if not args.no_jit:
            _jit(prepared, mix, cond, candidates, report)
    if args.openvino:
        import openvino as ov

        # the U-Net core only (ResUNet30.mask_logits): the complex STFT/ISTFT do not convert (ComplexTypeMark),
        # so they stay in torch around it, as in the model's forward
        t0 = time.perf_counter()
        with torch.no_grad():
            mag, cos_in, sin_in = prepared.spectrum(mix[:, 0])
            ov_model = ov.convert_model(_Core(prepared), example_input=(mag, cond))
        compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        report["openvino_build_s"] = time.perf_counter() - t0

        def openvino_forward():
            mag, cos_in, sin_in = prepared.spectrum(mix[:, 0])
            logits = torch.from_numpy(compiled([mag.numpy(), cond.numpy()])[0])
            logits = torch.nn.functional.pad(logits, (0, 1))[:, :, :mag.shape[2]]
            return prepared.resynthesise(logits, mag, cos_in, sin_in, mix.shape[-1])

        candidates["openvino_f32_core"] = openvino_forward
    if args.onnxruntime:
        import onnxruntime as ort

        path = Path("/tmp") / f"uss-bench-trial-{args.batch}.onnx"
        t0 = time.perf_counter()
        with torch.no_grad():
            mag, _, _ = prepared.spectrum(mix[:, 0])
            torch.onnx.export(_Core(prepared), (mag, cond), str(path), input_names=["mag", "cond"],
                              opset_version=18, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        report["onnxruntime_build_s"] = time.perf_counter() - t0

        def ort_forward():
            mag, cos_in, sin_in = prepared.spectrum(mix[:, 0])
            logits = torch.from_numpy(session.run(None, {"mag": mag.numpy(), "cond": cond.numpy()})[0])
            logits = torch.nn.functional.pad(logits, (0, 1))[:, :, :mag.shape[2]]
            return prepared.resynthesise(logits, mag, cos_in, sin_in, mix.shape[-1])

        candidates["onnxruntime_core"] = ort_forward
    runs = {k: [] for k in candidates}
    fidelity = {}
    with torch.no_grad():
        for name, fn in candidates.items():  # warm-up (and the fidelity check)
            fidelity[name] = relative_difference(fn(), reference)
        for _ in range(args.repeat):
            for name, fn in candidates.items():
                t0 = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t0)
    base = statistics.median(runs["default"])
    for name in candidates:
        med = statistics.median(runs[name])
        ok = fidelity[name] <= FIDELITY_LIMIT
        print(f"{name:<28} {med / args.batch:.3f} s/item  ratio default/it {base / med:.3f}  "
              f"max rel diff {fidelity[name]:.2e} ({'faithful' if ok else 'NOT faithful'})")
    print(json.dumps({"batch": args.batch, "runs_s": runs, "fidelity": fidelity, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
