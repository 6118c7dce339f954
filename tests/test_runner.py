"""The notebook runner: parameters, execution with overrides, failures and build warnings."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from residual_core import runner

HEADER = """\
# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
"""


def write_notebook(path: Path, *cells: str) -> Path:
    path.write_text(HEADER + "\n" + "\n\n".join(textwrap.dedent(c).strip() + "\n" for c in cells))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "01_tiny.py",
        """
        # %% [markdown]
        # # Tiny
        """,
        """
        # %% tags=["parameters"]
        x = 1
        label = "default"
        """,
        """
        # %%
        print(f"result={x * 2} label={label}")
        """,
    )


def cell_text(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    return "\n".join(
        "".join(out.get("text", ""))
        for cell in nb["cells"] if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
    )


def test_read_parameters(tiny: Path):
    assert runner.read_parameters(tiny) == {"x": 1, "label": "default"}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("x = 1 + len('a')", "literal"),
        ("import os", "assignments"),
        ("a, b = 1, 2", "assignments"),
    ],
)
def test_parameters_cell_holds_literals_only(tmp_path: Path, body: str, match: str):
    nb = write_notebook(tmp_path / "bad.py", f'# %% tags=["parameters"]\n{body}')
    with pytest.raises(runner.ParameterError, match=match):
        runner.read_parameters(nb)


def test_parameters_cell_must_be_first_code_cell(tmp_path: Path):
    nb = write_notebook(tmp_path / "late.py", "# %%\nimport os", '# %% tags=["parameters"]\nx = 1')
    with pytest.raises(runner.ParameterError, match="first code cell"):
        runner.read_parameters(nb)


def test_parse_overrides():
    got = runner.parse_overrides(["n=64", "p=None", "d=cuda", "q='x'", "layers=[0, 11]", "f=1e-3"])
    assert got == {"n": 64, "p": None, "d": "cuda", "q": "x", "layers": [0, 11], "f": 1e-3}
    with pytest.raises(runner.ParameterError, match="key=value"):
        runner.parse_overrides(["novalue"])


def test_execute_injects_overrides(tiny: Path, tmp_path: Path):
    result = runner.execute(tiny, "check", {"x": 21, "label": "set"}, out_dir=tmp_path / "out")
    assert result.output == tmp_path / "out" / "01_tiny-check.ipynb"
    assert "result=42 label=set" in cell_text(result.output)
    assert result.seconds > 0


def test_unknown_parameter_is_rejected_listing_valid_ones(tiny: Path, capsys):
    code = runner.main(["run", str(tiny), "--param", "y=3", "--param", "x=2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "unknown parameter(s) y" in err
    assert "x = 1" in err and "label = 'default'" in err


def test_string_for_numeric_parameter_is_rejected(tiny: Path):
    with pytest.raises(runner.ParameterError, match="expects a int"):
        runner.check_overrides(tiny, {"x": "many"})


def test_failing_notebook_exits_nonzero_naming_the_cell(tmp_path: Path, capsys):
    nb = write_notebook(
        tmp_path / "02_fails.py",
        '# %% tags=["parameters"]\nn = 1',
        "# %%\ny = n + 1",
        "# %%\nraise ValueError(f'boom {y}')",
    )
    code = runner.main(["run", str(nb), "--name", "t", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "02_fails.py" in err and "failed in code cell 3" in err
    assert "ValueError: boom 2" in err
    assert "02_fails.py:" in err  # the source line of the failing cell
    assert (tmp_path / "out" / "02_fails-t.ipynb").is_file()  # kept for the full traceback


def test_find_chapter_by_stem_and_number(tmp_path: Path, tiny: Path):
    assert runner.find_chapter("01_tiny", tmp_path) == tiny
    assert runner.find_chapter("01", tmp_path) == tiny
    with pytest.raises(runner.RunnerError, match="01_tiny"):
        runner.find_chapter("99", tmp_path)


def test_missing_npm_gives_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    with pytest.raises(runner.RunnerError, match="npm is needed"):
        runner.ensure_widget_assets(tmp_path / "widgets")


def test_build_warning_fails_the_build(tmp_path: Path):
    (tmp_path / "_config.yml").write_text(
        "title: t\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: 'off'\n"
    )
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (tmp_path / "intro.md").write_text("# Intro\n\nA reference to {ref}`no-such-label`.\n")
    with pytest.raises(runner.RunnerError, match="no-such-label"):
        runner.build_book(tmp_path)


def test_chapters_without_named_runs_get_a_tutorial_run(tmp_path: Path, tiny: Path):
    assert runner.runs_for("tutorial", tmp_path) == [(tiny, "tutorial", {})]
    assert runner.runs_for("paper", tmp_path) == []


def test_place_chapters_replaces_stale_notebooks(tmp_path: Path):
    executed = tmp_path / "executed" / "01_a-tutorial.ipynb"
    executed.parent.mkdir()
    executed.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "99_old-tutorial.ipynb").write_text("{}")
    run = runner.ChapterRun(tmp_path / "01_a.py", "tutorial", output=executed)
    assert runner.place_chapters([run], chapters) == [chapters / "01_a-tutorial.ipynb"]
    assert sorted(p.name for p in chapters.iterdir()) == ["01_a-tutorial.ipynb"]
