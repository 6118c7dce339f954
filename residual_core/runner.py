"""Execute the book's chapters headless with papermill and build the HTML book with Jupyter Book.

Chapters are jupytext py:percent files ``notebooks/NN_slug.py``. Each has one first code cell
tagged ``parameters`` that holds literal assignments only; a *run* is a chapter executed with a
named parameter set from :data:`RUNS` (``{stem: {run: overrides}}``). The executed notebook is
written to ``_build/executed/{stem}-{run}.ipynb``, copied to ``book/chapters/`` (which the
committed ``_toc.yml`` globs) and the book is built with Jupyter Book v1 with execution off,
nit-picky and warnings as errors.

Command line::

    python -m residual_core.runner book [--profile tutorial] [--keep-going]
    python -m residual_core.runner run 00_units [--preset paper] --param n_images=64 \
        --param device=cuda [--name RUNNAME] [--out DIR]
    python -m residual_core.runner run 05 --preset paper --dry-run
    python -m residual_core.runner sweep 05 --preset paper --workers 4 --out /data/sweeps
    python -m residual_core.runner sweep 05 --preset paper --executor slurm --partition gpu \
        --out /shared/sweeps [--wait] [--dry-run]
    python -m residual_core.runner list

``run`` also writes the chapter's results table and completion record next to the executed
notebook (:func:`execute`); ``--dry-run`` lists downloads, disk and a GPU memory estimate
(:mod:`residual_core.dryrun`) without running anything; ``sweep`` runs a chapter over a grid,
resumably, on this machine's GPUs or as a SLURM job array (:mod:`residual_core.sweep`).

A failing cell or a build warning exits non-zero with the notebook, the cell and the error.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import difflib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from residual_core.sweep import Pair, SlurmOptions, Sweep

__all__ = [
    "RUNS",
    "ChapterRun",
    "NotebookError",
    "ParameterError",
    "RunnerError",
    "book",
    "build_book",
    "check_overrides",
    "ensure_mathjax",
    "ensure_widget_assets",
    "execute",
    "find_chapter",
    "list_chapters",
    "main",
    "parse_overrides",
    "place_chapters",
    "read_parameters",
    "runs_for",
]

ROOT = Path(__file__).resolve().parent.parent
"""Repository root (the book's source directory)."""

NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "_build"
EXECUTED = BUILD / "executed"
CHAPTERS = ROOT / "book" / "chapters"
WIDGETS = ROOT / "book" / "_static" / "widgets"
MATHJAX = ROOT / "book" / "_static" / "mathjax"
MATHJAX_PACKAGE = "mathjax@3.2.2"

DEFAULT_PROFILE = "tutorial"
"""Run name that ``book`` builds by default: small models and data, offline, CPU, minutes."""

PAPER_TASKS = ["cifar10", "cifar100", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "cars",
               "sun397", "svhn"]
"""The paper's ten evaluation datasets (names of ``residual_core.paper_datasets``)."""

PAPER_FAMILIES = {"cifar10": "object", "cifar100": "object", "dtd": "texture",
                  "eurosat": "scene", "gtsrb": "object", "mnist": "number", "resisc45": "scene",
                  "cars": "object", "sun397": "scene", "svhn": "number"}
"""Family of the ``general`` dictionary each paper dataset's classes belong to."""

_PAPER_TASK_CHAPTER = {
    "model": "openclip_l", "tasks": PAPER_TASKS, "task_families": PAPER_FAMILIES,
    "reference": "imagenet", "dictionary": "general", "modifier_families": [], "device": "cuda",
}
_PAPER_05 = {
    "model": "openclip_l", "tasks": PAPER_TASKS, "reference": "imagenet", "dictionary": "general",
    "default_task": "eurosat", "device": "cuda", "train_size": None, "val_size": None,
    "test_size": None,
    "reference_size": 80000, "lrs": {}, "finetune_epochs": 30, "finetune_train_size": None,
    "stream_units": True, "preload_images": False, "probe_headroom": False, "num_workers": 8,
    "threads": None,
}

RUNS: dict[str, dict[str, dict[str, Any]]] = {
    "00_units": {
        "tutorial": {},
        "paper": {"model": "openclip_b", "images_from": "imagenet", "n_images": 64,
                  "dictionary": "general", "device": "cuda"},
    },
    "01_intrinsic_dimension": {
        "tutorial": {},
        "paper": {"model": "openclip_b", "reference": "imagenet", "size": 80000,
                  "device": "cuda"},
    },
    "02_spectral_geometry": {
        "tutorial": {},
        "paper": {
            "model": "openclip_b", "reference": "imagenet", "reference_size": 80000,
            "datasets": {"imagenet": "imagenet", "sketch": "imagenet_sketch", "pacs": "pacs",
                         "random": "random"},
            "control": "random", "split": "val", "size": 10000, "device": "cuda",
        },
    },
    "03_head_specialization": {
        "tutorial": {},
        # units of a split are held in RAM here: ViT-L/14, 409 units × 768 × 5k ≈ 6 GB each
        "paper": {**_PAPER_TASK_CHAPTER, "train_size": 5000, "test_size": 5000,
                  "reference_size": 10000},
    },
    "04_alignment_and_zeroshot": {
        "tutorial": {},
        "paper": {**_PAPER_TASK_CHAPTER, "train_size": 5000, "val_size": 2000,
                  "test_size": 5000, "reference_size": 10000, "default_task": "eurosat"},
    },
    "05_residual": {
        "tutorial": {},
        "paper": _PAPER_05,
        # the paper-profile code path on a stand-in: random clip_l weights, synthetic images
        "standin": {**_PAPER_05, "model": "clip_l", "weights": "random", "tasks": ["synthetic"],
                    "reference": "synthetic", "reference_size": 5000, "train_size": 2000,
                    "val_size": 1000, "test_size": 2000, "finetune_epochs": 2,
                    "default_task": "synthetic"},
    },
}
"""Named parameter sets per chapter: ``{stem: {run name: parameter overrides}}``.

A chapter missing here gets a single ``tutorial`` run with its own defaults. The ``tutorial``
profile is what ``make book`` builds (offline, CPU); ``paper`` uses the paper's models and
datasets on a GPU box (``python -m residual_core.runner book --profile paper``); ``standin``
runs chapter 05's paper code path on random weights and the ``synthetic`` dataset.
"""

WIDGET_PACKAGES = {
    "@jupyter-widgets/html-manager@1.0.15": ("package/dist/", "embed-amd.js"),
    "requirejs@2.3.8": ("package/", "require.js"),
}
"""npm packages whose files the static widgets need (see ``ENV.md``): package → (dir, main file)."""

_FONT_SUFFIXES = (".eot", ".svg", ".ttf", ".woff", ".woff2")
_ANSI = re.compile("\x1b\\[[0-9;]*[A-Za-z]")


class RunnerError(RuntimeError):
    """A chapter could not be run or the book could not be built; the message says why."""


class ParameterError(RunnerError):
    """A parameters cell is malformed or an override names an unknown parameter."""


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


def _log(message: str) -> None:
    print(f"[runner] {message}", flush=True)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Parameters


def _read_notebook(source: Path):
    import jupytext

    if not source.is_file():
        raise RunnerError(f"no such notebook: {source}")
    return jupytext.read(source)


def read_parameters(source: Path | str) -> dict[str, Any]:
    """Read the defaults of a chapter's ``parameters`` cell.

    Args:
        source: A jupytext ``.py`` (or ``.ipynb``) notebook.

    Returns:
        Parameter name → default value, in the cell's order.

    Raises:
        ParameterError: If the first code cell is not tagged ``parameters``, another cell is, or
            the cell holds anything but assignments of literals to plain names.
    """
    source = Path(source)
    nb = _read_notebook(source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    if tagged != [0]:
        where = "no cell" if not tagged else f"code cell(s) {[i + 1 for i in tagged]}"
        raise ParameterError(
            f"{source}: exactly one cell, the first code cell, must be tagged 'parameters' "
            f"(found: {where}). In py:percent write it as `# %% tags=[\"parameters\"]`."
        )
    try:
        tree = ast.parse(code[0].source)
    except SyntaxError as err:
        raise ParameterError(f"{source}: parameters cell does not parse: {err}") from None
    params: dict[str, Any] = {}
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
            else getattr(stmt, "target", None) if isinstance(stmt, ast.AnnAssign) else None
        if not isinstance(target, ast.Name) or stmt.value is None:
            raise ParameterError(
                f"{source}: parameters cell line {stmt.lineno}: only `name = literal` "
                f"assignments are allowed, got {ast.unparse(stmt)!r}"
            )
        try:
            params[target.id] = ast.literal_eval(stmt.value)
        except ValueError:
            raise ParameterError(
                f"{source}: parameter {target.id!r} must be a Python literal (number, string, "
                f"None, bool, tuple/list/dict of literals), got {ast.unparse(stmt.value)!r}"
            ) from None
    return params


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` overrides; values are Python literals, else plain strings.

    ``n_images=64`` → 64, ``pretrained=None`` → None, ``device=cuda`` and ``device='cuda'`` →
    ``"cuda"``, ``layers=[0,11]`` → ``[0, 11]``.

    Raises:
        ParameterError: For an item without ``=`` or with an empty name.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ParameterError(f"--param expects key=value with a Python name, got {pair!r}")
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key] = raw.strip()
    return out


def check_overrides(source: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate overrides against a chapter's parameters cell.

    Returns:
        The full parameter set (defaults updated by the overrides).

    Raises:
        ParameterError: Naming unknown parameters and listing the valid ones with defaults, or
            a string given where the default is a number or bool (a likely typo).
    """
    defaults = read_parameters(source)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        valid = "\n".join(f"  {k} = {v!r}" for k, v in defaults.items())
        hints = [f"{u} → {close[0]}?" for u in unknown
                 if (close := difflib.get_close_matches(u, defaults, n=1))]
        hint = f" (did you mean: {', '.join(hints)})" if hints else ""
        raise ParameterError(
            f"{source.name}: unknown parameter(s) {', '.join(unknown)}{hint}. "
            f"Valid parameters (with defaults):\n{valid}"
        )
    for key, value in overrides.items():
        default = defaults[key]
        if isinstance(value, str) and isinstance(default, bool | int | float):
            raise ParameterError(
                f"{source.name}: parameter {key!r} expects a {type(default).__name__} "
                f"(default {default!r}), got the string {value!r}"
            )
    return {**defaults, **overrides}


# --------------------------------------------------------------------------------------------
# Execution


def list_chapters(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """The chapter sources ``NN_slug.py``, in order."""
    return sorted(p for p in notebooks.glob("[0-9][0-9]_*.py"))


def find_chapter(name: str | Path, notebooks: Path = NOTEBOOKS) -> Path:
    """Resolve a chapter given as a path, a stem (``00_units``) or its number (``00``).

    Raises:
        RunnerError: Listing the chapters if ``name`` matches none or several.
    """
    path = Path(name)
    if path.suffix in (".py", ".ipynb") and path.is_file():
        return path.resolve()
    matches = [p for p in list_chapters(notebooks) if p.stem == str(name)] or [
        p for p in list_chapters(notebooks) if p.stem.startswith(f"{name}_")
    ]
    if len(matches) != 1:
        known = ", ".join(p.stem for p in list_chapters(notebooks)) or "(none)"
        raise RunnerError(f"no unique chapter {str(name)!r}; chapters: {known}")
    return matches[0]


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


RESULTS_PARAMETER = "results_file"
"""The chapter parameter the runner sets to where the chapter writes its results table."""


def results_paths(out_dir: Path | str, stem: str, run: str) -> tuple[Path, Path]:
    """The results table and the completion record of a run, next to its executed notebook.

    Returns:
        ``({out_dir}/{stem}-{run}.results.csv, {out_dir}/{stem}-{run}.results.json)``.
    """
    base = Path(out_dir) / f"{stem}-{run}"
    return base.with_name(base.name + ".results.csv"), base.with_name(base.name + ".results.json")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see either nothing, the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def _kernel_path(path: Path) -> str:
    """A path as the kernel (cwd = repository root) should see it: relative when inside."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


def _write_record(run: ChapterRun, full: Mapping[str, Any], table: Path, record: Path) -> None:
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    atomic_write_text(record, json.dumps({
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
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError, strip_color

    source = Path(source).resolve()
    overrides = dict(overrides or {})
    full = check_overrides(source, overrides)
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
                f"results table to {_rel(table)}: call residual_core.chapter.write_results")
        _write_record(result, full, table, record)
        result.results, result.record = table, record
    return result


# --------------------------------------------------------------------------------------------
# The book


def _fetch_npm(packages: Sequence[str], target: Path, pick) -> None:
    """``npm pack`` packages into a temporary folder and extract the picked files to target.

    ``pick(package_spec, member_name)`` returns the destination path relative to ``target``,
    or ``None`` to skip the member.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise RunnerError(
            f"npm is needed once to fetch {', '.join(packages)} into {_rel(target)} for the "
            "offline book; install Node.js/npm (e.g. `apt-get install npm`) or copy the files "
            "there by hand (see ENV.md)"
        )
    _log(f"fetching {', '.join(packages)} with npm into {_rel(target)}")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([npm, "pack", "--silent", *packages], cwd=tmp,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunnerError(f"`npm pack {' '.join(packages)}` failed:\n{proc.stderr}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        for spec in packages:
            stem = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-")
            tgz = next((t for t in tarballs if t.name.startswith(stem + "-")), None)
            if tgz is None:
                raise RunnerError(f"npm pack gave no tarball for {spec}")
            with tarfile.open(tgz) as tar:
                for member in tar.getmembers():
                    dest = pick(spec, member.name) if member.isfile() else None
                    data = tar.extractfile(member) if dest is not None else None
                    if data is not None:
                        (target / dest).parent.mkdir(parents=True, exist_ok=True)
                        (target / dest).write_bytes(data.read())


def ensure_widget_assets(target: Path = WIDGETS) -> Path:
    """Fetch the widget JavaScript for offline static pages with ``npm pack`` if missing.

    Copies ``embed-amd.js`` and its font files from ``@jupyter-widgets/html-manager`` and
    ``require.js`` from ``requirejs`` into ``target`` (git-ignored), see ``ENV.md``.

    Raises:
        RunnerError: If npm is not installed or the packages cannot be fetched.
    """
    if all((target / main).is_file() for _, main in WIDGET_PACKAGES.values()):
        return target

    def pick(spec: str, name: str) -> str | None:
        prefix, main = WIDGET_PACKAGES[spec]
        base = name[len(prefix):] if name.startswith(prefix) else ""
        ok = "/" not in base and (base == main or base.endswith(_FONT_SUFFIXES))
        return base if base and ok else None

    target.mkdir(parents=True, exist_ok=True)
    _fetch_npm(list(WIDGET_PACKAGES), target, pick)
    missing = [m for _, m in WIDGET_PACKAGES.values() if not (target / m).is_file()]
    if missing:
        raise RunnerError(f"npm pack did not provide {missing}")
    return target


def ensure_mathjax(target: Path = MATHJAX) -> Path:
    """Fetch MathJax 3 (``es5/`` bundle and fonts) with ``npm pack`` if missing (git-ignored).

    Sphinx loads MathJax from a CDN by default; ``_config.yml`` points ``mathjax_path`` here so
    the formulas render offline too.

    Raises:
        RunnerError: If npm is not installed or the package cannot be fetched.
    """
    if (target / "tex-mml-chtml.js").is_file():
        return target
    prefix = "package/es5/"
    target.mkdir(parents=True, exist_ok=True)
    _fetch_npm([MATHJAX_PACKAGE], target,
               lambda _, name: name[len(prefix):] if name.startswith(prefix) else None)
    if not (target / "tex-mml-chtml.js").is_file():
        raise RunnerError(f"npm pack {MATHJAX_PACKAGE} did not provide es5/tex-mml-chtml.js")
    return target


def _retitle(notebook: Path, run: str) -> None:
    """Append the run name to the first heading (when a chapter has several runs in a book)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            head, _, rest = cell.source.lstrip().partition("\n")
            cell.source = f"{head} ({run} run)\n{rest}"
            break
    nbformat.write(nb, notebook)


def place_chapters(runs: Sequence[ChapterRun], chapters: Path = CHAPTERS) -> list[Path]:
    """Copy executed notebooks to where ``_toc.yml`` reads them, removing stale ones."""
    chapters.mkdir(parents=True, exist_ok=True)
    for old in chapters.glob("*.ipynb"):
        old.unlink()
    per_chapter: dict[str, int] = {}
    for r in runs:
        per_chapter[r.stem] = per_chapter.get(r.stem, 0) + 1
    placed = []
    for r in runs:
        assert r.output is not None
        dest = chapters / r.output.name
        shutil.copyfile(r.output, dest)
        if per_chapter[r.stem] > 1:
            _retitle(dest, r.run)
        placed.append(dest)
    return placed


def _jupyter_book() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found is None:
        raise RunnerError("jupyter-book is not installed (pip install 'jupyter-book==1.0.4.post1')")
    return [found]


def build_book(root: Path = ROOT, *, fresh: bool = True) -> Path:
    """Build the HTML book with Jupyter Book v1 (``-W -n --keep-going``).

    Args:
        root: The book's source directory (holds ``_config.yml`` and ``_toc.yml``).
        fresh: Remove the previous HTML first so no stale page survives.

    Returns:
        The built ``index.html``.

    Raises:
        RunnerError: If the build fails or emits a warning; the warnings are repeated.
    """
    html = root / "_build" / "html"
    if fresh:
        shutil.rmtree(html, ignore_errors=True)
        shutil.rmtree(root / "_build" / ".doctrees", ignore_errors=True)
    cmd = [*_jupyter_book(), "build", str(root), "-W", "-n", "--keep-going"]
    _log("building the book: " + " ".join(cmd[-5:]))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if os.environ.get("RUNNER_VERBOSE"):
            print(_ANSI.sub("", line), end="")
    code = proc.wait()
    lines = [_ANSI.sub("", ln) for ln in lines]
    problems = [ln.rstrip() for ln in lines if "WARNING" in ln or "ERROR" in ln
                or "Traceback" in ln]
    if code != 0 or problems:
        tail = "".join(lines[-40:])
        detail = "\n".join(problems) if problems else tail
        raise RunnerError(
            f"jupyter-book build failed (exit {code}, {len(problems)} warning/error line(s)); "
            f"warnings fail the build:\n{detail}"
        )
    _log(f"book built in {time.perf_counter() - started:.1f} s")
    return html / "index.html"


def runs_for(profile: str, notebooks: Path = NOTEBOOKS) -> list[tuple[Path, str, dict]]:
    """The (chapter, run, overrides) triples of a profile, in chapter order.

    A chapter not in :data:`RUNS` runs with its defaults under the default profile only.

    Raises:
        RunnerError: If :data:`RUNS` names a chapter that does not exist.
    """
    chapters = list_chapters(notebooks)
    stale = sorted(set(RUNS) - {p.stem for p in chapters})
    if stale and notebooks == NOTEBOOKS:
        raise RunnerError(f"RUNS names chapters that do not exist: {stale}")
    out = []
    for path in chapters:
        runs = RUNS.get(path.stem, {DEFAULT_PROFILE: {}})
        if profile in runs:
            out.append((path, profile, runs[profile]))
    return out


def book(profile: str = DEFAULT_PROFILE, *, log_output: bool = False,
         keep_going: bool = False) -> Path:
    """Execute every chapter's run of ``profile``, then build the book.

    Args:
        profile: The run name to execute per chapter.
        log_output: Stream the cells' outputs to the terminal.
        keep_going: After a failing chapter, still execute the others (then fail, listing all).

    Returns:
        The built ``index.html``.

    Raises:
        NotebookError: The first failing chapter (without ``keep_going``).
        RunnerError: Listing every failing chapter (with ``keep_going``), or a failed build.
    """
    ensure_widget_assets()
    ensure_mathjax()
    selected = runs_for(profile)
    if not selected:
        raise RunnerError(f"no chapter has a run named {profile!r}")
    _log(f"profile {profile!r}: {len(selected)} chapter(s)")
    done, failed, total = [], [], time.perf_counter()
    for source, run, overrides in selected:
        shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "defaults"
        _log(f"{source.stem} [{run}] ({shown}) ...")
        started = time.perf_counter()
        try:
            result = execute(source, run, overrides, log_output=log_output)
        except NotebookError as err:
            if not keep_going:
                raise
            _log(f"{source.stem} [{run}] FAILED after {time.perf_counter() - started:.1f} s:\n"
                 f"{err}")
            failed.append(f"{source.stem} [{run}] code cell {err.cell or '?'}")
            continue
        _log(f"{source.stem} [{run}] ok in {result.seconds:.1f} s → {_rel(result.output)}")
        done.append(result)
    if failed:
        raise RunnerError(f"{len(failed)} chapter(s) failed (details above): {'; '.join(failed)}")
    place_chapters(done)
    index = build_book()
    _log(f"done in {time.perf_counter() - total:.1f} s. Open the book: {index.as_uri()}")
    return index


# --------------------------------------------------------------------------------------------
# Command line


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
    p_book.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs")
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
                         "residual_core.sweep.SWEEPS for the preset")
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
    slurm = p_sweep.add_argument_group("--executor slurm (defaults: residual_core.sweep."
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
    overrides = _preset(source, args.preset)
    cli = parse_overrides(args.param)
    overrides.update(cli)
    base = args.preset or DEFAULT_PROFILE
    name = args.name or (("custom" if args.preset is None else f"{base}-custom") if cli else base)
    if not re.fullmatch(r"[\w.-]+", name):
        raise ParameterError(f"--name must be letters, digits, '_', '-' or '.', got {name!r}")
    full = check_overrides(source, overrides)
    _log(f"{source.stem} [{name}] parameters:")
    for key, value in full.items():
        mark = "  (set)" if key in overrides else ""
        print(f"    {key} = {value!r}{mark}")
    if args.dry_run:
        print(_dry_run([(f"{source.stem} [{name}]", full)]))
        return
    out_dir = EXECUTED if args.out is None else Path(args.out)
    result = execute(source, name, overrides, out_dir=out_dir, log_output=args.verbose,
                     timeout=args.timeout)
    _log(f"{source.stem} [{name}] ok in {result.seconds:.1f} s → {_rel(result.output)}")
    if result.results is not None:
        _log(f"results table → {_rel(result.results)} (record {_rel(result.record)})")


def _dry_run(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    from residual_core import dryrun
    from residual_core.store import DEFAULT_CACHE

    plan = dryrun.plan(runs)
    where = next(p for p in [DEFAULT_CACHE, *DEFAULT_CACHE.parents] if p.exists())
    free = shutil.disk_usage(where).free / 2**30
    verdict = "enough" if free >= plan.disk_gb else "NOT ENOUGH"
    return (f"{dryrun.format_plan(plan)}\nfree disk at the cache ({DEFAULT_CACHE}): "
            f"{free:,.0f} GiB ({verdict} for {plan.disk_gb:,.0f} GiB)")


def _preset(source: Path, preset: str | None) -> dict[str, Any]:
    presets = RUNS.get(source.stem, {DEFAULT_PROFILE: {}})
    if preset is None:
        return {}
    if preset not in presets:
        raise ParameterError(
            f"{source.stem} has no preset {preset!r}; presets: {', '.join(presets)}")
    return dict(presets[preset])


SWEEP_EXECUTORS = ("local", "slurm")
"""Where ``sweep`` runs its pairs: worker processes here, or a SLURM job array (submitit)."""

_LOCAL_FLAGS = {"workers": "--workers", "gpus": "--gpus", "shared_cache": "--shared-cache"}
_SLURM_FLAGS = {"partition": "--partition", "gpus_per_task": "--gpus-per-task",
                "cpus_per_task": "--cpus-per-task", "mem_gb": "--mem-gb",
                "time_min": "--time-min", "array_parallelism": "--array-parallelism",
                "sbatch": "--sbatch", "setup": "--setup", "wait": "--wait"}


def _slurm_options(args: argparse.Namespace) -> SlurmOptions:
    from residual_core import sweep as sw

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
    from residual_core import sweep as sw

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
          "residual_core.sweep.run_pair")
    print(f"  logs: {sweep.log_folder}/<job id>_<task>/")
    for i, pair in enumerate(state.pending):
        print(f"  task {i}: {pair.id}")
    print("--- sbatch script (nothing submitted) ---")
    print(sw.sbatch_script(sweep, options, n))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from residual_core import sweep as sw

    source = find_chapter(args.notebook)
    base = {**_preset(source, args.preset), **parse_overrides(args.param)}
    axes = sw.parse_axes(args.axis) if args.axis else sw.SWEEPS.get(source.stem, {}).get(
        args.preset)
    if not axes:
        raise ParameterError(
            f"{source.stem} has no default grid for preset {args.preset!r} (grids: "
            f"{ {s: list(g) for s, g in sw.SWEEPS.items()} }); give one with --axis KEY=V1,V2")
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
    out = Path(args.out) if args.out else BUILD / "sweeps"
    sweep = sw.Sweep(source, args.preset, base, axes, out.resolve())
    pairs = sweep.pairs()
    if args.dry_run:
        _sweep_dry_run(sweep, pairs, args.executor, args)
        return 0
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
    final, _ = sw.run_local(sweep, workers=workers, gpus=gpus,
                            isolate_cache=False if args.shared_cache else None,
                            timeout=args.timeout)
    return 0 if len(final.done) == len(pairs) else 1


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
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "book" and args.dry_run:
            print(_dry_run([(f"{s.stem} [{r}]", check_overrides(s, o))
                            for s, r, o in runs_for(args.profile)]))
        elif args.command == "book":
            book(args.profile, log_output=args.verbose, keep_going=args.keep_going)
        elif args.command == "run":
            _cmd_run(args)
        elif args.command == "sweep":
            return _cmd_sweep(args)
        else:
            _cmd_list()
    except RunnerError as err:
        print(f"\n[runner] FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
