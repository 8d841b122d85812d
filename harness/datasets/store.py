"""Evaluation-set files under ``<workdir>/mixtures/<dataset>/<split>/`` (DESIGN §4).

- ``manifest.parquet``: one row per item (:data:`MANIFEST_COLUMNS`).
- ``mixtures.h5``: ``mixture`` and ``target`` float32 ``(N, L)``, row ``i`` = manifest row ``i``
  (fixed-length sets only; MUSDB18 and Voicebank-Demand items are "virtual": they point at corpus files).
- ``build.json``: protocol, seed, options, corpus fingerprint, counts and the ``digest``.

A set is written into a temporary sibling folder and renamed into place, so a reader never sees a
half-written set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from harness.errors import UssBenchError
from harness.tempfiles import remove_stale_temps

MANIFEST_COLUMNS = (
    "item_id",
    "dataset",
    "split",
    "class_id",
    "label",
    "source_id",
    "mixture_file",
    "target_file",
    "target_onset_s",
    "interferer_file",
    "interferer_label",
    "interferer_onset_s",
    "interferer_gain",
    "sample_rate",
    "num_samples",
    "sha256_mixture",
    "sha256_target",
)
"""Manifest columns; those that do not apply to a dataset are null (e.g. ``interferer_*`` for Slakh)."""


def default_workdir() -> Path:
    """``$USS_BENCH_WORKDIR`` or ``./uss-bench-work``."""
    return Path(os.environ.get("USS_BENCH_WORKDIR", "uss-bench-work"))


def set_dir(workdir: str | Path, dataset: str, split: str) -> Path:
    """``<workdir>/mixtures/<dataset>/<split>``."""
    return Path(workdir) / "mixtures" / dataset / split


def array_sha256(x: np.ndarray) -> str:
    """sha256 of an array's float32 little-endian C-order bytes (hashed in place, without a copy when
    ``x`` already is such an array)."""
    arr = np.ascontiguousarray(x, dtype="<f4")
    return hashlib.sha256(memoryview(arr).cast("B")).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def items_digest(manifest: pd.DataFrame) -> str:
    """One sha256 over all items' hashes, in manifest order: ``item_id``, mixture and target hash."""
    h = hashlib.sha256()
    for item_id, sm, st in zip(
        manifest["item_id"], manifest["sha256_mixture"], manifest["sha256_target"], strict=True
    ):
        h.update(f"{item_id}\0{sm}\0{st}\n".encode())
    return h.hexdigest()


def _umask() -> int:
    """The process's umask (read by setting and restoring it; meanwhile 077, so a race only hides a file)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def share_like_new_file(path: Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would have (0644 / 0755 under umask 022).

    ``tempfile.mkdtemp`` makes 0700 folders and safetensors writes 0600 files; a built set or a checkpoint
    must stay readable by the group in a shared work folder.
    """
    path.chmod((0o777 if path.is_dir() else 0o666) & ~_umask())


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final`` by a rename.

    On an exception the temporary folder is removed and ``final`` is left as it was. The folder's name
    carries this process's PID (``.<final>.tmp-<PID>-<random>``), so that the next build beside
    ``final`` removes those of killed builds (:func:`harness.tempfiles.remove_stale_temps`).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)  # the folders of builds that were killed (issue 15 #15)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    share_like_new_file(tmp)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a Parquet file (pyarrow) through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False, engine="pyarrow")
    os.replace(tmp, path)


@dataclass
class EvalSet:
    """A built evaluation set, opened for reading.

    Attributes:
        path: the set's folder.
        manifest: one row per item (:data:`MANIFEST_COLUMNS`).
        build: the parsed ``build.json``.
    """

    path: Path
    manifest: pd.DataFrame
    build: dict

    @property
    def dataset(self) -> str:
        return self.build["dataset"]

    @property
    def split(self) -> str:
        return self.build["split"]

    @property
    def virtual(self) -> bool:
        """True when items point at corpus files (MUSDB18, Voicebank-Demand) instead of ``mixtures.h5``."""
        return bool(self.build.get("virtual"))

    @property
    def corpus_root(self) -> Path:
        return Path(self.build["corpus"]["root"])

    def read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read manifest rows ``rows`` (sorted int indices) from ``mixtures.h5``.

        Returns:
            ``(mixture, target)``, each float32 ``(len(rows), L)``.
        """
        with h5py.File(self.path / "mixtures.h5", "r") as h5:
            return h5["mixture"][rows], h5["target"][rows]


def open_set(workdir: str | Path, dataset: str, split: str = "test") -> EvalSet:
    """Open ``<workdir>/mixtures/<dataset>/<split>``.

    Raises:
        UssBenchError: the set was not built (names the command to run) or its files are incomplete.
    """
    path = set_dir(workdir, dataset, split)
    build_json = path / "build.json"
    if not build_json.is_file():
        raise UssBenchError(
            f"no evaluation set at {path}: run `uss-bench build-mixtures {dataset} --split {split} "
            f"--workdir {workdir}` first"
        )
    build = json.loads(build_json.read_text())
    manifest = pd.read_parquet(path / "manifest.parquet")
    if not build.get("virtual") and not (path / "mixtures.h5").is_file():
        raise UssBenchError(f"{path}/mixtures.h5 is missing; rebuild the set with build-mixtures")
    return EvalSet(path=path, manifest=manifest, build=build)


def built_datasets(workdir: str | Path, split: str = "test") -> list[str]:
    """Names of the datasets with a built ``split`` under ``workdir``, in Table 2 order."""
    from harness.config import DATASET_NAMES

    return [d for d in DATASET_NAMES if (set_dir(workdir, d, split) / "build.json").is_file()]
