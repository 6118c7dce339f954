"""What every dataset of the registry is: a labelled image set with its class names and prompts.

A :class:`ClassificationDataset` is a torch ``Dataset`` yielding ``(PIL.Image, int)`` like
torchvision, or ``(transform(image), int)``, that also carries what zero-shot classification
needs (``classnames``, ``templates``) and, for the tutorial world, the ground-truth attribute
table of every sample (``attributes``), which the chapters probe units against. A
:class:`DatasetSpec` says how to build one split of a registered dataset.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SPLITS", "ClassificationDataset", "DatasetSpec", "Indexable"]

SPLITS = ("train", "val", "test")


@runtime_checkable
class Indexable(Protocol):
    """What a dataset's images may be: anything with a length and integer indexing."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


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
        images: Indexable,
        labels: np.ndarray,
        classnames: Sequence[str],
        templates: Sequence[str],
        attributes: dict[str, np.ndarray] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        scenes: Any = None,
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

    def batch(
        self, indices: Sequence[int] | None = None
    ) -> tuple[Float[Tensor, "batch 3 height width"], Int[Tensor, " batch"]]:
        """The (transformed) images and labels of ``indices`` (default: all), stacked.

        Needs a transform returning tensors (e.g. a model's ``preprocess``).
        """
        indices = range(len(self)) if indices is None else indices
        items = [self[i] for i in indices]
        if items and not isinstance(items[0][0], Tensor):
            raise TypeError("batch() stacks tensors: load the dataset with a transform, e.g. "
                            "load_dataset(name, split, loaded.preprocess)")
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

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
        cache_token: Called on every load; a built split is reused from memory only while it
            returns the same value (e.g. the data root the files are read from).
    """

    name: str
    build: Callable[[str, int | None], ClassificationDataset]
    splits: tuple[str, ...] = SPLITS
    description: str = ""
    cache_token: Callable[[], Hashable] | None = None
