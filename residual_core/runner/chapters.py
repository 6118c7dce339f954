"""The chapters and their parameters: where they are, what they take, and the runner's errors."""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from residual_core.core.errors import ResidualError

__all__ = [
    "BUILD",
    "EXECUTED",
    "NOTEBOOKS",
    "ROOT",
    "ParameterError",
    "RunnerError",
    "check_overrides",
    "find_chapter",
    "list_chapters",
    "parse_overrides",
    "read_parameters",
    "writable_dir",
]

ROOT = Path(__file__).resolve().parents[2]
"""Repository root (the book's source directory)."""

NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "_build"
EXECUTED = BUILD / "executed"


class RunnerError(ResidualError, RuntimeError):
    """A chapter could not be run or the book could not be built; the message says why."""


class ParameterError(RunnerError, ValueError):
    """A parameters cell is malformed, or an override or option is unknown or refused."""


def _log(message: str) -> None:
    print(f"[runner] {message}", flush=True)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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

    Every value is checked against its parameter's rule (:mod:`residual_core.runner.params`:
    type, range, registry), so a bad value is refused here, before any kernel starts.

    Raises:
        ParameterError: Naming unknown parameters and listing the valid ones with defaults, or
            every refused value with what is valid.
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
    from residual_core.runner.params import problems

    full = {**defaults, **overrides}
    book = source.resolve().parent == NOTEBOOKS.resolve()
    bad = problems(source.stem, defaults, full, book)
    if bad:
        lines = "\n".join(f"  {line}" for line in bad)
        raise ParameterError(f"{source.name}: parameter value(s) refused:\n{lines}")
    return full


def writable_dir(path: Path | str, what: str) -> Path:
    """``path`` as a folder this process can write in, created if missing.

    Raises:
        ParameterError: Naming ``what`` and the reason (a file in the way, no permission, a
            read-only file system), before any work starts.
    """
    import tempfile

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ParameterError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ParameterError(f"{what} {path} cannot be written: {reason}"
                             f"{f' ({err.filename})' if err.filename else ''}") from None
    return path


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
