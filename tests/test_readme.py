"""The README's "Using the library" section: short, and its code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def library_blocks() -> list[str]:
    """The python blocks of the README's "Using the library" section, in order."""
    section = README.read_text().split("\n## Using the library\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_library_section_has_three_short_blocks():
    blocks = library_blocks()
    assert len(blocks) == 3
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(lines) <= 30, f"{len(lines)} lines of code"


def test_library_section_runs_on_the_tutorial_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path))
    namespace: dict = {}
    for block in library_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    units, head, fit = namespace["units"], namespace["head"], namespace["fit"]
    # Block 1: the stack adds up to the embedding and picks units by label.
    with torch.no_grad():
        embedding = namespace["model"].model.encode_image(namespace["images"])
    torch.testing.assert_close(units.sum(), embedding, rtol=1e-4, atol=1e-5)
    assert torch.equal(units["L3H1"], units.data[:, units.index("L3H1")[0]])
    # Block 2: three texts of the tutorial dictionary, explaining more and more variance.
    assert head.unit == "L3H1" and len(head.texts) == 3
    assert set(head.texts) <= set(namespace["words"].texts)
    assert head.explained_variance == sorted(head.explained_variance)
    # Block 3: trained, evaluated once on test, λ of every PC of the head.
    assert 0 <= fit.accuracy <= 1 and fit.row["variant"] == "residual-full"
    assert fit.lambdas("L3H1").shape == (units.layout.d_head,)
    assert "test accuracy" in printed and (tmp_path / "encodings" / "tutorial").is_dir()


def test_guarantees_table_names_tests_that_exist():
    """Each row of "What is guaranteed" ends with the tests that show it, and they exist.

    A reference is ``tests/file.py`` (the whole file), ``tests/file.py::name``, or ``::name``
    or a bare ``name`` of the file named before it in the row; ``*`` matches any ending.
    """
    section = README.read_text().split("\n## What is guaranteed\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`tests/" in line]
    assert len(rows) >= 10
    for row in rows:
        shown_by = row.rstrip(" |").rsplit(" | ", 1)[1]
        current = None
        for ref in re.findall(r"`([^`]+)`", shown_by):
            path, _, name = ref.rpartition("::") if "::" in ref else (
                (ref, "", "") if ref.startswith("tests/") else ("", "", ref))
            if path:
                current = README.parent / path
            assert current is not None and current.exists(), f"{row[:60]}...: {ref}: no file"
            if name:
                pattern = re.escape(name).replace(r"\*", r"\w*")
                assert re.search(rf"^def {pattern}\(", current.read_text(), re.M), (
                    f"{row[:60]}...: {current.name} has no test {name}")
