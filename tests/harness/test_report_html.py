"""Reports of several runs, the set-digest refusal, and the self-contained ``report.html`` (issue 13).

Runs are real evals of the baselines on demo sets built in separate workdirs; estimates are written by
the test under ``<run>/estimates/<dataset>/<item_id>.wav`` (the layout ``eval --save-estimates`` will
write), and the players' audio is decoded back and compared with the set's own signals.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from harness.datasets.store import open_set
from harness.demo import DEMO_BASELINE, DEMO_FOLDERS, DEMO_ROOT
from harness.evaluate import BASELINES, EvalOptions, run_eval
from harness.mixtures import BuildOptions, build_mixtures
from harness.report_html import AUDIO_RATE
from harness.reports import render_report

FSDK, VB = "fsdkaggle2018", "voicebank-demand"


def _build(wd: Path, dataset: str, seed: int = 1234) -> None:
    build_mixtures(DEMO_ROOT / DEMO_FOLDERS[dataset], wd, BuildOptions(dataset=dataset, seed=seed))


def _save_estimates(run: Path, wd: Path, dataset: str, gain: float) -> None:
    """Write ``gain × target`` as every item's estimate, at the set's rate (32-bit float WAV)."""
    es = open_set(wd, dataset)
    folder = run / "estimates" / dataset
    folder.mkdir(parents=True)
    if es.virtual:
        for row in es.manifest.itertuples():
            x, sr = sf.read(str(es.corpus_root / row.target_file), dtype="float32")
            sf.write(str(folder / f"{row.item_id}.wav"), gain * x, sr, subtype="FLOAT")
    else:
        _, target = es.read_rows(np.arange(len(es.manifest)))
        for item_id, t in zip(es.manifest["item_id"], target, strict=True):
            sf.write(str(folder / f"{item_id}.wav"), gain * t, int(es.manifest["sample_rate"].iloc[0]),
                     subtype="FLOAT")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-runs")
    wd1, wd2, wd3 = root / "wd1", root / "wd2", root / "wd3"
    _build(wd1, FSDK)
    _build(wd1, VB)
    _build(wd2, FSDK)  # same options in another workdir: the same digest
    _build(wd3, FSDK, seed=7)  # another seed: another set
    out = {}
    for name, base, wd, datasets in (("mix", "mixture", wd1, [FSDK, VB]), ("irm", "oracle-irm", wd2, [FSDK]),
                                     ("irm-seed7", "oracle-irm", wd3, [FSDK])):
        out[name] = root / "group" / name if name != "irm-seed7" else root / name
        run_eval(BASELINES[base](), EvalOptions(datasets=datasets, workdir=wd, out=out[name]))
    _save_estimates(out["irm"], wd2, FSDK, 0.5)
    _save_estimates(out["mix"], wd1, VB, 0.25)
    out.update(root=root, wd1=wd1, wd2=wd2)
    return out


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True)


def test_report_puts_runs_side_by_side_named_by_their_runs(runs, tmp_path):
    res = _cli("report", runs["mix"], runs["irm"], "--out", tmp_path / "both")
    assert res.returncode == 0, res.stderr
    items = pd.read_parquet(tmp_path / "both/items.parquet")
    assert sorted(items["system"].unique()) == ["irm", "mix"]
    assert set(zip(items["system"], items["source_system"], strict=True)) == {("mix", "baseline:mixture"),
                                                                           ("irm", "baseline:oracle-irm")}
    assert set(items.loc[items["system"] == "irm", "dataset"]) == {FSDK}
    summary = (tmp_path / "both/summary.md").read_text()
    assert "| **mix** |" in summary and "| **irm** |" in summary
    assert "report.html" in res.stdout and (tmp_path / "both/report.html").is_file()
    # a folder of runs stands for the runs inside it
    res = _cli("report", runs["root"] / "group", "--out", tmp_path / "group")
    assert res.returncode == 0, res.stderr
    assert sorted(pd.read_parquet(tmp_path / "group/items.parquet")["system"].unique()) == ["irm", "mix"]


def test_report_refuses_runs_on_different_sets(runs, tmp_path):
    res = _cli("report", runs["irm"], runs["irm-seed7"], "--out", tmp_path / "bad")
    assert res.returncode == 2
    msg = " ".join(res.stderr.split())
    assert str(runs["irm"]) in msg and str(runs["irm-seed7"]) in msg and FSDK in msg
    assert "--allow-different-sets" in msg
    assert not (tmp_path / "bad/items.parquet").exists()
    ok = _cli("report", runs["irm"], runs["irm-seed7"], "--out", tmp_path / "bad", "--allow-different-sets")
    assert ok.returncode == 0, ok.stderr
    no_out = _cli("report", runs["irm"], runs["mix"])
    assert no_out.returncode == 2 and "--out" in no_out.stderr


class _Page(HTMLParser):
    """Tables (rows of cell texts), images and audio elements of a page."""

    def __init__(self):
        super().__init__()
        self.tables, self.imgs, self.audio, self.urls = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "audio":
            self.audio.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _decode(uri: str) -> np.ndarray:
    head, data = uri.split(",", 1)
    assert head == "data:audio/flac;base64"
    x, sr = sf.read(io.BytesIO(base64.b64decode(data)), dtype="float32")
    assert sr == AUDIO_RATE
    return x


@pytest.fixture(scope="module")
def merged(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged")
    assert _cli("report", runs["mix"], runs["irm"], "--out", out).returncode == 0
    return out


def test_report_html_is_self_contained_and_plays_the_best_and_worst_items(runs, merged):
    page = _parse((merged / "report.html").read_text())
    assert all(u.startswith("data:") for u in page.urls), "nothing is fetched at view time"
    assert len(page.imgs) == 1 + 2  # Table 2 overview + one figure per dataset
    for img in page.imgs:
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    table2 = page.tables[0]
    assert table2[0][0] == "system" and [r[0] for r in table2[1:3]] == ["mix", "irm"]
    assert table2[3][0].startswith("paper")
    # the best and worst FSDK item of irm by SDRi (computed here), mixture / target / estimate of each
    items = pd.read_parquet(runs["irm"] / "items.parquet")
    ok = items[items["status"] == "ok"].sort_values(["sdri", "item_id"], ascending=[False, True])
    es = open_set(runs["wd2"], FSDK)
    fsdk_audio = [a for a in page.audio if a["src"] and len(_decode(a["src"])) == 2 * AUDIO_RATE]
    assert [a["data-kind"] for a in fsdk_audio] == ["mixture", "target", "estimate: irm"] * 2
    for k, item_id in enumerate([ok["item_id"].iloc[0], ok["item_id"].iloc[-1]]):
        pos = np.flatnonzero(es.manifest["item_id"].to_numpy() == item_id)
        mix, target = (a[0] for a in es.read_rows(pos))
        clips = [_decode(a["src"]) for a in fsdk_audio[3 * k: 3 * k + 3]]
        peak = max(np.abs(mix).max(), np.abs(target).max())
        gain = 0.99 / peak if peak > 0.99 else 1.0  # all clips of an item scaled alike against clipping
        for got, want in zip(clips, (mix, target, 0.5 * target), strict=True):
            np.testing.assert_allclose(got, gain * want, atol=2e-6)  # 24-bit FLAC
    # Voicebank: the mix run saved estimates; mixture/target come from the (virtual) set's corpus files
    vb_kinds = [a["data-kind"] for a in page.audio if a not in fsdk_audio]
    assert vb_kinds == ["mixture", "target", "estimate: mix"] * 2


def test_a_run_without_estimates_has_no_players(runs, tmp_path):
    shutil.copytree(runs["irm-seed7"], tmp_path / "run")
    page = _parse(render_report(tmp_path / "run").html.read_text())
    assert page.audio == [] and len(page.tables) == 4  # Table 2, paper row protocols, FSDK detail, item status


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _browser(html: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp / 'profile'}",
         "--virtual-time-budget=10000", "--window-size=1400,2400", *mode, html.as_uri()],
        capture_output=True, text=True, timeout=120, cwd=tmp)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (nox -s tests installs Debian's chromium "
                                                 "when it runs as root)")
def test_report_html_renders_in_a_headless_browser(merged, tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(DEMO_BASELINE / "items.parquet", demo / "items.parquet")
    report = render_report(demo)
    expected = pd.read_parquet(demo / "items.parquet")
    for html, n_systems in ((report.html, expected["system"].nunique()), (merged / "report.html", 2)):
        res = _browser(html, tmp_path, "--dump-dom")
        assert res.returncode == 0, res.stderr[-2000:]
        page = _parse(res.stdout)
        assert len(page.tables[0]) == 1 + n_systems + 1  # header, ours, the paper's row
        status = page.tables[-1]
        assert status[0] == ["system", "dataset", "rows", "ok", "not scored (status: count)"]
        n_status = len(pd.read_parquet(html.parent / "items.parquet").groupby(["system", "dataset"]))
        assert len(status) == 1 + n_status
        # every audio element's source was decoded by the browser (the inline script records the duration)
        for a in page.audio:
            assert "data-error" not in a and float(a.get("data-duration", 0)) > 0, a.get("data-kind")
    assert len(_parse(res.stdout).audio) == 12
    shot = Path(os.environ.get("USS_BENCH_SCREENSHOT", tmp_path / "report.png"))
    res = _browser(report.html, tmp_path, f"--screenshot={shot}")
    assert res.returncode == 0 and shot.stat().st_size > 10_000
    assert re.search(rb"IHDR", shot.read_bytes()[:32])


def test_a_report_of_a_report_still_finds_the_runs_estimates(merged, tmp_path):
    res = _cli("report", merged, "--out", tmp_path / "again")
    assert res.returncode == 0, res.stderr
    page = _parse((tmp_path / "again/report.html").read_text())
    assert [a["data-kind"] for a in page.audio] == (["mixture", "target", "estimate: irm"] * 2
                                                    + ["mixture", "target", "estimate: mix"] * 2)
