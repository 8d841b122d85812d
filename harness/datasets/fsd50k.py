"""FSD50K (Fonseca et al., 2022): 200 AudioSet-ontology classes, multi-label, 44.1 kHz mono.

Layout as on Zenodo: ``FSD50K.ground_truth/{eval,dev,vocabulary}.csv`` and
``FSD50K.{eval,dev}_audio/<fname>.wav``. ``dev.csv`` (``fname,labels,mids,split``) holds both ``train``
and ``val`` clips; ``eval.csv`` (``fname,labels,mids``) the evaluation clips. Labels are propagated to
their ontology ancestors; the first of a row's ``labels`` is the primary label, as the upstream takes it.
``FSD50K.metadata/`` and ``FSD50K.doc/`` are not read.
"""

from __future__ import annotations

import csv
from pathlib import Path

from harness.audio import AudioRef
from harness.datasets.base import (
    Clip,
    Corpus,
    check_unique,
    listed_audio,
    listed_path,
    read_csv_rows,
    utf8_errors,
)
from harness.errors import MetadataError

GROUND_TRUTH = "FSD50K.ground_truth"
SPLITS = {
    "test": ("eval.csv", "FSD50K.eval_audio"),
    "train": ("dev.csv", "FSD50K.dev_audio"),
    "val": ("dev.csv", "FSD50K.dev_audio"),
}
"""Split → (csv under ``FSD50K.ground_truth/``, audio folder)."""


class FSD50K(Corpus):
    """FSD50K clips with their (ancestor-propagated) labels. Splits: ``test`` (eval), ``train``, ``val``."""

    name = "fsd50k"
    title = "FSD50K"
    kind = "clips"
    splits = ("test", "train", "val")
    sample_rates = (44100,)
    channels = (1,)
    layout = (
        f"{GROUND_TRUTH}/vocabulary.csv   (index,label,mid; no header)\n"
        f"{GROUND_TRUTH}/eval.csv         (fname,labels,mids)\n"
        f"{GROUND_TRUTH}/dev.csv          (fname,labels,mids,split)\n"
        "FSD50K.eval_audio/<fname>.wav    (.flac accepted)\n"
        "FSD50K.dev_audio/<fname>.wav"
    )

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._vocabulary: list[str] | None = None

    def check(self) -> None:
        """Check for ``FSD50K.ground_truth/`` and its three csvs.

        Raises:
            LayoutError: naming the missing root, folder or csv.
        """
        if not self.root.is_dir():
            raise self.layout_error("the folder does not exist")
        if not (self.root / GROUND_TRUTH).is_dir():
            raise self.layout_error(f"missing folder {GROUND_TRUTH}/")
        for csv_name in ("vocabulary.csv", "eval.csv", "dev.csv"):
            if not (self.root / GROUND_TRUTH / csv_name).is_file():
                raise self.layout_error(f"missing file {GROUND_TRUTH}/{csv_name}")

    def vocabulary(self) -> list[str]:
        """The 200 labels of ``vocabulary.csv`` in ``index`` order.

        Raises:
            LayoutError: the layout is missing.
            MetadataError: a row without 3 fields or indices not 0, 1, 2, ... in order.
        """
        if self._vocabulary is None:
            self.check()
            path = self.root / GROUND_TRUTH / "vocabulary.csv"
            labels = []
            with utf8_errors(path), open(path, newline="", encoding="utf-8") as f:
                for line, fields in enumerate(csv.reader(f), start=1):
                    if len(fields) != 3 or fields[0] != str(len(labels)):
                        raise MetadataError(
                            f"{path} line {line}: expected `{len(labels)},<label>,<mid>`, got {fields}"
                        )
                    labels.append(fields[1])
            self._vocabulary = labels
        return self._vocabulary

    def clips(self, split: str) -> list[Clip]:
        """The clips of ``split``, sorted by ``clip_id`` (``fname``); labels as in the csv.

        Raises:
            LayoutError: unknown split, or the layout or the split's audio folder is missing.
            MetadataError: a csv without the needed columns, a ``dev.csv`` split other than train/val, a
                row without labels, a label outside the vocabulary (names csv, line and label), a clip
                listed twice (also once as train, once as val), a ``fname`` that leaves the audio folder, or
                a listed clip absent from the audio folder (names both).
        """
        self.check_split(split)
        vocabulary = set(self.vocabulary())
        csv_name, audio_name = SPLITS[split]
        csv_path = self.root / GROUND_TRUTH / csv_name
        audio_dir = self.root / audio_name
        if not audio_dir.is_dir():
            raise self.layout_error(f"missing folder {audio_name}/")
        columns = ("fname", "labels", "split") if csv_name == "dev.csv" else ("fname", "labels")
        clips = []
        seen: dict[str, int] = {}
        for line, row in read_csv_rows(csv_path, columns):
            check_unique(row["fname"], line, seen, csv_path)  # over the whole dev.csv: train and val
            if csv_name == "dev.csv":
                if row["split"] not in ("train", "val"):
                    raise MetadataError(
                        f"{csv_path} line {line}: split {row['split']!r}, expected train or val"
                    )
                if row["split"] != split:
                    continue
            labels = tuple(label.strip() for label in row["labels"].split(",") if label.strip())
            if not labels:
                raise MetadataError(f"{csv_path} line {line}: clip {row['fname']} has no labels")
            for label in labels:
                if label not in vocabulary:
                    raise MetadataError(
                        f"{csv_path} line {line}: unknown label {label!r} (not in {GROUND_TRUTH}/vocabulary.csv)"
                    )
            path = listed_audio(listed_path(audio_dir, f"{row['fname']}.wav", csv_path, line), csv_path)
            clips.append(Clip(row["fname"], AudioRef(path), labels))
        return sorted(clips, key=lambda c: c.clip_id)
