"""Sweeps: one chapter over a grid of parameters, resumable, on several GPUs or machines.

A sweep is a chapter, a base parameter set (a preset of :data:`residual_core.runner.RUNS` plus
overrides) and *axes*, e.g. ``model`` × ``tasks``. Every point of the grid is a **pair**, executed
as one papermill job by :func:`residual_core.runner.execute` into ``{out}/{stem}/``; its
completion record (``*.results.json``, written atomically after the whole notebook succeeded)
is what makes it finished, so a crash never leaves a finished-looking pair.

Workers claim pairs through lock files on the (shared) output folder: a claim is created with
``os.open(..., O_CREAT | O_EXCL)``, so exactly one worker gets it, on one machine or on several
sharing the folder over NFS or similar. A worker refreshes its claim's mtime every
``heartbeat`` seconds while the job runs; a claim is stale when its process is gone (same host)
or its mtime is older than ``stale_after`` (any host), and is then broken under a second
``O_EXCL`` lock so that only one worker takes it over (machines must have distinct host
names: the pid check trusts a claim's host). A pair that fails is marked with the
sweep session that failed it and is not retried in that session; the next sweep retries it.

``workers`` processes run on one box, each with its own ``CUDA_VISIBLE_DEVICES`` (one GPU per
worker) and, by default, its own encoding cache (``$RESIDUAL_CACHE/sweep-w{slot}``: stores are
written by one process at a time). The same command started on several machines with the same
``--out`` shares the work. At the end the results tables of all finished pairs are merged, with
one column per axis, into ``{out}/{stem}-{run}.sweep.csv``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from residual_core import runner

__all__ = [
    "SWEEPS",
    "Pair",
    "Sweep",
    "SweepStatus",
    "break_stale",
    "claim",
    "claim_is_stale",
    "expand",
    "merge",
    "parse_axes",
    "run_sweep",
    "status",
    "work",
]

SWEEPS: dict[str, dict[str, dict[str, list[Any]]]] = {
    "05_residual": {
        "paper": {
            "model": ["openclip_b", "openclip_l", "clip_b", "clip_l", "vit_l", "dinov2_l",
                      "blip_l_flickr"],
            "tasks": list(runner.PAPER_TASKS),
        },
    },
    "01_intrinsic_dimension": {"paper": {"model": ["openclip_b", "openclip_l", "clip_b",
                                                   "clip_l"]}},
    "02_spectral_geometry": {"paper": {"model": ["openclip_b", "openclip_l", "clip_b",
                                                 "clip_l"]}},
}
"""Default grids per chapter and preset: ``{stem: {preset: {parameter: values}}}``. Chapter 05's
paper grid is every model × every dataset (each job trains every variant)."""

HOST = socket.gethostname()


def _log(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


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
        """Where the executed notebooks, results, claims and failure marks go."""
        return self.out / self.stem

    def pairs(self) -> list[Pair]:
        """Every pair of the grid, in axis order."""
        return expand(self.source, self.base, self.axes, self.run)

    def record(self, pair: Pair) -> Path:
        """The completion record of a pair."""
        return runner.results_paths(self.folder, self.stem, pair.id)[1]

    def claim_path(self, pair: Pair) -> Path:
        """The pair's claim file."""
        return self.folder / "claims" / f"{pair.id}.claim"

    def failure_path(self, pair: Pair) -> Path:
        """The pair's failure mark."""
        return self.folder / "claims" / f"{pair.id}.failed.json"

    def merged_path(self) -> Path:
        """The merged results table."""
        return self.out / f"{self.stem}-{self.run}.sweep.csv"

    def to_json(self) -> dict[str, Any]:
        """A picklable, JSON-able form (what worker processes receive)."""
        return {"source": str(self.source), "run": self.run, "base": self.base,
                "axes": self.axes, "out": str(self.out)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Sweep:
        """Inverse of :meth:`to_json`."""
        return cls(Path(d["source"]), d["run"], dict(d["base"]), dict(d["axes"]), Path(d["out"]))


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
        runner.ParameterError: For an unknown parameter, an empty axis, or a bad value type.
    """
    defaults = runner.read_parameters(source)
    for name, values in axes.items():
        if not values:
            raise runner.ParameterError(f"sweep axis {name!r} has no values")
    pairs = []
    for combo in product(*axes.values()):
        point = dict(zip(axes, combo, strict=True))
        overrides = dict(base)
        for name, value in point.items():
            wrap = isinstance(defaults.get(name), list) and not isinstance(value, list)
            overrides[name] = [value] if wrap else value
        runner.check_overrides(source, overrides)
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
        runner.ParameterError: For an item without ``=``.
    """
    import ast

    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise runner.ParameterError(f"--axis expects name=v1,v2,... got {item!r}")
        raw = raw.strip()
        if raw.startswith("["):
            try:
                out[key] = list(ast.literal_eval(raw))
                continue
            except (ValueError, SyntaxError):
                pass
        out[key] = [runner.parse_overrides([f"v={v}"])["v"] for v in raw.split(",")]
    return out


# --------------------------------------------------------------------------------------------
# Claims


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim(path: Path, info: Mapping[str, Any]) -> bool:
    """Create the claim file atomically; ``False`` if someone holds it already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(dict(info)))
        f.flush()
        os.fsync(f.fileno())
    return True


def claim_is_stale(path: Path, stale_after: float, now: float | None = None) -> bool:
    """Whether a claim's holder is gone: a dead pid on this host, or no heartbeat for long.

    A claim that vanished meanwhile is not stale (there is nothing to break).
    """
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > stale_after:
        return True
    info = _read_json(path)
    if info and info.get("host") == HOST and isinstance(info.get("pid"), int):
        return not _pid_alive(info["pid"])
    return False


def break_stale(path: Path, stale_after: float) -> bool:
    """Remove a stale claim, under a breaker lock so that one worker does it, once.

    Returns:
        Whether this call removed it.
    """
    breaker = path.with_name(path.name + ".break")
    with contextlib.suppress(FileNotFoundError):  # a breaker that died mid-way
        if time.time() - breaker.stat().st_mtime > 60:
            breaker.unlink()
    if not claim(breaker, {"host": HOST, "pid": os.getpid()}):
        return False
    try:
        if not claim_is_stale(path, stale_after):  # re-checked under the lock
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            return True
        return False
    finally:
        breaker.unlink(missing_ok=True)


@contextlib.contextmanager
def _heartbeat(path: Path, every: float) -> Iterator[None]:
    """Touch the claim every ``every`` seconds while the job runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------------------------
# State of a sweep


@dataclass
class SweepStatus:
    """Where every pair stands.

    Attributes:
        done: Pairs with a complete record.
        running: Pairs claimed (pair id → claim info).
        failed: Pairs with a failure mark (pair id → mark).
        pending: The rest.
    """

    done: list[Pair] = field(default_factory=list)
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[Pair] = field(default_factory=list)

    def line(self, total: int) -> str:
        """One progress line."""
        return (f"{len(self.done)}/{total} done, {len(self.running)} running, "
                f"{len(self.failed)} failed, {len(self.pending)} pending")


def status(sweep: Sweep, pairs: Sequence[Pair] | None = None) -> SweepStatus:
    """Read the state of every pair from the output folder."""
    out = SweepStatus()
    for pair in pairs if pairs is not None else sweep.pairs():
        if runner.read_record(sweep.record(pair)) is not None:
            out.done.append(pair)
            continue
        held = sweep.claim_path(pair)
        if held.exists():
            out.running[pair.id] = _read_json(held) or {}
        elif (mark := _read_json(sweep.failure_path(pair))) is not None:
            out.failed[pair.id] = mark
            out.pending.append(pair)  # retried by another session
        else:
            out.pending.append(pair)
    return out


# --------------------------------------------------------------------------------------------
# Workers


@dataclass
class WorkerStats:
    """What one worker did: pair ids run, finished and failed."""

    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _run_pair(sweep: Sweep, pair: Pair, session: str, heartbeat: float, tag: str,
              stats: WorkerStats, timeout: int | None) -> None:
    started = time.perf_counter()
    _log(f"{tag} start {pair.id}")
    stats.ran.append(pair.id)
    try:
        with _heartbeat(sweep.claim_path(pair), heartbeat):
            runner.execute(sweep.source, pair.id, pair.overrides, out_dir=sweep.folder,
                           timeout=timeout)
    except (runner.RunnerError, OSError) as err:
        stats.failed.append(pair.id)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        runner.atomic_write_text(sweep.failure_path(pair), json.dumps(
            {"session": session, "host": HOST, "pid": os.getpid(), "error": str(err)}) + "\n")
        _log(f"{tag} FAILED {pair.id} after {time.perf_counter() - started:.0f} s: {first}")
        return
    sweep.failure_path(pair).unlink(missing_ok=True)
    _log(f"{tag} done {pair.id} in {time.perf_counter() - started:.0f} s")


def work(sweep: Sweep, *, slot: int = 0, session: str = "", stale_after: float = 600.0,
         heartbeat: float = 30.0, poll: float = 2.0, timeout: int | None = None) -> WorkerStats:
    """Claim and run pairs until none is left to run (the loop of one worker).

    A worker waits while other workers' claims are live, so that a claim that turns stale
    (its worker or machine died) is taken over; it returns when every pair is done or failed in
    this session.

    Args:
        sweep: The sweep.
        slot: This worker's number (for the log).
        session: Identifies the sweep invocation (failures are not retried within it).
        stale_after: Seconds without a heartbeat after which a claim is stale.
        heartbeat: Seconds between refreshes of a held claim.
        poll: Seconds between looks at the folder while waiting on others.
        timeout: Per-cell timeout of the notebooks.

    Returns:
        The pairs this worker ran and those that failed.
    """
    tag = f"{HOST}/w{slot}"
    stats = WorkerStats()
    pairs = sweep.pairs()
    while True:
        state = status(sweep, pairs)
        todo = [p for p in state.pending
                if state.failed.get(p.id, {}).get("session") != session]
        progressed = False
        for pair in todo:
            info = {"host": HOST, "pid": os.getpid(), "slot": slot, "session": session,
                    "started": time.time()}
            if not claim(sweep.claim_path(pair), info):
                continue  # another worker was faster
            try:
                if runner.read_record(sweep.record(pair)) is None:  # finished meanwhile?
                    _run_pair(sweep, pair, session, heartbeat, tag, stats, timeout)
                    progressed = True
            finally:
                sweep.claim_path(pair).unlink(missing_ok=True)
            break  # re-read the state after each job
        if progressed:
            continue
        stale = [pid for pid in state.running
                 if claim_is_stale(sweep.folder / "claims" / f"{pid}.claim", stale_after)]
        for pair_id in stale:
            if break_stale(sweep.folder / "claims" / f"{pair_id}.claim", stale_after):
                _log(f"{tag} took over the stale claim of {pair_id}")
        if not todo and not state.running:
            return stats
        if not stale:
            time.sleep(poll)


def _worker_main(spec: dict[str, Any], slot: int, env: dict[str, str],
                 options: dict[str, Any]) -> None:
    os.environ.update(env)  # before any kernel starts: it inherits CUDA_VISIBLE_DEVICES
    stats = work(Sweep.from_json(spec), slot=slot, **options)
    if stats.failed:
        raise SystemExit(1)


# --------------------------------------------------------------------------------------------
# The whole sweep


def merge(sweep: Sweep, pairs: Sequence[Pair] | None = None):
    """Merge the results tables of every finished pair, one column per axis (atomically).

    Returns:
        The merged ``pandas.DataFrame`` (empty if nothing is finished), also written to
        :meth:`Sweep.merged_path`.
    """
    import pandas as pd

    frames = []
    for pair in pairs if pairs is not None else sweep.pairs():
        record_path = sweep.record(pair)
        record = runner.read_record(record_path)
        if record is None:
            continue
        table = pd.read_csv(record_path.parent / record["results_csv"])
        axes = {f"sweep_{k}": v if isinstance(v, str) else json.dumps(v)
                for k, v in pair.axes.items()}
        frames.append(table.assign(**axes, sweep_pair=pair.id)[
            [*axes, "sweep_pair", *table.columns]])
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    runner.atomic_write_text(sweep.merged_path(), merged.to_csv(index=False))
    return merged


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    return []


def run_sweep(
    sweep: Sweep,
    *,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    isolate_cache: bool | None = None,
    stale_after: float = 600.0,
    heartbeat: float = 30.0,
    poll: float = 2.0,
    timeout: int | None = None,
    progress_every: float = 10.0,
) -> tuple[SweepStatus, Any]:
    """Run a sweep with ``workers`` processes on this machine, then merge the results.

    Args:
        sweep: The sweep.
        workers: Worker processes (one per GPU on a GPU box).
        gpus: GPU ids, one per worker in turn (``CUDA_VISIBLE_DEVICES``); ``None``: the
            visible ones (``$CUDA_VISIBLE_DEVICES``, else ``0..workers-1``) when ``workers > 1``,
            untouched with one worker; ``[]``: never set.
        isolate_cache: Give each worker its own ``$RESIDUAL_CACHE/sweep-w{slot}`` (default:
            when ``workers > 1``).
        stale_after: Seconds without a heartbeat after which a claim is stale.
        heartbeat: Seconds between refreshes of a held claim.
        poll: Seconds between looks at the folder.
        timeout: Per-cell timeout of the notebooks.
        progress_every: Seconds between progress lines (also printed on every change).

    Returns:
        The final status and the merged table.
    """
    pairs = sweep.pairs()
    sweep.folder.mkdir(parents=True, exist_ok=True)
    session = f"{HOST}-{os.getpid()}-{int(time.time())}"
    if gpus is None:
        gpus = (_visible_gpus() or [str(i) for i in range(workers)]) if workers > 1 else []
    isolate = workers > 1 if isolate_cache is None else isolate_cache
    from residual_core.store import DEFAULT_CACHE

    cache = Path(os.environ.get("RESIDUAL_CACHE", DEFAULT_CACHE))
    before = status(sweep, pairs)
    _log(f"{sweep.stem} [{sweep.run}]: {len(pairs)} pairs over {', '.join(sweep.axes)}; "
         f"{before.line(len(pairs))}; {workers} worker(s) on {HOST}; output {sweep.folder}")
    options = {"session": session, "stale_after": stale_after, "heartbeat": heartbeat,
               "poll": poll, "timeout": timeout}
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for slot in range(workers):
        env = {}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
        if isolate:
            env["RESIDUAL_CACHE"] = str(cache / f"sweep-w{slot}")
        proc = ctx.Process(target=_worker_main, args=(sweep.to_json(), slot, env, options),
                           name=f"sweep-w{slot}")
        proc.start()
        procs.append(proc)
    started, last_line, last_time = time.time(), "", 0.0
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(min(poll, 1.0))
            state = status(sweep, pairs)
            line = state.line(len(pairs))
            if line != last_line or time.time() - last_time > progress_every:
                new = len(state.done) - len(before.done)
                elapsed = time.time() - started
                eta = ""
                if new > 0 and state.pending:
                    left = elapsed / new * (len(state.pending) + len(state.running))
                    eta = f", ~{left / 60:.0f} min left"
                _log(f"{line}; {elapsed / 60:.1f} min{eta}")
                last_line, last_time = line, time.time()
    finally:
        for p in procs:
            p.join()
    final = status(sweep, pairs)
    merged = merge(sweep, pairs)
    _log(f"finished: {final.line(len(pairs))}; merged {len(merged)} rows of {len(final.done)} "
         f"pairs → {sweep.merged_path()}")
    for pair_id, mark in final.failed.items():
        first = str(mark.get("error", "")).splitlines()[:1]
        _log(f"failed: {pair_id}: {first[0] if first else '?'}")
    return final, merged
