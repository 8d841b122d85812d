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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from harness.errors import UssBenchError
from harness.tempfiles import remove_stale_temps


class SetIntegrityError(UssBenchError):
    """A built set's files disagree with each other or with the corpus they were built from (exit 2).

    The message names the file and, where one can be named, the item; the cure is to rebuild the set with
    ``build-mixtures`` (or to restore the files that were edited).
    """

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


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """One sha256 over every :data:`MANIFEST_COLUMNS` value of every row, in manifest order.

    Independent of the Parquet encoding (pyarrow version): each column is hashed as the JSON of its values
    (``repr``-exact floats, NaN and null as ``null``). Recorded in ``build.json`` as ``manifest_sha256``, so
    an edit of any column (a label, a split, an onset) is seen on open, unlike :func:`items_digest`.

    Raises:
        SetIntegrityError: a manifest column is absent.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise SetIntegrityError(f"the manifest lacks the column(s) {', '.join(missing)}")
    h = hashlib.sha256()
    for col in MANIFEST_COLUMNS:
        # the bytes of f"{col}\0{json.dumps(values, default=str)}\n", hashed a block of rows at a time:
        # the whole column as Python objects and one JSON string cost RSS in proportion to the items
        h.update(f"{col}\0[".encode())
        column = manifest[col]
        for start in range(0, len(column), MANIFEST_HASH_BLOCK):
            values = [None if v is None or (isinstance(v, float) and v != v) else v
                      for v in column.iloc[start: start + MANIFEST_HASH_BLOCK].astype(object).tolist()]
            h.update(((", " if start else "") + json.dumps(values, default=str)[1:-1]).encode())
        h.update(b"]\n")
    return h.hexdigest()


MANIFEST_HASH_BLOCK = 4096
"""Manifest rows per block of :func:`manifest_sha256` (the digest does not depend on it)."""


def corpus_fingerprint(files: Iterable[Path], root: Path) -> dict[str, Any]:
    """File list + sizes of the corpus files a build reads (``build.json``'s ``corpus``).

    Args:
        files: the resolved files (absolute, or relative to the working folder).
        root: the corpus root; paths under it are hashed relative to it.

    Returns:
        ``{"root": resolved root, "files": count, "bytes": total size, "sha256": hash of "rel\\0size" lines}``.

    Raises:
        FileNotFoundError: a file is absent.
    """
    h = hashlib.sha256()
    total = 0
    files = sorted(set(files))
    for f in files:
        size = f.stat().st_size
        total += size
        rel = f.relative_to(root) if f.is_relative_to(root) else f
        h.update(f"{rel}\0{size}\n".encode())
    return {"root": str(root.resolve()), "files": len(files), "bytes": total, "sha256": h.hexdigest()}


def check_output_folder(path: str | Path, option: str) -> Path:
    """Refuse an output folder that is a file, or lies under one (``--out``, ``--workdir``).

    Raises:
        UssBenchError: naming the option and the file.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UssBenchError(f"{option} {path}: {p} is a file, not a folder; name a folder (new or existing)")
            break
    return path


def no_space_error(folder: Path, needed_bytes: int, exc: OSError | None = None) -> UssBenchError:
    """The error of a write that found (or would find) the file system of ``folder`` full.

    The message names the mount point, the free space and what the write needs (≈, in MB, rounded up).
    """
    mount = Path(folder).resolve()
    while not mount.exists() or (not os.path.ismount(mount) and mount != mount.parent):
        mount = mount.parent
    free = shutil.disk_usage(mount).free
    mb = -(-needed_bytes // 1_000_000)
    detail = f" ({(str(exc).splitlines() or [''])[0][:120]})" if exc is not None else ""
    return UssBenchError(f"no space left on {mount} for {folder} (needs ≈ {mb} MB, {free / 1e6:.1f} MB free){detail}; "
                         "free some space or choose another --workdir")


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
    # a build killed between its two renames left its ``.old`` copy, kept above as the only one; now that
    # ``final`` is in place again it is removed (issue 15 #15)
    remove_stale_temps(final.parent)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` through a temporary name beside it (``.<name>.tmp-<PID>``, which
    :mod:`harness.tempfiles` sweeps when its writer died) and a rename: ``write(tmp)`` writes the file.

    On any exception (a full disk, an interrupt) the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary name and a rename (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a Parquet file (pyarrow) through a temporary name and a rename (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"))
    release_arrow_memory()


def release_arrow_memory() -> None:
    """Hand the memory that Arrow's memory pool keeps after freeing (the per-item tables just decoded or
    encoded) back to the system: ``pyarrow.default_memory_pool().release_unused()``.

    Called after reading a manifest and after writing a Parquet file, so that what a table of N items
    needed is not still held, and added to, by the next phase: the eval's peak memory stayed growing with
    the items without it (issue 14). The pool itself (mimalloc, jemalloc or system, as the user or
    ``ARROW_DEFAULT_MEMORY_POOL`` chose it) is left as it is; only free memory is returned.
    """
    import pyarrow

    pyarrow.default_memory_pool().release_unused()


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
    _verified: set = field(default_factory=set, repr=False, compare=False)  # (file, sha256) pairs checked

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
        """Read manifest rows ``rows`` (sorted int indices) from ``mixtures.h5``, each checked against its
        manifest hashes (sha256 of the float32 bytes: ≈ 0.2 ms per 256-kB array with SHA-NI, ≈ 0.4 ms per 2-s item).

        Returns:
            ``(mixture, target)``, each float32 ``(len(rows), L)``.

        Raises:
            SetIntegrityError: a row's audio does not match its manifest hash (names the item and the row).
        """
        with h5py.File(self.path / "mixtures.h5", "r") as h5:
            mix, tgt = h5["mixture"][rows], h5["target"][rows]
        items = self.manifest.iloc[np.asarray(rows)]
        for k, (item_id, sm, st) in enumerate(zip(items["item_id"], items["sha256_mixture"], items["sha256_target"],
                                                   strict=True)):
            for name, arr, want in (("mixture", mix[k], sm), ("target", tgt[k], st)):
                if array_sha256(arr) != want:
                    raise SetIntegrityError(
                        f"{self.path}/mixtures.h5: the {name} of item {item_id} (row {int(np.asarray(rows)[k])}) does "
                        f"not match its manifest hash; the set was modified after its build: rebuild it with "
                        f"`uss-bench build-mixtures {self.dataset} --split {self.split}`")
        return mix, tgt

    def check_track_files(self, row: pd.Series) -> None:
        """Check the corpus files of one virtual item against the sha256 recorded at build time.

        Hashes the mixture and target files' bytes (≈ 1 GB/s; a whole track is also decoded, which costs more).

        Raises:
            SetIntegrityError: a file's bytes changed since the build (names the item and the file).
        """
        for col, want in (("mixture_file", row["sha256_mixture"]), ("target_file", row["sha256_target"])):
            path = self.corpus_root / row[col]
            if (path, want) in self._verified:  # a MUSDB18 mixture serves four items: hashed once
                continue
            try:
                got = file_sha256(_resolve(path))
            except OSError as exc:
                raise SetIntegrityError(f"item {row['item_id']}: cannot read {path} ({exc.strerror or exc}); "
                                        "restore the corpus file or rebuild the set") from exc
            if got == want:
                self._verified.add((path, want))
            else:
                raise SetIntegrityError(
                    f"item {row['item_id']}: {path} changed since the set was built (its sha256 differs from "
                    f"{self.path}/manifest.parquet); restore the file or rebuild the set with "
                    f"`uss-bench build-mixtures {self.dataset} --split {self.split}`")


def _resolve(path: Path) -> Path:
    from harness.audio import resolve_audio_path

    try:
        return resolve_audio_path(path)
    except UssBenchError:
        raise FileNotFoundError(2, "No such file or directory", str(path)) from None


def _read_build_json(path: Path) -> dict:
    """``build.json`` parsed and checked for the keys a reader needs; SetIntegrityError otherwise."""
    try:
        build = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SetIntegrityError(f"{path} is unreadable or not valid JSON ({exc}); rebuild the set with "
                                "build-mixtures") from exc
    if not isinstance(build, dict):
        raise SetIntegrityError(f"{path} holds a JSON {type(build).__name__}, not an object; rebuild the set")
    missing = [k for k in ("dataset", "split", "digest", "counts", "corpus") if k not in build]
    counts = build.get("counts")
    if not missing and not (isinstance(counts, dict) and isinstance(counts.get("items"), int)
                            and isinstance(build["corpus"], dict)):
        missing = ["counts.items"]
    if missing:
        raise SetIntegrityError(f"{path} lacks {', '.join(missing)}; rebuild the set with build-mixtures")
    return build


def _read_manifest(path: Path) -> pd.DataFrame:
    """``manifest.parquet`` read, with its columns checked; SetIntegrityError for a missing or bad file."""
    try:
        manifest = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError variants for truncated or foreign files
        raise SetIntegrityError(f"{path} is missing, truncated or not a Parquet file "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                "rebuild the set with build-mixtures") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise SetIntegrityError(f"{path} lacks the column(s) {', '.join(missing)}; rebuild the set")
    return manifest


def _first_misplaced(path: Path, manifest: pd.DataFrame) -> str:
    """The first manifest item whose ``mixtures.h5`` row is not its audio (binary search over row hashes,
    valid when rows were dropped or inserted; ``""`` when every probed row matches)."""
    with h5py.File(path, "r") as h5:
        ds = h5["mixture"]
        n = min(len(manifest), ds.shape[0])
        hashes = manifest["sha256_mixture"].to_numpy()

        def ok(i: int) -> bool:
            return array_sha256(ds[i]) == hashes[i]

        lo, hi = 0, n  # invariant: rows < lo match; the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                lo = mid + 1
            else:
                hi = mid
    return f"; the first item out of place is {manifest['item_id'].iloc[lo]} (manifest row {lo})" if lo < n else ""


def check_set(evalset: EvalSet) -> None:
    """The integrity checks of :func:`open_set` that cost no audio read (the rows are checked as read).

    - ``build.json``'s dataset and split are those of the set's folder, and the manifest's columns agree;
    - item ids are unique; the row count equals ``build.json``'s ``counts.items`` and ``mixtures.h5``'s rows;
    - ``mixtures.h5`` has float32 ``mixture``/``target`` of shape ``(N, num_samples)``;
    - :func:`items_digest` of the manifest equals ``build.json``'s ``digest``, and :func:`manifest_sha256`
      its ``manifest_sha256`` (sets built since it was recorded);
    - the per-class item counts of ``build.json`` are the manifest's labels;
    - virtual sets: the corpus files' fingerprint (list + sizes, :func:`corpus_fingerprint`) equals the build's.

    Raises:
        SetIntegrityError: naming the file and what differs.
    """
    path, build, m = evalset.path, evalset.build, evalset.manifest
    dataset, split = path.parent.name, path.name
    rebuild = f"rebuild it with `uss-bench build-mixtures {dataset} --split {split}`"
    for key, want in (("dataset", dataset), ("split", split)):
        if build[key] != want:
            raise SetIntegrityError(f"{path}/build.json says {key} {build[key]!r} but the set's folder is {want!r}; "
                                    f"{rebuild}")
        bad = m[m[key] != want]
        if len(bad):
            raise SetIntegrityError(f"{path}/manifest.parquet: item {bad['item_id'].iloc[0]} has {key} "
                                    f"{bad[key].iloc[0]!r}, the set is {want!r}; {rebuild}")
    dup = m["item_id"][m["item_id"].duplicated()]
    if len(dup):
        raise SetIntegrityError(f"{path}/manifest.parquet lists item {dup.iloc[0]} twice; {rebuild}")
    n_h5 = None
    if not evalset.virtual:
        try:
            with h5py.File(path / "mixtures.h5", "r") as h5:
                shapes = {k: (h5[k].shape, h5[k].dtype) for k in ("mixture", "target")}
        except (OSError, KeyError) as exc:
            raise SetIntegrityError(f"{path}/mixtures.h5 is unreadable or lacks mixture/target ({exc}); "
                                    f"{rebuild}") from exc
        (shape, dtype), (shape_t, _) = shapes["mixture"], shapes["target"]
        n_h5 = shape[0]
        if len(shape) != 2 or shape != shape_t or dtype != np.float32:
            raise SetIntegrityError(f"{path}/mixtures.h5: mixture {shape} and target {shape_t} must both be float32 "
                                    f"(N, L); {rebuild}")
        wrong_len = m[m["num_samples"] != shape[1]]
        if len(wrong_len):
            raise SetIntegrityError(f"{path}/manifest.parquet: item {wrong_len['item_id'].iloc[0]} has "
                                    f"{wrong_len['num_samples'].iloc[0]} samples, mixtures.h5 rows {shape[1]}; {rebuild}")
    if len(m) != build["counts"]["items"] or (n_h5 is not None and n_h5 != len(m)):
        where = _first_misplaced(path / "mixtures.h5", m) if n_h5 else ""
        raise SetIntegrityError(
            f"{path}: manifest.parquet has {len(m)} rows, build.json counts {build['counts']['items']} items"
            + (f", mixtures.h5 has {n_h5} rows" if n_h5 is not None else "") + f"{where}; {rebuild}")
    if items_digest(m) != build["digest"]:
        raise SetIntegrityError(f"{path}: the manifest's item hashes do not give build.json's digest "
                                f"{str(build['digest'])[:16]}… (manifest.parquet or build.json was edited); {rebuild}")
    if "manifest_sha256" in build and manifest_sha256(m) != build["manifest_sha256"]:
        raise SetIntegrityError(f"{path}/manifest.parquet: a column differs from the build's (manifest_sha256 "
                                f"≠ build.json's; labels, files, onsets, gains …); {rebuild}")
    per_class = build["counts"].get("per_class") or {}
    want_counts = {k: v.get("items", 0) for k, v in per_class.items() if isinstance(v, dict) and v.get("items")}
    if want_counts:
        have = m["label"].value_counts().to_dict()
        diff = sorted(set(want_counts) ^ set(have)) + sorted(k for k in set(want_counts) & set(have)
                                                              if want_counts[k] != have[k])
        if diff:
            raise SetIntegrityError(f"{path}: build.json's per-class counts differ from the manifest's labels for "
                                    f"{', '.join(map(repr, diff[:5]))}; {rebuild}")
    if evalset.virtual:
        _check_fingerprint(evalset, rebuild)


def _check_fingerprint(evalset: EvalSet, rebuild: str) -> None:
    root = evalset.corpus_root
    files = []
    for rel in sorted(set(evalset.manifest["mixture_file"]) | set(evalset.manifest["target_file"])):
        try:
            files.append(_resolve(root / rel))
        except FileNotFoundError:
            raise SetIntegrityError(f"{root / rel} is absent: the corpus changed since the set {evalset.path} was "
                                    f"built; restore it or {rebuild}") from None
    have = corpus_fingerprint(files, root)
    want = evalset.build["corpus"]
    if have["sha256"] != want.get("sha256"):
        raise SetIntegrityError(
            f"the corpus files under {root} differ from those the set {evalset.path} was built from "
            f"({want.get('files')} files of {want.get('bytes')} bytes then, {have['files']} of {have['bytes']} now"
            f"{_first_changed_file(evalset)}); restore them or {rebuild}")


def _first_changed_file(evalset: EvalSet) -> str:
    """``"; the first changed file is X (item Y)"`` found by hashing the items' files in manifest order
    (an error path only), or ``""`` when every file matches its manifest sha256."""
    seen: set[tuple[Path, str]] = set()
    for row in evalset.manifest.itertuples():
        for rel, want in ((row.mixture_file, row.sha256_mixture), (row.target_file, row.sha256_target)):
            path = evalset.corpus_root / rel
            if (path, want) in seen:
                continue
            seen.add((path, want))
            if file_sha256(_resolve(path)) != want:
                return f"; the first changed file is {path} (item {row.item_id})"
    return ""


def open_set(workdir: str | Path, dataset: str, split: str = "test", *, check: bool = True) -> EvalSet:
    """Open ``<workdir>/mixtures/<dataset>/<split>`` and check its integrity (:func:`check_set`; ``check=False``
    skips it, for ``build-mixtures --verify``, which reports every difference instead).

    Raises:
        UssBenchError: the set was not built (names the command to run).
        SetIntegrityError: its files are incomplete, malformed, or disagree (names the file and item).
    """
    path = set_dir(workdir, dataset, split)
    build_json = path / "build.json"
    if not build_json.is_file():
        raise UssBenchError(
            f"no evaluation set at {path}: run `uss-bench build-mixtures {dataset} --split {split} "
            f"--workdir {workdir}` first"
        )
    build = _read_build_json(build_json)
    manifest = _read_manifest(path / "manifest.parquet")
    if not build.get("virtual") and not (path / "mixtures.h5").is_file():
        raise SetIntegrityError(f"{path}/mixtures.h5 is missing; rebuild the set with build-mixtures")
    evalset = EvalSet(path=path, manifest=manifest, build=build)
    if check:
        check_set(evalset)
    release_arrow_memory()  # the manifest's decode buffers
    return evalset


def built_datasets(workdir: str | Path, split: str = "test") -> list[str]:
    """Names of the datasets with a built ``split`` under ``workdir``, in Table 2 order."""
    from harness.config import DATASET_NAMES

    return [d for d in DATASET_NAMES if (set_dir(workdir, d, split) / "build.json").is_file()]


def track_length_status(row: pd.Series, mix: np.ndarray, ref: np.ndarray) -> dict | None:
    """The row of a whole-track item whose decoded mixture and reference differ in length, else ``None``.

    A whole-track item is scored over the full signals: cutting both to the shorter one would score a
    stem truncated to a quarter as ``ok``. Mismatched lengths give status ``length_mismatch``
    (:data:`harness.metrics.STATUS_LENGTH_MISMATCH`), metrics NaN, and a warning with both lengths.

    Args:
        row: the item's manifest row (for the warning).
        mix, ref: ``(L,)`` decoded signals at the set's rate.
    """
    if len(mix) == len(ref):
        return None
    import logging

    from harness.metrics import STATUS_LENGTH_MISMATCH
    from harness.scoring import unscored

    logging.getLogger(__name__).warning("item %s: mixture %s has %d samples, reference %s %d; not scored",
                                        row["item_id"], row["mixture_file"], len(mix), row["target_file"], len(ref))
    return unscored(STATUS_LENGTH_MISMATCH)
