"""The ``synthetic`` dataset: tutorial-world images standing in for a paper dataset in smoke runs.

A GPU box can check the whole paper-profile code path (real architectures at 224 px, paper
presets, streaming, fine-tuning) before any checkpoint or dataset is downloaded: ``synthetic``
is the tutorial world's images (64×64, resized to the model's input size by its own
preprocessing) labelled by one attribute, with ``train``/``val``/``test`` splits; a random-weight
model (``load_model(key, weights="random")``) encodes it. Example::

    python -m residual_core.runner run 05 --preset standin --param model=clip_l
"""

from __future__ import annotations

from residual_core.data.base import ClassificationDataset, DatasetSpec
from residual_core.data.world import SPLIT_SIZES, world_split
from residual_core.tutorial import world as W

__all__ = ["SYNTHETIC", "SYNTHETIC_TASK", "specs"]

SYNTHETIC = "synthetic"
"""Registry name of the stand-in dataset."""

SYNTHETIC_TASK = "color"
"""The world attribute used as its label (six classes, solved well above chance zero-shot)."""


def _build(split: str, size: int | None) -> ClassificationDataset:
    scenes, images = world_split("world", split, size or SPLIT_SIZES[split])
    attributes = scenes.attributes()
    return ClassificationDataset(
        name=SYNTHETIC, split=split, images=images, labels=attributes[SYNTHETIC_TASK],
        classnames=W.ATTRIBUTES[SYNTHETIC_TASK], templates=W.TEMPLATES[SYNTHETIC_TASK],
        attributes=attributes, scenes=scenes,
    )


def specs() -> list[DatasetSpec]:
    """The ``synthetic`` dataset."""
    what = f"stand-in: tutorial-world images labelled by {SYNTHETIC_TASK}"
    return [DatasetSpec(SYNTHETIC, _build, description=what)]
