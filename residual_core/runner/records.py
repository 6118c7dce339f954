"""What a run leaves behind: the chapter's results table and the runner's completion record.

A chapter ends its main computation with :func:`write_results`, which writes the chapter's key
table as CSV to the ``results_file`` parameter the runner injects (importing this module starts
the run's clock). After the whole notebook succeeded, the runner writes the completion record
next to it (:func:`write_record`); a run without a complete record (:func:`read_record`) is not
finished, which is what a sweep counts.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from residual_core.core.io import atomic_write

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RESULTS_PARAMETER", "RUN_COLUMNS", "STARTED", "ChapterRun", "peak_gpu_mib",
           "read_record", "results_paths", "write_record", "write_results"]

STARTED = time.perf_counter()
"""When the chapter imported this module (its first code cell after the parameters)."""

RUN_COLUMNS = ("run_wall_s", "peak_gpu_mib")
"""Columns :func:`write_results` adds: chapter wall time so far, peak GPU memory allocated."""

@dataclass
class ChapterRun:
    """One chapter executed with one parameter set.

    Attributes:
        source: The chapter's ``.py`` file.
        run: Run name (part of the output file name).
        parameters: Overrides injected by papermill (the rest keep their defaults).
        output: The executed notebook.
        seconds: Wall time of the execution.
        results: The chapter's results table (CSV), if it writes one.
        record: The run's completion record (JSON next to the notebook), if it has results.
    """

    source: Path
    run: str
    parameters: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    seconds: float = 0.0
    results: Path | None = None
    record: Path | None = None

    @property
    def stem(self) -> str:
        """Chapter name, e.g. ``00_units``."""
        return self.source.stem



RESULTS_PARAMETER = "results_file"
"""The chapter parameter the runner sets to where the chapter writes its results table."""


def results_paths(out_dir: Path | str, stem: str, run: str) -> tuple[Path, Path]:
    """The results table and the completion record of a run, next to its executed notebook.

    Returns:
        ``({out_dir}/{stem}-{run}.results.csv, {out_dir}/{stem}-{run}.results.json)``.
    """
    base = Path(out_dir) / f"{stem}-{run}"
    return base.with_name(base.name + ".results.csv"), base.with_name(base.name + ".results.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_record(path: Path | str) -> dict[str, Any] | None:
    """The completion record of a finished run, or ``None`` if there is no complete one.

    A record is complete when it parses, says ``complete``, and the results table it names
    exists with the recorded sha256 (so a table rewritten by a later, crashed run never passes).
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("complete") is not True:
        return None
    table = path.parent / str(record.get("results_csv", ""))
    try:
        return record if _sha256(table) == record.get("sha256") else None
    except OSError:
        return None


def write_record(run: ChapterRun, full: Mapping[str, Any], table: Path, record: Path) -> None:
    """Write the completion record of a finished run (atomically, after the whole notebook ran)."""
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    atomic_write(record, json.dumps({
        "complete": True,
        "chapter": run.stem,
        "run": run.run,
        "parameters": dict(full),
        "overrides": run.parameters,
        "notebook": run.output.name if run.output else None,
        "results_csv": os.path.relpath(table.resolve(), record.parent.resolve()),
        "sha256": _sha256(table),
        "columns": rows[0] if rows else [],
        "rows": max(len(rows) - 1, 0),
        "seconds": round(run.seconds, 3),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }, indent=1, default=str) + "\n")


def peak_gpu_mib() -> float:
    """Peak GPU memory allocated by torch in this process, in MiB (NaN without CUDA)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return math.nan
    return torch.cuda.max_memory_allocated() / 2**20


def _cell(value: Any) -> Any:
    """A CSV-friendly cell: containers and tensors become JSON text."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, list | tuple | dict | set):
        return json.dumps(value if not isinstance(value, set) else sorted(value), default=str)
    return value


def write_results(table: pd.DataFrame, results_file: str | os.PathLike | None,
                  **constants: Any) -> Path | None:
    """Write the chapter's key results table as CSV (atomically), with the run's cost.

    Args:
        table: One row per result; container cells are written as JSON text.
        results_file: The CSV path (the runner's ``results_file`` parameter); ``None`` writes
            nothing (a chapter run by hand).
        **constants: Extra columns with one value for every row (e.g. the model name).

    Returns:
        The written file, or ``None``.
    """
    if results_file is None:
        return None
    import pandas as pd

    path = Path(results_file)
    out = table.reset_index(drop=isinstance(table.index, pd.RangeIndex)).copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(_cell)
    for key, value in constants.items():
        out[key] = _cell(value)
    out["run_wall_s"] = round(time.perf_counter() - STARTED, 3)
    out["peak_gpu_mib"] = peak_gpu_mib()
    return atomic_write(path, out.to_csv(index=False))  # never a half-written CSV
