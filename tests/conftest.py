"""Shared fixtures and helpers of the test suite, and the tiers every test belongs to."""

from __future__ import annotations

import threading
from collections.abc import Callable

import jaxtyping
import pytest
import torch

from residual_core.core.model import LoadedModel, weights_fingerprint
from residual_core.core.units import UnitLayout, Units
from residual_core.core.zeroshot import ZeroShotClassifier
from residual_core.tutorial import world
from residual_core.tutorial.model import build_tiny_clip, preprocess_transform, tiny_clip_config
from residual_core.tutorial.tokenizer import WordTokenizer

# ------------------------------------------------------------------------------- test tiers

TIERS = ("unit", "integration", "notebook")
"""Every test belongs to exactly one tier (its module's), given as a marker: ``-m unit``."""

INTEGRATION = {
    "test_bookcheck", "test_environment", "test_experiments", "test_gpu", "test_gpu_suite",
    "test_hf_models", "test_models", "test_paper_datasets", "test_readme", "test_runner",
    "test_store", "test_sweep", "test_tasks", "test_text_cache", "test_training",
    "test_tutorial_model",
}
"""Modules that go through files, processes, a trained model or several layers at once."""

NOTEBOOK = {"test_chapters", "test_lab", "test_notebooks"}
"""Modules about the chapters as notebooks (their sources, their execution, JupyterLab)."""

SLOW = {"test_chapters", "test_gpu_suite", "test_sweep"}
"""Modules whose every test takes seconds to minutes (single slow tests carry the marker)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its tier marker (and ``slow`` for the slow modules)."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        tier = "integration" if module in INTEGRATION else (
            "notebook" if module in NOTEBOOK else "unit")
        item.add_marker(getattr(pytest.mark, tier))
        if module in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    """A random-initialised, smaller tutorial CLIP (a module may override it with a stub)."""
    torch.manual_seed(0)
    tok = WordTokenizer(world.vocabulary(), 32)
    cfg = tiny_clip_config(tok.vocab_size, 32)
    cfg["vision_cfg"].update(layers=2, width=32, head_width=16)  # small and fast
    cfg["text_cfg"].update(layers=1, width=32, heads=2)
    cfg["embed_dim"] = 16
    model = build_tiny_clip(cfg).eval()
    return LoadedModel(model, preprocess_transform(64), tok, "random-tiny", "tutorial-tiny-clip",
                       None, f"random-{weights_fingerprint(model)}")


SHAPE_ERRORS = (ValueError, jaxtyping.TypeCheckError)
"""What mismatched shapes raise in the tests: the library's own check names them (ValueError),
unless the runtime check of the annotated shapes (jaxtyping, on in the tests) comes first."""


def run_in_threads(body: Callable[[int], object], n: int = 2,
                   timeout: float | None = None) -> list[BaseException]:
    """Run ``body(k)`` for k in 0..n-1, each in its own thread; what they raised, in no order."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            body(k)
        except Exception as err:  # noqa: BLE001 - returned to the test
            errors.append(err)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors


@pytest.fixture
def without_annotation_checks():
    """Turn the runtime check of annotated shapes off for one test.

    For tests of the library's own input checks: a user runs without the annotation check, so
    the message they read is the library's, and that is what such a test must see.
    """
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", before)


# ------------------------------------------------------- a task only a reweighting can solve

RESIDUAL_TASK_LAYOUT = UnitLayout(n_layers=1, n_heads=3, d_model=6, d_head=2, d_out=8)
"""Units of :func:`residual_task_units`: embed, L0.mlp, L0H0, L0H1, L0H2."""


def residual_task_units(n: int, seed: int) -> tuple[Units, torch.Tensor]:
    """A task the zero-shot classifier cannot solve but a reweighting of PCs can.

    The classifier (:func:`residual_task_classifier`) reads direction e0 (plus a little of e1).
    Head L0H0 writes large class-free noise along e0; the class sits in head L0H1 along e1, its
    low-variance PC (its top PC is class-free noise along e2). Zero-shot is near chance;
    suppressing L0H0's e0 PC and amplifying L0H1's e1 PC solves it.

    Returns:
        ``(units, targets)``.
    """
    gen = torch.Generator().manual_seed(seed)
    e = torch.eye(RESIDUAL_TASK_LAYOUT.d_out)
    y = torch.randint(0, 2, (n,), generator=gen)
    sign = (2.0 * y - 1.0)[:, None]

    def g(*shape):
        return torch.randn(*shape, generator=gen)

    embed = 0.1 * g(n, 8) + e[3]
    mlp = 0.05 * g(n, 8)
    h0 = 3.0 * g(n, 1) * e[0] + 0.5 * g(n, 1) * e[5]
    h1 = 0.3 * sign * e[1] + 1.0 * g(n, 1) * e[2]
    h2 = g(n, 1) * e[4] + g(n, 1) * e[6]
    return Units.full(torch.stack([embed, mlp, h0, h1, h2], 1), RESIDUAL_TASK_LAYOUT), y


def residual_task_classifier() -> ZeroShotClassifier:
    """Two classes along ±(e0 + 0.2 e1): blind to the class in :func:`residual_task_units`."""
    e = torch.eye(RESIDUAL_TASK_LAYOUT.d_out)
    c = torch.nn.functional.normalize(e[0] + 0.2 * e[1], dim=0)
    return ZeroShotClassifier(torch.stack([-c, c], 1), scale=100.0)
