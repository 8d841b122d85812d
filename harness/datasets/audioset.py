"""AudioSet (Gemmeke et al., 2017) in the PANNs/USS layout: Google's segment csvs plus audio.

The audio of a split is either the downloaded clips ``audios/<segments>/Y<ytid>.wav`` (32 kHz mono, as
the PANNs download script writes them) or a PANNs waveform pack ``hdf5s/waveforms/<pack>.h5``
(``audio_name`` ``(N,)`` bytes ``Y<ytid>.wav``, ``waveform`` ``(N, 320000)`` int16 at 32 kHz, zero-padded
to 10 s, ``target`` ``(N, 527)``). A clip's own file is used when present, else its pack row. The pack's
``hdf5s/indexes/*.h5`` only point at these rows and are not needed. Pack rows are PANNs' own int16
quantization (``x * 32767``) zero-padded to 10 s, so they differ from the files by a few LSB and in length.

Unlike the other corpora, AudioSet always misses clips (YouTube videos disappear), so a clip listed in
the segment csv but neither in ``audios/`` nor in the pack is **skipped**: its id is recorded in
:attr:`AudioSet.missing` and a warning gives the count. Only a split with no clip on disk at all is an
error.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from harness.audio import AudioRef, resolve_audio_path
from harness.datasets.base import Clip, Corpus, listed_path, read_csv_rows, utf8_errors
from harness.errors import AudioError, MetadataError

log = logging.getLogger(__name__)

SEGMENTS = {"test": "eval_segments", "train": "balanced_train_segments"}
"""Split → segment csv stem under ``metadata/`` and folder under ``audios/``."""
PACKS = {"test": "eval", "train": "balanced_train"}
"""Split → PANNs waveform pack stem under ``hdf5s/waveforms/``."""
NUM_CLASSES = 527
BUNDLED_CLASS_LABELS = (
    Path(__file__).resolve().parents[2] / "datasets" / "audioset" / "class_labels_indices.csv"
)
"""The repository's copy of ``class_labels_indices.csv``, used when the root has none."""


class AudioSet(Corpus):
    """AudioSet clips with their labels as display names of the 527 classes (PANNs/USS index order).

    Splits: ``test`` = ``eval_segments``, ``train`` = ``balanced_train_segments``.

    Attributes:
        missing: per split, the sorted ids of clips listed in the segment csv but absent from ``audios/`` and
            from the pack; filled by :meth:`clips`.
    """

    name = "audioset"
    title = "AudioSet"
    kind = "clips"
    splits = ("test", "train")
    sample_rates = (32000,)
    channels = (1,)
    layout = (
        "metadata/{eval_segments,balanced_train_segments}.csv   (Google format: 3 '#' lines, YTID, start, end, \"mids\")\n"
        "metadata/class_labels_indices.csv                       (optional: the bundled copy is used otherwise)\n"
        "audios/{eval_segments,balanced_train_segments}/Y<ytid>.wav   (.flac accepted)\n"
        "  and/or hdf5s/waveforms/{eval,balanced_train}.h5          (PANNs waveform packs)"
    )

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.missing: dict[str, list[str]] = {}
        self._names_by_mid: dict[str, str] | None = None

    def check(self) -> None:
        """Check for ``metadata/``, for ``audios/`` or ``hdf5s/waveforms/``, and for a class list.

        Raises:
            LayoutError: the root, ``metadata/``, both audio sources, or the class list is missing.
        """
        if not self.root.is_dir():
            raise self.layout_error("the folder does not exist")
        if not (self.root / "metadata").is_dir():
            raise self.layout_error("missing folder metadata/")
        if not ((self.root / "audios").is_dir() or (self.root / "hdf5s" / "waveforms").is_dir()):
            raise self.layout_error("missing folder audios/ (or the PANNs packs in hdf5s/waveforms/)")
        self._class_labels_path()

    def vocabulary(self) -> list[str]:
        """The 527 display names in ``index`` order of ``class_labels_indices.csv``.

        Raises:
            LayoutError: neither the root nor the repository has ``class_labels_indices.csv``.
            MetadataError: the file does not list indices 0..526 in order.
        """
        return list(self._class_names().values())

    def clips(self, split: str) -> list[Clip]:
        """The clips of ``split`` on disk, sorted by ``clip_id`` (``Y<ytid>``); labels in csv order.

        Absent clips are skipped and recorded in :attr:`missing` (see the module docstring).

        Raises:
            LayoutError: unknown split, missing segment csv, or neither ``audios/<segments>/`` nor the pack.
            MetadataError: a malformed csv line, a mid outside the 527 classes (names csv, line, mid), a
                clip listed twice, an unreadable pack, or none of the listed clips on disk.
        """
        self.check_split(split)
        self.check()
        segments = self.root / "metadata" / f"{SEGMENTS[split]}.csv"
        audio_dir = self.root / "audios" / SEGMENTS[split]
        pack = self.root / "hdf5s" / "waveforms" / f"{PACKS[split]}.h5"
        if not segments.is_file():
            raise self.layout_error(f"missing file metadata/{segments.name}")
        if not (audio_dir.is_dir() or pack.is_file()):
            raise self.layout_error(
                f"missing folder audios/{SEGMENTS[split]}/ and pack hdf5s/waveforms/{pack.name}"
            )
        has_audio_dir = audio_dir.is_dir()
        pack_rows: dict[str, int] | None = None  # read only when a clip has no file
        clips, missing = [], []
        for clip_id, labels in self._read_segments(segments):
            ref = self._clip_file(audio_dir / f"{clip_id}.wav") if has_audio_dir else None
            if ref is None:
                if pack_rows is None:
                    pack_rows = _pack_rows(pack) if pack.is_file() else {}
                if clip_id not in pack_rows:
                    missing.append(clip_id)
                    continue
                ref = AudioRef(pack, pack_rows[clip_id])
            clips.append(Clip(clip_id, ref, labels))
        self.missing[split] = sorted(missing)
        if missing:
            if not clips:
                raise MetadataError(
                    f"none of the {len(missing)} clips listed in {segments} is on disk "
                    f"(looked in {audio_dir} and {pack})"
                )
            log.warning(
                "%s %s: %d of %d clips listed in %s are absent and skipped (ids in AudioSet.missing[%r])",
                self.title,
                split,
                len(missing),
                len(missing) + len(clips),
                segments,
                split,
            )
        return sorted(clips, key=lambda c: c.clip_id)

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _clip_file(path: Path) -> AudioRef | None:
        try:
            return AudioRef(resolve_audio_path(path))
        except AudioError:
            return None

    def _class_labels_path(self) -> Path:
        for path in (self.root / "metadata" / "class_labels_indices.csv", BUNDLED_CLASS_LABELS):
            if path.is_file():
                return path
        raise self.layout_error(
            f"missing file metadata/class_labels_indices.csv (and no bundled copy at {BUNDLED_CLASS_LABELS})"
        )

    def _class_names(self) -> dict[str, str]:
        """mid → display name, in index order."""
        if self._names_by_mid is None:
            path = self._class_labels_path()
            names = {}
            for position, (line, row) in enumerate(read_csv_rows(path, ("index", "mid", "display_name"))):
                if row["index"] != str(position):
                    raise MetadataError(f"{path} line {line}: index {row['index']}, expected {position}")
                names[row["mid"]] = row["display_name"]
            if len(names) != NUM_CLASSES:
                raise MetadataError(f"{path}: {len(names)} distinct classes, expected {NUM_CLASSES}")
            self._names_by_mid = names
        return self._names_by_mid

    def _read_segments(self, path: Path) -> list[tuple[str, tuple[str, ...]]]:
        """``(Y<ytid>, display names)`` per row of a segment csv, in file order.

        Accepts Google's format (``#`` header lines) and the plain variant with a ``YTID,...`` header.
        """
        names = self._class_names()
        rows: list[tuple[str, tuple[str, ...]]] = []
        first_line: dict[str, int] = {}
        with utf8_errors(path), open(path, newline="", encoding="utf-8") as f:
            for line, fields in enumerate(csv.reader(f, skipinitialspace=True), start=1):
                if not fields or fields[0].startswith("#") or fields[0] == "YTID":
                    continue
                if len(fields) != 4:
                    raise MetadataError(
                        f'{path} line {line}: expected `YTID, start_seconds, end_seconds, "mids"`, '
                        f"got {len(fields)} fields"
                    )
                clip_id = f"Y{fields[0].strip()}"
                if clip_id in first_line:
                    raise MetadataError(
                        f"{path} line {line}: {clip_id} already listed on line {first_line[clip_id]}"
                    )
                first_line[clip_id] = line
                listed_path(self.root / "audios", f"{clip_id}.wav", path, line)  # a YTID must not leave audios/
                mids = [m.strip() for m in fields[3].split(",") if m.strip()]
                if not mids:
                    raise MetadataError(f"{path} line {line}: {clip_id} has no labels")
                for mid in mids:
                    if mid not in names:
                        raise MetadataError(
                            f"{path} line {line}: unknown label {mid!r} (not one of the {NUM_CLASSES} "
                            f"AudioSet classes of {self._class_labels_path()})"
                        )
                rows.append((clip_id, tuple(names[m] for m in mids)))
        return rows


def _pack_rows(pack: Path) -> dict[str, int]:
    """``Y<ytid>`` → row of a PANNs waveform pack, from its ``audio_name`` dataset.

    Raises:
        MetadataError: the pack cannot be opened or has no ``audio_name`` dataset.
    """
    import h5py

    try:
        with h5py.File(pack, "r") as h5:
            if "audio_name" not in h5:
                raise MetadataError(f"{pack} has no 'audio_name' dataset; is it a PANNs waveform pack?")
            names = h5["audio_name"][:]
    except OSError as exc:
        raise MetadataError(f"cannot open HDF5 pack {pack}: {exc}") from exc
    return {
        Path(name.decode() if isinstance(name, bytes) else str(name)).stem: row
        for row, name in enumerate(names)
    }
