"""FSDKaggle2018 (Fonseca et al., 2018): 41 single-label classes of Freesound clips, 44.1 kHz mono.

Layout as on Zenodo: ``FSDKaggle2018.meta/{train_post_competition,test_post_competition_scoring_clips}.csv``
(columns ``fname,label,...``) and ``FSDKaggle2018.audio_{train,test}/<fname>``.
"""

from __future__ import annotations

from harness.audio import AudioRef
from harness.datasets.base import Clip, Corpus, check_unique, listed_audio, listed_path, read_csv_rows
from harness.errors import MetadataError

LABELS = (
    "Acoustic_guitar", "Applause", "Bark", "Bass_drum", "Burping_or_eructation", "Bus", "Cello", "Chime",
    "Clarinet", "Computer_keyboard", "Cough", "Cowbell", "Double_bass", "Drawer_open_or_close",
    "Electric_piano", "Fart", "Finger_snapping", "Fireworks", "Flute", "Glockenspiel", "Gong",
    "Gunshot_or_gunfire", "Harmonica", "Hi-hat", "Keys_jangling", "Knock", "Laughter", "Meow",
    "Microwave_oven", "Oboe", "Saxophone", "Scissors", "Shatter", "Snare_drum", "Squeak", "Tambourine",
    "Tearing", "Telephone", "Trumpet", "Violin_or_fiddle", "Writing",
)  # fmt: skip
"""The 41 labels of FSDKaggle2018, sorted (the label set of ``train_post_competition.csv``); fixed so
class ids do not depend on which clips a root holds."""

META = "FSDKaggle2018.meta"
SPLITS = {
    "test": ("test_post_competition_scoring_clips.csv", "FSDKaggle2018.audio_test"),
    "train": ("train_post_competition.csv", "FSDKaggle2018.audio_train"),
}
"""Split → (csv under ``FSDKaggle2018.meta/``, audio folder)."""


class FSDKaggle2018(Corpus):
    """FSDKaggle2018 clips, one label each. Splits: ``test`` (the 1,600 scored clips), ``train``."""

    name = "fsdkaggle2018"
    title = "FSDKaggle2018"
    kind = "clips"
    splits = ("test", "train")
    sample_rates = (44100,)
    channels = (1,)
    layout = (
        f"{META}/test_post_competition_scoring_clips.csv   (fname,label,usage,freesound_id,license)\n"
        f"{META}/train_post_competition.csv                (fname,label,manually_verified,freesound_id,license)\n"
        "FSDKaggle2018.audio_test/<fname>.wav    (.flac accepted)\n"
        "FSDKaggle2018.audio_train/<fname>.wav"
    )

    def check(self) -> None:
        """Check for ``FSDKaggle2018.meta/`` and its two csvs.

        Raises:
            LayoutError: naming the missing root, folder or csv.
        """
        if not self.root.is_dir():
            raise self.layout_error("the folder does not exist")
        if not (self.root / META).is_dir():
            raise self.layout_error(f"missing folder {META}/")
        for csv_name, _ in SPLITS.values():
            if not (self.root / META / csv_name).is_file():
                raise self.layout_error(f"missing file {META}/{csv_name}")

    def vocabulary(self) -> list[str]:
        """The 41 labels (:data:`LABELS`), sorted."""
        return list(LABELS)

    def clips(self, split: str) -> list[Clip]:
        """The clips of ``split``, sorted by ``clip_id`` (``fname`` without suffix).

        Raises:
            LayoutError: unknown split, or the layout or the split's audio folder is missing.
            MetadataError: a csv without ``fname``/``label``, a label outside the 41 (names csv, line and
                label), a clip listed twice, a ``fname`` that leaves the audio folder, or a listed clip
                absent from the audio folder (names both).
        """
        self.check_split(split)
        self.check()
        csv_name, audio_name = SPLITS[split]
        csv_path = self.root / META / csv_name
        audio_dir = self.root / audio_name
        if not audio_dir.is_dir():
            raise self.layout_error(f"missing folder {audio_name}/")
        clips = []
        seen: dict[str, int] = {}
        for line, row in read_csv_rows(csv_path, ("fname", "label")):
            label = row["label"]
            if label not in LABELS:
                raise MetadataError(
                    f"{csv_path} line {line}: unknown label {label!r} (not one of the 41 FSDKaggle2018 labels)"
                )
            name = listed_path(audio_dir, row["fname"], csv_path, line)
            check_unique(name.stem, line, seen, csv_path)
            path = listed_audio(name, csv_path)
            clips.append(Clip(path.stem, AudioRef(path), (label,)))
        return sorted(clips, key=lambda c: c.clip_id)
