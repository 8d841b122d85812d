"""GPU benchmark of the separator: forward items/s per batch size and precision, the full eval at the
best batch, peak GPU memory, and training steps/s. Written to be run the day a GPU is lent:

    python benchmarks/gpu.py                          # CUDA, paper-size model (< 5 min of device time)
    python benchmarks/gpu.py --device cpu --quick     # tiny model, a few seconds: the test suite runs this

Rows go to ``<out>/gpu.json`` (default ``reports/benchmarks/``; written atomically, replaced per run):

- ``forward``: the fast path's prepared ResUNet30 (harness.models.fast) at batch 1, 8, 32, 64, 128 in
  ``float32`` (TF32 off for matmuls and cuDNN), ``tf32`` (on) and ``bf16`` (``torch.autocast``): items/s,
  peak GPU memory, and max |SDRi − SDRi(float32)| over the same items (synthetic 2-s items, upstream SDR).
- ``eval``: ``run_eval`` of the same model on a synthetic set at the fastest float32 batch: items/s and
  the harness overhead against the bare forward (reading, scoring, part files, run.json).
- ``train``: AdamW steps/s at batch 16 (paper size) with L1 loss, float32.

Weights: seeded random (speed does not depend on them; the SDRi differences are between precisions of
the same weights), or ``--checkpoint`` for a real one. Exit 0 when every row was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)

PRECISIONS = ("float32", "tf32", "bf16")
FULL = {"batches": (1, 8, 32, 64, 128), "items": 256, "eval_items": 1024, "train_batch": 16, "train_steps": 10,
        "model": {}}
QUICK = {"batches": (1, 2), "items": 2, "eval_items": 2, "train_batch": 2, "train_steps": 1,
         "model": {"channels": (2, 4, 4, 4, 4, 4), "n_fft": 384}}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _precision(name: str, device):
    """Set the TF32 flags for ``name``; return the autocast context factory (or None)."""
    import contextlib

    import torch

    tf32 = name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if name == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _sdr(ref, est, eps: float = 1e-10):
    """Upstream SDR per row (reference/SEMANTICS.md §8), float64 numpy ``(B, L)`` → ``(B,)``."""
    import numpy as np

    num = np.clip(np.mean(ref ** 2, axis=-1), eps, None)
    den = np.clip(np.mean((est - ref) ** 2, axis=-1), eps, None)
    return 10 * np.log10(num / den)


def _peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def forward_rows(model, prepared, mix, tgt, cond, cfg, device) -> list[dict]:
    """Items/s, peak memory and SDRi difference per precision × batch (module docstring)."""
    import numpy as np
    import torch

    rows, ref_sdri = [], None
    mix_np, tgt_np = mix.cpu().double().numpy(), tgt.cpu().double().numpy()
    for name in PRECISIONS:
        ctx = _precision(name, device)
        outs = []
        for batch in cfg["batches"]:
            n = max(batch, cfg["items"] // batch * batch)
            index = torch.arange(n) % len(mix)
            with torch.inference_mode(), ctx():
                prepared(mix[index[:batch], None], cond[index[:batch]])  # warm-up: kernels, cuDNN autotune
                _sync(device)
                _reset_peak(device)
                est = []
                t0 = time.perf_counter()
                for s in range(0, n, batch):
                    est.append(prepared(mix[index[s:s + batch], None], cond[index[s:s + batch]])[:, 0])
                _sync(device)
                seconds = time.perf_counter() - t0
            y = torch.cat(est)[: len(mix)].float().cpu().double().numpy()
            outs.append(y)
            rows.append({"kind": "forward", "precision": name, "batch": batch, "items": n,
                         "items_per_s": n / seconds, "seconds": seconds, "peak_gpu_mib": _peak_mib(device)})
        sdri = [_sdr(tgt_np, y) - _sdr(tgt_np, mix_np) for y in outs]
        if name == "float32":
            ref_sdri = sdri
        for row, s, r in zip(rows[-len(outs):], sdri, ref_sdri, strict=True):
            row["sdri_max_abs_diff_vs_float32_db"] = float(np.max(np.abs(s - r)))
    _precision("float32", device)
    return rows


class _FixedConditionSystem:
    """A System for run_eval: the benchmark's separator with a fixed condition per class (no query set)."""

    def __init__(self, separator, batch: int, size: int, device):
        import numpy as np

        from harness.evaluate import System

        model = separator

        class _Sys(System):
            name = "bench:gpu"
            separator = model  # run.json's "inference" (the fast path's report) is read from here

            def separate(self_, mixture, target, items, condition):
                from harness.models import separate_batch

                conds = np.stack([rng_cond(int(c)) for c in items["class_id"]])
                return separate_batch(separator, mixture, conds, batch_size=batch)

        def rng_cond(class_id: int):
            return np.random.default_rng(class_id).random(size, dtype=np.float32)

        self.system = _Sys()


def eval_row(model, cfg, batch: int, bare_items_per_s: float, device, workdir: Path) -> dict:
    """run_eval on a synthetic set at ``batch``: items/s and overhead against the bare forward."""
    from harness.datasets.synthetic import build_synthetic_set
    from harness.evaluate import EvalOptions, run_eval

    n = cfg["eval_items"]
    build_synthetic_set(workdir / "work", n, seconds=2.0)
    system = _FixedConditionSystem(model, batch, model.condition_size, device).system
    run_eval(system, EvalOptions(["fsd50k"], workdir / "work", workdir / "warm", batch_size=batch, limit=batch))
    _reset_peak(device)
    t0 = time.perf_counter()
    run = run_eval(system, EvalOptions(["fsd50k"], workdir / "work", workdir / "run", batch_size=batch))
    seconds = time.perf_counter() - t0
    return {"kind": "eval", "precision": "float32", "batch": batch, "items": n, "items_per_s": n / seconds,
            "seconds": seconds, "bare_forward_items_per_s": bare_items_per_s,
            "overhead": bare_items_per_s / (n / seconds) - 1, "peak_gpu_mib": _peak_mib(device),
            "fidelity_max_rel_diff": (run.get("inference") or {}).get("fidelity_max_rel_diff")}


def train_row(model, cfg, device) -> dict:
    """AdamW steps/s at the configured batch, float32, L1 loss on seeded random 2-s batches."""
    import copy

    import torch

    net = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator(device="cpu").manual_seed(0)
    b = cfg["train_batch"]
    x = (0.1 * torch.randn(b, 1, 64000, generator=g)).to(device)
    t = (0.1 * torch.randn(b, 64000, generator=g)).to(device)
    c = torch.rand(b, model.condition_size, generator=g).to(device)

    def step():
        loss = torch.mean(torch.abs(net(x, c)[:, 0] - t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(cfg["train_steps"]):
        step()
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"kind": "train", "precision": "float32", "batch": b, "steps": cfg["train_steps"],
            "steps_per_s": cfg["train_steps"] / seconds, "seconds": seconds, "peak_gpu_mib": _peak_mib(device)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu [cuda]")
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes (seconds; for the tests)")
    parser.add_argument("--checkpoint", type=Path, help="a separator checkpoint instead of seeded random weights")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks", help="folder of gpu.json")
    args = parser.parse_args(argv)

    import torch

    from harness.models import load_separator, resolve_device
    from harness.models.fast import prepare_for_inference, tune_allocator
    from harness.models.resunet import ResUNet30

    tune_allocator()
    device = resolve_device(args.device)
    cfg = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_separator(args.checkpoint, device)
    else:
        model = ResUNet30(527, **cfg["model"]).to(device)
    model.eval()
    with torch.inference_mode():
        prepared = prepare_for_inference(model)
    g = torch.Generator(device="cpu").manual_seed(1)
    n = min(cfg["items"], 64)
    tgt = (0.1 * torch.randn(n, 64000, generator=g)).to(device)
    mix = tgt + (0.1 * torch.randn(n, 64000, generator=g)).to(device)
    cond = torch.rand(n, model.condition_size, generator=g).to(device)
    rows = forward_rows(model, prepared, mix, tgt, cond, cfg, device)
    f32 = [r for r in rows if r["precision"] == "float32"]
    best = max(f32, key=lambda r: r["items_per_s"])
    with tempfile.TemporaryDirectory(prefix="uss-bench-gpu-") as tmp:
        rows.append(eval_row(model, cfg, best["batch"], best["items_per_s"], device, Path(tmp)))
    rows.append(train_row(model, cfg, device))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} CPUs)",
        "model": f"ResUNet30 {cfg['model'] or 'paper size'}",
        "weights": str(args.checkpoint) if args.checkpoint else "seeded random (torch.manual_seed(0))",
        "quick": args.quick, "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "total_s": time.perf_counter() - t_start, "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    for r in rows:
        print(json.dumps(r))
    print(f"{result['device']}: {len(rows)} rows in {result['total_s']:.1f} s → {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
