"""The browser check finds each kind of problem on planted pages, and nothing on a clean one."""

from __future__ import annotations

import base64
import os

import pytest

from residual_core.runner import bookcheck, build

PNG = base64.b64decode(  # a 1×1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

# A dropdown switching between two stacked images, like the book's figure pickers.
PICKER = """
<div class="widget-vbox">
  <select id="pick"><option value="a">a</option><option value="b">b</option></select>
  <div><img id="a" src="a.png"><img id="b" src="b.png" style="display:none"></div>
</div>
<script>
  document.getElementById("pick").addEventListener("change", (e) => {
    for (const id of ["a", "b"]) {
      document.getElementById(id).style.display = e.target.value === id ? "" : "none";
    }
  });
</script>
"""

DEAD_PICKER = """
<div class="widget-vbox">
  <select><option value="x">x</option><option value="y">y</option></select>
  <img src="a.png">
</div>
"""


def page(body: str) -> str:
    return (f"<html><body><main style='width: 600px'><article class='bd-article' "
            f"style='width: 600px'>{body}</article></main></body></html>")


@pytest.fixture(scope="module", autouse=True)
def browser_available():
    try:
        bookcheck.find_chromium()
        import playwright  # noqa: F401
    except (bookcheck.BrowserMissingError, ModuleNotFoundError) as err:
        if os.environ.get("RESIDUAL_REQUIRE_BROWSER"):
            raise
        pytest.skip(f"no browser to drive: {err}")


def test_clean_page_has_no_problems(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG)
    (tmp_path / "ok.html").write_text(page(
        "<table><tr><th>task</th><td>0.9</td></tr></table>" + PICKER))
    assert bookcheck.check_book(tmp_path) == []


def test_every_kind_of_problem_is_found(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.html").write_text(page(
        "<script>console.error('boom')</script>"
        "<script src='missing.js'></script>"
        "<img src='../nowhere.png'>"
        "<table style='width: 900px'><tr><th>wide</th></tr></table>"
        "<pre>Traceback (most recent call last):\n  File ...</pre>"
        + DEAD_PICKER.replace("a.png", "../a.png")))
    problems = bookcheck.check_book(tmp_path, screenshots=tmp_path / "shots")
    kinds = {p.kind for p in problems}
    assert kinds == {"console", "resource", "image", "table", "traceback", "widget"}, problems
    assert all(p.page == "sub/bad.html" for p in problems)
    assert any("boom" in p.detail for p in problems)
    assert any(p.detail.endswith("missing.js") for p in problems if p.kind == "resource")
    assert any("900 px in a 600 px column" in p.detail for p in problems if p.kind == "table")
    assert (tmp_path / "shots" / "sub__bad.png").stat().st_size > 0


def test_a_table_scrolled_inside_a_narrower_output_area_is_found(tmp_path):
    # fits the 600 px column, but its output area (a cell's, 500 px) scrolls it sideways
    (tmp_path / "p.html").write_text(page(
        "<div class='cell_output' style='width: 500px; overflow-x: auto'>"
        "<table style='width: 550px'><tr><th>wide</th></tr></table></div>"
        "<div class='cell_output' style='width: 500px'>"
        "<table style='width: 450px'><tr><th>fits</th></tr></table></div>"))
    problems = bookcheck.check_book(tmp_path)
    assert [(p.kind, p.detail) for p in problems] == [
        ("table", "table 1 (wide): 550 px in a 500 px column")], problems


def test_cli_exit_codes(tmp_path, capsys):
    assert bookcheck.main([str(tmp_path)]) == 2  # nothing built
    assert "build the book first" in capsys.readouterr().err
    (tmp_path / "p.html").write_text(page("<img src='gone.png'>"))
    assert bookcheck.main([str(tmp_path)]) == 1
    assert "p.html: image" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_book_has_no_problems(tmp_path, monkeypatch):
    """Every chapter on the smoke preset, built into a separate book: a reader hits nothing."""
    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "cache"))
    index = build.book("smoke", out=tmp_path / "book")
    assert index == tmp_path / "book" / "_build" / "html" / "index.html"
    pages = sorted((index.parent / "book" / "chapters").glob("*.html"))
    assert len(pages) == len(build.runs_for("smoke")), pages
    shots = os.environ.get("RESIDUAL_BOOK_SHOTS")  # keep full-page screenshots for a look
    problems = bookcheck.check_book(index.parent, screenshots=shots)
    assert problems == [], "\n".join(f"{p.page}: {p.kind}: {p.detail}" for p in problems)
