"""Corpus readers, one per evaluation corpus, and the registry the command line uses.

``CORPORA`` maps the command-line name to the reader class, in the order of the paper's Table 2.
"""

from __future__ import annotations

from pathlib import Path

from harness.datasets.audioset import AudioSet
from harness.datasets.base import Clip, Corpus, Source, Track
from harness.datasets.fsd50k import FSD50K
from harness.datasets.fsdkaggle2018 import FSDKaggle2018
from harness.datasets.musdb18 import MUSDB18
from harness.datasets.slakh2100 import Slakh2100
from harness.datasets.voicebank_demand import VoicebankDemand
from harness.errors import check_choice

CORPORA: dict[str, type[Corpus]] = {
    cls.name: cls for cls in (AudioSet, FSDKaggle2018, FSD50K, MUSDB18, Slakh2100, VoicebankDemand)
}
"""Command-line name → reader class: audioset, fsdkaggle2018, fsd50k, musdb18, slakh2100, voicebank-demand."""


def get_corpus(name: str, root: str | Path) -> Corpus:
    """The reader for corpus ``name`` at ``root`` (not yet checked: call :meth:`Corpus.check`).

    Raises:
        ConfigError: ``name`` is not in :data:`CORPORA` (the message lists the valid names).
    """
    return CORPORA[check_choice("dataset", name, CORPORA)](root)


__all__ = [
    "CORPORA",
    "AudioSet",
    "Clip",
    "Corpus",
    "FSD50K",
    "FSDKaggle2018",
    "MUSDB18",
    "Slakh2100",
    "Source",
    "Track",
    "VoicebankDemand",
    "get_corpus",
]
