"""Every chapter executes through papermill on its ``smoke`` preset and writes its results table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from residual_core.runner.chapters import list_chapters
from residual_core.runner.execute import execute
from residual_core.runner.presets import RUNS
from residual_core.runner.records import read_record

CHAPTERS = list_chapters()
SMOKE_MAX_IMAGES = 200
"""The most images any split or set of a smoke run may use (every chapter's run then takes under
a minute on 2 cores; a wall-time limit here would fail on a busy machine, not on a grown run)."""
SMOKE_MAX_EPOCHS = 2
SMOKE_MAX_TASKS = 3


def smoke_sizes(parameters: dict) -> dict:
    """The image counts among a run's parameters (``None`` = a whole split)."""
    return {k: v for k, v in parameters.items()
            if (k.endswith("_size") and k != "batch_size") or k in ("size", "n_images",
                                                                    "twonn_points")}


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
    run = execute(chapter, "smoke", RUNS[chapter.stem]["smoke"], out_dir=tmp_path)
    record = read_record(run.record)
    assert record is not None and record["rows"] > 0, f"{chapter.stem}: no complete record"
    table = pd.read_csv(run.results)
    assert len(table) == record["rows"] and (table.run_wall_s > 0).all()
    # The run stays small: every parameter it ran with, defaults included, from its record.
    params = record["parameters"]
    sizes = smoke_sizes(params)
    assert all(v is not None and v <= SMOKE_MAX_IMAGES for v in sizes.values()), sizes
    epochs = {k: v for k, v in params.items() if k.endswith("epochs")}
    assert all(v <= SMOKE_MAX_EPOCHS for v in epochs.values()), epochs
    assert len(params.get("tasks", [])) <= SMOKE_MAX_TASKS, params.get("tasks")
    if chapter.stem == "00_units":
        assert (table.max_rel_error < 1e-5).all()
