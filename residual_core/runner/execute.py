"""Execute one chapter with papermill: its notebook, results table and completion record."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from residual_core.core.io import cache_root
from residual_core.runner.chapters import (
    EXECUTED,
    ROOT,
    RunnerError,
    _read_notebook,
    _rel,
    check_overrides,
)
from residual_core.runner.presets import DEFAULT_PROFILE
from residual_core.runner.records import RESULTS_PARAMETER, ChapterRun, results_paths, write_record

__all__ = ["ChapterRun", "NotebookError", "execute"]


class NotebookError(RunnerError):
    """A cell of a chapter raised while executing.

    Attributes:
        notebook: The chapter's source file.
        run: The run name.
        cell: 1-based number of the failing code cell in the chapter source (parameters = 1).
        line: Line of the failing cell in the source file, or ``None`` if it was not found.
        output: The executed notebook, which holds the traceback.
    """

    def __init__(
        self, message: str, notebook: Path, run: str, cell: int | None, line: int | None,
        output: Path,
    ):
        super().__init__(message)
        self.notebook, self.run, self.cell, self.line, self.output = (
            notebook, run, cell, line, output)


def _locate_cell(source: Path, cell_source: str) -> tuple[int | None, int | None]:
    """Number (1-based, code cells) and source line of the failing cell in the chapter file."""
    import jupytext

    nb = jupytext.read(source)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    number = next((i + 1 for i, c in enumerate(code) if c.strip() == cell_source.strip()), None)
    text = source.read_text()
    first = cell_source.strip().splitlines()[0] if cell_source.strip() else ""
    offset = text.find(cell_source.strip()) if cell_source.strip() else -1
    if offset < 0 and first:
        offset = text.find(first)
    line = text.count("\n", 0, offset) + 1 if offset >= 0 else None
    return number, line


def _kernel_path(path: Path) -> str:
    """A path as the kernel (cwd = repository root) should see it: relative when inside."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


def execute(
    source: Path | str,
    run: str = DEFAULT_PROFILE,
    overrides: Mapping[str, Any] | None = None,
    *,
    out_dir: Path | str = EXECUTED,
    log_output: bool = False,
    timeout: int | None = None,
) -> ChapterRun:
    """Execute one chapter with papermill.

    A chapter with a ``results_file`` parameter writes its key results table there; unless the
    caller sets it, the runner points it to ``{out_dir}/{stem}-{run}.results.csv`` and, after
    the whole notebook succeeded, writes the completion record ``{stem}-{run}.results.json``
    (parameters, row count, sha256 of the table, wall time, host) atomically. A run without a
    complete record is not finished (see :func:`read_record`).

    Args:
        source: The chapter's jupytext ``.py`` file.
        run: Run name; the output is ``{out_dir}/{stem}-{run}.ipynb``.
        overrides: Parameter values to inject (validated against the parameters cell).
        out_dir: Where to write the executed notebook.
        log_output: Stream the cells' outputs to the terminal.
        timeout: Per-cell timeout in seconds (``None``: no limit).

    Returns:
        The executed run with its output path, wall time and results.

    Raises:
        ParameterError: For unknown or malformed parameters.
        NotebookError: If a cell raises; names the notebook, the cell and its source line.
        RunnerError: If the chapter has a ``results_file`` parameter but wrote no table.
        CacheRootError: If ``$RESIDUAL_CACHE`` is empty, a file or cannot be created.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError, strip_color

    source = Path(source).resolve()
    overrides = dict(overrides or {})
    full = check_overrides(source, overrides)
    cache_root()  # a bad $RESIDUAL_CACHE is refused here, not inside the notebook
    nb = _read_notebook(source)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{source.stem}-{run}.ipynb"
    table, record = results_paths(out_dir, source.stem, run)
    has_results = RESULTS_PARAMETER in full
    if has_results:
        record.unlink(missing_ok=True)  # unfinished until this execution succeeds
        if overrides.get(RESULTS_PARAMETER) is None:
            overrides[RESULTS_PARAMETER] = _kernel_path(table)
        else:
            table = Path(overrides[RESULTS_PARAMETER])
            table = table if table.is_absolute() else ROOT / table
        table.unlink(missing_ok=True)  # a table left by an earlier run must not count
        full = {**full, RESULTS_PARAMETER: overrides[RESULTS_PARAMETER]}
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            nb, str(output), parameters=overrides, progress_bar=False, log_output=log_output,
            cwd=str(ROOT), execution_timeout=timeout,
            extra_arguments=["--log-level=ERROR"],  # quiet the kernel app's own start-up log
        )
    except PapermillExecutionError as err:
        cell, line = _locate_cell(source, err.source)
        where = f"{_rel(source)}:{line}" if line else _rel(source)
        snippet = textwrap.indent(textwrap.shorten(err.source, 300, placeholder=" ..."), "    ")
        trace = strip_color("\n".join(err.traceback[-6:]))
        raise NotebookError(
            f"notebook {source.name} (run {run!r}) failed in code cell {cell or '?'} "
            f"(In [{err.exec_count}], {where}):\n{snippet}\n{err.ename}: {err.evalue}\n"
            f"--- traceback (end) ---\n{trace}\n"
            f"The executed notebook with the full traceback: {_rel(output)}",
            source, run, cell, line, output,
        ) from None
    seconds = time.perf_counter() - started
    result = ChapterRun(source, run, overrides, output, seconds)
    if has_results:
        if not table.is_file():
            raise RunnerError(
                f"{source.name} (run {run!r}) has a {RESULTS_PARAMETER!r} parameter but wrote no "
                f"results table to {_rel(table)}: call residual_core.runner.records.write_results")
        write_record(result, full, table, record)
        result.results, result.record = table, record
    return result
