"""Issue 11 #5: the paper's nine result tables as the committed baseline, validated, and the row beside ours
chosen with ``--paper-row`` (default: the default system), with its protocol per column.

Expected numbers are typed here from the paper (via ../shared/reference/paper/README.md), not read back from
the CSV under test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from harness.demo import DEMO_BASELINE
from harness.errors import ConfigError, MetadataError
from harness.paper import DEFAULT_ROW, HEADER, PAPER_CSV, load_paper_rows, paper_row
from harness.reports import TABLE2, render_report

DEFAULT_VALUES = (8.26, 5.57, 10.61, 10.57, 5.54, 5.79, 3.08, 8.12, 4.02, 9.22, -0.46, 7.28, 2.18, 9.00)
"""The default system's row (README: the same in Tables 2–10), in the paper's column order."""

DEFAULT_IN_EACH_TABLE = {2: "CNN14 (44a)", 3: "Embedding (dim 2048)", 4: "CNN14 (freeze)", 5: "ResUNet30",
                         6: "2 s", 7: "mining", 8: "2 srcs to 1 src", 9: "match energy", 10: "Balanced set"}


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "400"})


def test_committed_tables_are_the_shared_transcription(reference_dir):
    assert PAPER_CSV.read_bytes() == (reference_dir / "paper" / "uss_paper_tables.csv").read_bytes()


def test_all_nine_tables_and_the_default_row_in_each():
    rows = load_paper_rows()
    assert sorted({r.table for r in rows}) == list(range(2, 11)) and len(rows) == 38
    by_name = {r.name: r for r in rows}
    for table, system in DEFAULT_IN_EACH_TABLE.items():
        assert tuple(by_name[f"Table {table}: {system}"].values.values()) == DEFAULT_VALUES, table
    default = paper_row()
    assert default.name == DEFAULT_ROW == "Table 2: CNN14 (44a)"
    # the abstract's five numbers come from it
    v = default.values
    assert (v["audioset_sdri_average"], v["fsdkaggle2018_sdri"], v["musdb18_sdri"], v["slakh2100_sdri"],
            v["voicebank_ssnr"]) == (5.57, 10.57, 8.12, 7.28, 9.00)


def test_a_row_by_name_with_or_without_its_experiment_code():
    row = paper_row("Table 3: Segment prediction (dim 527)")
    assert row.system == "Segment prediction (dim 527) (46b)"
    assert row.values["audioset_sdri_oracle"] == 7.80 and row.values["voicebank_ssnr"] == 8.30
    assert paper_row("table 3:  segment prediction (dim 527) (46b)") == row
    assert paper_row("Table 6: 4 s").values["voicebank_pesq"] == -2.62  # transcribed as printed (README)


def test_an_unknown_row_says_did_you_mean_and_lists_them():
    with pytest.raises(ConfigError) as exc:
        paper_row("Table 3: Segment predicton (dim 527)")
    msg = str(exc.value)
    assert "did you mean 'Table 3: Segment prediction (dim 527) (46b)'" in msg
    assert "Table 10: Full set (long train)" in msg and "Table 2: wav2vec (46c)" in msg


def test_protocols_say_what_is_comparable():
    row = paper_row()
    assert row.protocol("fsd50k_sdri") == "class-median-mean"
    assert row.protocol("voicebank_pesq") == "median"
    assert "unknown" in row.protocol("musdb18_sdr")
    assert "not defined" in row.protocol("musdb18_wsdr")


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("voicebank_ssnr", "voicebank_snr", 1), "header"),
    (lambda t: t.replace("8.87,4.30", "8.87,n/a", 1), "not a number"),
    (lambda t: t.replace("\n3,", "\n11,", 1), "not one of the paper's result tables"),
    (lambda t: t + t.splitlines()[1] + "\n", "appears twice"),
    (lambda t: "\n".join(ln for ln in t.splitlines() if not ln.startswith("9,")) + "\n", r"table\(s\) \[9\]"),
    (lambda t: t.replace("CNN14 (44a)", "CNN14", 1), "default row"),
    (lambda t: t.replace(",9.00\n", "\n", 1), "fields"),
])
def test_a_damaged_csv_is_a_typed_error_naming_the_file(tmp_path, edit, match):
    bad = tmp_path / "tables.csv"
    bad.write_text(edit(PAPER_CSV.read_text()))
    with pytest.raises(MetadataError, match=match) as exc:
        load_paper_rows(bad)
    assert str(bad) in str(exc.value)
    assert HEADER[0] == "table"
    with pytest.raises(MetadataError, match="cannot read"):
        load_paper_rows(tmp_path / "absent.csv")


def _table2_paper_line(summary: str) -> list[str]:
    line = next(ln for ln in summary.splitlines() if ln.startswith("| paper: "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_summary_and_html_show_the_full_default_row_with_protocols(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    shutil.copy(DEMO_BASELINE / "items.parquet", run / "items.parquet")
    rep = render_report(run)
    text = rep.summary.read_text()
    cells = _table2_paper_line(text)
    assert cells[0] == "paper: Table 2: CNN14 (44a)"
    want = dict(zip(HEADER[3:], DEFAULT_VALUES, strict=True))
    assert cells[1:] == [f"{want[k]:.2f}" for k, *_ in TABLE2] and len(cells[1:]) == 12  # all 12, not 5
    # the protocol table: one line per paper column, its protocol beside ours
    assert re.search(r"\| MUSDB18 SDR \| 3\.08 \| dB \| museval median SDR; argument order unknown \| "
                     r"track-median-stem-mean \| unknown \|", text)
    assert re.search(r"\| Voicebank PESQ \| 2\.18 \| MOS-LQO \| median \| median \| yes \|", text)
    assert "| MUSDB18 wSDRi | 9.22 | dB | not defined in the paper | (no column of ours) | — |" in text
    html = rep.html.read_text()
    assert "paper: Table 2: CNN14 (44a)" in html and "argument order unknown" in html
    res = json.loads((run / "results.json").read_text())
    assert res["paper_row"]["name"] == DEFAULT_ROW and tuple(res["paper_row"]["values"].values()) == DEFAULT_VALUES
    assert res["paper_row"]["protocols"]["voicebank_ssnr"] == "median"


def test_report_paper_row_option_and_an_unknown_row_exits_2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    items = pd.read_parquet(DEMO_BASELINE / "items.parquet")
    items[items["dataset"] == "fsdkaggle2018"].to_parquet(run / "items.parquet")
    r = _cli("report", run, "--paper-row", "Table 3: Segment prediction (dim 527)")
    assert r.returncode == 0, r.stdout + r.stderr
    cells = _table2_paper_line((run / "summary.md").read_text())
    assert cells[0] == "paper: Table 3: Segment prediction (dim 527) (46b)"
    assert cells[1:4] == ["7.80", "6.42", "11.22"]
    before = (run / "summary.md").read_bytes()
    bad = _cli("report", run, "--paper-row", "Table 3: Segment predictoin (dim 527)")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stdout + bad.stderr
    assert "unknown paper row" in bad.stderr and "did you mean" in bad.stderr
    assert (run / "summary.md").read_bytes() == before  # refused before anything was written
