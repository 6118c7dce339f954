"""Execute one chapter with papermill: its notebook, results table and completion record."""

from __future__ import annotations

import glob
import os
import socket
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from residual_core.core.io import alive, cache_root
from residual_core.runner.chapters import (
    EXECUTED,
    ROOT,
    ParameterError,
    RunnerError,
    _read_notebook,
    _rel,
    check_overrides,
    writable_dir,
)
from residual_core.runner.presets import DEFAULT_PROFILE
from residual_core.runner.records import RESULTS_PARAMETER, ChapterRun, results_paths, write_record

__all__ = ["ChapterRun", "NotebookError", "NotebookTimeoutError", "check_device_here", "execute",
           "failed_path"]


class NotebookError(RunnerError):
    """A cell of a chapter raised while executing (or its kernel died): the run failed, exit 1.

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

    exit_code = 1  # the chapter's own code failed: not a refused input

    def __reduce__(self):  # crosses processes whole (``book --jobs``): args is the message only
        return type(self), (str(self), self.notebook, self.run, self.cell, self.line,
                            self.output)


class NotebookTimeoutError(NotebookError):
    """A cell ran past the per-cell timeout the user set (``--timeout``): exit 2."""

    exit_code = 2


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


def _partial(path: Path) -> Path:
    """Where this process writes ``path`` until the run has succeeded (hidden, per host and pid).

    A run killed at any point leaves only such names behind, never a half-finished file under
    the final name, and the earlier complete run stays as it was.
    """
    # the suffix stays last: papermill warns about an output name not ending in .ipynb
    return path.with_name(
        f".{path.name}.{socket.gethostname()}.{os.getpid()}.partial{path.suffix}")


def _remove_stale_partials(path: Path, tail: str | None = None) -> None:
    """Remove what killed runs of ``path`` on this host left (their process is gone).

    Args:
        path: The final file.
        tail: How the partial names end (default ``.partial{suffix}``, as :func:`_partial`;
            ``.partial.claims.csv`` for the claims beside a partial table).
    """
    host = socket.gethostname()
    tail = tail or f".partial{path.suffix}"
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}.*{tail}"):
        pid = stale.name[: -len(tail)].rpartition(".")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            stale.unlink(missing_ok=True)


def _partial_claims(table: Path) -> Path:
    """Where the kernel's :func:`~residual_core.analysis.claims.write_claims` puts its claims.

    The chapter writes them next to the table it was given, the partial one, so they stay
    aside with it until the run has succeeded.
    """
    return _claims_path(_partial(table))


def _claims_path(table: Path) -> Path:
    # imported here: the runner's command line stays free of pandas until a chapter runs
    from residual_core.analysis.claims import claims_path

    return claims_path(table)


def failed_path(output: Path) -> Path:
    """The notebook of a failed run of ``output`` (``{stem}-{run}.failed.ipynb``)."""
    return output.with_name(output.name.removesuffix(".ipynb") + ".failed.ipynb")


def check_device_here(source: Path, full: Mapping[str, Any]) -> None:
    """Refuse ``device="cuda"`` (or ``"mps"``) before a kernel starts if this machine lacks it.

    Raises:
        ParameterError: Naming the chapter and the ``device`` parameter.
    """
    device = full.get("device")
    if not (isinstance(device, str) and device.startswith(("cuda", "mps"))):
        return
    from residual_core.core.checks import check_device
    from residual_core.core.errors import ResidualError

    try:
        check_device(device)
    except ResidualError as err:
        raise ParameterError(f"{source.name}: {err}") from None


def _running_cell(output: Path) -> str:
    """Source of the last code cell that started in a papermill output notebook (``""``)."""
    import nbformat

    try:
        nb = nbformat.read(output, as_version=4)
    except (OSError, ValueError):
        return ""
    started = [c for c in nb.cells if c.cell_type == "code"
               and c.metadata.get("papermill", {}).get("start_time")]
    return started[-1].source if started else ""


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
    complete record is not finished (see :func:`read_record`). The claims table a chapter
    writes beside its results (:func:`residual_core.analysis.claims.write_claims`) moves in
    with the table, as ``{stem}-{run}.claims.csv``; a run that writes none removes an earlier
    run's.

    The notebook and the table are written under hidden per-process names (:func:`_partial`)
    and moved over the earlier run's files only once the whole notebook succeeded, the record
    last: a rerun that fails, times out or is killed (even with ``kill -9``) leaves the
    earlier complete run as it was. A failed run's notebook, with the traceback, is
    ``{stem}-{run}.failed.ipynb`` (removed by the next success).

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
        ParameterError: For unknown or refused parameters, a device this machine lacks, a
            timeout below one second or an output folder that cannot be written.
        NotebookError: If a cell raises or the kernel dies; names the notebook, the cell and
            its source line.
        NotebookTimeoutError: If a cell runs past ``timeout``; names the cell and the limit.
        RunnerError: If the chapter has a ``results_file`` parameter but wrote no table.
        CacheRootError: If ``$RESIDUAL_CACHE`` is empty, a file or cannot be created.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError, strip_color

    source = Path(source).resolve()
    overrides = dict(overrides or {})
    full = check_overrides(source, overrides)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or timeout < 1):
        raise ParameterError(f"timeout must be a whole number of seconds ≥ 1, got {timeout!r}")
    check_device_here(source, full)
    cache_root()  # a bad $RESIDUAL_CACHE is refused here, not inside the notebook
    nb = _read_notebook(source)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    out_dir = writable_dir(out_dir, "the output folder")
    output = out_dir / f"{source.stem}-{run}.ipynb"
    table, record = results_paths(out_dir, source.stem, run)
    has_results = RESULTS_PARAMETER in full
    if has_results:
        if overrides.get(RESULTS_PARAMETER) is not None:
            table = Path(overrides[RESULTS_PARAMETER])
            table = table if table.is_absolute() else ROOT / table
            writable_dir(table.parent, f"the folder of {RESULTS_PARAMETER}")
        full = {**full, RESULTS_PARAMETER: _kernel_path(table)}
        _remove_stale_partials(table)
        _remove_stale_partials(table, ".partial.claims.csv")  # see _partial_claims
        _partial(table).unlink(missing_ok=True)
        _partial_claims(table).unlink(missing_ok=True)
        # the kernel writes this run's table aside; the earlier complete one stays in place
        overrides[RESULTS_PARAMETER] = _kernel_path(_partial(table))
    _remove_stale_partials(output)
    staged = _partial(output)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            nb, str(staged), parameters=overrides, progress_bar=False, log_output=log_output,
            cwd=str(ROOT), execution_timeout=timeout,
            # quiet the kernel app: its own log (start-up; a reply it cannot send after a timeout)
            extra_arguments=["--log-level=CRITICAL"],
        )
    except PapermillExecutionError as err:
        failed = _keep_failed(staged, output, table if has_results else None)
        cell, line = _locate_cell(source, err.source)
        where = f"{_rel(source)}:{line}" if line else _rel(source)
        snippet = textwrap.indent(textwrap.shorten(err.source, 300, placeholder=" ..."), "    ")
        trace = strip_color("\n".join(err.traceback[-6:]))
        raise NotebookError(
            f"notebook {source.name} (run {run!r}) failed in code cell {cell or '?'} "
            f"(In [{err.exec_count}], {where}):\n{snippet}\n{err.ename}: {err.evalue}\n"
            f"--- traceback (end) ---\n{trace}\n"
            f"The executed notebook with the full traceback: {_rel(failed)}",
            source, run, cell, line, failed,
        ) from None
    except (CellTimeoutError, DeadKernelError) as err:
        failed = _keep_failed(staged, output, table if has_results else None)
        cell_source = _running_cell(failed)
        cell, line = _locate_cell(source, cell_source) if cell_source else (None, None)
        where = f"{_rel(source)}:{line}" if line else _rel(source)
        snippet = textwrap.indent(textwrap.shorten(cell_source, 300, placeholder=" ..."), "    ")
        if isinstance(err, CellTimeoutError):
            raise NotebookTimeoutError(
                f"notebook {source.name} (run {run!r}): code cell {cell or '?'} ({where}) ran "
                f"past the per-cell timeout of {timeout} s (--timeout) and was stopped:\n"
                f"{snippet}\nRaise --timeout, or leave it out for no limit. The executed "
                f"notebook up to there: {_rel(failed)}", source, run, cell, line, failed,
            ) from None
        raise NotebookError(
            f"notebook {source.name} (run {run!r}): the kernel died in code cell "
            f"{cell or '?'} ({where}), e.g. killed or out of memory:\n{snippet}\n"
            f"The executed notebook up to there: {_rel(failed)}", source, run, cell, line,
            failed,
        ) from None
    except BaseException:  # Ctrl-C, SIGTERM: the earlier complete run stays as it was
        staged.unlink(missing_ok=True)
        if has_results:
            _partial(table).unlink(missing_ok=True)
            _partial_claims(table).unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    _collapse_injected(staged)
    result = ChapterRun(source, run, overrides, output, seconds)
    if has_results:
        result.parameters = {**overrides, RESULTS_PARAMETER: full[RESULTS_PARAMETER]}
        if not _partial(table).is_file():
            _keep_failed(staged, output, None)
            raise RunnerError(
                f"{source.name} (run {run!r}) has a {RESULTS_PARAMETER!r} parameter but wrote no "
                f"results table to {_rel(table)}: call residual_core.runner.records.write_results")
        # the table, then the notebook, then the record: until the record is replaced, the old
        # record's sha256 no longer matches the table, so the run reads as unfinished, never
        # as a mix of two runs
        _show_final_path(staged, output, overrides[RESULTS_PARAMETER], full[RESULTS_PARAMETER])
        # the claims belong to this run: moved in with its table, or an earlier run's removed
        if _partial_claims(table).is_file():
            os.replace(_partial_claims(table), _claims_path(table))
        else:
            _claims_path(table).unlink(missing_ok=True)
        os.replace(_partial(table), table)
        os.replace(staged, output)
        write_record(result, full, table, record)
        result.results, result.record = table, record
    else:
        os.replace(staged, output)
    failed_path(output).unlink(missing_ok=True)
    return result


def _collapse_injected(notebook: Path) -> None:
    """Tag papermill's injected parameters cell ``hide-input``, like the chapter's own one.

    Papermill tags the cell it adds ``injected-parameters`` only; the book collapses a cell's
    code by its ``hide-input`` tag.
    """
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    for cell in cells:
        if "hide-input" not in cell.metadata["tags"]:
            cell.metadata["tags"].append("hide-input")
    if cells:
        nbformat.write(nb, notebook)


def _show_final_path(notebook: Path, output: Path, partial: str, final: str) -> None:
    """Show the final paths, not the temporary ones, in the executed notebook.

    The injected parameters cell (which the book renders) and papermill's record of the run
    (``metadata.papermill``) name the table and the notebook where they end up: a temporary
    name (host, pid) would differ on every build.
    """
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace(repr(partial), repr(final)).replace(
                f'"{partial}"', f'"{final}"')
    record = nb.metadata.get("papermill", {})
    if record.get("parameters", {}).get(RESULTS_PARAMETER) == partial:
        record["parameters"][RESULTS_PARAMETER] = final
    if "output_path" in record:
        record["output_path"] = str(output)
    nbformat.write(nb, notebook)


def _keep_failed(staged: Path, output: Path, table: Path | None) -> Path:
    """Keep a failed run's notebook as ``.failed.ipynb``; drop its partial table."""
    if table is not None:
        _partial(table).unlink(missing_ok=True)
        _partial_claims(table).unlink(missing_ok=True)
    failed = failed_path(output)
    if staged.is_file():
        os.replace(staged, failed)
    return failed
