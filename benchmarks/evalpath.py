"""One side of the ``eval_throughput`` benchmark, run in a fresh process (so the allocator and OpenMP
settings of one side cannot leak into another's):

    python benchmarks/evalpath.py MODE CHECKPOINT WORKDIR OUT ITEMS BATCH

MODE:
    ``ours``               the default path: allocator tuned first (as the CLI does), run_eval with the
                           fast path (OMP_WAIT_POLICY as the parent set it)
    ``ours_system_malloc`` the same without the allocator setting (its speed and peak-memory share)
    ``ours_openvino``      the default path with USS_BENCH_BACKEND=openvino (the U-Net core in OpenVINO;
                           run only when the openvino package is installed)
    ``eager``              today's path before the fast path: run_eval with USS_BENCH_FAST=0, glibc defaults
    ``loop``               an upstream-style loop: one item at a time, read from mixtures.h5, plain
                           forward at batch 1, numpy SDRi

Prints one JSON line: wall/CPU seconds of the timed run, seconds inside the separator's forward,
peak RSS of the timed run (VmHWM after resetting it), per-item SDRi, and the fast path's report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE), str(HERE.parent)):
    if p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)

DATASET = "fsd50k"


def _vm(key: str) -> float | None:
    """``VmHWM``/``VmRSS`` of this process in MiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv: list[str]) -> dict:
    mode, ckpt, workdir, out, n_items, batch = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3]), int(argv[4]), \
        int(argv[5])
    if mode == "eager":
        os.environ["USS_BENCH_FAST"] = "0"
    import torch  # noqa: F401  (after the environment is final)

    from harness.models import fast

    if mode == "ours_openvino":
        os.environ[fast.BACKEND_ENV] = "openvino"
    allocator = fast.tune_allocator() if mode in ("ours", "ours_openvino") else {"applied": False, "reason": "not set (glibc defaults)"}
    from bench_eval import upstream_sdr

    from harness.models import separator as sep_mod

    forward = {"s": 0.0, "calls": 0}
    inner = sep_mod.checked_forward

    def timed_forward(model, mixture, condition):
        t0 = time.perf_counter()
        y = inner(model, mixture, condition)
        forward["s"] += time.perf_counter() - t0
        forward["calls"] += 1
        return y

    sep_mod.checked_forward = timed_forward
    result: dict = {"mode": mode, "allocator": allocator, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "torch_threads": torch.get_num_threads(), "rss_start_mib": _vm("VmRSS")}
    if mode == "loop":
        import h5py

        from harness.datasets.store import open_set
        from harness.models import file_sha256, load_separator
        from harness.queries import load_queries

        model = load_separator(ckpt).eval()
        evalset = open_set(workdir, DATASET)
        labels = evalset.manifest["label"].tolist()[:n_items]
        table = load_queries(workdir, DATASET, file_sha256(ckpt))[0]

        def run() -> list[float]:
            sdri = []
            with h5py.File(evalset.path / "mixtures.h5", "r") as h5, torch.inference_mode():
                for i, label in enumerate(labels):
                    mixture, target = h5["mixture"][i], h5["target"][i]
                    x = torch.from_numpy(mixture[None, None])
                    c = torch.from_numpy(table[label][None])
                    t0 = time.perf_counter()
                    est = model(x, c)[0, 0].numpy()
                    forward["s"] += time.perf_counter() - t0
                    sdri.append(upstream_sdr(target, est) - upstream_sdr(target, mixture))
            return sdri

        labels_all = labels
        labels = labels_all[:1]
        run()  # warm-up on one item, untimed
        labels = labels_all
    else:
        import pandas as pd

        from harness.evaluate import EvalOptions, run_eval
        from harness.systems import CheckpointSystem

        system = CheckpointSystem(ckpt, workdir, condition="average", device="cpu", batch_size=batch)
        runs = [0]

        def run() -> list[float]:
            runs[0] += 1
            folder = out / f"{mode}-{runs[0]}"
            done = run_eval(system, EvalOptions([DATASET], workdir, folder, batch_size=batch, jobs=1,
                                                limit=n_items))
            result["run_json_inference"] = done.get("inference")
            result["run_json_timings_s"] = done["timings_s"]
            rows = pd.read_parquet(folder / "items.parquet")
            return [float(v) if s == "ok" else float("nan") for v, s in zip(rows["sdri"], rows["status"], strict=True)]

        t0 = time.perf_counter()
        run_eval(system, EvalOptions([DATASET], workdir, out / f"{mode}-warmup", batch_size=batch, jobs=1,
                                     limit=batch))  # untimed: preparation, the fidelity check, warm-up
        result["warmup_s"] = time.perf_counter() - t0
    forward.update(s=0.0, calls=0)
    result["peak_reset"] = _reset_peak()
    result["rss_before_mib"] = _vm("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    sdri = run()
    result.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, forward_s=forward["s"],
                  forward_calls=forward["calls"], peak_rss_mib=_vm("VmHWM"), sdri=sdri, items=len(sdri),
                  load_1min=os.getloadavg()[0])
    if mode != "loop":
        result["inference_report"] = getattr(system.separator, "inference_report", None)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), default=str))
