"""The tutorial world's datasets: every attribute task of every distribution, and the reference.

Each comes with the ground-truth attribute table of every sample (``attributes``).

Tutorial-world names are ``"<distribution>.<task>"``:

- distributions: ``world`` (the training distribution) and its shifted variants playing the
  role of the paper's §3.2 datasets: ``world_noise`` (heavy pixel noise), ``world_palette``
  (another colour palette), ``world_clutter`` (cluttered backgrounds), ``world_sketch``
  (outline drawings, the ImageNet-Sketch analogue) and ``world_random`` (uniform noise images,
  the "random images" set);
- tasks: one per attribute family of ``residual_core.tutorial.world.ATTRIBUTES`` (class names
  are its value words);
- plus ``world.reference``, the ImageNet analogue used for PCA bases: larger, drawn from the
  base distribution with its own seeds, labelled by the object's ``"<color> <shape>"``
  (30 classes).

All tasks of one distribution and split share the same images (generated once, cached in
memory), so one forward pass serves every attribute. Splits ``train``/``val``/``test`` come from
disjoint seed streams; images are generated in blocks of ``BLOCK`` scenes, each from its own
seed, so a smaller ``size`` is a prefix of a larger one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from residual_core.data.base import SPLITS, ClassificationDataset, DatasetSpec
from residual_core.tutorial import world as W

__all__ = [
    "BLOCK",
    "DISTRIBUTIONS",
    "REFERENCE_SIZES",
    "SPLIT_SIZES",
    "WORLD_SEED",
    "clear",
    "specs",
    "world_split",
]

SPLIT_SIZES = {"train": 2000, "val": 1000, "test": 2000}
"""Default number of samples per split of a tutorial-world task."""
REFERENCE_SIZES = {"train": 5000, "val": 1000, "test": 1000}
"""Default number of samples per split of ``world.reference``."""
WORLD_SEED = 0
BLOCK = 500
DISTRIBUTIONS: dict[str, str | None] = {
    "world": None,
    **{f"world_{shift}": shift for shift in W.SHIFTS},
}
"""Tutorial distribution name → ``world`` shift (``None`` is the base world)."""

_WORLD_CACHE: dict[tuple[str, str, int], tuple[W.Scenes, np.ndarray]] = {}


def _split_seeds(distribution: str, split: str, block: int) -> tuple[int, int]:
    tag = zlib.crc32(distribution.encode())
    state = np.random.SeedSequence([WORLD_SEED, tag, SPLITS.index(split), block]).generate_state(2)
    return int(state[0]), int(state[1])


def world_split(
    distribution: str, split: str, size: int, config: W.WorldConfig = W.DEFAULT_WORLD
) -> tuple[W.Scenes, np.ndarray]:
    """The scenes and uint8 images of one tutorial distribution split (cached).

    Args:
        distribution: ``world``, a shifted ``world_<shift>``, or ``reference``.
        split: ``train``, ``val`` or ``test``.
        size: Number of samples.
        config: The world (only the default one is cached).

    Returns:
        ``(scenes, images)`` with images of shape (size, 64, 64, 3).
    """
    shift = None if distribution == "reference" else DISTRIBUTIONS[distribution]
    key = (distribution, split, size)
    if config is W.DEFAULT_WORLD and key in _WORLD_CACHE:
        return _WORLD_CACHE[key]
    scenes, images = [], []
    for b in range(-(-size // BLOCK)):
        n = min(BLOCK, size - b * BLOCK)
        scene_seed, render_seed = _split_seeds(distribution, split, b)
        s = W.sample_scenes(BLOCK, scene_seed, config, shift)
        scenes.append(s.subset(slice(0, n)))
        images.append(W.render(s, render_seed)[:n])  # whole blocks: a prefix stays a prefix
    merged = W.Scenes(
        **{
            f: np.concatenate([getattr(s, f) for s in scenes])
            for f in W.Scenes.__dataclass_fields__
            if f not in ("shift", "config")
        },
        shift=shift,
        config=config,
    )
    out = (merged, np.concatenate(images))
    if config is W.DEFAULT_WORLD:
        _WORLD_CACHE[key] = out
    return out


def _world_builder(
    distribution: str, task: str
) -> Callable[[str, int | None], ClassificationDataset]:
    def build(split: str, size: int | None) -> ClassificationDataset:
        scenes, images = world_split(distribution, split, size or SPLIT_SIZES[split])
        attributes = scenes.attributes()
        return ClassificationDataset(
            name=f"{distribution}.{task}",
            split=split,
            images=images,
            labels=attributes[task],
            classnames=W.ATTRIBUTES[task],
            templates=W.TEMPLATES[task],
            attributes=attributes,
            scenes=scenes,
        )

    return build


def _build_reference(split: str, size: int | None) -> ClassificationDataset:
    scenes, images = world_split("reference", split, size or REFERENCE_SIZES[split])
    attributes = scenes.attributes()
    colors, shapes = W.ATTRIBUTES["color"], W.ATTRIBUTES["shape"]
    classnames = [f"{c} {s}" for c in colors for s in shapes]
    labels = attributes["color"] * len(shapes) + attributes["shape"]
    return ClassificationDataset(
        name="world.reference",
        split=split,
        images=images,
        labels=labels,
        classnames=classnames,
        templates=W.TEMPLATES["reference"],
        attributes=attributes,
        scenes=scenes,
    )


def specs() -> list[DatasetSpec]:
    """Every tutorial-world dataset: ``<distribution>.<task>`` for each task, and the reference."""
    out = []
    for distribution, shift in DISTRIBUTIONS.items():
        what = "base tutorial world" if shift is None else f"tutorial world, {shift} shift"
        for task in W.ATTRIBUTES:
            out.append(DatasetSpec(name=f"{distribution}.{task}",
                                   build=_world_builder(distribution, task),
                                   description=f"{task} ({what})"))
    out.append(DatasetSpec(
        name="world.reference", build=_build_reference,
        description="reference set for PCA bases (ImageNet analogue): color+shape",
    ))
    return out


def clear() -> None:
    """Forget every rendered world split."""
    _WORLD_CACHE.clear()
