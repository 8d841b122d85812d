"""Corpus readers, one per evaluation corpus, and the registry the command line uses.

``CORPORA`` maps the command-line name to the reader class, in the order of the paper's Table 2. It is
the only list of dataset names: ``harness.config.dataset_names()``, the report columns, the demo folders
and the command-line help are derived from it and from each dataset's declaration (its TOML, see
:mod:`harness.config`). Adding a corpus is one reader registered with :func:`register_corpus` and one TOML.
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


def register_corpus(cls: type[Corpus]) -> type[Corpus]:
    """Add reader ``cls`` to :data:`CORPORA` under ``cls.name`` (after the others); returns ``cls`` (usable
    as a class decorator). Its declaration is ``cls.declaration`` or ``datasets/<name>.toml``.

    Raises:
        ConfigError: another reader is registered under that name.
    """
    from harness.errors import ConfigError

    if CORPORA.get(cls.name, cls) is not cls:
        raise ConfigError(f"corpus {cls.name!r} is registered twice ({CORPORA[cls.name].__name__}, {cls.__name__})")
    CORPORA[cls.name] = cls
    return cls


def unregister_corpus(name: str) -> None:
    """Remove corpus ``name`` from :data:`CORPORA` (tests that register one)."""
    CORPORA.pop(name, None)


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
    "register_corpus",
    "unregister_corpus",
]
