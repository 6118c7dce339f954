"""Every chapter executes through papermill on its ``smoke`` preset and writes its results table."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from residual_core.runner.chapters import list_chapters
from residual_core.runner.execute import execute
from residual_core.runner.presets import RUNS
from residual_core.runner.records import read_record

CHAPTERS = list_chapters()
SMOKE_BUDGET_S = 90.0
"""A smoke run takes under a minute on 2 shared cores; more than this means a size grew."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One encoding cache for every chapter (they share stores, as in the book)."""
    return tmp_path_factory.mktemp("cache")


def test_every_chapter_has_a_smoke_preset():
    assert CHAPTERS and all("smoke" in RUNS[p.stem] for p in CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_on_the_smoke_preset(chapter: Path, cache: Path, tmp_path: Path,
                                          monkeypatch):
    monkeypatch.setenv("RESIDUAL_CACHE", str(cache))
    started = time.perf_counter()
    run = execute(chapter, "smoke", RUNS[chapter.stem]["smoke"], out_dir=tmp_path)
    seconds = time.perf_counter() - started
    record = read_record(run.record)
    assert record is not None and record["rows"] > 0, f"{chapter.stem}: no complete record"
    table = pd.read_csv(run.results)
    assert len(table) == record["rows"] and (table.run_wall_s > 0).all()
    assert seconds < SMOKE_BUDGET_S, f"{chapter.stem} smoke run took {seconds:.0f} s"
    if chapter.stem == "00_units":
        assert (table.max_rel_error < 1e-5).all()
