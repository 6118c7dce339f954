"""Execute the book's chapters headless with papermill and build the HTML book with Jupyter Book.

Chapters are jupytext py:percent files ``notebooks/NN_slug.py``. Each has one first code cell
tagged ``parameters`` that holds literal assignments only; a *run* is a chapter executed with a
named parameter set from :data:`RUNS` (``{stem: {run: overrides}}``). The executed notebook is
written to ``_build/executed/{stem}-{run}.ipynb``, copied to ``book/chapters/`` (which the
committed ``_toc.yml`` globs) and the book is built with Jupyter Book v1 with execution off,
nit-picky and warnings as errors.

Command line::

    python -m residual_core.runner book [--profile tutorial] [--keep-going] [--jobs 2]
    python -m residual_core.runner run 00_units [--preset paper] --param n_images=64 \
        --param device=cuda [--name RUNNAME] [--out DIR]
    python -m residual_core.runner run 05 --preset paper --dry-run
    python -m residual_core.runner sweep 05 --preset paper --workers 4 --out /data/sweeps
    python -m residual_core.runner sweep 05 --preset paper --executor slurm --partition gpu \
        --out /shared/sweeps [--wait] [--dry-run]
    python -m residual_core.runner list

``run`` also writes the chapter's results table and completion record next to the executed
notebook (:func:`execute`); ``--dry-run`` lists downloads, disk and a GPU memory estimate
(:mod:`residual_core.runner.dryrun`) without running anything; ``sweep`` runs a chapter over a grid,
resumably, on this machine's GPUs or as a SLURM job array (:mod:`residual_core.runner.sweep`).

A failing cell or a build warning exits non-zero with the notebook, the cell and the error.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from residual_core.core.errors import cli_main
from residual_core.runner.build import book, check_jobs, check_threads
from residual_core.runner.chapters import (
    BUILD,
    EXECUTED,
    ParameterError,
    RunnerError,
    _log,
    _rel,
    check_overrides,
    find_chapter,
    list_chapters,
    parse_overrides,
    read_parameters,
    writable_dir,
)
from residual_core.runner.execute import check_device_here, execute
from residual_core.runner.presets import DEFAULT_PROFILE, RUNS, SWEEPS, preset, runs_for

if TYPE_CHECKING:
    from residual_core.runner.sweep import Pair, SlurmOptions, Sweep

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m residual_core.runner",
        description="Run the ResiDual Book chapters with papermill and build the book.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_book = sub.add_parser("book", help="execute every chapter of a profile and build the HTML")
    p_book.add_argument("--profile", default=DEFAULT_PROFILE,
                        help="run name to execute per chapter (tutorial: CPU, offline; paper: "
                        "real models, GPU). Default: %(default)s")
    p_book.add_argument("-k", "--keep-going", action="store_true",
                        help="after a failing chapter, still execute the others")
    p_book.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="chapters executed at once, each in its own process, the longest "
                        "first; each kernel keeps the thread settings of a sequential build, so "
                        "the numbers are the same as with 1. Default: %(default)s, one after "
                        "another")
    p_book.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                        help="CPU threads of each chapter's kernel, whatever --jobs is (so the "
                        "same numbers). Default: $OMP_NUM_THREADS if set, else half the cores "
                        "(two kernels of all the cores slow each other several times over)")
    p_book.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs")
    p_book.add_argument("--out", type=Path, default=None,
                        help="build a separate copy of the book in this folder (executed "
                             "notebooks, sources, _build/html) instead of the repository's")
    p_book.add_argument("--dry-run", action="store_true",
                        help="list downloads, disk and GPU memory needed; run nothing")

    p_run = sub.add_parser(
        "run", help="execute one chapter with parameter overrides",
        description="Execute one chapter. Example: run 00_units --preset paper "
        "--param n_images=16 --param device=cuda --name gpu16",
    )
    p_run.add_argument("notebook", help="chapter path, stem (00_units) or number (00)")
    p_run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter; VALUE is a Python literal, else a string "
                       "(repeatable)")
    p_run.add_argument("--preset", default=None,
                       help="start from a named parameter set of RUNS (e.g. tutorial, paper)")
    p_run.add_argument("--name", default=None,
                       help="run name used in the output file name (default: the preset or "
                       "'tutorial'; 'custom' / '{preset}-custom' when --param is given)")
    p_run.add_argument("--out", default=None,
                       help="output folder (default: _build/executed in the repository)")
    p_run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p_run.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs")
    p_run.add_argument("--dry-run", action="store_true",
                       help="list downloads, disk and GPU memory needed; run nothing")

    p_sweep = sub.add_parser(
        "sweep", help="run one chapter over a grid of parameters (resumable; local GPUs or SLURM)",
        description="Run a chapter for every point of a grid (one papermill job per pair), "
        "skipping finished pairs. --executor local runs them with worker processes on this "
        "machine (one per GPU); --executor slurm submits one SLURM job array through submitit, "
        "one task per unfinished pair. Examples: sweep 05 --preset paper --workers 4; "
        "sweep 05 --preset paper --executor slurm --partition gpu --out /shared/sweeps --wait",
    )
    p_sweep.add_argument("notebook", help="chapter path, stem or number")
    p_sweep.add_argument("--preset", default=DEFAULT_PROFILE,
                         help="base parameter set of RUNS (default: %(default)s)")
    p_sweep.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                         help="override a base parameter (repeatable)")
    p_sweep.add_argument("-a", "--axis", action="append", default=[], metavar="KEY=V1,V2",
                         help="a grid axis (repeatable); default: the chapter's grid in "
                         "residual_core.runner.presets.SWEEPS for the preset")
    p_sweep.add_argument("--out", default=None,
                         help="output root (default: _build/sweeps); with slurm, a folder every "
                         "node sees")
    p_sweep.add_argument("--executor", choices=SWEEP_EXECUTORS, default="local",
                         help="local: worker processes on this machine; slurm: one job array "
                         "through submitit (default: %(default)s)")
    p_sweep.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p_sweep.add_argument("--dry-run", action="store_true",
                         help="list the pairs and what they need (with slurm: the array and its "
                         "sbatch script); run and submit nothing")
    p_sweep.add_argument("--pair", type=int, default=None, metavar="I",
                         help="run only pair I of the grid (0-based, as --dry-run lists them) "
                         "here and now: what a task of another scheduler runs")
    p_sweep.add_argument("--merge", action="store_true",
                         help="only merge the tables of the finished pairs (after an array that "
                         "was submitted without --wait has ended)")
    local = p_sweep.add_argument_group("--executor local")
    local.add_argument("-j", "--workers", type=int, default=None,
                       help="worker processes on this machine, one per GPU (default: 1)")
    local.add_argument("--gpus", default=None,
                       help="comma-separated GPU ids given to the workers in turn; 'none' "
                       "leaves CUDA_VISIBLE_DEVICES alone (default: one per worker when "
                       "--workers > 1)")
    local.add_argument("--shared-cache", action="store_true", default=None,
                       help="let the workers share one encoding cache (a lock per store: a "
                       "worker asking for a store another one is building waits, then reuses "
                       "it, so the reference set is encoded once)")
    slurm = p_sweep.add_argument_group("--executor slurm (defaults: residual_core.runner.sweep."
                                       "SlurmOptions)")
    slurm.add_argument("--partition", default=None, help="SLURM partition")
    slurm.add_argument("--gpus-per-task", type=int, default=None, metavar="N",
                       help="GPUs per task (default: 1)")
    slurm.add_argument("--cpus-per-task", type=int, default=None, metavar="N",
                       help="CPU cores per task (default: 8)")
    slurm.add_argument("--mem-gb", type=float, default=None, metavar="GB",
                       help="memory per task in GB (default: 64)")
    slurm.add_argument("--time-min", type=int, default=None, metavar="MIN",
                       help="time limit per task in minutes (default: 1440)")
    slurm.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                       help="tasks running at once (default: submitit's, 256)")
    slurm.add_argument("--sbatch", action="append", default=None, metavar="KEY[=VALUE]",
                       help="an extra #SBATCH option, e.g. account=proj, qos=high, "
                       "constraint=h100, exclusive (repeatable; overrides the options above)")
    slurm.add_argument("--setup", action="append", default=None, metavar="CMD",
                       help="a shell line run before each task, e.g. 'module load cuda' or "
                       "'export RESIDUAL_CACHE=/scratch/$USER/cache' (repeatable)")
    slurm.add_argument("--wait", action="store_true", default=None,
                       help="block until the array has ended, then merge the tables")

    sub.add_parser("list", help="list chapters, their runs and their parameters")
    return parser


def _cmd_run(args: argparse.Namespace) -> None:
    source = find_chapter(args.notebook)
    overrides = preset(source, args.preset)
    cli = parse_overrides(args.param)
    overrides.update(cli)
    base = args.preset or DEFAULT_PROFILE
    name = args.name or (("custom" if args.preset is None else f"{base}-custom") if cli else base)
    if not re.fullmatch(r"[\w.-]+", name):
        raise ParameterError(f"--name must be letters, digits, '_', '-' or '.', got {name!r}")
    _check_timeout(args.timeout)
    full = check_overrides(source, overrides)
    _log(f"{source.stem} [{name}] parameters:")
    for key, value in full.items():
        mark = "  (set)" if key in overrides else ""
        print(f"    {key} = {value!r}{mark}")
    if args.dry_run:
        print(_dry_run([(f"{source.stem} [{name}]", full)]))
        return
    out_dir = writable_dir(EXECUTED if args.out is None else Path(args.out), "--out")
    result = execute(source, name, overrides, out_dir=out_dir, log_output=args.verbose,
                     timeout=args.timeout)
    _log(f"{source.stem} [{name}] ok in {result.seconds:.1f} s → {_rel(result.output)}")
    if result.results is not None:
        _log(f"results table → {_rel(result.results)} (record {_rel(result.record)})")


def _check_timeout(timeout: int | None) -> None:
    if timeout is not None and timeout < 1:
        raise ParameterError(f"--timeout must be at least 1 second, got {timeout}")


def _dry_run(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    from residual_core.core.io import cache_root
    from residual_core.runner import dryrun

    plan = dryrun.plan(runs)
    cache = cache_root(create=False)  # refuses an empty value or a file, creates nothing
    where = next(p for p in [cache, *cache.parents] if p.exists())
    free = shutil.disk_usage(where).free / 2**30
    verdict = "enough" if free >= plan.disk_gb else "NOT ENOUGH"
    return (f"{dryrun.format_plan(plan)}\nfree disk at the cache ({cache}): "
            f"{free:,.0f} GiB ({verdict} for {dryrun.gb_text(plan.disk_gb)})")


SWEEP_EXECUTORS = ("local", "slurm")
"""Where ``sweep`` runs its pairs: worker processes here, or a SLURM job array (submitit)."""

_LOCAL_FLAGS = {"workers": "--workers", "gpus": "--gpus", "shared_cache": "--shared-cache"}
_SLURM_FLAGS = {"partition": "--partition", "gpus_per_task": "--gpus-per-task",
                "cpus_per_task": "--cpus-per-task", "mem_gb": "--mem-gb",
                "time_min": "--time-min", "array_parallelism": "--array-parallelism",
                "sbatch": "--sbatch", "setup": "--setup", "wait": "--wait"}


def _slurm_options(args: argparse.Namespace) -> SlurmOptions:
    from residual_core.runner import sweep as sw

    extra: dict[str, Any] = {}
    for item in args.sbatch or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ParameterError(f"--sbatch expects KEY=VALUE or KEY, got {item!r}")
        extra[key] = value.strip() if sep else True
    given = {k: getattr(args, k) for k in ("partition", "gpus_per_task", "cpus_per_task",
                                           "mem_gb", "time_min", "array_parallelism")
             if getattr(args, k) is not None}
    return sw.SlurmOptions(**given, sbatch=extra, setup=list(args.setup or []))


def _sweep_dry_run(sweep: Sweep, pairs: Sequence[Pair], executor: str,
                   args: argparse.Namespace) -> None:
    from residual_core.runner import sweep as sw

    state = sw.status(sweep, pairs)
    print(f"{len(pairs)} pairs ({' × '.join(f'{k}: {len(v)}' for k, v in sweep.axes.items())}); "
          f"{state.line(len(pairs))}")
    done = {p.id for p in state.done}
    for i, pair in enumerate(pairs):
        mark = "done" if pair.id in done else "FAILED before" if pair.id in state.failed \
            else "to run"
        print(f"  [{i}] {pair.id}: {mark}")
    print(_dry_run([(p.id, check_overrides(sweep.source, p.overrides)) for p in pairs]))
    if executor != "slurm":
        return
    options = _slurm_options(args)
    n = len(state.pending)
    if n == 0:
        print("SLURM: every pair is finished; nothing would be submitted")
        return
    kind = "a job array" if n > 1 else "one job (a single pair is not an array)"
    par = options.array_parallelism or 256
    print(f"SLURM: {kind} named {sweep.job_name}, {n} task(s) (the unfinished pairs; "
          f"{len(state.done)} finished are not submitted), at most {min(n, par)} at once")
    print(f"  each task: partition {options.partition or '(cluster default)'}, "
          f"{options.gpus_per_task} GPU(s), {options.cpus_per_task} CPU(s), "
          f"{options.mem_gb:g} GB, {options.time_min} min; job function "
          "residual_core.runner.sweep.run_pair")
    print(f"  logs: {sweep.log_folder}/<job id>_<task>/")
    for i, pair in enumerate(state.pending):
        print(f"  task {i}: {pair.id}")
    print("--- sbatch script (nothing submitted) ---")
    print(sw.sbatch_script(sweep, options, n))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from residual_core.runner import sweep as sw

    source = find_chapter(args.notebook)
    base = {**preset(source, args.preset), **parse_overrides(args.param)}
    axes = sw.parse_axes(args.axis) if args.axis else SWEEPS.get(source.stem, {}).get(
        args.preset)
    if not axes:
        raise ParameterError(
            f"{source.stem} has no default grid for preset {args.preset!r} (grids: "
            f"{ {s: list(g) for s, g in SWEEPS.items()} }); give one with --axis KEY=V1,V2")
    wrong = _SLURM_FLAGS if args.executor == "local" else _LOCAL_FLAGS
    misplaced = [flag for key, flag in wrong.items() if getattr(args, key) is not None]
    if misplaced:
        other = "slurm" if args.executor == "local" else "local"
        raise ParameterError(
            f"{', '.join(misplaced)} apply to --executor {other}, not to --executor "
            f"{args.executor} (executors: {', '.join(SWEEP_EXECUTORS)})")
    workers = 1 if args.workers is None else args.workers
    if workers < 1:
        raise ParameterError(f"--workers must be at least 1, got {workers}")
    _check_timeout(args.timeout)
    out = Path(args.out) if args.out else BUILD / "sweeps"
    sweep = sw.Sweep(source, args.preset, base, axes, out.resolve())
    pairs = sweep.pairs()
    if args.dry_run:
        _sweep_dry_run(sweep, pairs, args.executor, args)
        return 0
    writable_dir(out, "--out")
    if args.merge:
        final, _ = sw.finish(sweep, pairs)
        return 0 if len(final.done) == len(pairs) else 1
    if args.pair is not None:
        if not 0 <= args.pair < len(pairs):
            raise ParameterError(f"--pair {args.pair}: the grid has {len(pairs)} pairs "
                                 f"(0-{len(pairs) - 1}); --dry-run lists them")
        try:
            sw.run_pair(sw.make_task(sweep, pairs[args.pair], args.timeout))
        except RunnerError:
            raise
        except Exception as err:
            raise RunnerError(f"pair {args.pair} failed: {err}") from err
        return 0
    if args.executor == "slurm":
        executor = sw.slurm_executor(sweep, _slurm_options(args))
        todo, jobs = sw.submit(sweep, executor, timeout=args.timeout)
        if not jobs:
            sw.finish(sweep, pairs)
            return 0
        if not args.wait:
            _log(f"follow it with `squeue --name {sweep.job_name}`; once it has ended, merge "
                 "the tables with the same command plus --merge (or submit it again: only "
                 "unfinished pairs are submitted)")
            return 0
        try:
            final, _ = sw.wait(sweep, todo, jobs)
        except KeyboardInterrupt:  # the array lives on in SLURM: say how to pick it up
            raise RunnerError(f"stopped waiting; the array runs on (squeue --name "
                              f"{sweep.job_name}); once it has ended, the same command with "
                              "--merge merges the tables") from None
        return 0 if len(final.done) == len(pairs) else 1
    gpus = None if args.gpus is None else (
        [] if args.gpus == "none" else [g for g in args.gpus.split(",") if g])
    _check_devices_here(source, pairs)
    final, _ = sw.run_local(sweep, workers=workers, gpus=gpus,
                            isolate_cache=False if args.shared_cache else None,
                            timeout=args.timeout)
    return 0 if len(final.done) == len(pairs) else 1


def _check_devices_here(source: Path, pairs: Sequence[Pair]) -> None:
    """Refuse, before any worker starts, pairs asking for a device this machine lacks."""
    for pair in pairs:
        check_device_here(source, pair.overrides)


def _cmd_list() -> None:
    for source in list_chapters():
        runs = RUNS.get(source.stem, {DEFAULT_PROFILE: {}})
        print(f"{source.stem}  ({_rel(source)})")
        for key, value in read_parameters(source).items():
            print(f"    {key} = {value!r}")
        for run, params in runs.items():
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
            print(f"  run {run}: {shown}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    The one place the runner's errors end: a user error (any
    :class:`~residual_core.core.errors.ResidualError`: a refused parameter, option or folder, a
    missing device, a cell past ``--timeout``) prints its message and exits 2; a chapter whose
    code raised exits 1 (:class:`~residual_core.runner.execute.NotebookError`); anything else is
    a bug and keeps its traceback.
    """
    args = _parser().parse_args(argv)
    return cli_main(lambda: _dispatch(args), "\n[runner] FAILED:")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "book":
        check_jobs(args.jobs)
        check_threads(args.threads)
    if args.command == "book" and args.dry_run:
        print(_dry_run([(f"{s.stem} [{r}]", check_overrides(s, o))
                        for s, r, o in runs_for(args.profile)]))
    elif args.command == "book":
        book(args.profile, log_output=args.verbose, keep_going=args.keep_going, out=args.out,
             jobs=args.jobs, threads=args.threads)
    elif args.command == "run":
        _cmd_run(args)
    elif args.command == "sweep":
        return _cmd_sweep(args)
    else:
        _cmd_list()
    return 0


if __name__ == "__main__":
    sys.exit(main())
