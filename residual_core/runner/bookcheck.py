"""Open every page of the built book in headless Chromium and report what a reader would hit.

Checked per page: console errors; local resources that fail to load (fonts, scripts, images);
broken images; a Python traceback in an output; a table wider than the text column (cut off
or scrolled sideways); and, for every dropdown widget, that choosing another option changes the
figure shown. A full-page screenshot of each page can be kept for a human look.

Chromium comes from the system packages (``apt-get install -y chromium``) and is driven by
playwright from PyPI (playwright's own browser download is not used). Run it as
``python -m residual_core.runner.bookcheck _build/html [--screenshots DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from residual_core.core.errors import ResidualError, cli_main

__all__ = ["BrowserMissingError", "Problem", "check_book", "check_pages", "find_chromium"]

_CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

# Runs in the page: everything that can be read from the DOM once it has loaded.
_PAGE_CHECKS = """() => {
  const out = {broken: [], wide: [], tracebacks: 0};
  for (const img of document.images) {
    if (img.complete && img.naturalWidth === 0) out.broken.push(img.currentSrc || img.src);
  }
  const column = document.querySelector("article.bd-article") || document.querySelector("main");
  const width = column ? column.getBoundingClientRect().width : window.innerWidth;
  document.querySelectorAll("table").forEach((table, i) => {
    const w = table.getBoundingClientRect().width;
    // an output area narrower than the column scrolls its table sideways: that cuts it too
    const box = table.closest(".cell_output, .output");
    const limit = box ? Math.min(width, box.clientWidth) : width;
    if (w > limit + 1) {
      const head = (table.querySelector("th, td") || {}).textContent || "";
      out.wide.push(`table ${i + 1} (${head.trim().slice(0, 40)}): ${Math.round(w)} px in a `
                    + `${Math.round(limit)} px column`);
    }
  });
  const text = document.body.innerText;
  out.tracebacks = (text.match(/Traceback \\(most recent call last\\)/g) || []).length
                   + document.querySelectorAll(".output.traceback, .output.error").length;
  return out;
}"""

_VISIBLE_IMAGES = """(select) => {
  const box = select.closest(".widget-vbox, .widget-box, .widget-container")
              || select.parentElement.parentElement;
  return Array.from(box.querySelectorAll("img"))
    .filter((img) => { const r = img.getBoundingClientRect(); return r.width > 0 && r.height > 0; })
    .map((img) => img.src);
}"""


class BrowserMissingError(ResidualError, RuntimeError):
    """No Chromium or no playwright to drive it (a user error: exit 2)."""


class BookMissingError(ResidualError, FileNotFoundError):
    """There is no built book where it was looked for (a user error: exit 2)."""


@dataclass(frozen=True)
class Problem:
    """One thing a reader would hit.

    Attributes:
        page: The page, relative to the book's root.
        kind: ``console``, ``resource``, ``image``, ``traceback``, ``table`` or ``widget``.
        detail: What exactly.
    """

    page: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.detail}"


def find_chromium() -> str:
    """Path of the system Chromium (``$CHROMIUM`` first).

    Raises:
        BrowserMissingError: Naming how to install it.
    """
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    raise BrowserMissingError("no Chromium found: install it (apt-get install -y chromium) or "
                              "set CHROMIUM to its path")


def _widget_problems(page, rel: str) -> list[Problem]:
    problems = []
    selects = page.query_selector_all("select")
    for i, select in enumerate(selects):
        options = [o.get_attribute("value") or o.inner_text()
                   for o in select.query_selector_all("option")]
        if len(options) < 2:
            continue
        current = select.evaluate("(s) => s.value")
        other = next(o for o in options if o != current)
        before = select.evaluate(_VISIBLE_IMAGES)
        select.select_option(other)
        page.wait_for_timeout(200)
        after = select.evaluate(_VISIBLE_IMAGES)
        if not after or after == before:
            problems.append(Problem(rel, "widget", f"dropdown {i + 1}: choosing {other!r} did "
                                                   "not change the figure shown"))
        select.select_option(current)
    return problems


def check_pages(pages: Iterable[Path], root: Path, screenshots: Path | None = None,
                width: int = 1400) -> list[Problem]:
    """Open each page and collect the problems.

    Args:
        pages: HTML files.
        root: The book's root (page names are reported relative to it).
        screenshots: If given, a full-page PNG of every page is written there.
        width: Browser window width in pixels.

    Returns:
        Every problem found, page by page.

    Raises:
        BrowserMissingError: Without Chromium or playwright.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError as err:
        raise BrowserMissingError("playwright is not installed (pip install playwright)") from err
    chromium = find_chromium()
    problems: list[Problem] = []
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=_CHROMIUM_ARGS)
        try:
            for path in pages:
                rel = path.relative_to(root).as_posix()
                page = browser.new_page(viewport={"width": width, "height": 1200})
                found: list[Problem] = []
                page.on("console", lambda m, r=rel, f=found: f.append(Problem(r, "console", m.text))
                        if m.type == "error" else None)
                page.on("pageerror", lambda e, r=rel, f=found: f.append(
                    Problem(r, "console", str(e))))
                page.on("requestfailed", lambda q, r=rel, f=found: f.append(
                    Problem(r, "resource", q.url)) if q.url.startswith("file:") else None)
                page.goto(path.resolve().as_uri(), wait_until="load")
                page.wait_for_timeout(500)  # widgets render after load
                dom = page.evaluate(_PAGE_CHECKS)
                found += [Problem(rel, "image", src) for src in dom["broken"]]
                found += [Problem(rel, "table", w) for w in dom["wide"]]
                if dom["tracebacks"]:
                    found.append(Problem(rel, "traceback", f"{dom['tracebacks']} in the page"))
                found += _widget_problems(page, rel)
                if screenshots is not None:
                    name = rel.replace("/", "__").removesuffix(".html") + ".png"
                    page.screenshot(path=str(screenshots / name), full_page=True)
                page.close()
                problems += found
        finally:
            browser.close()
    return problems


def check_book(html: str | os.PathLike, screenshots: str | os.PathLike | None = None
               ) -> list[Problem]:
    """Check every content page of a built book (``_build/html``): not search or genindex."""
    root = Path(html)
    skip = {"search.html", "genindex.html", "index.html"}  # index.html only redirects
    pages = sorted(p for p in root.rglob("*.html")
                   if p.name not in skip and "_static" not in p.parts and "_sources" not in p.parts)
    if not pages:
        raise BookMissingError(f"no HTML pages under {root}: build the book first")
    return check_pages(pages, root, None if screenshots is None else Path(screenshots))


def main(argv: list[str] | None = None) -> int:
    """Command line: 1 with the list of problems, 0 for a clean book, 2 for no book or browser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("html", nargs="?", default="_build/html", help="the built book")
    parser.add_argument("--screenshots", help="write a full-page PNG of every page here")
    args = parser.parse_args(argv)
    return cli_main(lambda: _report(args.html, args.screenshots), "bookcheck:")


def _report(html: str, screenshots: str | None) -> int:
    problems = check_book(html, screenshots)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
