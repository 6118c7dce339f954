"""Build the HTML book: fetch its offline assets, place the executed chapters, run Jupyter Book."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from residual_core.runner.chapters import ROOT, RunnerError, _log, _rel, check_overrides
from residual_core.runner.execute import NotebookError, check_device_here, execute
from residual_core.runner.presets import DEFAULT_PROFILE, runs_for
from residual_core.runner.records import ChapterRun

__all__ = ["book", "build_book", "copy_book_sources", "ensure_mathjax", "ensure_widget_assets",
           "place_chapters"]

CHAPTERS = ROOT / "book" / "chapters"
WIDGETS = ROOT / "book" / "_static" / "widgets"
MATHJAX = ROOT / "book" / "_static" / "mathjax"
MATHJAX_PACKAGE = "mathjax@3.2.2"

WIDGET_PACKAGES = {
    "@jupyter-widgets/html-manager@1.0.15": ("package/dist/", "embed-amd.js"),
    "requirejs@2.3.8": ("package/", "require.js"),
}
"""npm packages whose files the static widgets need offline: package → (dir, main file)."""

_FONT_SUFFIXES = (".eot", ".svg", ".ttf", ".woff", ".woff2")
_ANSI = re.compile("\x1b\\[[0-9;]*[A-Za-z]")


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
            "there by hand"
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
    ``require.js`` from ``requirejs`` into ``target`` (git-ignored): Jupyter Book 1 loads them
    from CDNs otherwise, and the widgets do not show offline.

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


BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
"""What Jupyter Book reads besides the executed chapters (relative to the repository root)."""


def copy_book_sources(target: Path, root: Path = ROOT) -> Path:
    """Copy the book's sources (not its chapters) into ``target``, to build a separate book there.

    Returns:
        ``target``, holding ``_config.yml``, ``_toc.yml`` and ``book/`` without ``book/chapters``.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in BOOK_SOURCES:
        src, dest = root / name, target / name
        if src.is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            top = src  # the executed chapters are placed afresh: not copied
            shutil.copytree(src, dest, ignore=lambda folder, _, top=top: (
                ["chapters"] if Path(folder) == top else []))
        else:
            shutil.copyfile(src, dest)
    return target


def book(profile: str = DEFAULT_PROFILE, *, log_output: bool = False,
         keep_going: bool = False, out: Path | str | None = None) -> Path:
    """Execute every chapter's run of ``profile``, then build the book.

    Args:
        profile: The run name to execute per chapter.
        log_output: Stream the cells' outputs to the terminal.
        keep_going: After a failing chapter, still execute the others (then fail, listing all).
        out: Build a separate book in this folder: the executed notebooks go to
            ``out/executed``, the sources are copied there and the HTML is
            ``out/_build/html``; the repository's book is left as it is. ``None``: the
            repository's own (``_build/executed``, ``book/chapters``, ``_build/html``).

    Returns:
        The built ``index.html``.

    Raises:
        ParameterError: For an unknown profile or a refused parameter of any chapter, before
            anything runs.
        NotebookError: The first failing chapter (without ``keep_going``).
        RunnerError: Listing every failing chapter (with ``keep_going``), or a failed build.
    """
    selected = runs_for(profile)
    if not selected:
        raise RunnerError(f"no chapter has a run named {profile!r}")
    for source, _, overrides in selected:  # every chapter's parameters, before any kernel
        check_device_here(source, check_overrides(source, overrides))
    ensure_widget_assets()
    ensure_mathjax()
    root = ROOT if out is None else copy_book_sources(Path(out).resolve())
    executed = {} if out is None else {"out_dir": root / "executed"}
    _log(f"profile {profile!r}: {len(selected)} chapter(s)")
    done, failed, total = [], [], time.perf_counter()
    for source, run, overrides in selected:
        shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "defaults"
        _log(f"{source.stem} [{run}] ({shown}) ...")
        started = time.perf_counter()
        try:
            result = execute(source, run, overrides, log_output=log_output, **executed)
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
    place_chapters(done, root / "book" / "chapters")
    index = build_book(root)
    _log(f"done in {time.perf_counter() - total:.1f} s. Open the book: {index.as_uri()}")
    return index
