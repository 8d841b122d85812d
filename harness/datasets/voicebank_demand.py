"""Voicebank-Demand (Valentini-Botinhao et al., 2017): clean/noisy speech pairs, mono WAV.

Layout as on DataShare: ``{clean,noisy}_{testset,trainset}_wav/pNNN_NNN.wav``, a noisy twin of the
same name for every clean utterance. The release is 48 kHz; 16-kHz resampled copies are common, so both
rates are accepted. Absent ``*_trainset_wav`` folders make an empty ``train`` split.
"""

from __future__ import annotations

from pathlib import Path

from harness.audio import AUDIO_SUFFIXES, AudioRef
from harness.datasets.base import Corpus, Source, Track
from harness.errors import MetadataError

FOLDERS = {
    "test": ("clean_testset_wav", "noisy_testset_wav"),
    "train": ("clean_trainset_wav", "noisy_trainset_wav"),
}
"""Split → (clean folder, noisy folder)."""


class VoicebankDemand(Corpus):
    """Voicebank-Demand pairs: a :class:`Track` per utterance, mixture = noisy, one source = clean speech."""

    name = "voicebank-demand"
    title = "Voicebank-Demand"
    kind = "tracks"
    splits = ("test", "train")
    sample_rates = (16000, 48000)
    channels = (1,)
    layout = (
        "clean_testset_wav/pNNN_NNN.wav, noisy_testset_wav/pNNN_NNN.wav   (.flac accepted)\n"
        "clean_trainset_wav/pNNN_NNN.wav, noisy_trainset_wav/pNNN_NNN.wav (optional)"
    )

    def check(self) -> None:
        """Check for ``clean_testset_wav/`` and ``noisy_testset_wav/``.

        Raises:
            LayoutError: naming the missing root or folder.
        """
        if not self.root.is_dir():
            raise self.layout_error("the folder does not exist")
        for folder in FOLDERS["test"]:
            if not (self.root / folder).is_dir():
                raise self.layout_error(f"missing folder {folder}/")

    def vocabulary(self) -> list[str]:
        """``["speech"]``."""
        return ["speech"]

    def tracks(self, split: str) -> list[Track]:
        """One track per utterance of ``split``, sorted by ``track_id`` (``pNNN_NNN``).

        Source: ``Source("clean", "speech", <clean file>)``; mixture: the noisy twin.

        Raises:
            LayoutError: unknown split or not this layout.
            MetadataError: a clean file without its noisy twin or a noisy file without its clean twin
                (names the file and how many lack a twin).
        """
        self.check_split(split)
        self.check()
        clean_dir, noisy_dir = (self.root / f for f in FOLDERS[split])
        clean, noisy = _audio_files(clean_dir), _audio_files(noisy_dir)
        for have, lack, lack_dir in ((clean, noisy, noisy_dir), (noisy, clean, clean_dir)):
            orphans = sorted(have.keys() - lack.keys())
            if orphans:
                raise MetadataError(
                    f"{have[orphans[0]]} has no twin in {lack_dir} ({len(orphans)} file(s) of "
                    f"{have[orphans[0]].parent.name} lack one)"
                )
        return [
            Track(name, AudioRef(noisy[name]), (Source("clean", "speech", AudioRef(clean[name])),))
            for name in sorted(clean)
        ]


def _audio_files(folder: Path) -> dict[str, Path]:
    """Utterance name → ``.wav``/``.flac`` file of ``folder`` (empty when absent); ``.wav`` wins a tie."""
    files: dict[str, Path] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            if path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".") and path.is_file():
                if path.stem not in files or path.suffix.lower() == ".wav":
                    files[path.stem] = path
    return files
