"""Every chapter is a jupytext py:percent file with a kernelspec and one literal parameters cell."""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import pytest

from residual_core.runner import chapters, presets

CHAPTERS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.py"))


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks/*.py found"
    assert [p.stem for p in CHAPTERS] == [p.stem for p in chapters.list_chapters()], (
        "every notebook must be named NN_slug.py"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_jupytext_header_with_kernelspec(path: Path):
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n"), f"{path.name}: no jupytext header"
    nb = jupytext.read(path)
    assert nb.metadata.get("jupytext", {}).get("text_representation", {}).get(
        "format_name") == "percent", f"{path.name}: not py:percent"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec python3 missing from the header"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_one_literal_parameters_cell_first(path: Path):
    code = [c for c in jupytext.read(path).cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: parameters-tagged code cells at {tagged}, want [0]"
    tree = ast.parse(code[0].source)
    assert tree.body, f"{path.name}: empty parameters cell"
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.unparse(stmt)
        assert isinstance(stmt.targets[0], ast.Name), ast.unparse(stmt)
        ast.literal_eval(stmt.value)  # raises on anything but a literal
    assert chapters.read_parameters(path)


def test_named_runs_match_the_chapters():
    stems = {p.stem: p for p in CHAPTERS}
    for stem, runs in presets.RUNS.items():
        assert stem in stems, f"RUNS names a missing chapter {stem}"
        assert presets.DEFAULT_PROFILE in runs, f"{stem}: no {presets.DEFAULT_PROFILE!r} run"
        for name, overrides in runs.items():
            assert name.isidentifier(), name
            chapters.check_overrides(stems[stem], overrides)  # unknown names raise
