"""``uss-bench``: the command line (Typer). Thin: parses options and calls the stage functions.

Exit codes (:mod:`harness.errors`): 0 ok; 1 only for a regression found (``compare``, ``demo``) or a failed
``--verify``; 2 bad input or usage (unknown command or option, bad value, a bad file: one short message,
"did you mean …" where a name is close); 3 an internal error (one line, the traceback in a log file);
130 interrupted. No traceback reaches the terminal. Long stages show a progress bar (rich), quiet under
``CI=true`` or ``--quiet``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_REGRESSION,
    EXIT_USAGE,
    ConfigError,
    UssBenchError,
    check_choice,
    did_you_mean,
    os_error_message,
)

# rich_markup_mode=None: help texts are plain text, so "[roots]" or "[the TOML's, 100]" print as written
# (rich markup would take them for style tags and drop them).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="uss-bench: evaluate universal source separation on six corpora (Kong, Chen et al. 2023).")
_WIDTH = None if sys.stdout.isatty() else 160  # logs (CI) get whole table rows, not 80-column cuts
console = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)

WorkdirOpt = Annotated[Path | None, typer.Option("--workdir", help="work folder [env USS_BENCH_WORKDIR, ./uss-bench-work]")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("uss-bench")
        except PackageNotFoundError:  # a source tree run with python -m harness, not installed
            from harness import __version__ as text
        console.print(f"uss-bench {text}", markup=False, highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """uss-bench: evaluate universal source separation on six corpora (Kong, Chen et al. 2023)."""


DEVICES = ("auto", "cpu", "cuda")


def _check_device(value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (checked here, before any work; CUDA availability later)."""
    name = value.strip().lower()
    if name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise typer.BadParameter(f"{value!r} is not a device{did_you_mean(name, DEVICES)} (choose auto, cpu, cuda "
                             "or cuda:N)")


def _device_opt(help_text: str = "auto | cpu | cuda | cuda:N"):
    return typer.Option(callback=_check_device, help=help_text)


def _inference_start() -> None:
    """Commands that run a model: glibc keeps freed activations for reuse (harness.models.fast.tune_allocator),
    set before the model's first large allocation."""
    from harness.models.fast import tune_allocator

    tune_allocator()


def _workdir(workdir: Path | None) -> Path:
    from harness.datasets.store import default_workdir

    return workdir or default_workdir()


def _quiet(quiet: bool) -> bool:
    return quiet or os.environ.get("CI", "").lower() in ("1", "true", "yes")


@contextmanager
def _progress(quiet: bool):
    """Yields ``update(description, done, total)``; a rich bar unless quiet."""
    if _quiet(quiet):
        yield lambda *a: None
        return
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True)
    tasks: dict[str, int] = {}

    def update(desc: str, done: int, total: int) -> None:
        if desc not in tasks:
            tasks[desc] = bars.add_task(desc, total=total)
        bars.update(tasks[desc], completed=done, total=total)

    with bars:
        yield update


@app.command()
def datasets(
    config: Annotated[Path, typer.Option(help="TOML with a [roots] table")] = Path("uss-bench.toml"),
) -> None:
    """List each corpus with its expected layout and whether its root is found and valid."""
    from harness.datasets import CORPORA
    from harness.datasets.base import env_name, resolve_root

    table = Table(title="uss-bench corpora", show_lines=True)
    for col in ("dataset", "root", "status", "expected layout"):
        table.add_column(col, overflow="fold")
    for name, cls in CORPORA.items():
        try:
            root = resolve_root(name, None, config)
            cls(root).check()
            status, where = "[green]valid[/green]", str(root)
        except UssBenchError as exc:
            status = f"[red]{str(exc).splitlines()[0]}[/red]"
            where = f"(set USS_BENCH_{env_name(name)}_ROOT)"
        table.add_row(name, where, status, cls.layout)
    console.print(table)


# --executor / --scheduler of build-mixtures and eval
ExecutorOpt = Annotated[str, typer.Option(
    help="where the parallel CPU work runs: loky (worker processes on this machine) | dask (a Dask cluster)")]
SchedulerOpt = Annotated[str | None, typer.Option(
    help="Dask scheduler address, e.g. tcp://HOST:8786 (--executor dask; its workers must have uss-bench "
         "installed); without it a LocalCluster of --jobs single-threaded workers is started for the run")]


def _names_help() -> tuple[str, str, str]:
    """Help texts derived from the registries: dataset names, metrics/groups, aggregations."""
    from harness.aggregations import AGGREGATIONS
    from harness.datasets import CORPORA
    from harness.metric_registry import METRICS, groups

    opt_in = [m for m, spec in METRICS.items() if spec.opt_in and spec.fn is not None]
    return (" | ".join(CORPORA),
            "change the datasets' declared metrics: +NAME or +GROUP adds (opt-in: "
            + ", ".join([*(g for g, ms in groups().items() if all(METRICS[m].fn for m in ms)), *opt_in])
            + "), -NAME drops; repeatable or comma-separated",
            "aggregation of every report column instead of the declared ones: " + " | ".join(AGGREGATIONS))


_DATASETS_HELP, _METRICS_HELP, _AGGREGATE_HELP = _names_help()


@app.command("build-mixtures")
def build_mixtures_cmd(
    dataset: Annotated[str, typer.Argument(help=_DATASETS_HELP)],
    root: Annotated[Path | None, typer.Option(help="corpus root [env USS_BENCH_<NAME>_ROOT, uss-bench.toml]")] = None,
    split: str = "test",
    workdir: WorkdirOpt = None,
    seed: Annotated[int | None, typer.Option(help="protocol seed [the dataset TOML's, 1234]")] = None,
    per_class: Annotated[int | None, typer.Option(help="items per class [the TOML's, 100]")] = None,
    anchor: Annotated[str | None, typer.Option(help="AudioSet anchor: sed | energy | random")] = None,
    sed_checkpoint: Annotated[Path | None, typer.Option(help="Cnn14_DecisionLevelMax checkpoint for --anchor sed")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="parallel render workers (results do not depend on it)")] = 1,
    executor: ExecutorOpt = "loky",
    scheduler: SchedulerOpt = None,
    verify: Annotated[bool, typer.Option(help="rebuild in a temporary folder and compare with the existing set")] = False,
    snr_db: Annotated[str | None, typer.Option(help=(
        "SNR sweep: instead of the paper's energy-matched set, build one set per target-to-interferer ratio "
        "(dB, comma-separated, e.g. -10,-5,0,5,10) at <split>@snr<±x>, the same items (two-source datasets "
        "only)"))] = None,
    quiet: QuietOpt = False,
) -> None:
    """Build a deterministic evaluation set (protocol uss-paper, DESIGN §4)."""
    from dataclasses import replace

    from harness.mixtures import BuildOptions
    from harness.parallel import check_executor

    check_executor(executor, jobs, scheduler)
    opts = BuildOptions(dataset=dataset, split=split, seed=seed, per_class=per_class, anchor=anchor,
                        sed_checkpoint=str(sed_checkpoint) if sed_checkpoint else None, jobs=jobs)
    if snr_db is not None:  # issue 12: one set per ratio (harness.snr_sweep), checked before any work
        from harness.config import load_dataset_config
        from harness.snr_sweep import check_sweepable, parse_snr_list

        check_sweepable(dataset, load_dataset_config(dataset))
        for snr in parse_snr_list(snr_db):
            _build_one(replace(opts, snr_db=snr), root, workdir, verify, executor,
                       scheduler, quiet)
        return
    _build_one(opts, root, workdir, verify, executor, scheduler, quiet)


def _build_one(opts, root: Path | None, workdir: Path | None, verify: bool, executor: str, scheduler: str | None,
               quiet: bool) -> None:
    """Build (or ``--verify``) the one set of ``opts`` and print its counts."""
    from harness.datasets.base import resolve_root
    from harness.mixtures import build_mixtures, set_split, verify_build
    from harness.parallel import executor as use_executor

    dataset, jobs, split = opts.dataset, opts.jobs, set_split(opts)
    corpus_root = resolve_root(dataset, root)
    wd = _workdir(workdir)
    if verify:
        with use_executor(executor, jobs, scheduler):
            problems = verify_build(corpus_root, wd, opts)
        if problems:
            err.print(f"[red]verify failed[/red] for {dataset}/{split}: {len(problems)} difference(s)")
            for p in problems[:50]:
                err.print(f"  {p}")
            raise typer.Exit(EXIT_REGRESSION)
        console.print(f"verify ok: {dataset}/{split} rebuilt bit-identically")
        return
    with _progress(quiet) as update, use_executor(executor, jobs, scheduler):
        build = build_mixtures(corpus_root, wd, opts, progress=lambda d, t: update(f"{dataset} render", d, t))
    counts = build["counts"]
    skipped = {k: v["skipped"] for k, v in counts["per_class"].items() if v.get("skipped")}
    console.print(f"{dataset}/{split}: {counts['items']} items, {counts['classes']} classes → "
                  f"{wd}/mixtures/{dataset}/{split} (digest {build['digest'][:16]}…, {build['seconds']:.1f} s)")
    reused = [k for k, v in counts["per_class"].items() if v.get("reuse")]
    if reused:
        console.print(f"  {len(reused)} class(es) have fewer clips than items per class and reuse clips "
                      f"(rule in datasets/{dataset}.toml; counts in build.json)")
    for label, why in skipped.items():
        console.print(f"  skipped class {label!r}: {why}")
    for note in counts.get("notes", []):
        console.print(f"  {note}")


AUTO_FALLBACK_BATCH = 16
"""``--batch-size auto`` for a baseline or under torchrun (every rank must cut the same units)."""


def _fixed_batch_size(value: str) -> int:
    """``--batch-size``: ``auto`` (→ :data:`AUTO_FALLBACK_BATCH` until resolved) or an integer ≥ 1."""
    if value.strip().lower() == "auto":
        return AUTO_FALLBACK_BATCH
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigError(f"--batch-size must be auto or an integer ≥ 1, got {value!r}")
    return size


def _resolve_batch_size(value: str, system, ranks, limit: int | None, resume_from: Path | None = None) -> int:
    """The batch size of the run: a number as given; ``auto`` timed on the checkpoint's separator
    (harness.models.fast.choose_batch_size) in a single process, else the fallback. A ``--resume`` with
    ``auto`` takes the batch size the run's parts were written with (``parts/*/meta.json``): a checkpoint's
    estimates depend on it, and a resume never mixes two."""
    from harness.evaluate import recorded_batch_size

    size = _fixed_batch_size(value)
    recorded = recorded_batch_size(resume_from) if resume_from is not None else None
    auto = value.strip().lower() == "auto"
    if auto and recorded is not None:
        size = system.batch_size = recorded
    separator = getattr(system, "separator", None)
    if not auto or recorded is not None or separator is None or ranks.world_size > 1:
        if separator is not None:
            mode = ("given" if not auto else "auto (resumed: the parts' batch size)" if recorded is not None
                    else "auto (torchrun: fixed)")
            separator.inference_report = {**(getattr(separator, "inference_report", None) or {}),
                                          "batch_size": {"mode": mode, "chosen": size}}
        return size
    from harness.models.fast import choose_batch_size

    system.batch_size = choose_batch_size(separator, max_items=limit)
    return system.batch_size


@app.command("eval")
def eval_cmd(
    datasets: Annotated[list[str] | None, typer.Argument(help="datasets to evaluate")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dataset built in the workdir")] = False,
    system_name: Annotated[str | None, typer.Option("--system", help=(
        "system to evaluate: a registered name (`uss-bench systems`), an entry point of group uss_bench.systems, "
        "or FILE.py:ATTR / package.module:ATTR (a System subclass or a factory)"))] = None,
    system_arg: Annotated[list[str] | None, typer.Option("--system-arg", help=(
        "KEY=VALUE keyword argument of the system (repeatable)"))] = None,
    baseline: Annotated[str | None, typer.Option(help="mixture | oracle-irm (short for --system NAME)")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="separator checkpoint (.ckpt, .pth, .safetensors); short "
                                                         "for --system uss --system-arg checkpoint=CKPT")] = None,
    workdir: WorkdirOpt = None,
    out: Annotated[Path | None, typer.Option(help="run folder [reports/<system>]")] = None,
    split: str = "test",
    condition: Annotated[str | None, typer.Option(
        help="query condition of a --checkpoint system: average (Table 2: AudioSet also oracle) | oracle "
             "[average]")] = None,
    batch_size: Annotated[str, typer.Option(help="items per separation batch (2-s items): the unit of work, of "
                                                "torchrun sharding and of resume; auto: the fastest per item of a "
                                                "few timed sizes (a checkpoint; 16 for a baseline or under "
                                                "torchrun), recorded in run.json")] = "auto",
    device: Annotated[str, _device_opt("auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")] = "auto",
    jobs: Annotated[int, typer.Option(min=1, help="metric worker processes (loky) or LocalCluster workers "
                                                  "(dask); results do not depend on it")] = 1,
    executor: ExecutorOpt = "loky",
    scheduler: SchedulerOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="first N items of each set [all]")] = None,
    resume: Annotated[bool, typer.Option(
        help="keep the item rows already written to <out>/parts and evaluate only the missing ones "
             "(without it, the datasets' parts are removed first)")] = False,
    part_items: Annotated[int, typer.Option(
        min=1, help="rows per part file in <out>/parts; a part is written every N rows or every minute, whichever "
             "comes first, so a killed run loses little")] = 256,
    break_lock: Annotated[bool, typer.Option(
        help="remove a stale <out>/eval.lock left by a killed eval (never one whose process runs; --resume "
             "breaks a stale lock of this host by itself)")] = False,
    strict: Annotated[bool, typer.Option(
        help="exit 1 when every item of a dataset failed to score (no ok row)")] = False,
    save_estimates: Annotated[str, typer.Option(
        help="write estimates as <out>/estimates/<dataset>/[<condition>/]<item_id>.wav (32-bit float, the set's "
             "rate; re-scored by `uss-bench score`): none | worst | best (5 lowest / highest SDRi per dataset) | "
             "all")] = "none",
    shots: Annotated[int, typer.Option(min=1, help="example clips per class for a system in query mode "
                                                   "audio-shots, drawn from the query split by the dataset's seed")] = 3,
    snr_db: Annotated[str | None, typer.Option(help=(
        "SNR sweep: after the run, also evaluate the two-source datasets' sets built with build-mixtures "
        "--snr-db (dB, comma-separated) into <out>/snr/<split>@snr<±x>; the report plots SDRi against SNR"))] = None,
    metrics: Annotated[list[str] | None, typer.Option("--metrics", help=_METRICS_HELP)] = None,
    aggregate: Annotated[str | None, typer.Option(help=_AGGREGATE_HELP)] = None,
    musdb_protocol: Annotated[str, typer.Option(
        help="how the MUSDB18 SDR calls museval: museval (per target, museval's argument order) | sisec18 (the "
             "4 targets of a track jointly, as museval.eval_mus_track) | uss-code (the released uss code: "
             "references = estimate); recorded in run.json and named in the report")] = "museval",
    query_protocol: Annotated[str, typer.Option(
        help="present: the paper's protocol | absent: also query every item for a class in neither its target's "
             "nor its interferer's labels, scored by residual_db and false_activation")] = "present",
    query_modes: Annotated[str | None, typer.Option(
        help="comma-separated query modes to evaluate the same items under, e.g. "
             "oracle,average,audio-shots:1,audio-shots:5,label (audio-shots:K: K example clips per class); the "
             "report adds a modes x datasets table with paired differences to oracle [the system's own]")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a system (a baseline, a checkpoint, any plug-in); write items.parquet, summary.md and run.json.

    Under `torchrun --nproc-per-node N -m harness eval ...` each rank evaluates every N-th batch and
    rank 0 merges the parts.
    """
    from harness.datasets.store import check_output_folder
    from harness.estimates import SAVE_CHOICES
    from harness.evaluate import EvalOptions, resolve_datasets, run_eval
    from harness.parallel import distributed
    from harness.reports import render_report
    from harness.systems import resolve_spec

    check_choice("--save-estimates", save_estimates, SAVE_CHOICES)
    from harness.musdb_protocols import check_protocol

    check_protocol(musdb_protocol)  # a misspelt protocol fails before any work (exit 2)
    from harness.query_protocols import PROTOCOLS, parse_query_modes

    check_choice("--query-protocol", query_protocol, PROTOCOLS)
    modes = parse_query_modes(query_modes, shots)
    spec_name, sys_args = _system_choice(system_name, system_arg or [], baseline, checkpoint, condition)
    spec = resolve_spec(spec_name)  # before the sets are looked up: a misspelt name fails first
    if modes:  # a mode the system does not declare fails before any work
        from harness.query_protocols import base_mode

        missing = [m for m in modes if base_mode(m) not in spec.query_modes]
        if missing:
            raise ConfigError(f"--query-modes {','.join(missing)}: system {spec.name!r} has query modes "
                              f"{', '.join(spec.query_modes)} only")
    _fixed_batch_size(batch_size)  # a bad --batch-size fails before any work
    wd = _workdir(workdir)
    if out is not None:
        check_output_folder(out, "--out")
    names, absent = resolve_datasets(datasets or [], all_, wd, split)
    snrs = None
    if snr_db is not None:  # issue 12: the SNR sets are checked before any work (harness.snr_sweep)
        from harness.snr_sweep import check_sweep_sets, parse_snr_list

        snrs = parse_snr_list(snr_db)
        check_sweep_sets(wd, names, split, snrs)
    with distributed(device) as ranks:
        from harness.models import resolve_device
        from harness.systems import build_system

        _inference_start()  # before the first large allocation of any separator
        # a plug-in gets a concrete device ("cpu", "cuda:0"), never "auto"
        system = build_system(spec, sys_args, {"workdir": wd, "device": str(resolve_device(ranks.device(device))),
                                               "batch_size": _fixed_batch_size(batch_size)})
        condition = sys_args.get("condition")
        for name in names:  # a missing query set fails before the batch-size timing
            system.prepare(name)
        if absent and ranks.is_main:
            console.print(f"--all: not built in {wd}/mixtures, skipped: {', '.join(absent)}")
        run_dir = out or Path("reports") / system.name.replace(":", "-")
        batch_size = _resolve_batch_size(batch_size, system, ranks, limit, run_dir if resume else None)
        opts = EvalOptions(datasets=names, workdir=wd, out=run_dir, split=split, batch_size=batch_size, jobs=jobs,
                           limit=limit, resume=resume, executor=executor, scheduler=scheduler,
                           part_items=part_items, break_lock=break_lock, save_estimates=save_estimates, shots=shots,
                           metrics=tuple(metrics or ()), aggregate=aggregate, musdb_protocol=musdb_protocol,
                           query_protocol=query_protocol, query_modes=modes,
                           extra={"device": ranks.device(device), **({"condition": condition} if condition else {})})
        opts.check()
        with _progress(quiet or not ranks.is_main) as update:
            run = run_eval(system, opts, progress=lambda d, done, total: update(f"{d} eval", done, total),
                           ranks=ranks)
            if snrs:
                from harness.snr_sweep import run_sweep

                run_sweep(system, opts, snrs, progress=update, ranks=ranks)
    if run is None:  # not rank 0: rank 0 writes the report
        return
    items = run["items"]
    for d, counts in run["counts"].items():
        if counts and set(counts) == {"no_query"}:
            err.print(f"warning: {d}: the query set of this checkpoint covers no test class (every item is "
                      "no_query); run embed-queries on the dataset's query split", highlight=False, markup=False)
    report = render_report(run_dir)
    # markup off: a system name such as "checkpoint:x[oracle]" is printed as written, not read as a style tag
    console.print(report.summary.read_text().split("## Detail")[0], markup=False, highlight=False)
    console.print(f"items: {run_dir}/items.parquet ({sum(sum(c.values()) for c in run['counts'].values())} rows, "
                  f"{sum(v['computed'] for v in items.values())} computed now, "
                  f"{sum(v['resumed'] for v in items.values())} resumed), summary: {report.summary}")
    _report_failed_datasets(run["counts"], strict)


def _report_failed_datasets(counts: dict[str, dict[str, int]], strict: bool) -> None:
    """Say which datasets have no ``ok`` row (every item failed); with ``strict`` exit 1."""
    from harness.evaluate import datasets_without_ok

    failed = datasets_without_ok(counts)
    for dataset, c in failed.items():
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))
        err.print(f"every item of {dataset} failed to score ({kinds}); see the status_detail column of "
                  "items.parquet", style="red", highlight=False, markup=False)
    if failed and strict:
        raise typer.Exit(EXIT_REGRESSION)


def _system_choice(system_name: str | None, system_arg: list[str], baseline: str | None, checkpoint: Path | None,
                   condition: str | None) -> tuple[str, dict[str, str]]:
    """``--system``/``--system-arg`` or their short forms ``--baseline`` / ``--checkpoint [--condition]`` →
    ``(registry name, args)``; checked before any work.

    Raises:
        ConfigError: none or several of the three given, an unknown baseline or condition, ``--condition`` for
            a system without it.
    """
    from harness.evaluate import BASELINES
    from harness.systems import CONDITIONS, parse_system_args

    given = [o for o, v in (("--system", system_name), ("--baseline", baseline), ("--checkpoint", checkpoint))
             if v is not None]
    if len(given) != 1:
        raise ConfigError("pass exactly one of --system NAME, --baseline mixture|oracle-irm and --checkpoint CKPT")
    args = parse_system_args(system_arg)
    if baseline is not None:
        check_choice("--baseline", baseline, BASELINES)
        if condition is not None:
            raise ConfigError(f"--condition {condition} applies to a --checkpoint system; the {baseline} baseline "
                              "takes no query: drop --condition")
        return baseline, args
    if checkpoint is not None:
        args = {"checkpoint": str(checkpoint), **args}
        args["condition"] = check_choice("--condition", condition or args.get("condition", "average"), CONDITIONS)
        return "uss", args
    if condition is not None:
        if system_name != "uss":
            raise ConfigError(f"--condition {condition} applies to the uss system; pass the system's own options "
                              "as --system-arg KEY=VALUE")
        args["condition"] = check_choice("--condition", condition, CONDITIONS)
    return system_name, args


@app.command()
def systems() -> None:
    """List the systems eval can run: name, description, query modes (primary first), sample rate."""
    from harness.systems import ENTRY_POINT_GROUP, known_system_names, resolve_spec

    table = Table(title="uss-bench systems (eval --system NAME)")
    for col in ("system", "description", "query modes", "sample rate", "from"):
        table.add_column(col, overflow="fold")
    for name in known_system_names():
        try:
            spec = resolve_spec(name)
        except UssBenchError as exc:
            table.add_row(escape(name), f"[red]{escape(str(exc))}[/red]", "", "", "entry point")
            continue
        oracle = " (oracle: receives the target)" if spec.is_oracle else ""
        table.add_row(escape(name), escape(spec.description + oracle), ", ".join(spec.query_modes),
                      f"{spec.sample_rate} Hz", escape(spec.origin))
    console.print(table)
    console.print(f"also: --system FILE.py:ATTR or package.module:ATTR, and entry points of group {ENTRY_POINT_GROUP}",
                  markup=False, highlight=False)


@app.command()
def score(
    estimates: Annotated[Path, typer.Argument(help="folder of <item_id>.wav / .flac estimates (mono, any rate)")],
    dataset: Annotated[str, typer.Argument(help="the dataset whose built set the estimates are of")],
    workdir: WorkdirOpt = None,
    out: Annotated[Path | None, typer.Option(help="run folder [reports/estimates-<folder name>]")] = None,
    split: str = "test",
    name: Annotated[str | None, typer.Option(help="the system column [estimates:<folder name>]")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="metric worker processes")] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="first N items of the set [all]")] = None,
    musdb_protocol: Annotated[str, typer.Option(
        help="MUSDB18 SDR protocol, as for eval: museval | sisec18 | uss-code (re-score saved estimates under "
             "another protocol)")] = "museval",
    quiet: QuietOpt = False,
) -> None:
    """Score separations made elsewhere; a missing or unreadable file is a row with its status, not a failure."""
    from harness.estimates import EstimatesSystem
    from harness.evaluate import EvalOptions, resolve_datasets, run_eval
    from harness.reports import render_report

    wd = _workdir(workdir)
    names, _ = resolve_datasets([dataset], False, wd, split)
    system = EstimatesSystem(estimates, name=name)
    run_dir = out or Path("reports") / f"estimates-{estimates.name}"
    opts = EvalOptions(datasets=names, workdir=wd, out=run_dir, split=split, jobs=jobs, limit=limit,
                       musdb_protocol=musdb_protocol)
    opts.check()
    with _progress(quiet) as update:
        run = run_eval(system, opts, progress=lambda d, done, total: update(f"{d} score", done, total))
    report = render_report(run_dir)
    console.print(report.summary.read_text().split("## Detail")[0], markup=False, highlight=False)
    counts = run["counts"].get(dataset, {})
    console.print(f"items: {run_dir}/items.parquet ({', '.join(f'{k}: {v}' for k, v in counts.items())}), "
                  f"summary: {report.summary}", markup=False, highlight=False)


@app.command("embed-queries")
def embed_queries_cmd(
    dataset: Annotated[str, typer.Argument(help="dataset whose query split is embedded")],
    checkpoint: Annotated[Path, typer.Option(help="separator checkpoint (its query net and condition type)")],
    root: Annotated[Path | None, typer.Option(help="corpus root [env USS_BENCH_<NAME>_ROOT, uss-bench.toml]")] = None,
    split: Annotated[str | None, typer.Option(help="query split [the TOML's query_split, train]")] = None,
    workdir: WorkdirOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="clips per query-net batch")] = 8,
    device: Annotated[str, _device_opt()] = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Average query embedding of every class over the training split (paper eq. 9)."""
    from harness.datasets.base import resolve_root
    from harness.queries import embed_queries, query_dir

    corpus_root = resolve_root(dataset, root)
    wd = _workdir(workdir)
    _inference_start()
    with _progress(quiet) as update:
        prov = embed_queries(dataset, checkpoint, corpus_root, wd, split=split, batch_size=batch_size,
                             device=device, progress=lambda d, t: update(f"{dataset} queries", d, t))
    console.print(f"{dataset}/{prov['split']}: {prov['classes']} class(es), {prov['condition_type']} "
                  f"({prov['condition_size']}-d) → {query_dir(wd, dataset, prov['checkpoint_sha256'])}")
    if prov["skipped_files"]:
        console.print(f"  skipped {len(prov['skipped_files'])} silent file(s) (listed in queries.json)")


@app.command("export-checkpoint")
def export_checkpoint_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="USS Lightning .ckpt (or ours)")],
    out: Annotated[Path, typer.Argument(help="output .safetensors")],
    trust_pickle: Annotated[bool, typer.Option(
        help="load CKPT with full unpickling: it can run code from the file; only for a file you trust")] = False,
) -> None:
    """Slim, safe copy: separator + query net (+ SED), no optimizer state; records the source sha256."""
    from harness.models import export_checkpoint

    if trust_pickle:
        err.print(f"warning: unpickling {checkpoint} without weights_only; this runs any code the file holds")
    meta = export_checkpoint(checkpoint, out, trust_pickle=trust_pickle)
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {meta['condition_type']} "
                  f"({meta['condition_size']}-d), source sha256 {meta['source_sha256'][:16]}…")


@app.command()
def separate(
    audio: Annotated[Path, typer.Argument(help="recording to separate (any rate; read as 32 kHz mono)")],
    checkpoint: Annotated[Path, typer.Option(help="separator checkpoint")],
    out: Annotated[Path, typer.Option(help="output folder")],
    levels: Annotated[list[int] | None, typer.Option("--levels", help="AudioSet ontology levels [1 2 3]")] = None,
    class_ids: Annotated[list[int] | None, typer.Option("--class-ids", help="AudioSet class ids")] = None,
    query_audio: Annotated[list[Path] | None, typer.Option("--query-audio", help="example clips of the target")] = None,
    device: Annotated[str, _device_opt()] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="2-s chunks per separator batch")] = 8,
) -> None:
    """Separate a recording: by ontology level (Alg. 3), by class ids (Alg. 4), or by example clips (§3.4.3)."""
    import harness
    from harness.audio import read_audio
    from harness.models import load_separator_and_query_net
    from harness.ontology import separate_by_query_audio, separate_hierarchical, write_tracks

    if sum(x is not None for x in (levels, class_ids, query_audio)) > 1:
        raise UssBenchError("pass only one of --levels, --class-ids and --query-audio")
    _inference_start()
    waveform = read_audio(audio, harness.SAMPLE_RATE)
    separator, query_net = load_separator_and_query_net(checkpoint, device)
    _check_finite_weights(checkpoint, {"separator": separator, "query net": query_net})
    if query_audio:
        import soundfile

        est = separate_by_query_audio(separator, query_net, waveform, list(query_audio), batch_size=batch_size)
        _check_finite_output(est, checkpoint, "the query-audio estimate")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{audio.stem}_query.wav"
        tmp = path.with_name(f".{path.name}.tmp.wav")
        soundfile.write(tmp, est, harness.SAMPLE_RATE, subtype="FLOAT")
        tmp.replace(path)
        console.print(f"wrote {path}")
        return
    tracks = separate_hierarchical(separator, query_net, waveform, levels=tuple(levels or (1, 2, 3)),
                                   class_ids=class_ids, batch_size=batch_size)
    for track in tracks:  # all checked before any file is written
        _check_finite_output(track.waveform, checkpoint, f"track {track.name!r}")
    paths = write_tracks(tracks, out)
    console.print(f"{len(paths)} track(s) of active sound classes → {out}")
    for p in paths:
        console.print(f"  {p.relative_to(out)}")


@app.command("eval-hierarchical")
def eval_hierarchical_cmd(
    checkpoint: Annotated[Path, typer.Option(help="an at_soft separator checkpoint (separate --levels)")],
    out: Annotated[Path, typer.Option(help="output folder: hierarchical.parquet, hierarchical.md, hierarchical.json")],
    levels: Annotated[list[int] | None, typer.Option("--levels", help="AudioSet ontology levels [1 2 3]")] = None,
    workdir: WorkdirOpt = None,
    split: str = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="first N items of the set [all]")] = None,
    device: Annotated[str, _device_opt()] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="2-s chunks per separator batch")] = 8,
    quiet: QuietOpt = False,
) -> None:
    """Score `separate --levels` on the built AudioSet set: class-aware SDRi (DCASE 2025 Task 4) with detection
    precision and recall per ontology level."""
    import json

    from harness.datasets.store import atomic_write_parquet, atomic_write_text, check_output_folder, open_set
    from harness.models import load_separator_and_query_net
    from harness.ontology import require_at_soft
    from harness.query_protocols import (
        hierarchical_markdown,
        hierarchical_summary,
        json_ready,
        score_hierarchical,
    )

    check_output_folder(out, "--out")
    evalset = open_set(_workdir(workdir), "audioset", split)
    _inference_start()
    separator, query_net = load_separator_and_query_net(checkpoint, device)
    require_at_soft(separator)
    with _progress(quiet) as update:
        df = score_hierarchical(separator, query_net, evalset, levels=tuple(levels or (1, 2, 3)), limit=limit,
                                batch_size=batch_size, progress=lambda d, t: update("hierarchical", d, t))
    summary = hierarchical_summary(df)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(df, out / "hierarchical.parquet")
    atomic_write_text(out / "hierarchical.json", json.dumps(
        {"checkpoint": str(checkpoint), "build_digest": evalset.build["digest"], "levels": json_ready(summary)},
        indent=2, allow_nan=False) + "\n")
    text = hierarchical_markdown(summary, f"{checkpoint.name} on audioset/{split}")
    atomic_write_text(out / "hierarchical.md", text)
    console.print(text, markup=False, highlight=False)


def _check_finite_weights(checkpoint: Path, models: dict) -> None:
    """Refuse a checkpoint with NaN/inf weights before separating (its output would be all NaN).

    Raises:
        UssBenchError: names the checkpoint, the component and the first non-finite tensor.
    """
    import torch

    for what, model in models.items():
        for name, tensor in model.state_dict().items():
            if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
                raise UssBenchError(f"checkpoint {checkpoint}: the {what}'s tensor {name} has non-finite (NaN/inf) "
                                    "values, so its output would be too; use another checkpoint (a diverged "
                                    "training run writes such weights)")


def _check_finite_output(waveform, checkpoint: Path, what: str) -> None:
    """Refuse to write an estimate with NaN/inf samples (issue 15 #12: separate wrote an all-NaN WAV, exit 0).

    Raises:
        UssBenchError: names the output and the checkpoint; nothing is written.
    """
    import numpy as np

    bad = int(np.size(waveform) - np.count_nonzero(np.isfinite(waveform)))
    if bad:
        raise UssBenchError(f"{what} has {bad} non-finite (NaN/inf) sample(s) of {np.size(waveform)}: the separator "
                            f"of {checkpoint} produced them; nothing was written (check the checkpoint and "
                            "--device)")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="run folders (or folders of run folders) with items.parquet")],
    out: Annotated[Path | None, typer.Option(help="report folder (needed for several runs) [the run itself]")] = None,
    allow_different_sets: Annotated[bool, typer.Option(
        help="show runs side by side even when their sets of a dataset have different build digests")] = False,
    aggregate: Annotated[str | None, typer.Option(help=_AGGREGATE_HELP + " [the run's --aggregate, else declared]")] = None,
    paper_row: Annotated[str | None, typer.Option(
        help='the paper\'s row beside ours, "Table N: SYSTEM" (reports/paper/uss_paper_tables.csv) '
             '[Table 2: CNN14 (44a), the default system]')] = None,
) -> None:
    """Re-render summary.md, per_class.md, the figures and report.html; several runs side by side."""
    from harness.reports import report_runs

    rep = report_runs(runs, out, allow_different_sets, aggregate, paper_row=paper_row)
    console.print(rep.summary.read_text().split("## Detail")[0], markup=False, highlight=False)
    console.print(f"wrote {rep.summary}, {rep.per_class}, {len(rep.figures)} figure(s)", markup=False)
    console.print(f"HTML report: {rep.html}", markup=False, highlight=False)


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="baseline run folder (or items.parquet)")],
    candidate: Annotated[Path, typer.Argument(help="candidate run folder (or items.parquet)")],
    tolerance: Annotated[float | None, typer.Option(
        "--tolerance", "--tolerance-db",
        help="allowed drop of any aggregate (and class median), finite and ≥ 0, in each metric's own unit "
             "(dB; MOS for PESQ) [each metric's default from the metric registry]")] = None,
    two_sided: Annotated[bool, typer.Option(help="any change beyond the tolerance fails, not only drops")] = False,
    allow_missing: Annotated[bool, typer.Option(
        help="items or datasets of BASE that CANDIDATE lacks do not fail the comparison (they are listed)")] = False,
    allow_different_sets: Annotated[bool, typer.Option(
        help="compare even when the runs evaluated a dataset on sets with different build digests")] = False,
    fail_on_class: Annotated[bool, typer.Option(
        help="a class whose median drops by more than its tolerance fails the comparison (exit 1)")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="machine-readable comparison [CANDIDATE's folder/compare.json]")] = None,
    update: Annotated[bool, typer.Option(help="after comparing, make CANDIDATE the new baseline in BASE (a folder)")] = False,
) -> None:
    """Compare two runs item by item, with a paired test per dataset; exit 1 when an aggregate drops by more
    than its tolerance or the candidate lacks items of the baseline; exit 2 for runs on different sets."""
    from harness.reports import write_baseline

    failed = print_comparison(base, candidate, tolerance, two_sided, allow_missing=allow_missing,
                              allow_different_sets=allow_different_sets, fail_on_class=fail_on_class,
                              json_out=json_out)
    if update:
        write_baseline(candidate, base)
        console.print(f"baseline {base} updated from {candidate}: review and commit {base}/aggregates.csv and summary.md")
        return
    if failed:
        raise typer.Exit(EXIT_REGRESSION)


def _num(x: float, fmt: str = ".3f") -> str:
    return f"{x:{fmt}}" if x == x else "—"  # NaN: a metric not computed (or missing)


def _p(x: float) -> str:
    return "—" if x != x else f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def print_comparison(base: Path, candidate: Path, tolerance: float | None, two_sided: bool, *,
                     allow_missing: bool = False, allow_different_sets: bool = False, fail_on_class: bool = False,
                     json_out: Path | None = None) -> bool:
    """Print the comparison table (with each row's paired test) and the class regressions, write
    ``compare.json`` (``json_out``, else beside the candidate's items); return True when it finds a regression
    (or, two-sided, a change), an item that stopped scoring, (unless ``allow_missing``) baseline items the
    candidate lacks, or (with ``fail_on_class``) a class regression."""
    from harness.compare import ALPHA, compare_runs, write_compare_json

    cmp = compare_runs(base, candidate, tolerance, two_sided=two_sided, allow_missing=allow_missing,
                       allow_different_sets=allow_different_sets, fail_on_class=fail_on_class)
    kind = "change" if two_sided else "drop"
    allowed = "each metric's tolerance" if tolerance is None else f"{tolerance} in each metric's unit"
    table = Table(title=f"compare {candidate} with {base} (allowed {kind}: {allowed}; paired test over the items "
                        f"both scored: mean Δ [95% bootstrap CI], Wilcoxon p Holm-corrected, * = p < {ALPHA})")
    for col in ("system", "dataset", "condition", "metric", "items", "base", "candidate", "delta",
                "tol", "pairs", "mean Δ [95% CI]", "p (Holm)", ""):
        table.add_column(col, justify="right" if col in ("items", "base", "candidate", "delta", "tol", "pairs",
                                                         "p (Holm)") else "left")
    bad_rows = set(cmp.regressions.index) if len(cmp.regressions) else set()
    for idx, r in zip(cmp.table.index, cmp.table.itertuples(), strict=True):
        verdict = "[red]REGRESSION[/red]" if idx in bad_rows else "ok"
        if r.note:
            verdict += f" ({r.note})"
        unit = f" {r.unit}" if r.unit else ""
        test = f"{_num(r.mean_diff, '+.3f')} [{_num(r.ci_low, '+.3f')}, {_num(r.ci_high, '+.3f')}]"
        table.add_row(escape(r.system), r.dataset, r.condition, f"{r.metric} ({r.unit or '-'})",
                      str(r.items), _num(r.base), _num(r.candidate), _num(r.delta, "+.3f"), f"{r.tolerance:g}{unit}",
                      str(r.pairs), test, _p(r.p_holm) + ("*" if r.significant else ""), verdict)
    console.print(table)
    if len(cmp.class_regressions):
        ctab = Table(title=f"classes whose median drops by more than the tolerance ({len(cmp.class_regressions)})"
                           + ("" if fail_on_class else "; listed, not failing: pass --fail-on-class to fail"))
        for col in ("system", "dataset", "condition", "metric", "class", "items", "base", "candidate", "delta"):
            ctab.add_column(col, justify="right" if col in ("items", "base", "candidate", "delta") else "left")
        for r in cmp.class_regressions.itertuples():
            ctab.add_row(escape(r.system), r.dataset, r.condition, r.metric, escape(r.label), str(r.items),
                         _num(r.base), _num(r.candidate), _num(r.delta, "+.3f"))
        console.print(ctab)
    for k, v in cmp.unpaired.items():
        if v:
            console.print(f"  {escape(k)}: {v} row(s)")
    folder = candidate.parent if candidate.is_file() else candidate
    path = write_compare_json(cmp, json_out or folder / "compare.json")
    console.print(f"compare.json: {path}", markup=False, highlight=False)
    if cmp.missing:
        what = f"{cmp.missing} item row(s) of the baseline" + (
            f", among them every row of {', '.join(cmp.missing_datasets)}" if cmp.missing_datasets else "")
        if allow_missing:
            console.print(f"the candidate lacks {what} (allowed: --allow-missing)")
        else:
            err.print(f"[red]the candidate lacks {escape(what)}: a regression (pass --allow-missing if "
                      "intended)[/red]")
    if len(cmp.regressions) or cmp.newly_failing:
        err.print(f"[red]{len(cmp.regressions)} aggregate(s) beyond the allowed {kind} ({allowed}); "
                  f"{cmp.newly_failing} item(s) stopped scoring[/red]")
    if fail_on_class and len(cmp.class_regressions):
        err.print(f"[red]{len(cmp.class_regressions)} class(es) whose median dropped beyond the tolerance "
                  "(--fail-on-class)[/red]")
    if cmp.failed:
        return True
    console.print("no regression")
    return False


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="training recipe, e.g. models/resunet30_at_soft.toml")] = None,
    root: Annotated[list[str] | None, typer.Option(
        "--root", help="corpus root: DIR (one source) or DATASET=DIR (repeatable) [the config's, env, uss-bench.toml]")] = None,
    steps: Annotated[int | None, typer.Option(help="total steps to reach [the config's]")] = None,
    device: Annotated[str, _device_opt("auto | cpu | cuda | cuda:N (cuda:LOCAL_RANK under torchrun)")] = "auto",
    out: Annotated[Path | None, typer.Option(help="run folder [runs/<config name>]")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this folder from its newest checkpoint")] = None,
    query_checkpoint: Annotated[Path | None, typer.Option(help="Cnn14 checkpoint for [query] net = cnn14")] = None,
    sed_checkpoint: Annotated[Path | None, typer.Option(help="Cnn14_DecisionLevelMax checkpoint for anchor = sed")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a ResUNet30 + FiLM separator (paper Alg. 1–2, upstream recipe); `torchrun -m harness train` for DDP."""
    from harness.errors import ConfigError
    from harness.train import TrainConfig, resolve_source_roots
    from harness.train import train as run_train

    if resume is not None:
        if config is None:
            config = resume / "config.toml"
        out = out or resume
        if out != resume:
            raise ConfigError(f"--resume {resume} continues that run; --out {out} must be the same folder or omitted")
    if config is None:
        raise ConfigError("pass --config models/NAME.toml (or --resume RUN)")
    cfg = TrainConfig.from_toml(config)
    if query_checkpoint:
        cfg.query_checkpoint = str(query_checkpoint.resolve())
    if sed_checkpoint:
        cfg.sed_checkpoint = str(sed_checkpoint.resolve())
    roots = resolve_source_roots(cfg, list(root or []))
    run = out or Path("runs") / cfg.name
    result = run_train(cfg, roots, run, steps=steps, device=device, resume=resume is not None,
                       progress=not _quiet(quiet), console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        val = "—" if result.val_sdri is None else f"{result.val_sdri:.2f} dB"
        console.print(f"trained {cfg.name}: {result.steps} steps in {result.seconds:.0f} s, final loss "
                      f"{result.final_loss:.4f}, validation SDRi {val}; model: {result.model}")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="report folder [reports/demo]")] = None,
    workdir: Annotated[Path | None, typer.Option(help="work folder [a fresh temporary one]")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="render / metric workers (results do not depend on it)")] = 1,
    update_baseline: Annotated[bool, typer.Option(
        help="make this run the committed demo table (reports/baselines/demo); review and commit the diff")] = False,
    quiet: QuietOpt = False,
) -> None:
    """The main job on the embedded demo corpora: build → embed queries → eval the demo model → report → compare."""
    from harness.demo import DEMO_BASELINE, DEMO_TOLERANCE_DB, run_demo

    out = out or Path("reports") / "demo"
    result = run_demo(out, workdir, jobs=jobs, quiet=_quiet(quiet), console=console, update_baseline=update_baseline)
    table2 = result.summary.read_text().split("\n## ")[1].split("\n", 1)[1]  # the Table 2 section
    console.print(table2.strip(), markup=False, highlight=False)
    console.print(f"summary: {result.summary}")
    if result.comparison is None:
        return
    if print_comparison(DEMO_BASELINE, out, DEMO_TOLERANCE_DB, two_sided=True):
        err.print("the demo's numbers changed. If the change is intended, refresh the table with "
                  "`uss-bench demo --update-baseline` and commit reports/baselines/demo with the change.")
        raise typer.Exit(EXIT_REGRESSION)


def _usage_message(exc: typer.TyperException) -> str:
    """A usage error in at most three lines: the problem ("did you mean …" where close), and where help is."""
    message = exc.format_message()
    option = getattr(exc, "option_name", None)
    possibilities = getattr(exc, "possibilities", None)
    if option and possibilities:  # click lists "(Possible options: …)"; say the closest one plainly
        message = f"no such option {option}{did_you_mean(option, possibilities) or ''}"
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "uss-bench"
    return f"error: {message}\nTry '{command} --help' for help."


def _internal_error(exc: BaseException) -> str:
    """Write the traceback to a log file; return the one line the terminal gets."""
    log_dir = Path(os.environ.get("USS_BENCH_LOG_DIR") or tempfile.gettempdir())
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="uss-bench-error-", suffix=".log", dir=log_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"uss-bench {' '.join(sys.argv[1:])}\n\n")
            fh.write("".join(traceback.format_exception(exc)))
        where = f"traceback in {name}"
    except OSError as log_exc:
        where = f"the traceback could not be written ({log_exc})"
    summary = str(exc).splitlines()[0] if str(exc) else ""
    return (f"internal error: {type(exc).__name__}: {summary} ({where}; please report it, with that file)")


OMP_WAIT_POLICY = "PASSIVE"
"""OpenMP threads waiting at a barrier sleep instead of spinning. Measured on the paper-size separator
(2-core VM shared with other jobs): 25–30 % less CPU per item than the default spin (benchmarks/bench_eval.py
records the run's setting); set by :func:`main` before torch loads, unless ``OMP_WAIT_POLICY`` is set."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run a command and exit with a code CI can trust.

    0 ok; 1 a regression or failed ``--verify`` (raised by the commands as ``typer.Exit(EXIT_REGRESSION)``); 2 a
    :class:`~harness.errors.UssBenchError`, a usage error (typer's own vendored click exceptions, so no
    ``click`` install is needed) or an I/O error the environment caused (full disk, read-only folder, a file
    where a folder is needed: :func:`~harness.errors.os_error_message`); 130 interrupted; 3 anything else, with the traceback in a log file
    (``$USS_BENCH_LOG_DIR`` or the temporary folder). Never a traceback on the terminal.

    Args:
        argv: the arguments (without the program name); ``None`` reads ``sys.argv``.
    """
    logging.basicConfig(level=os.environ.get("USS_BENCH_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    if "torch" not in sys.modules:  # read once when torch loads its OpenMP runtime; the user's value wins
        os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    try:
        rc = app(args=argv, prog_name="uss-bench", standalone_mode=False)
    except UssBenchError as exc:
        err.print(f"error: {exc}", style="red", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted", highlight=False, markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as exc:  # usage errors: the base of typer's vendored click exceptions
        err.print(_usage_message(exc), highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    except OSError as exc:  # a full disk, a read-only folder, a file where a folder is needed: exit 2
        message = os_error_message(exc)
        if message is None:
            err.print(_internal_error(exc), style="red", highlight=False, markup=False)
            sys.exit(EXIT_INTERNAL)
        err.print(f"error: {message}", style="red", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    except Exception as exc:
        err.print(_internal_error(exc), style="red", highlight=False, markup=False)
        sys.exit(EXIT_INTERNAL)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
