"""Sweeps: one chapter over a grid of parameters, resumable, on local GPUs or a SLURM array.

A sweep is a chapter, a base parameter set (a preset of :data:`residual_core.runner.presets.RUNS`
plus overrides) and *axes*, e.g. ``model`` × ``tasks``. Every point of the grid is a **pair**, run
as one papermill job by :func:`run_pair` (the job function of every executor) into
``{out}/{stem}/``. Its completion record (``*.results.json``, written atomically after the whole
notebook succeeded) is what makes it finished, so a crashed, killed or cancelled job never leaves a
finished-looking pair and a second sweep runs only what is unfinished.

Two executors hand the pending pairs to :func:`run_pair`:

- :func:`run_local`: worker processes on this machine, one per GPU (``CUDA_VISIBLE_DEVICES``),
  fed with pairs by the parent process through queues; nothing on disk coordinates them.
- :func:`submit`: one job array through submitit, one task per pending pair; with
  :func:`slurm_executor` on a SLURM cluster (:func:`sbatch_script` is the script it submits),
  with ``submitit.LocalExecutor`` as local processes (what the tests run).

Any other scheduler can call :func:`run_pair` on the JSON-able tasks of :func:`tasks` (or run
``python -m residual_core.runner sweep ... --pair I`` for pair ``I``). :func:`merge` joins the
results tables of the finished pairs, with one column per axis, into
``{out}/{stem}-{run}.sweep.csv``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from residual_core.core.io import atomic_write
from residual_core.runner.chapters import (
    ROOT,
    ParameterError,
    RunnerError,
    check_overrides,
    parse_overrides,
    read_parameters,
)
from residual_core.runner.execute import execute
from residual_core.runner.records import read_record, results_paths

if TYPE_CHECKING:
    import pandas as pd
    import submitit

__all__ = [
    "Pair",
    "SlurmOptions",
    "Sweep",
    "SweepStatus",
    "expand",
    "failure_path",
    "finish",
    "live_jobs",
    "make_task",
    "merge",
    "parse_axes",
    "run_local",
    "run_pair",
    "sbatch_script",
    "slurm_executor",
    "status",
    "submit",
    "tasks",
    "wait",
]

def _log(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class Pair:
    """One point of the grid: one papermill job.

    Attributes:
        id: File-safe name (axis values and a hash of every override), the job's run name.
        axes: Axis name → value as listed on the grid.
        overrides: Everything the chapter is run with (base parameters and the axis values).
    """

    id: str
    axes: dict[str, Any]
    overrides: dict[str, Any]


@dataclass
class Sweep:
    """A chapter, its base parameters, its axes and where its jobs go.

    Attributes:
        source: The chapter's ``.py`` file.
        run: Name of the base parameter set (the preset), part of every job name.
        base: Overrides common to every pair.
        axes: Parameter → the values it takes.
        out: Output root; jobs go to ``{out}/{stem}/``.
    """

    source: Path
    run: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    out: Path

    @property
    def stem(self) -> str:
        """The chapter's name."""
        return self.source.stem

    @property
    def folder(self) -> Path:
        """Where the executed notebooks, results tables, records and failure notes go."""
        return self.out / self.stem

    @property
    def log_folder(self) -> Path:
        """Where submitit writes: a sub-folder per task (pickles, logs, the sbatch script)."""
        return self.folder / "submitit"

    @property
    def job_name(self) -> str:
        """The array's name on the cluster: chapter, preset and a hash of the whole sweep."""
        key = json.dumps([str(self.source), self.base, self.axes, str(self.out)],
                         sort_keys=True, default=str)
        return f"sweep-{self.stem}-{_slug(self.run)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def pairs(self) -> list[Pair]:
        """Every pair of the grid, in axis order."""
        return expand(self.source, self.base, self.axes, self.run)

    def record(self, pair: Pair) -> Path:
        """The completion record of a pair."""
        return results_paths(self.folder, self.stem, pair.id)[1]

    def failure_path(self, pair: Pair) -> Path:
        """The note a failed job leaves (removed when the pair succeeds)."""
        return failure_path(self.folder, pair.id)

    def merged_path(self) -> Path:
        """The merged results table."""
        return self.out / f"{self.stem}-{self.run}.sweep.csv"


def failure_path(folder: Path, pair_id: str) -> Path:
    """The failure note of pair ``pair_id`` in a sweep's folder."""
    return folder / f"{pair_id}.failed.json"


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = re.sub(r"[^\w.-]+", "_", text).strip("_") or "x"
    return text[:40]


def expand(source: Path, base: Mapping[str, Any], axes: Mapping[str, Sequence[Any]],
           run: str = "sweep") -> list[Pair]:
    """The grid's pairs, validated against the chapter's parameters.

    A value on the axis of a parameter whose default is a list is wrapped in a list unless it
    is one (``tasks=cifar10`` runs the chapter with ``tasks=["cifar10"]``).

    Raises:
        ParameterError: For an unknown parameter, an empty axis, or a bad value type.
    """
    defaults = read_parameters(source)
    for name, values in axes.items():
        if not values:
            raise ParameterError(f"sweep axis {name!r} has no values")
    pairs = []
    for combo in product(*axes.values()):
        point = dict(zip(axes, combo, strict=True))
        overrides = dict(base)
        for name, value in point.items():
            wrap = isinstance(defaults.get(name), list) and not isinstance(value, list)
            overrides[name] = [value] if wrap else value
        check_overrides(source, overrides)
        digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode())
        name = "__".join([_slug(run), *(f"{_slug(k)}-{_slug(v)}" for k, v in point.items()),
                          digest.hexdigest()[:8]])
        pairs.append(Pair(name, point, overrides))
    return pairs


def parse_axes(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["model=openclip_b,clip_b", "seed=0,1"]`` → ``{"model": [...], "seed": [0, 1]}``.

    Each comma-separated value is a Python literal if it parses as one, else a string; a value
    holding commas itself can be given as one literal list: ``"lrs=[{'coarse': 0.1}]"``.

    Raises:
        ParameterError: For an item without ``=``, an axis given twice, an empty value or a
            ``[...]`` value that is not a list literal.
    """
    import ast

    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ParameterError(f"--axis expects name=v1,v2,... got {item!r}")
        if key in out:
            raise ParameterError(f"--axis {key} is given twice; list all its values in one "
                                 f"--axis {key}=v1,v2,...")
        raw = raw.strip()
        if raw.startswith("["):
            try:
                values = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ParameterError(
                    f"--axis {item!r}: a value starting with '[' must be a Python list literal "
                    "of the values, e.g. \"lrs=[{'coarse': 0.1}, {'coarse': 0.5}]\"") from None
            if not isinstance(values, list):
                raise ParameterError(f"--axis {item!r}: expected a list of values")
            out[key] = values
            continue
        parts = [v.strip() for v in raw.split(",")]
        if not raw or any(not v for v in parts):
            raise ParameterError(f"--axis {item!r}: empty value; give name=v1,v2,... with "
                                 "every value non-empty")
        out[key] = [parse_overrides([f"v={v}"])["v"] for v in parts]
    return out


# --------------------------------------------------------------------------------------------
# State of a sweep


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class SweepStatus:
    """Where every pair stands, read from the sweep's folder.

    Attributes:
        done: Pairs with a complete completion record.
        pending: The rest, in grid order (what a sweep runs or submits).
        failed: Pending pairs whose last job failed (pair id → its failure note).
    """

    done: list[Pair] = field(default_factory=list)
    pending: list[Pair] = field(default_factory=list)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def line(self, total: int) -> str:
        """One progress line."""
        return (f"{len(self.done)}/{total} done, {len(self.pending)} to run "
                f"({len(self.failed)} of them failed before)")


def status(sweep: Sweep, pairs: Sequence[Pair] | None = None) -> SweepStatus:
    """Read the state of every pair from the output folder."""
    out = SweepStatus()
    for pair in pairs if pairs is not None else sweep.pairs():
        if read_record(sweep.record(pair)) is not None:
            out.done.append(pair)
            continue
        out.pending.append(pair)
        if (note := _read_json(sweep.failure_path(pair))) is not None:
            out.failed[pair.id] = note
    return out


# --------------------------------------------------------------------------------------------
# The job function


def make_task(sweep: Sweep, pair: Pair, timeout: int | None = None) -> dict[str, Any]:
    """What :func:`run_pair` needs to run one pair: a JSON-able dict.

    Args:
        sweep: The sweep.
        pair: One of its pairs.
        timeout: Per-cell timeout of the notebook in seconds (``None``: no limit).
    """
    return {"chapter": str(sweep.source), "pair": pair.id, "axes": pair.axes,
            "overrides": pair.overrides, "folder": str(sweep.folder), "timeout": timeout}


def tasks(sweep: Sweep, pairs: Sequence[Pair] | None = None,
          timeout: int | None = None) -> list[dict[str, Any]]:
    """The tasks of the unfinished pairs (all of ``pairs`` if given), in grid order."""
    todo = status(sweep).pending if pairs is None else pairs
    return [make_task(sweep, p, timeout) for p in todo]


def run_pair(task: Mapping[str, Any]) -> str:
    """Run one pair of a sweep: the job function of every executor (local pool, SLURM, ...).

    The chapter is executed by :func:`residual_core.runner.execute.execute` (papermill run, results
    table, completion record). A pair that already has a complete record is not run again. A
    job that raises leaves a failure note ``{folder}/{pair}.failed.json`` (the executed
    notebook holds the traceback) and re-raises, so the scheduler sees it fail; a job that is
    killed leaves no complete record, so the next sweep runs the pair again.

    Args:
        task: One item of :func:`tasks`: ``chapter``, ``pair``, ``overrides``, ``folder``,
            ``timeout``.

    Returns:
        The path of the pair's completion record.
    """
    folder, pair_id = Path(task["folder"]), str(task["pair"])
    stem = Path(task["chapter"]).stem
    record = results_paths(folder, stem, pair_id)[1]
    if read_record(record) is not None:
        _log(f"{pair_id}: finished before, skipped")
        return str(record)
    note = failure_path(folder, pair_id)
    started = time.perf_counter()
    _log(f"start {pair_id} on {socket.gethostname()} (pid {os.getpid()}, "
         f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    try:
        execute(task["chapter"], pair_id, task["overrides"], out_dir=folder,
                       timeout=task.get("timeout"))
    except Exception as err:
        atomic_write(note, json.dumps(
            {"pair": pair_id, "host": socket.gethostname(), "pid": os.getpid(),
             "seconds": round(time.perf_counter() - started, 1), "error": str(err)}) + "\n")
        _log(f"FAILED {pair_id} after {time.perf_counter() - started:.0f} s: "
             f"{_first_line(err)}")
        raise
    note.unlink(missing_ok=True)
    _log(f"done {pair_id} in {time.perf_counter() - started:.0f} s")
    return str(record)


# --------------------------------------------------------------------------------------------
# Merging


def merge(sweep: Sweep, pairs: Sequence[Pair] | None = None) -> pd.DataFrame:
    """Merge the results tables of every finished pair, one column per axis (atomically).

    Returns:
        The merged table (empty if nothing is finished), also written to
        :meth:`Sweep.merged_path`.
    """
    import pandas as pd

    frames = []
    for pair in pairs if pairs is not None else sweep.pairs():
        record_path = sweep.record(pair)
        record = read_record(record_path)
        if record is None:
            continue
        table = pd.read_csv(record_path.parent / record["results_csv"])
        axes = {f"sweep_{k}": v if isinstance(v, str) else json.dumps(v)
                for k, v in pair.axes.items()}
        frames.append(table.assign(**axes, sweep_pair=pair.id)[
            [*axes, "sweep_pair", *table.columns]])
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    atomic_write(sweep.merged_path(), merged.to_csv(index=False))
    return merged


def finish(sweep: Sweep, pairs: Sequence[Pair] | None = None) -> tuple[SweepStatus, pd.DataFrame]:
    """Read the final status, merge the finished pairs' tables and log both (and failures)."""
    pairs = sweep.pairs() if pairs is None else pairs
    final = status(sweep, pairs)
    merged = merge(sweep, pairs)
    _log(f"finished: {final.line(len(pairs))}; merged {len(merged)} rows of {len(final.done)} "
         f"pairs → {sweep.merged_path()}")
    for pair_id, note in final.failed.items():
        _log(f"failed: {pair_id}: {str(note.get('error', '?')).strip().splitlines()[:1]}")
    return final, merged


# --------------------------------------------------------------------------------------------
# Executor 1: a pool of worker processes on this machine


def _worker(slot: int, env: dict[str, str], inbox: Any, outbox: Any) -> None:
    os.environ.update(env)  # before any kernel starts: it inherits CUDA_VISIBLE_DEVICES
    while (item := inbox.get()) is not None:
        try:
            run_pair(item)
        except Exception as err:  # reported; the worker goes on with the next pair
            outbox.put((slot, item["pair"], _first_line(err)))
        else:
            outbox.put((slot, item["pair"], None))


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [g for g in visible.split(",") if g.strip()] if visible is not None else []


def run_local(
    sweep: Sweep,
    *,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    isolate_cache: bool | None = None,
    timeout: int | None = None,
    progress_every: float = 10.0,
) -> tuple[SweepStatus, pd.DataFrame]:
    """Run the unfinished pairs with ``workers`` processes on this machine, then merge.

    The parent hands out one pair at a time to each worker (one queue per worker) and collects
    their reports, so no files coordinate the workers. A worker that dies takes only its
    current pair with it (no record: the next sweep redoes it).

    Args:
        sweep: The sweep.
        workers: Worker processes (one per GPU on a GPU box).
        gpus: GPU ids, one per worker in turn (``CUDA_VISIBLE_DEVICES``); ``None``: the
            visible ones (``$CUDA_VISIBLE_DEVICES``, else ``0..workers-1``) when ``workers > 1``,
            untouched with one worker; ``[]``: never set.
        isolate_cache: Give each worker its own ``$RESIDUAL_CACHE/sweep-w{slot}`` (default:
            when ``workers > 1``; shared, each store is built under ``store.store_lock``).
        timeout: Per-cell timeout of the notebooks.
        progress_every: Seconds between progress lines (also printed on every change).

    Returns:
        The final status and the merged table.

    Raises:
        ParameterError: If ``workers < 1``.
    """
    if workers < 1:
        raise ParameterError(f"workers must be at least 1, got {workers}")
    pairs = sweep.pairs()
    sweep.folder.mkdir(parents=True, exist_ok=True)
    before = status(sweep, pairs)
    todo = tasks(sweep, before.pending, timeout)
    if gpus is None:
        gpus = (_visible_gpus() or [str(i) for i in range(workers)]) if workers > 1 else []
    isolate = workers > 1 if isolate_cache is None else isolate_cache
    from residual_core.core.io import cache_root

    cache = cache_root()
    n_procs = min(workers, len(todo))
    _log(f"{sweep.stem} [{sweep.run}]: {len(pairs)} pairs over {', '.join(sweep.axes)}; "
         f"{before.line(len(pairs))}; {n_procs} worker(s) on {socket.gethostname()}; "
         f"output {sweep.folder}")
    ctx = multiprocessing.get_context("spawn")
    outbox = ctx.Queue()
    procs: dict[int, Any] = {}
    inboxes: dict[int, Any] = {}
    holding: dict[int, str | None] = {}
    queued = list(reversed(todo))
    ok, failed = 0, {}

    def hand_out(slot: int) -> None:
        item = queued.pop() if queued else None
        holding[slot] = None if item is None else item["pair"]
        inboxes[slot].put(item)

    for slot in range(n_procs):
        env = {}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
        if isolate:
            env["RESIDUAL_CACHE"] = str(cache / f"sweep-w{slot}")
        inboxes[slot] = ctx.Queue()
        procs[slot] = ctx.Process(target=_worker, args=(slot, env, inboxes[slot], outbox),
                                  name=f"sweep-w{slot}", daemon=True)
        procs[slot].start()
        hand_out(slot)
    started, last_line, last_time = time.time(), "", 0.0
    try:
        while any(holding.get(s) is not None for s in procs):
            try:
                slot, pair_id, error = outbox.get(timeout=1.0)
            except queue.Empty:
                for s, proc in procs.items():
                    if holding.get(s) is not None and not proc.is_alive():
                        failed[holding[s]] = f"worker {s} died (exit code {proc.exitcode})"
                        _log(f"worker {s} died (exit code {proc.exitcode}) while running "
                             f"{holding[s]}")
                        holding[s] = None
            else:
                if error is None:
                    ok += 1
                else:
                    failed[pair_id] = error
                hand_out(slot)
            left = len(queued) + sum(h is not None for h in holding.values())
            line = (f"{len(before.done) + ok}/{len(pairs)} done, {len(failed)} failed, "
                    f"{left} left")
            if line != last_line or time.time() - last_time > progress_every:
                elapsed, ended = time.time() - started, ok + len(failed)
                eta = f", ~{elapsed / ended * left / 60:.0f} min left" if ended and left else ""
                _log(f"{line}; {elapsed / 60:.1f} min{eta}")
                last_line, last_time = line, time.time()
    finally:
        for s, proc in procs.items():
            if holding.get(s) is None:
                proc.join(timeout=30)  # it got its stop sign
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return finish(sweep, pairs)


# --------------------------------------------------------------------------------------------
# Executor 2: a job array through submitit (SLURM on a cluster)


@dataclass
class SlurmOptions:
    """Resources of every task of a SLURM array (what ``runner sweep --executor slurm`` takes).

    Attributes:
        partition: SLURM partition (``None``: the cluster's default).
        gpus_per_task: GPUs per task (one pair per task; 0: none).
        cpus_per_task: CPU cores per task (data loading, ``num_workers``).
        mem_gb: Host memory per task in GB.
        time_min: Time limit per task in minutes; a task past it is killed and redone by the
            next submission.
        array_parallelism: Tasks running at once (``None``: submitit's default, 256).
        sbatch: Extra ``#SBATCH`` options, e.g. ``{"account": "proj", "qos": "high"}``;
            ``True`` writes a flag without value. They override the options above.
        setup: Shell lines run before each task (``module load ...``, ``export ...``).
    """

    partition: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_gb: float = 64.0
    time_min: int = 1440
    array_parallelism: int | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    def parameters(self, job_name: str) -> dict[str, Any]:
        """The keyword arguments of ``submitit.SlurmExecutor.update_parameters``.

        Tasks start in the repository root (``--chdir``), where the chapters run.

        Raises:
            ParameterError: For a non-positive count, memory or time.
        """
        from submitit.slurm.slurm import _convert_mem

        for name in ("cpus_per_task", "time_min", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ParameterError(f"{name} must be at least 1, got {value}")
        if self.gpus_per_task < 0 or self.mem_gb <= 0:
            raise ParameterError(
                f"gpus_per_task must be >= 0 and mem_gb > 0, got {self.gpus_per_task} and "
                f"{self.mem_gb}")
        params: dict[str, Any] = {
            "job_name": job_name, "time": int(self.time_min), "cpus_per_task": self.cpus_per_task,
            "mem": _convert_mem(self.mem_gb), "stderr_to_stdout": True,
            # the sbatch options of the user override ours, whatever their spelling
            "additional_parameters": {"chdir": str(ROOT),
                                      **{k.replace("-", "_"): v for k, v in self.sbatch.items()}},
        }
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_task:
            params["gpus_per_node"] = self.gpus_per_task  # one task per job: per node = per task
        if self.array_parallelism is not None:
            params["array_parallelism"] = self.array_parallelism
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def slurm_executor(sweep: Sweep, options: SlurmOptions) -> submitit.SlurmExecutor:
    """A submitit executor that submits the sweep's tasks to SLURM with ``options``.

    Raises:
        RunnerError: If SLURM's ``srun`` is not on the ``PATH`` (not on a cluster).
    """
    import submitit

    params = options.parameters(sweep.job_name)
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        raise RunnerError(
            "--executor slurm submits with SLURM's sbatch and srun, which are not on the PATH "
            "here: run this on the cluster's login node (--dry-run shows the script without "
            "them; --executor local runs on this machine)")
    executor = submitit.SlurmExecutor(folder=sweep.log_folder / "%j")
    executor.update_parameters(**params)
    return executor


def sbatch_script(sweep: Sweep, options: SlurmOptions, n_tasks: int) -> str:
    """The sbatch script :func:`submit` hands to SLURM for ``n_tasks`` pending pairs.

    Built with the function submitit itself writes it with, from the same parameters, so it is
    the script a submission would write (one task is a plain job, more are an array).
    """
    from submitit.slurm.slurm import _make_sbatch_string

    folder = (sweep.log_folder / "%j").expanduser().absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder,
                               map_count=n_tasks if n_tasks > 1 else None,
                               **options.parameters(sweep.job_name))


def live_jobs(job_name: str) -> list[str]:
    """Ids of SLURM jobs named ``job_name`` still queued or running (``squeue``), if any."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return []
    out = subprocess.run([squeue, "--noheader", "--name", job_name, "--format", "%i"],
                         capture_output=True, text=True, check=False)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def submit(sweep: Sweep, executor: submitit.Executor, *,
           timeout: int | None = None) -> tuple[list[dict[str, Any]], list[submitit.Job]]:
    """Submit the unfinished pairs as one job array: one task per pair, :func:`run_pair` each.

    The task ↔ pair table is written to ``{log_folder}/{first job id}.tasks.json``; each task's
    log is in its sub-folder of :attr:`Sweep.log_folder`.

    Args:
        sweep: The sweep.
        executor: A submitit executor: :func:`slurm_executor`, or ``submitit.LocalExecutor``
            (local processes, the same job function and records).
        timeout: Per-cell timeout of the notebooks.

    Returns:
        The submitted tasks and their jobs (both empty when every pair is finished).

    Raises:
        RunnerError: If SLURM still runs an array of this sweep (its pairs would run
            twice).
    """
    pairs = sweep.pairs()
    before = status(sweep, pairs)
    _log(f"{sweep.stem} [{sweep.run}]: {len(pairs)} pairs over {', '.join(sweep.axes)}; "
         f"{before.line(len(pairs))}; output {sweep.folder}")
    todo = tasks(sweep, before.pending, timeout)
    if not todo:
        return [], []
    import submitit

    if isinstance(executor, submitit.SlurmExecutor) and (live := live_jobs(sweep.job_name)):
        raise RunnerError(
            f"SLURM still has job(s) {', '.join(live)} of this sweep ({sweep.job_name}) queued "
            "or running; their pairs would run twice. Wait for them (squeue --name "
            f"{sweep.job_name}) or cancel them (scancel --name {sweep.job_name}), then submit "
            "again: only unfinished pairs are submitted.")
    sweep.log_folder.mkdir(parents=True, exist_ok=True)
    jobs = executor.map_array(run_pair, todo)
    table = [{"job": job.job_id, "pair": t["pair"], "log": str(job.paths.stdout)}
             for job, t in zip(jobs, todo, strict=True)]
    table_path = sweep.log_folder / f"{jobs[0].job_id}.tasks.json"
    atomic_write(table_path, json.dumps(table, indent=1) + "\n")
    _log(f"submitted {len(jobs)} task(s) as {jobs[0].job_id.split('_')[0]} ({sweep.job_name}); "
         f"task ↔ pair table: {table_path}")
    return todo, jobs


def wait(sweep: Sweep, todo: Sequence[Mapping[str, Any]], jobs: Sequence[submitit.Job], *,
         poll: float = 30.0) -> tuple[SweepStatus, pd.DataFrame]:
    """Block until every job has ended (finished, failed, killed or cancelled), then merge.

    Args:
        sweep: The sweep.
        todo: The submitted tasks (as :func:`submit` returned them).
        jobs: Their jobs.
        poll: Seconds between looks at the jobs' states.

    Returns:
        The final status (read from the records, not from the scheduler) and the merged table.
    """
    from submitit.helpers import as_completed

    pair_of = {job.job_id: t["pair"] for job, t in zip(jobs, todo, strict=True)}
    started, ended = time.time(), 0
    for job in as_completed(list(jobs), poll_frequency=poll):
        ended += 1
        try:
            job.result()
            outcome = "done"
        except Exception as err:  # a failed, killed or cancelled task: no record, redone later
            outcome = f"FAILED ({_first_line(err)}; log {job.paths.stdout})"
        _log(f"{ended}/{len(jobs)} ended after {(time.time() - started) / 60:.1f} min: "
             f"{pair_of[job.job_id]} {outcome}")
    return finish(sweep, sweep.pairs())
