"""The corpus protocol: what every reader in ``harness.datasets`` returns (lhotse-style manifests).

A corpus reader knows one on-disk layout exactly as the corpus ships it. It never mixes, cuts or
scores: it lists **clips** (labelled recordings: AudioSet, FSDKaggle2018, FSD50K) or **tracks**
(a real mixture with its sources: MUSDB18, Slakh2100, Voicebank-Demand) and checks that what the
metadata names is on disk. ``harness.mixtures`` turns those records into evaluation sets.

Roots are found by :func:`resolve_root`: ``--root``, else ``USS_BENCH_<NAME>_ROOT`` (name upper-cased,
``-`` → ``_``), else the ``[roots]`` table of ``uss-bench.toml`` in the working directory.
"""

from __future__ import annotations

import csv
import os
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from harness.audio import AudioRef, audio_info, resolve_audio_path
from harness.errors import AudioError, ConfigError, LayoutError, MetadataError, check_choice


@dataclass(frozen=True)
class Clip:
    """One labelled recording of a clip corpus.

    Attributes:
        clip_id: the corpus's own id (AudioSet ``Y<ytid>``, FSD ``fname`` without suffix).
        audio: where its samples are.
        labels: class labels in the corpus vocabulary (:meth:`Corpus.vocabulary`); non-empty; the
            primary label first (FSD50K: the first of the ``labels`` column, as the upstream).
    """

    clip_id: str
    audio: AudioRef
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """One source of a track: a MUSDB18 stem, a Slakh2100 stem, a clean Voicebank utterance."""

    source_id: str
    label: str
    audio: AudioRef


@dataclass(frozen=True)
class Track:
    """A real mixture and its sources (MUSDB18 track, Slakh2100 track, Voicebank-Demand pair).

    Attributes:
        track_id: folder or utterance name (``"Music Delta - 80s Rock"``, ``"Track00001"``, ``"p232_003"``).
        mixture: the corpus's own mixture (``mixture.wav``, ``mix.flac``, the noisy utterance).
        sources: the sources that exist on disk, in metadata order.
    """

    track_id: str
    mixture: AudioRef
    sources: tuple[Source, ...]


class Corpus(ABC):
    """A corpus in its own on-disk layout.

    Subclasses set the class attributes and implement :meth:`check`, :meth:`vocabulary` and
    :meth:`clips` or :meth:`tracks`. Every method raises :class:`~harness.errors.LayoutError` when the
    root is not the corpus's layout and :class:`~harness.errors.MetadataError` when metadata is
    malformed, names an unknown label, or lists a file that is absent (the message names the file).
    """

    name: ClassVar[str]
    """Name on the command line, e.g. ``"fsdkaggle2018"``."""
    title: ClassVar[str]
    """Name in reports, e.g. ``"FSDKaggle2018"``."""
    kind: ClassVar[str]
    """``"clips"`` or ``"tracks"``."""
    splits: ClassVar[tuple[str, ...]]
    """Splits this reader knows; ``"test"`` is the evaluation split and ``"train"`` the query split."""
    sample_rates: ClassVar[tuple[int, ...]]
    """Sample rates (Hz) the corpus ships; audio at another rate is rejected as not this corpus."""
    channels: ClassVar[tuple[int, ...]] = (1, 2)
    """Channel counts the corpus ships."""
    layout: ClassVar[str]
    """The expected tree, one path pattern a line, for ``uss-bench datasets`` and error messages."""
    declaration: ClassVar[Path | None] = None
    """The dataset TOML (:mod:`harness.config`); ``None``: ``datasets/<name>.toml`` of the checkout."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @abstractmethod
    def check(self) -> None:
        """Check the root has this corpus's layout (cheap: folders and metadata files exist).

        Raises:
            LayoutError: naming the missing folder or file and showing :attr:`layout`.
        """

    @abstractmethod
    def vocabulary(self) -> list[str]:
        """Class labels in ``class_id`` order (AudioSet: 527 display names in index order)."""

    def clips(self, split: str) -> list[Clip]:
        """Every clip of ``split``, sorted by ``clip_id`` (clip corpora only)."""
        raise NotImplementedError(f"{self.title} is a track corpus; use tracks()")

    def tracks(self, split: str) -> list[Track]:
        """Every track of ``split``, sorted by ``track_id`` (track corpora only)."""
        raise NotImplementedError(f"{self.title} is a clip corpus; use clips()")

    # -- shared helpers -------------------------------------------------------------------------

    def layout_error(self, problem: str) -> LayoutError:
        """A :class:`LayoutError` that names the root, the problem and the expected layout."""
        return LayoutError(
            f"{self.title} root {self.root}: {problem}.\nExpected layout:\n{self.layout}\n"
            f"Pass --root or set USS_BENCH_{env_name(self.name)}_ROOT."
        )

    def check_split(self, split: str) -> None:
        """Raise :class:`LayoutError` for a split this corpus does not have."""
        if split not in self.splits:
            raise LayoutError(f"{self.title} has no split {split!r}; choose one of {', '.join(self.splits)}")

    def read(self, ref: AudioRef, sample_rate: int) -> np.ndarray:
        """Decode one recording of this corpus to ``(L,)`` float32 mono at ``sample_rate`` Hz.

        Checks the file's rate and channel count against :attr:`sample_rates` / :attr:`channels`.

        Raises:
            AudioError: missing, corrupt, NaN, or a rate/channel count this corpus does not ship.
        """
        if ref.h5_index is None:
            info = audio_info(ref.path)
            if info.samplerate not in self.sample_rates:
                raise AudioError(
                    f"{ref.path}: sample rate {info.samplerate} Hz, but {self.title} ships "
                    f"{' or '.join(map(str, self.sample_rates))} Hz. Is this the right corpus root?"
                )
            if info.channels not in self.channels:
                raise AudioError(
                    f"{ref.path}: {info.channels} channels, but {self.title} ships "
                    f"{' or '.join(map(str, self.channels))}. Is this the right corpus root?"
                )
            if info.frames == 0:
                raise AudioError(f"{ref.path} is empty (0 samples)")
        return ref.load(sample_rate)


def env_name(dataset: str) -> str:
    """``"voicebank-demand"`` → ``"VOICEBANK_DEMAND"`` (for ``USS_BENCH_<NAME>_ROOT``)."""
    return dataset.upper().replace("-", "_")


def resolve_root(dataset: str, root: str | Path | None = None, config: str | Path = "uss-bench.toml") -> Path:
    """Find a corpus root: ``root``, else ``USS_BENCH_<NAME>_ROOT``, else ``[roots]`` in ``config``.

    Raises:
        ConfigError: unknown dataset name ("did you mean …"), no root configured anywhere, or
            ``uss-bench.toml`` is malformed.
        LayoutError: the configured root does not exist (names where it came from).
    """
    from harness.config import dataset_names

    check_choice("dataset", dataset, dataset_names())
    source = "--root"
    if root is None:
        var = f"USS_BENCH_{env_name(dataset)}_ROOT"
        if os.environ.get(var):
            root, source = os.environ[var], var
        else:
            cfg = Path(config)
            if cfg.is_file():
                try:
                    roots = tomllib.loads(cfg.read_text(encoding="utf-8")).get("roots", {})
                except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"{cfg}: not valid TOML ({exc})") from exc
                if not isinstance(roots, dict):
                    raise ConfigError(f"{cfg}: `roots` must be a table ([roots] with `DATASET = \"DIR\"` lines), "
                                      f"not a {type(roots).__name__}")
                if dataset in roots:
                    root, source = roots[dataset], f"{cfg} [roots] {dataset}"
                    if not isinstance(root, str) or not root:
                        raise ConfigError(f"{cfg}: [roots] {dataset} must be a folder name (a string), "
                                          f"not {root!r}")
    if root is None:
        raise ConfigError(
            f"no root for {dataset}: pass --root DIR, set USS_BENCH_{env_name(dataset)}_ROOT, "
            f'or add `{dataset} = "DIR"` under [roots] in uss-bench.toml'
        )
    if not isinstance(root, str | os.PathLike) or not str(root):
        raise ConfigError(f"the {dataset} root from {source} must be a folder name (a string), not {root!r}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise LayoutError(f"{dataset} root {path} (from {source}) does not exist or is not a directory")
    return path


def listed_audio(path: str | Path, listed_in: str | Path) -> Path:
    """The file on disk for an audio file that metadata ``listed_in`` names (``X.wav`` may be ``X.flac``).

    Raises:
        MetadataError: neither ``path`` nor its ``.wav``/``.flac`` twin exists; names both files.
    """
    try:
        return resolve_audio_path(path)
    except AudioError:
        raise MetadataError(f"listed in {listed_in} but absent: {path} (nor its .wav/.flac twin)") from None


def read_csv_rows(path: str | Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a csv file with a header line, as ``(line number, row)`` pairs (lines count from 1).

    Raises:
        MetadataError: the header lacks one of ``columns``, or a row has more or fewer fields than the
            header (names the file and the line).
    """
    with utf8_errors(path), open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise MetadataError(f"{path}: no column(s) {', '.join(missing)} in header {reader.fieldnames}")
        rows = []
        for row in reader:
            if None in row or None in row.values():
                raise MetadataError(f"{path} line {reader.line_num}: not {len(reader.fieldnames)} fields")
            rows.append((reader.line_num, row))
    return rows


@contextmanager
def utf8_errors(path: str | Path) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` while reading the text file ``path`` into a :class:`MetadataError`
    naming the file, the line and the byte (metadata files are UTF-8, as the corpora ship them)."""
    try:
        yield
    except UnicodeDecodeError:
        raw = Path(path).read_bytes()
        try:
            raw.decode("utf-8")
            where = ""
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            where = f" line {line}: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        raise MetadataError(f"{path}{where} is not UTF-8 (Latin-1?); re-encode it as UTF-8, "
                            f"e.g. `iconv -f latin1 -t utf-8`") from None


def listed_path(folder: Path, name: str, listed_in: str | Path, line: int | None = None) -> Path:
    """``folder / name`` for a file name read from metadata, refusing one that leaves ``folder``.

    An absolute name or one with a ``..`` part could take a file from another split (a train clip in the
    test set) or from outside the root. Symlinks inside the folder are not followed here (a corpus copy
    may link its files elsewhere).

    Raises:
        MetadataError: naming the metadata file, the line and the name.
    """
    where = f"{listed_in} line {line}" if line is not None else str(listed_in)
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise MetadataError(f"{where}: file name {name!r} leaves {folder}; metadata must name files inside "
                            "their split's folder")
    return folder / name


def check_unique(key: str, line: int, seen: dict[str, int], listed_in: str | Path, what: str = "clip") -> None:
    """Record ``key`` as listed on ``line``; a key listed twice changes the set silently.

    Raises:
        MetadataError: ``key`` was already listed (names both lines).
    """
    if key in seen:
        raise MetadataError(f"{listed_in} line {line}: {what} {key} already listed on line {seen[key]}; "
                            "remove the duplicate row")
    seen[key] = line
