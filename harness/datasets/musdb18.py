"""MUSDB18-HQ (Rafii et al., 2019): 150 music tracks with four stems, 44.1 kHz stereo WAV.

Layout as on Zenodo: ``{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``. A missing
``train/`` folder is an empty split (the evaluation needs only ``test/``).
"""

from __future__ import annotations

from pathlib import Path

from harness.audio import AudioRef, resolve_audio_path
from harness.datasets.base import Corpus, Source, Track
from harness.errors import AudioError, MetadataError

STEMS = ("vocals", "drums", "bass", "other")
"""Stems in the order of the MUSDB18 stem files (``mus.yaml``); also the vocabulary."""


class MUSDB18(Corpus):
    """MUSDB18-HQ tracks: ``mixture.wav`` and the four stems, each a :class:`Source` labelled by stem name."""

    name = "musdb18"
    title = "MUSDB18-HQ"
    kind = "tracks"
    splits = ("test", "train")
    sample_rates = (44100,)
    channels = (2,)
    layout = (
        "test/<track>/{mixture,vocals,drums,bass,other}.wav   (.flac accepted)\n"
        "train/<track>/{mixture,vocals,drums,bass,other}.wav  (optional)"
    )

    def check(self) -> None:
        """Check for ``test/`` or ``train/``.

        Raises:
            LayoutError: the root or both split folders are missing.
        """
        if not self.root.is_dir():
            raise self.layout_error("the folder does not exist")
        if not any((self.root / split).is_dir() for split in self.splits):
            raise self.layout_error("missing folder test/ (and train/)")

    def vocabulary(self) -> list[str]:
        """``["vocals", "drums", "bass", "other"]``."""
        return list(STEMS)

    def tracks(self, split: str) -> list[Track]:
        """Every track folder of ``split`` (none when the folder is absent), sorted by ``track_id``.

        Raises:
            LayoutError: unknown split or not this layout (no folder of the split holds a MUSDB18 file,
                e.g. a Slakh2100 root).
            MetadataError: a track folder without its mixture or one of the four stems (names the file).
        """
        self.check_split(split)
        self.check()
        folder = self.root / split
        if not folder.is_dir():
            return []
        track_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if track_dirs and not any(_is_track(d) for d in track_dirs):
            slakh = any((d / "mix.flac").is_file() or (d / "metadata.yaml").is_file() for d in track_dirs)
            raise self.layout_error(
                f"wrong layout: none of the {len(track_dirs)} folders of {split}/ holds mixture.wav or a stem"
                + ("; they look like Slakh2100 tracks (mix.flac, metadata.yaml): give this root to slakh2100"
                   if slakh else ""))
        tracks = []
        for track_dir in track_dirs:
            sources = tuple(Source(stem, stem, AudioRef(_stem_file(track_dir, stem))) for stem in STEMS)
            tracks.append(Track(track_dir.name, AudioRef(_stem_file(track_dir, "mixture")), sources))
        return sorted(tracks, key=lambda t: t.track_id)


def _is_track(track_dir: Path) -> bool:
    """Whether a folder holds any MUSDB18 file (mixture or stem, .wav or .flac)."""
    return any((track_dir / f"{name}{suffix}").is_file() for name in ("mixture", *STEMS) for suffix in (".wav", ".flac"))


def _stem_file(track_dir: Path, stem: str) -> Path:
    try:
        return resolve_audio_path(track_dir / f"{stem}.wav")
    except AudioError:
        raise MetadataError(
            f"MUSDB18-HQ track folder {track_dir} has no {stem}.wav (nor {stem}.flac)"
        ) from None
