"""The paper's result tables (Tables 2–10 of Kong, Chen et al. 2023, arXiv 2305.07447) as data.

``reports/paper/uss_paper_tables.csv`` is the committed paper baseline (a copy of
``../shared/reference/paper/uss_paper_tables.csv``; its README says what each column is). This module loads
and validates it, names each row ``"Table N: SYSTEM"`` and says, per column, the protocol behind the paper's
number as far as it is known, so a report can show a row beside ours and a reader can see which cells are
comparable.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from harness.config import REPO_ROOT
from harness.errors import ConfigError, MetadataError, did_you_mean

PAPER_CSV = REPO_ROOT / "reports" / "paper" / "uss_paper_tables.csv"
"""The committed paper baseline."""

PAPER_SOURCE = "Kong, Chen et al. 2023, Universal Source Separation with Weakly Labelled Data (arXiv 2305.07447v1)"

CLASS_MEDIAN_MEAN = "class-median-mean"
MUSDB_PROTOCOL = "museval median SDR; argument order unknown"
WSDR_PROTOCOL = "not defined in the paper"
VOICEBANK_PROTOCOL = "median"

COLUMNS: dict[str, tuple[str, str, str]] = {
    # key: (paper's header, unit, protocol as far as known)
    "audioset_sdri_oracle": ("AudioSet SDRi ora. emb", "dB", CLASS_MEDIAN_MEAN),
    "audioset_sdri_average": ("AudioSet SDRi avg. emb", "dB", CLASS_MEDIAN_MEAN),
    "fsdkaggle2018_sdr": ("FSDK2018 SDR", "dB", CLASS_MEDIAN_MEAN),
    "fsdkaggle2018_sdri": ("FSDK2018 SDRi", "dB", CLASS_MEDIAN_MEAN),
    "fsd50k_sdr": ("FSD50K SDR", "dB", CLASS_MEDIAN_MEAN),
    "fsd50k_sdri": ("FSD50K SDRi", "dB", CLASS_MEDIAN_MEAN),
    "musdb18_sdr": ("MUSDB18 SDR", "dB", MUSDB_PROTOCOL),
    "musdb18_sdri": ("MUSDB18 SDRi", "dB", MUSDB_PROTOCOL),
    "musdb18_wsdr": ("MUSDB18 wSDR", "dB", WSDR_PROTOCOL),
    "musdb18_wsdri": ("MUSDB18 wSDRi", "dB", WSDR_PROTOCOL),
    "slakh2100_sdr": ("Slakh2100 SDR", "dB", CLASS_MEDIAN_MEAN),
    "slakh2100_sdri": ("Slakh2100 SDRi", "dB", CLASS_MEDIAN_MEAN),
    "voicebank_pesq": ("Voicebank PESQ", "MOS-LQO", VOICEBANK_PROTOCOL),
    "voicebank_ssnr": ("Voicebank SSNR", "dB", VOICEBANK_PROTOCOL),
}
"""The 14 value columns of the CSV in the paper's order: ``key: (header, unit, protocol)``.

Protocols (the shared README): AudioSet, FSDK2018, FSD50K and Slakh2100 are the released evaluation code's
``class-median-mean`` (median over a class's items, mean over classes); Voicebank-Demand the median over the
824 utterances; MUSDB18 SDR/SDRi museval's median SDR, but the released code swapped references and estimates
in some versions and not in others, so the order behind the paper's column is unknown; wSDR/wSDRi are not
defined in the paper's text (shown as the paper's, without claiming which metric they are)."""

HEADER = ("table", "caption", "system", *COLUMNS)
"""The CSV's header, exactly."""

TABLES = tuple(range(2, 11))
"""The paper's result tables: 2–10."""

DEFAULT_ROW = "Table 2: CNN14 (44a)"
"""The paper's default system (ResUNet30, CNN14 2048-d embedding, frozen, 2-s SED-mined anchors, two sources,
energy matching, balanced set): the same row in Tables 2–10, the source of the abstract's five numbers."""

_CODE = re.compile(r"\s*\((\d+[a-z]\d*)\)$")
"""A trailing experiment code such as ``(44a)`` or ``(45a2)`` (not ``(dim 527)``)."""


@dataclass(frozen=True)
class PaperRow:
    """One system row of one of the paper's tables."""

    table: int
    """The table number, 2–10."""
    caption: str
    system: str
    """The row's system text as printed, e.g. ``CNN14 (44a)``."""
    values: dict[str, float]
    """``{column key of COLUMNS: value}`` in the column's unit (dB; MOS-LQO for PESQ)."""

    @property
    def name(self) -> str:
        """``"Table N: SYSTEM"``: what ``--paper-row`` takes."""
        return f"Table {self.table}: {self.system}"

    @property
    def label(self) -> str:
        """The row's name in a report: ``paper: Table N: SYSTEM``."""
        return f"paper: {self.name}"

    @staticmethod
    def protocol(key: str) -> str:
        """The protocol behind the paper's number in column ``key`` (:data:`COLUMNS`)."""
        return COLUMNS[key][2]


def _cell(path: Path, line: int, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise MetadataError(f"{path}, line {line}: column {key} is {text!r}, not a number; every cell of the "
                            "paper's tables is printed (restore the file from git or from ../shared/reference/paper)")
    return value


def load_paper_rows(path: str | Path | None = None) -> list[PaperRow]:
    """All rows of the paper's tables, validated, in file order.

    Args:
        path: the CSV; :data:`PAPER_CSV` when ``None``.

    Raises:
        MetadataError: the file is missing or unreadable, its header is not :data:`HEADER`, a table number
            is not 2–10, a cell is not a finite number, a row name repeats, a table of 2–10 has no row, or
            the default row :data:`DEFAULT_ROW` is absent. Each names the file (and line) and the fix.
    """
    return list(_load(Path(path) if path is not None else PAPER_CSV))


def _load(path: Path) -> tuple[PaperRow, ...]:
    fix = "restore it from git (a copy of ../shared/reference/paper/uss_paper_tables.csv)"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f"cannot read the paper's tables {path}: {exc}; {fix}") from exc
    reader = csv.reader(text.splitlines())
    header = tuple(next(reader, ()))
    if header != HEADER:
        missing = [k for k in HEADER if k not in header]
        extra = [k for k in header if k not in HEADER]
        raise MetadataError(f"{path}: header is not the paper tables' (missing {missing or 'none'}, unknown "
                            f"{extra or 'none'}, or out of order); {fix}")
    rows, seen = [], set()
    for line, rec in enumerate(reader, start=2):
        if not rec:
            continue
        if len(rec) != len(HEADER):
            raise MetadataError(f"{path}, line {line}: {len(rec)} fields, expected {len(HEADER)}; {fix}")
        table, caption, system, *cells = rec
        if table not in {str(t) for t in TABLES}:
            raise MetadataError(f"{path}, line {line}: table {table!r} is not one of the paper's result tables "
                                f"{TABLES[0]}–{TABLES[-1]}; {fix}")
        row = PaperRow(int(table), caption, system,
                       {k: _cell(path, line, k, v) for k, v in zip(COLUMNS, cells, strict=True)})
        if row.name in seen:
            raise MetadataError(f"{path}, line {line}: row {row.name!r} appears twice; {fix}")
        seen.add(row.name)
        rows.append(row)
    absent = [t for t in TABLES if not any(r.table == t for r in rows)]
    if absent:
        raise MetadataError(f"{path}: no row of table(s) {absent}; {fix}")
    if DEFAULT_ROW not in seen:
        raise MetadataError(f"{path}: the default row {DEFAULT_ROW!r} is absent; {fix}")
    return tuple(rows)


def _short(name: str) -> str:
    """``name`` without a trailing experiment code: ``Table 3: Segment prediction (dim 527) (46b)`` →
    ``Table 3: Segment prediction (dim 527)``."""
    return _CODE.sub("", name)


def paper_row(name: str | None = None, path: str | Path | None = None) -> PaperRow:
    """The row named ``name`` (``"Table N: SYSTEM"``; :data:`DEFAULT_ROW` when ``None``).

    The name matches case- and space-insensitively, with or without the row's trailing experiment code
    (``"Table 3: Segment prediction (dim 527)"`` names ``… (dim 527) (46b)``) when that is unambiguous.

    Raises:
        ConfigError: an unknown name: the closest row ("did you mean …") and the list of every row.
        MetadataError: see :func:`load_paper_rows`.
    """
    rows = load_paper_rows(path)
    if name is None:
        name = DEFAULT_ROW

    def norm(s: str) -> str:
        return " ".join(s.split()).casefold()

    want = norm(name)
    exact = [r for r in rows if norm(r.name) == want]
    short = [r for r in rows if norm(_short(r.name)) == want]
    match = exact or (short if len(short) == 1 else [])
    if match:
        return match[0]
    names = [r.name for r in rows]
    raise ConfigError(f"unknown paper row {name!r}{did_you_mean(name, names)} (choose from "
                      + "; ".join(names) + "; see reports/paper/README.md)")


def paper_row_names(path: str | Path | None = None) -> list[str]:
    """Every row's ``"Table N: SYSTEM"`` name, in file order."""
    return [r.name for r in load_paper_rows(path)]


def protocol_table(row: PaperRow, ours: dict[str, str]) -> list[dict[str, str | float]]:
    """Per column of :data:`COLUMNS`, the paper's value and protocol beside our cell's aggregation.

    Args:
        row: the paper's row.
        ours: ``{column key: our aggregation}`` (``class-median-mean``, ``median`` …) of the report's cells.

    Returns:
        dicts ``{key, header, unit, value, protocol, ours, same}`` in the paper's column order; ``ours`` is
        ``""`` for a column we have no cell for, ``same`` is ``"yes"``, ``"no"``, ``"unknown"`` (the paper's
        protocol is not fully known) or ``"—"`` (no cell of ours).
    """
    out = []
    for key, (header, unit, protocol) in COLUMNS.items():
        mine = ours.get(key, "")
        if not mine:
            same = "—"
        elif protocol in (MUSDB_PROTOCOL, WSDR_PROTOCOL):
            same = "unknown"
        else:
            same = "yes" if mine == protocol else "no"
        out.append({"key": key, "header": header, "unit": unit, "value": row.values[key], "protocol": protocol,
                    "ours": mine, "same": same})
    return out
