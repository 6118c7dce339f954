"""Stand-ins for the paper profile's smoke runs: a ``synthetic`` dataset and random-weight models.

A GPU box can check the whole paper-profile code path (real architectures at 224 px, paper
presets, streaming, fine-tuning) before any checkpoint or dataset is downloaded:

- :data:`SYNTHETIC` is the tutorial world's images (64×64, resized to the model's input size by
  its own preprocessing) labelled by one attribute, registered in
  :mod:`residual_core.datasets` under the name ``"synthetic"`` with ``train``/``val``/``test``;
- :func:`load_random` builds a paper model's architecture with random weights (open_clip's
  ``pretrained=None``), named ``"{key}-random"`` so its caches never mix with the real model's.

Example::

    python -m residual_core.runner run 05 --preset standin --param model=clip_l
"""

from __future__ import annotations

import dataclasses

import torch

from residual_core import datasets as D
from residual_core.models import (
    PAPER_MODELS,
    LoadedModel,
    ModelLoadError,
    list_models,
    load_model,
)
from residual_core.tutorial import world as W

__all__ = ["SYNTHETIC", "SYNTHETIC_TASK", "WEIGHTS", "load", "load_random", "register"]

SYNTHETIC = "synthetic"
"""Registry name of the stand-in dataset."""

SYNTHETIC_TASK = "color"
"""The world attribute used as its label (six classes, solved well above chance zero-shot)."""

WEIGHTS = ("pretrained", "random")
"""Valid values of the chapters' ``weights`` parameter."""


def _build(split: str, size: int | None) -> D.ClassificationDataset:
    scenes, images = D.world_split("world", split, size or D.SPLIT_SIZES[split])
    attributes = scenes.attributes()
    return D.ClassificationDataset(
        name=SYNTHETIC, split=split, images=images, labels=attributes[SYNTHETIC_TASK],
        classnames=W.ATTRIBUTES[SYNTHETIC_TASK], templates=W.TEMPLATES[SYNTHETIC_TASK],
        attributes=attributes, scenes=scenes,
    )


def register() -> None:
    """Register ``"synthetic"`` in the dataset registry (idempotent)."""
    if SYNTHETIC not in D.list_datasets():
        D.register_dataset(D.DatasetSpec(
            SYNTHETIC, _build,
            description=f"stand-in: tutorial-world images labelled by {SYNTHETIC_TASK}",
        ))


def load_random(name: str, device: str | torch.device = "cpu") -> LoadedModel:
    """A paper model's architecture (or any open_clip name) with random weights.

    The paper's OpenAI models use QuickGELU, so ``clip_b``/``clip_l`` build the ``-quickgelu``
    configs; other keys (the Hugging Face encoders) are built by
    ``load_model(key, pretrained=None)``. Seed torch first for reproducible weights (the
    fingerprint hashes them anyway).

    Args:
        name: A paper key of :func:`residual_core.models.list_models` or an open_clip name.
        device: Where to put the model.

    Returns:
        The model, named ``"{name}-random"``: its caches and result rows never mix with the
        pretrained model's.

    Raises:
        ModelLoadError: For ``'tutorial'`` or an unknown name, listing the valid ones.
    """
    import open_clip

    if name in PAPER_MODELS:
        arch, tag = PAPER_MODELS[name]
        quick = f"{arch}-quickgelu"
        if tag == "openai" and quick in open_clip.list_models():
            arch = quick
        loaded = load_model(arch, pretrained=None, device=device)
    elif name in open_clip.list_models() or (name in list_models() and name != "tutorial"):
        loaded = load_model(name, pretrained=None, device=device)
    else:
        raise ModelLoadError(
            f"no random stand-in for {name!r}; valid: "
            f"{', '.join(m for m in list_models() if m != 'tutorial')} or an open_clip name")
    return dataclasses.replace(loaded, name=f"{name}-random")


def load(name: str, weights: str = "pretrained", device: str | torch.device = "cpu"
         ) -> LoadedModel:
    """A chapter's model: :func:`residual_core.models.load_model` or :func:`load_random`.

    Raises:
        ValueError: For a ``weights`` value other than ``"pretrained"`` or ``"random"``.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    if weights == "random":
        return load_random(name, device)
    return load_model(name, device=device)


register()
