"""SNR sweep sets (issue 12 item 3): the paper's items at given target-to-interferer ratios.

``build-mixtures DATASET --snr-db -10,-5,0,5,10`` builds, beside the paper's energy-matched set
``<workdir>/mixtures/<dataset>/<split>/`` (unchanged), one set per ratio at
``<workdir>/mixtures/<dataset>/<split>@snr<±x>/`` (``test@snr-10``, ``test@snr+0``, ``test@snr+5``). Each is
its own set (own ``mixtures.h5``, manifest, ``build.json`` with ``snr_db`` and its own digest). The plan is
the paper's (the same random streams, keyed by the corpus split): every set has the same items, with the same
item ids, targets, interferers and segments; only the interferer's gain differs. Items therefore pair across
SNRs and with the paper's set.

The gain is ``g = sqrt(E_t / E_i) · 10^(−snr/20)`` (energies ``Σx²`` of the 2-s segments, float64), so that
``10·log10(E_t / (g² E_i)) = snr``. The paper's clip of the energy-matching gain to [0.02, 50] is **not**
applied: it guards the 0-dB rule against near-silent segments, but at an explicit SNR it would silently give
another ratio than the set's name says (e.g. a quiet interferer at −10 dB needs more than 50× gain); an
explicit ratio is realised exactly instead. When a segment is silent (``E_t = 0`` or ``E_i = 0``) no gain
gives the ratio; the gain is then 1 (the item is the plain sum, its ratio ±∞ dB, as
:func:`realised_tir_db` finds it). The dev and paper sets have no silent 2-s segment.

Only datasets whose declaration mixes two sources (``[mixing] sources = 2``: AudioSet, FSDKaggle2018,
FSD50K) have a sweep; for MUSDB18, Slakh2100 and Voicebank-Demand the mixture is a real recording and an SNR
is meaningless (a usage error, exit 2).

``eval DATASET --snr-db LIST`` evaluates those sets into ``<run>/snr/<split>@snr<±x>/`` (one sub-run per
SNR, the same system), and the report plots SDRi against SNR (:func:`sweep_items`, :func:`sweep_table`,
:func:`harness.figures.snr_figure`). ``eval --all`` never picks them up: it evaluates the ``--split`` sets.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import ConfigError

SNR_TAG = "@snr"
"""What separates the corpus split from the ratio in an SNR set's split name."""

_SPLIT_RE = re.compile(r"^(?P<split>.+)@snr(?P<snr>[+-]\d+(?:\.\d+)?)$")

SWEEP_DIR = "snr"
"""The sub-folder of a run holding its SNR sub-runs (``<run>/snr/<split>@snr<±x>/``)."""


def snr_split(split: str, snr_db: float) -> str:
    """The split name of an SNR set: ``"test", -5 → "test@snr-5"``, ``0 → "test@snr+0"``, ``2.5 → "test@snr+2.5"``.

    Raises:
        ConfigError: ``snr_db`` not finite.
    """
    snr = float(snr_db)
    if not math.isfinite(snr):
        raise ConfigError(f"--snr-db: {snr_db!r} is not a finite number of dB")
    snr = snr + 0.0  # -0.0 → +0
    text = f"{snr:+.6g}" if snr != int(snr) else f"{int(snr):+d}"
    return f"{split}{SNR_TAG}{text}"


def parse_snr_split(name: str) -> tuple[str, float | None]:
    """``"test@snr-5" → ("test", -5.0)``; a plain split → ``(split, None)``."""
    m = _SPLIT_RE.match(str(name))
    return (m["split"], float(m["snr"])) if m else (str(name), None)


def parse_snr_list(text: str) -> list[float]:
    """``"-10,-5,0,5,10"`` → ``[-10.0, -5.0, 0.0, 5.0, 10.0]`` (order kept, repeats dropped).

    Raises:
        ConfigError: an empty list or a value that is not a finite number (names it).
    """
    out: list[float] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value):
            raise ConfigError(f"--snr-db {text!r}: {part!r} is not a number of dB; give a comma-separated list "
                              "such as -10,-5,0,5,10")
        if value not in out:
            out.append(value)
    if not out:
        raise ConfigError("--snr-db needs at least one value, e.g. -10,-5,0,5,10")
    return out


def is_sweepable(cfg: dict) -> bool:
    """Whether a dataset declaration mixes two sources (``[mixing] sources = 2``), i.e. has an SNR sweep."""
    return int((cfg.get("mixing") or {}).get("sources", 0)) == 2 and not cfg.get("virtual")


def check_sweepable(dataset: str, cfg: dict, snr_db: float | None = None) -> None:
    """Refuse an SNR sweep of a dataset whose mixtures are real recordings.

    Raises:
        ConfigError (exit 2): MUSDB18, Slakh2100, Voicebank-Demand (no ``[mixing] sources = 2``).
    """
    if not is_sweepable(cfg):
        raise ConfigError(f"--snr-db applies to the two-source datasets (audioset, fsdkaggle2018, fsd50k); the "
                          f"{dataset} mixtures are real recordings, so a target-to-interferer ratio cannot be set: "
                          "drop --snr-db")
    if snr_db is not None:
        snr_split("test", snr_db)  # finite


def snr_gain(e_target: float, e_interferer: float, snr_db: float) -> float:
    """The interferer gain giving a target-to-interferer ratio of ``snr_db``: ``sqrt(E_t / E_i) · 10^(−snr/20)``.

    Args:
        e_target, e_interferer: segment energies ``Σx²`` (float64, linear).
        snr_db: the ratio in dB.

    Returns:
        the gain (float); 1.0 when either energy is 0 (no gain reaches the ratio; the module docstring).
        Not clipped to the paper's [0.02, 50] (the module docstring says why).
    """
    if not (e_target > 0 and e_interferer > 0):
        return 1.0
    return float(math.sqrt(e_target / e_interferer) * 10.0 ** (-float(snr_db) / 20.0))


def realised_tir_db(target: np.ndarray, interferer: np.ndarray, gain: float) -> float:
    """``10·log10(Σt² / Σ(g·i)²)`` in float64 of the float32 product the build adds (dB; ±inf for silence)."""
    scaled = (np.float32(gain) * np.asarray(interferer, np.float32)).astype(np.float64)
    e_t = float(np.sum(np.square(np.asarray(target, np.float64))))
    e_i = float(np.sum(np.square(scaled)))
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(e_t / e_i)) if e_i > 0 else (math.inf if e_t > 0 else math.nan)


def sweep_record(split: str, snr_db: float) -> dict:
    """``build.json``'s ``snr_sweep`` record: the corpus split, the ratio and the gain rule."""
    return {"corpus_split": split, "snr_db": float(snr_db),
            "gain": "sqrt(E_target / E_interferer) * 10^(-snr_db / 20), not clipped; 1 for a silent segment",
            "pairs_with": split}


# -- evaluation and report ------------------------------------------------------------------------


def sub_run_dir(run_dir: str | Path, split: str, snr_db: float) -> Path:
    """``<run>/snr/<split>@snr<±x>``: the sub-run of one SNR."""
    return Path(run_dir) / SWEEP_DIR / snr_split(split, snr_db)


def sweep_items(sources) -> pd.DataFrame:
    """The item rows of the SNR sub-runs of a report's runs, systems named as in the report.

    Args:
        sources: :class:`harness.reports.RunSource` list (path + ``{name in run: name in report}``).

    Returns:
        the rows of every ``<run>/snr/*/items.parquet`` with an ``snr_db`` column (float, from the split);
        empty (no rows) when no run has a sweep.
    """
    frames = []
    for src in sources:
        folder = Path(src.path) / SWEEP_DIR
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            path = sub / "items.parquet"
            if not path.is_file():
                continue
            items = pd.read_parquet(path)
            if "split" not in items.columns or not len(items):
                continue
            snr = items["split"].map(lambda s: parse_snr_split(s)[1])
            items = items.assign(snr_db=snr.astype("float64"),
                                 system=items["system"].map(lambda s, m=src.systems: m.get(s, s)))
            frames.append(items[items["snr_db"].notna()])
    if not frames:
        return pd.DataFrame(columns=["system", "dataset", "condition", "snr_db", "sdri", "status"])
    return pd.concat(frames, ignore_index=True)


SWEEP_METRIC = "sdri"
"""The metric of the SNR sweep (SDRi, dB: paper eq. 13)."""


def sweep_table(items: pd.DataFrame, metric: str = SWEEP_METRIC) -> pd.DataFrame:
    """Median and interquartile range of ``metric`` over the ``ok`` items, per system, dataset, condition, SNR.

    Returns:
        columns ``system, dataset, condition, snr_db, items, q25, median, q75`` (dB), sorted by SNR within
        each (system, dataset, condition) in first-seen order.
    """
    cols = ["system", "dataset", "condition", "snr_db", "items", "q25", "median", "q75"]
    ok = items[(items["status"] == "ok") & np.isfinite(items[metric].astype("float64"))] if len(items) else items
    if not len(ok):
        return pd.DataFrame(columns=cols)
    g = ok.groupby(["system", "dataset", "condition", "snr_db"], sort=False)[metric]
    out = pd.DataFrame({"items": g.size(), "q25": g.quantile(0.25), "median": g.median(),
                        "q75": g.quantile(0.75)}).reset_index()
    order = {k: i for i, k in enumerate(dict.fromkeys(zip(out["system"], out["dataset"], out["condition"],
                                                          strict=True)))}
    out["_k"] = [order[k] for k in zip(out["system"], out["dataset"], out["condition"], strict=True)]
    return out.sort_values(["_k", "snr_db"], kind="stable").drop(columns="_k").reset_index(drop=True)[cols]


def sweep_datasets(datasets: list[str]) -> list[str]:
    """The datasets of ``datasets`` that have an SNR sweep (:func:`is_sweepable`), in the given order."""
    from harness.config import load_dataset_config

    return [d for d in datasets if is_sweepable(load_dataset_config(d))]


def check_sweep_sets(workdir: str | Path, datasets: list[str], split: str, snrs: list[float]) -> list[str]:
    """The datasets an ``eval --snr-db`` sweeps, checked before any work.

    Raises:
        ConfigError: none of ``datasets`` has a sweep; an SNR set is not built (names the command).
    """
    from harness.datasets.store import set_dir

    names = sweep_datasets(datasets)
    if not names:
        raise ConfigError(f"--snr-db: none of {', '.join(datasets)} is a two-source dataset (audioset, "
                          "fsdkaggle2018, fsd50k); drop --snr-db")
    for d in names:
        missing = [s for s in snrs if not (set_dir(workdir, d, snr_split(split, s)) / "build.json").is_file()]
        if missing:
            raise ConfigError(f"--snr-db: the {d} set(s) {', '.join(snr_split(split, s) for s in missing)} are not "
                              f"built under {workdir}/mixtures; run `uss-bench build-mixtures {d} --split {split} "
                              f"--snr-db {','.join(f'{s:g}' for s in snrs)} --workdir {workdir}` first")
    return names


def run_sweep(system, opts, snrs: list[float], progress=None, ranks=None) -> dict[float, dict | None]:
    """Evaluate ``system`` on the SNR sets of the two-source datasets of ``opts`` (after the main run).

    One sub-run per SNR at ``<opts.out>/snr/<split>@snr<±x>/`` (:func:`sub_run_dir`; its own
    ``items.parquet``, ``run.json``, parts and lock), with the options of the main run; the main run's
    ``items.parquet`` (the paper's protocol) is not touched.

    Returns:
        SNR → the sub-run's ``run.json`` content (``None`` on ranks other than 0).

    Raises:
        ConfigError: see :func:`check_sweep_sets`; as :func:`harness.evaluate.run_eval` otherwise.
    """
    from dataclasses import replace

    from harness.evaluate import run_eval

    names = check_sweep_sets(opts.workdir, opts.datasets, opts.split, snrs)
    out = {}
    for snr in snrs:
        sub = replace(opts, datasets=names, split=snr_split(opts.split, snr),
                      out=sub_run_dir(opts.out, opts.split, snr))
        cb = (lambda d, done, total, s=snr: progress(f"{d} snr {s:+g}", done, total)) if progress else None
        out[snr] = run_eval(system, sub, progress=cb, ranks=ranks)
    return out


FIGURE = "snr_sweep.png"
"""The report's SNR figure (:func:`harness.figures.snr_figure`)."""

SECTION = "snr-sweep"
"""Key of the SNR section among :func:`harness.report_html.write_html`'s ``sections``."""


def sweep_markdown(table: pd.DataFrame) -> list[str]:
    """summary.md's ``## SNR sweep`` section (table of median and IQR per SNR), ``[]`` without a sweep."""
    if not len(table):
        return []
    from harness.reports import markdown_table

    rows = [[str(r.system), str(r.dataset), str(r.condition), f"{r.snr_db:+g}", str(int(r.items)),
             f"{r.median:.2f}", f"[{r.q25:.2f}, {r.q75:.2f}]"] for r in table.itertuples()]
    return ["## SNR sweep", "",
            "SDRi (dB) of the same items mixed at each target-to-interferer ratio (sets `<split>@snr<±x>`, "
            "built with `build-mixtures --snr-db`; gain not clipped): median and interquartile range over the "
            f"`ok` items. Figure: `{FIGURE}`.", "",
            markdown_table(["system", "dataset", "condition", "SNR (dB)", "items ok", "median SDRi",
                            "IQR [25 %, 75 %]"], rows, "lllrrrr"), ""]


def sweep_html(table: pd.DataFrame, pngs: dict[str, bytes]) -> str:
    """report.html's SNR section, ``""`` without a sweep."""
    if not len(table):
        return ""
    from harness.report_html import _e, _img, _table

    rows = [[(_e(r.system), None), (_e(r.dataset), None), (_e(r.condition), None), (f"{r.snr_db:+g}", str(r.snr_db)),
             (str(int(r.items)), str(int(r.items))), (f"{r.median:.2f}", f"{r.median:.4f}"),
             (f"[{r.q25:.2f}, {r.q75:.2f}]", f"{r.q25:.4f}")] for r in table.itertuples()]
    out = ["<h2>SNR sweep</h2>", "<p>SDRi (dB) of the same items at each target-to-interferer ratio: median and "
           "interquartile range over the ok items.</p>",
           _table(["system", "dataset", "condition", "SNR (dB)", "items ok", "median SDRi", "IQR"], rows)]
    if FIGURE in pngs:
        out.append(_img(pngs[FIGURE], "SDRi against SNR"))
    return "\n".join(out)
