"""Issue 15 #19: when every item of a dataset fails, eval said nothing and exited 0; statuses embedded full
paths (``read_error: /data/…/p232_001.wav …``), so each bad file was its own status in the summary counts."""

from __future__ import annotations

import pandas as pd
import pytest

import harness.evaluate as ev
from harness.errors import AudioError
from harness.evaluate import EvalOptions, MixtureBaseline, items_frame, run_eval
from harness.reports import status_rows


@pytest.fixture
def unreadable_corpus(monkeypatch):
    """Every whole-track read fails with an error naming the file (as a truncated or corrupt WAV does)."""
    real = ev.get_corpus

    def get_corpus(name, root):
        corpus = real(name, root)

        def read(ref, sr):
            raise AudioError(f"{ref.path}: truncated (header says 48000 frames, 1200 present)")

        corpus.read = read
        return corpus

    monkeypatch.setattr(ev, "get_corpus", get_corpus)


def test_read_errors_share_one_status_with_the_path_apart(voicebank_workdir, tmp_path, unreadable_corpus):
    run_eval(MixtureBaseline(), EvalOptions(datasets=["voicebank-demand"], workdir=voicebank_workdir,
                                            out=tmp_path / "run"))
    items = pd.read_parquet(tmp_path / "run" / "items.parquet")
    assert len(items) == 17 and (items["status"] == "read_error").all()
    assert items["status_detail"].str.contains("truncated").all()
    assert items["status_detail"].nunique() == 17  # each names its own file
    assert all(".wav" in d for d in items["status_detail"])
    assert status_rows(items)[0]["other"] == {"read_error": 17}


def test_old_style_statuses_are_split():
    rows = [{"system": "s", "dataset": "fsd50k", "split": "test", "condition": "none", "item_id": f"i{k}",
             "class_id": 0, "label": "a", "status": s, "seconds": 0.0}
            for k, s in enumerate(["ok", "read_error: /x/a.wav: bad header", "read_error: /x/b.wav: bad", "ref_silent"])]
    items = items_frame(rows)
    assert list(items["status"]) == ["ok", "read_error", "read_error", "ref_silent"]
    assert list(items["status_detail"]) == ["", "/x/a.wav: bad header", "/x/b.wav: bad", ""]


def test_a_dataset_whose_items_all_fail_is_reported_and_fails_strict(voicebank_workdir, tmp_path, unreadable_corpus,
                                                                     capsys, run_cli):
    args = ["eval", "voicebank-demand", "--baseline", "mixture", "--workdir", voicebank_workdir, "-q"]
    assert run_cli([*args, "--out", tmp_path / "a"]) == 0
    said = capsys.readouterr().err
    assert "every item of voicebank-demand failed" in said and "read_error: 17" in said
    assert run_cli([*args, "--out", tmp_path / "b", "--strict"]) == 1


def test_strict_passes_a_healthy_run(voicebank_workdir, tmp_path, capsys, run_cli):
    args = ["eval", "voicebank-demand", "--baseline", "mixture", "--workdir", voicebank_workdir, "-q", "--strict"]
    assert run_cli([*args, "--out", tmp_path / "a"]) == 0
    assert "failed to score" not in capsys.readouterr().err


def test_summary_of_an_older_run_groups_statuses_by_kind(tmp_path):
    from harness.reports import render_report

    rows = [{"system": "s", "dataset": "fsd50k", "split": "test", "condition": "none", "item_id": f"i{k}",
             "class_id": 0, "label": "a", "sdr": 1.0, "sdri": 1.0, "status": "ok", "seconds": 0.0} for k in range(3)]
    items = items_frame(rows).drop(columns="status_detail")
    items.loc[1, "status"] = "read_error: /data/fsd50k/1.wav: truncated"  # as written before status_detail
    items.loc[2, "status"] = "read_error: /data/fsd50k/2.wav: truncated"
    assert status_rows(items)[0]["other"] == {"read_error": 2}
    items.to_parquet(tmp_path / "items.parquet")
    text = render_report(tmp_path).summary.read_text()
    assert "read_error: 2" in text and "/data/fsd50k" not in text
