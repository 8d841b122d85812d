"""Synthetic evaluation sets of any size, without audio files: for scale and memory benchmarks of ``eval``.

A synthetic set has the files of a built fixed-length set (``manifest.parquet``, ``mixtures.h5``,
``build.json``, DESIGN §4) under ``<workdir>/mixtures/<dataset>/<split>/``, so ``eval`` reads it like
any other; its ``build.json`` says ``"protocol": "synthetic"``. Item ``i`` is deterministic: target
``t`` and interferer ``n`` are white noise from ``default_rng(SeedSequence([seed, i // chunk]))`` and
the mixture is ``t + 0.5 n`` (SDRi of the mixture baseline is 0 dB, the oracle IRM's is positive).

Example (1,000 vs 20,000 items; half-second items keep the HDF5 file at 2.4 GB for 20,000)::

    python3 -c "from harness.datasets.synthetic import build_synthetic_set as b; b('/tmp/w20k', 20000, seconds=0.5)"
    /usr/bin/time -v python3 -m harness eval --baseline oracle-irm fsd50k --workdir /tmp/w20k --out /tmp/r20k -q
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

import harness
from harness.config import load_dataset_config
from harness.datasets.store import (
    MANIFEST_COLUMNS,
    array_sha256,
    atomic_dir,
    items_digest,
    manifest_sha256,
    set_dir,
)
from harness.errors import ConfigError


def build_synthetic_set(workdir: str | Path, n_items: int, *, dataset: str = "fsd50k", split: str = "test",
                        seconds: float = 2.0, classes: int = 10, seed: int = 0, chunk: int = 256) -> Path:
    """Write a synthetic fixed-length set of ``n_items`` items in place of ``dataset``'s built set.

    Memory stays bounded by ``chunk`` items; writing 20,000 half-second items takes about a minute.

    Args:
        workdir: the harness work folder (the set goes to ``<workdir>/mixtures/<dataset>/<split>``,
            replacing a set there).
        n_items: number of items (``>= 1``).
        dataset: a fixed-length dataset whose declaration (sample rate, metrics) the set borrows.
        split: the split name.
        seconds: item length (s) at the dataset's sample rate; 2.0 as the real sets (the separator
            checkpoints need 2-s items; the baselines take any length).
        classes: number of classes; item ``i`` is in class ``i % classes``.
        seed: the noise seed.
        chunk: items generated and written at a time.

    Returns:
        the set's folder.

    Raises:
        ConfigError: ``n_items``, ``classes``, ``chunk`` or ``seconds`` out of range, or ``dataset`` is a
            whole-track (virtual) dataset.
    """
    cfg = load_dataset_config(dataset)
    if cfg.get("virtual"):
        raise ConfigError(f"{dataset} is evaluated on whole tracks; a synthetic set needs a fixed-length dataset")
    if n_items < 1 or classes < 1 or chunk < 1 or seconds <= 0:
        raise ConfigError(f"synthetic set: n_items={n_items}, classes={classes}, chunk={chunk}, "
                          f"seconds={seconds}; all must be positive")
    sr = int(cfg["sample_rate"])
    length = int(round(seconds * sr))
    records = []
    final = set_dir(workdir, dataset, split)
    with atomic_dir(final) as tmp:
        with h5py.File(tmp / "mixtures.h5", "w") as h5:
            h5.attrs["sample_rate"] = sr
            mix_ds = h5.create_dataset("mixture", shape=(n_items, length), dtype="float32", chunks=(1, length))
            tgt_ds = h5.create_dataset("target", shape=(n_items, length), dtype="float32", chunks=(1, length))
            for k, start in enumerate(range(0, n_items, chunk)):
                stop = min(start + chunk, n_items)
                rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
                tgt = rng.standard_normal((stop - start, length), dtype=np.float32) * np.float32(0.1)
                mix = tgt + np.float32(0.05) * rng.standard_normal((stop - start, length), dtype=np.float32)
                mix_ds[start:stop], tgt_ds[start:stop] = mix, tgt
                for j, i in enumerate(range(start, stop)):
                    records.append({
                        "item_id": f"synthetic-{split}-{i:07d}", "dataset": dataset, "split": split,
                        "class_id": i % classes, "label": f"synthetic_{i % classes:03d}", "source_id": f"noise-{i}",
                        "sample_rate": sr, "num_samples": length, "interferer_gain": 0.5,
                        "sha256_mixture": array_sha256(mix[j]), "sha256_target": array_sha256(tgt[j]),
                    })
        manifest = pd.DataFrame.from_records(records, columns=list(MANIFEST_COLUMNS))
        for col in ("target_onset_s", "interferer_onset_s", "interferer_gain"):
            manifest[col] = manifest[col].astype("float64")
        manifest.to_parquet(tmp / "manifest.parquet", index=False, engine="pyarrow")
        build = {
            "protocol": "synthetic", "protocol_version": 1, "dataset": dataset, "split": split, "seed": seed,
            "virtual": False, "options": {"seconds": seconds, "classes": classes, "chunk": chunk},
            "declaration": cfg, "corpus": {"root": "", "files": 0},
            "counts": {"items": n_items, "classes": min(classes, n_items), "per_class": {}, "notes": []},
            "digest": items_digest(manifest), "manifest_sha256": manifest_sha256(manifest),
            "harness_version": harness.__version__,
        }
        (tmp / "build.json").write_text(json.dumps(build, indent=2, sort_keys=True, default=str) + "\n")
    return final
