"""Classification datasets behind one registry: tutorial-world tasks now, the paper's later.

Every dataset is a ``ClassificationDataset`` (a torch ``Dataset`` yielding ``(PIL.Image, int)``
like torchvision, or ``(transform(image), int)``) that also carries what zero-shot
classification needs (``classnames``, ``templates``) and, for the tutorial world, the
ground-truth attribute table of every sample (``attributes``), which later chapters probe units
against.

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

The paper's datasets (``cifar10``, ..., ``imagenet``, ``pacs``, ``random``) live in
``residual_core.paper_datasets``, imported on the first ``list_datasets``/``load_dataset`` call.

Extension point: the paper profile registers its datasets (CIFAR-10, MNIST, ... through
torchvision) with ``register_dataset(DatasetSpec(name, build, ...))``, where ``build(split,
size)`` returns a ``ClassificationDataset`` whose ``images`` is any indexable of PIL images (for
example a thin view over a torchvision dataset) and ``attributes`` is ``None``. A sketch::

    class _PilView:  # torchvision dataset (or a Subset of it) -> indexable of PIL images
        def __init__(self, tv): self.tv = tv
        def __len__(self): return len(self.tv)
        def __getitem__(self, i): return self.tv[i][0].convert("RGB")

    def _build_cifar10(split, size):
        tv = torchvision.datasets.CIFAR10(root, train=split != "test", download=False)
        indices = ...  # official test; stratified train/val carve-out (seed 42), first `size`
        return ClassificationDataset("cifar10", split, _PilView(Subset(tv, indices)),
                                     labels, tv.classes, CIFAR_TEMPLATES)

    register_dataset(DatasetSpec("cifar10", _build_cifar10, description="CIFAR-10"))
"""

from __future__ import annotations

import copy
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from residual_core.tutorial import world as W

__all__ = [
    "BLOCK",
    "DISTRIBUTIONS",
    "REFERENCE_SIZES",
    "SPLITS",
    "SPLIT_SIZES",
    "WORLD_SEED",
    "ClassificationDataset",
    "DatasetSpec",
    "clear_cache",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "world_split",
]

SPLITS = ("train", "val", "test")
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


class ClassificationDataset(Dataset):
    """A labelled image set with the class names and prompt templates of its task.

    Attributes:
        name: Registry name.
        split: ``train``, ``val`` or ``test``.
        images: uint8 array (n, H, W, 3) or any indexable of PIL images / HWC uint8 arrays.
        labels: (n,) int64 class indices.
        classnames: Class names, index-aligned with the labels.
        templates: Prompt templates with one ``{}`` for the class name.
        attributes: Ground-truth attribute family → (n,) int64 value indices, or ``None``.
        transform: Applied to the PIL image in ``__getitem__`` when not ``None``.
        scenes: For tutorial-world datasets, the ``world.Scenes`` that were drawn.
    """

    def __init__(
        self,
        name: str,
        split: str,
        images: np.ndarray | Sequence[Any],
        labels: np.ndarray,
        classnames: Sequence[str],
        templates: Sequence[str],
        attributes: dict[str, np.ndarray] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        scenes: W.Scenes | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.name = name
        self.split = split
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.attributes = attributes
        self.transform = transform
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        """The untransformed image ``index`` as an RGB PIL image."""
        img = self.images[index]
        return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img), "RGB")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def with_transform(
        self, transform: Callable[[Image.Image], Any] | None
    ) -> ClassificationDataset:
        """A shallow copy (sharing images and labels) that applies ``transform``."""
        out = copy.copy(self)
        out.transform = transform
        return out

    def __repr__(self) -> str:
        return (
            f"ClassificationDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={len(self.classnames)}, templates={len(self.templates)})"
        )


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one registered dataset.

    Attributes:
        name: Registry name.
        build: ``build(split, size)`` → the untransformed dataset (``size`` ``None``: default).
        splits: Valid split names.
        description: One line for listings.
    """

    name: str
    build: Callable[[str, int | None], ClassificationDataset]
    splits: tuple[str, ...] = SPLITS
    description: str = ""


_REGISTRY: dict[str, DatasetSpec] = {}
_CACHE: dict[tuple[str, str, int | None], ClassificationDataset] = {}
_WORLD_CACHE: dict[tuple[str, str, int], tuple[W.Scenes, np.ndarray]] = {}


def register_dataset(spec: DatasetSpec, overwrite: bool = False) -> None:
    """Add a dataset to the registry (the extension point for the paper's datasets).

    Args:
        spec: The dataset's name, builder and splits.
        overwrite: Replace an existing entry of the same name instead of raising.
    """
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    for key in [k for k in _CACHE if k[0] == spec.name]:
        del _CACHE[key]


def _register_paper() -> None:
    """Register the paper's datasets (imported lazily: the module imports this one)."""
    import residual_core.paper_datasets  # noqa: F401


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    _register_paper()
    return sorted(_REGISTRY)


def load_dataset(
    name: str,
    split: str,
    transform: Callable[[Image.Image], Any] | None = None,
    *,
    size: int | None = None,
) -> ClassificationDataset:
    """Load a registered dataset split (built on first use, then cached in memory).

    Args:
        name: A name from ``list_datasets()``.
        split: One of the dataset's splits (``train``, ``val``, ``test``).
        transform: Optional callable applied to each PIL image by ``__getitem__``.
        size: Number of samples (``None``: the dataset's default for that split).

    Returns:
        The dataset; its arrays are shared with the cache, so treat them as read-only.

    Raises:
        ValueError: Unknown name or split (the message lists the valid ones).
    """
    _register_paper()
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    spec = _REGISTRY[name]
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} for dataset {name!r}; valid splits: {', '.join(spec.splits)}"
        )
    if size is not None and size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    key = (name, split, size)
    if key not in _CACHE:
        _CACHE[key] = spec.build(split, size)
    return _CACHE[key].with_transform(transform)


def clear_cache() -> None:
    """Forget every built dataset and rendered world split."""
    _CACHE.clear()
    _WORLD_CACHE.clear()
    paper = sys.modules.get("residual_core.paper_datasets")
    if paper is not None:
        paper.clear_sources()


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


def _register_world() -> None:
    for distribution, shift in DISTRIBUTIONS.items():
        what = "base tutorial world" if shift is None else f"tutorial world, {shift} shift"
        for task in W.ATTRIBUTES:
            register_dataset(
                DatasetSpec(
                    name=f"{distribution}.{task}",
                    build=_world_builder(distribution, task),
                    description=f"{task} ({what})",
                )
            )
    register_dataset(
        DatasetSpec(
            name="world.reference",
            build=_build_reference,
            description="reference set for PCA bases (ImageNet analogue): color+shape",
        )
    )


_register_world()
