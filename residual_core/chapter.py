"""What every chapter does alike: load its model, see every dataset, write its results table.

A chapter imports this module first (its import time starts the run's clock), loads its model
with :func:`load_model` (``weights="random"`` gives a random-initialised stand-in, see
:mod:`residual_core.synthetic`) and ends its main computation with :func:`write_results`, which
writes the chapter's key table as CSV to the ``results_file`` parameter the runner injects.
The runner then records the finished run next to the executed notebook (see
:func:`residual_core.runner.execute`), which is what a sweep counts as done.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from residual_core import synthetic
from residual_core.models import LoadedModel

__all__ = ["RUN_COLUMNS", "STARTED", "load_model", "peak_gpu_mib", "write_results"]

STARTED = time.perf_counter()
"""When the chapter imported this module (its first code cell after the parameters)."""

RUN_COLUMNS = ("run_wall_s", "peak_gpu_mib")
"""Columns :func:`write_results` adds: chapter wall time so far, peak GPU memory allocated."""

PAPER_DATASETS_MODULE = "residual_core.paper_datasets"


def _register_datasets() -> None:
    """Make the paper's datasets visible to ``load_dataset`` when their module is present."""
    try:
        importlib.import_module(PAPER_DATASETS_MODULE)  # registers them on import
    except ModuleNotFoundError as err:
        if err.name != PAPER_DATASETS_MODULE:
            raise


_register_datasets()


def load_model(name: str, weights: str = "pretrained",
               device: str | torch.device = "cpu") -> LoadedModel:
    """The chapter's model (see :func:`residual_core.synthetic.load`)."""
    return synthetic.load(name, weights, device)


def peak_gpu_mib() -> float:
    """Peak GPU memory allocated by torch in this process, in MiB (NaN without CUDA)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return math.nan
    return torch.cuda.max_memory_allocated() / 2**20


def _cell(value: Any) -> Any:
    """A CSV-friendly cell: containers and tensors become JSON text."""
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
    path = Path(results_file)
    out = table.reset_index(drop=isinstance(table.index, pd.RangeIndex)).copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(_cell)
    for key, value in constants.items():
        out[key] = _cell(value)
    out["run_wall_s"] = round(time.perf_counter() - STARTED, 3)
    out["peak_gpu_mib"] = peak_gpu_mib()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # never a half-written CSV
    out.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
