"""Slakh2100 (Manilow et al., 2019): MIDI rendered per instrument, 44.1 kHz mono FLAC.

Layout as released (``slakh2100_flac_redux``): ``{train,validation,test}/TrackNNNNN/`` with ``mix.flac``,
``stems/SNN.flac`` and ``metadata.yaml`` (``stems: {SNN: {audio_rendered, plugin_name, ...}}``). Stems
with ``audio_rendered: false`` have no audio and are not sources. As in the upstream ``slakh2100.py``,
a source's class is its ``plugin_name``.

The vocabulary is the sorted set of ``plugin_name``\\ s of the rendered stems in all splits present on
disk, so Slakh2100 class ids depend on the root (the real corpus and a subset number them differently).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.audio import AudioRef
from harness.datasets.base import Corpus, Source, Track, listed_audio, listed_path, utf8_errors
from harness.errors import MetadataError

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster, equally safe


class Slakh2100(Corpus):
    """Slakh2100 tracks: ``mix.flac`` and the rendered stems in ``metadata.yaml`` order.

    Each source has ``source_id`` ``"SNN"`` and ``label`` its ``plugin_name``.
    """

    name = "slakh2100"
    title = "Slakh2100"
    kind = "tracks"
    splits = ("train", "validation", "test")
    sample_rates = (44100,)
    channels = (1,)
    layout = (
        "{train,validation,test}/TrackNNNNN/mix.flac\n"
        "{train,validation,test}/TrackNNNNN/stems/SNN.flac   (stems with audio_rendered: true)\n"
        "{train,validation,test}/TrackNNNNN/metadata.yaml"
    )

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._tracks: dict[str, list[Track]] = {}

    def check(self) -> None:
        """Check for at least one of ``train/``, ``validation/``, ``test/``.

        Raises:
            LayoutError: the root or all split folders are missing.
        """
        if not self.root.is_dir():
            raise self.layout_error("the folder does not exist")
        if not any((self.root / split).is_dir() for split in self.splits):
            raise self.layout_error("missing folders train/, validation/ and test/")

    def vocabulary(self) -> list[str]:
        """Sorted ``plugin_name``\\ s of the rendered stems of every split on disk (reads every track)."""
        return sorted({s.label for split in self.splits for t in self.tracks(split) for s in t.sources})

    def tracks(self, split: str) -> list[Track]:
        """Every ``Track*`` folder of ``split`` (none when the folder is absent), sorted by ``track_id``.

        Raises:
            LayoutError: unknown split or not this layout.
            MetadataError: a track folder without ``metadata.yaml`` or ``mix.flac``, malformed yaml, or a
                rendered stem without ``plugin_name`` or without its ``stems/SNN.flac`` (names the file).
        """
        self.check_split(split)
        if split not in self._tracks:
            self.check()
            folder = self.root / split
            track_dirs = sorted(p for p in folder.glob("Track*") if p.is_dir()) if folder.is_dir() else []
            self._tracks[split] = [_read_track(d) for d in track_dirs]
        return list(self._tracks[split])


def _read_track(track_dir: Path) -> Track:
    meta_path = track_dir / "metadata.yaml"
    if not meta_path.is_file():
        raise MetadataError(f"Slakh2100 track folder {track_dir} has no metadata.yaml")
    mix = track_dir / "mix.flac"
    if not mix.is_file():
        raise MetadataError(f"Slakh2100 track folder {track_dir} has no mix.flac")
    try:
        with utf8_errors(meta_path):
            meta = yaml.load(meta_path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise MetadataError(f"{meta_path}: not valid YAML: {exc}") from exc
    stems = meta.get("stems") if isinstance(meta, dict) else None
    if not isinstance(stems, dict):
        raise MetadataError(f"{meta_path}: no `stems:` mapping")
    sources = []
    for stem_id, info in stems.items():
        if not isinstance(info, dict) or "audio_rendered" not in info:
            raise MetadataError(f"{meta_path}: stem {stem_id} has no `audio_rendered`")
        if info["audio_rendered"] is not True:
            continue
        label = info.get("plugin_name")
        if not isinstance(label, str) or not label:
            raise MetadataError(f"{meta_path}: rendered stem {stem_id} has no `plugin_name`")
        path = listed_audio(listed_path(track_dir / "stems", f"{stem_id}.flac", meta_path), meta_path)
        sources.append(Source(str(stem_id), label, AudioRef(path)))
    return Track(track_dir.name, AudioRef(mix), tuple(sources))
