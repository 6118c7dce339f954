"""Encodings of registered datasets: one split (cached on disk), or tasks sharing their images.

:func:`encode_dataset` encodes one split of a registered dataset with a model into a cached,
fingerprinted :class:`~residual_core.core.store.EncodingStore`.

All tutorial-world tasks of one distribution and split (``world.color``,
``world.count``, ...) show the same images with different labels, so their units are the same
tensor. :class:`TaskEncodings` finds which tasks share images, encodes each image set once
through the cached :func:`encode_dataset`, and hands out
``(units, targets)`` per task and split. The paper's datasets each have their own images and
are simply encoded one by one.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from residual_core.core.decompose import check_centering
from residual_core.core.io import cache_root
from residual_core.core.probes import probe_table
from residual_core.core.store import EncodingStore, build_store, store_lock
from residual_core.core.units import Units
from residual_core.core.zeroshot import ZeroShotClassifier, build_classifier
from residual_core.data.base import ClassificationDataset
from residual_core.data.registry import load_dataset
from residual_core.data.world import image_set

__all__ = ["TaskEncodings", "encode_dataset"]


def encode_dataset(
    loaded,
    dataset_name: str,
    split: str,
    *,
    size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    dtype: str = "float32",
    centering: str = "shared",
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> EncodingStore:
    """Encode a registered dataset split with a registered model, or reuse the cached store.

    The store lives in ``{cache_dir}/encodings/{model}/{dataset}/{split}-{size}`` and is
    fingerprinted with the model's weights fingerprint, the dataset, split, size and transform,
    so a changed model or dataset is re-encoded instead of silently reused.

    Args:
        loaded: A :class:`~residual_core.core.model.LoadedModel`.
        dataset_name: A name from :func:`~residual_core.data.registry.list_datasets`.
        split: ``train``, ``val`` or ``test``.
        size: Number of samples (``None``: the dataset's default).
        cache_dir: Cache root (default :func:`~residual_core.core.io.cache_root`).
        batch_size: Images per forward pass.
        dtype: Storage dtype of the raw form.
        centering: Split of the final LayerNorm's mean over the units (``"shared"``, the
            authors' form, or ``"per-unit"``); part of the fingerprint.
        device: Where to run (default: the model's device).
        autocast_dtype: E.g. ``torch.float16`` on GPU.
        num_workers: DataLoader workers.
        progress: Show a progress bar.

    Returns:
        The (finished) store.
    """
    dataset = load_dataset(dataset_name, split, loaded.preprocess, size=size)
    fingerprint = {
        "model": loaded.name,
        "arch": loaded.arch,
        "pretrained": loaded.pretrained,
        "weights": loaded.fingerprint,
        "dataset": dataset_name,
        "split": split,
        "size": len(dataset),
        "transform": repr(loaded.preprocess),
        "centering": check_centering(centering),
    }
    # The centring is in the path too, so both centrings of one dataset can stay cached.
    suffix = "" if centering == "shared" else f"-{centering}"
    root = Path(cache_dir or cache_root()) / "encodings" / loaded.name / dataset_name / (
        f"{split}-{len(dataset)}{suffix}"
    )
    with store_lock(root):
        return build_store(root, loaded.model, dataset, fingerprint, batch_size=batch_size,
                           dtype=dtype, centering=centering, device=device or loaded.device,
                           chunk_size=batch_size * 16, autocast_dtype=autocast_dtype,
                           num_workers=num_workers, overwrite=True, progress=progress)


class TaskEncodings:
    """Lazily encoded, memoised unit contributions of tasks and splits.

    Example:
        >>> enc = TaskEncodings(loaded, {"train": 2000, "test": 2000})
        >>> units, y = enc.get("world.color", "test")   # encodes the test images
        >>> units, y = enc.get("world.count", "test")        # same images: no new encoding

    Args:
        loaded: A :class:`residual_core.models.LoadedModel`.
        sizes: Samples per split (``None`` or a missing split: the dataset's default size).
        cache_dir: Root of the encoding stores (default: the store's default cache).
        keep: Unit tensors kept in memory at once (least recently used are dropped; one
            tensor serves every task sharing its images).
        centering: Split of the final LayerNorm's mean over the units (``"shared"``, the
            paper authors' form, or ``"per-unit"``; see :mod:`residual_core.core.decompose`).
        progress: Show progress bars while encoding.
    """

    def __init__(
        self,
        loaded,
        sizes: Mapping[str, int | None] | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        keep: int = 4,
        centering: str = "shared",
        progress: bool = False,
    ) -> None:
        self.loaded = loaded
        self.centering = check_centering(centering)
        self.sizes = dict(sizes or {})
        self.cache_dir = cache_dir
        self.keep = keep
        self.progress = progress
        self._sources: dict[tuple[str, str], str] = {}  # (task, split) → task whose store is used
        self._units: OrderedDict[tuple[str, str], Tensor] = OrderedDict()
        self._classifiers: dict[str, ZeroShotClassifier] = {}

    def dataset(self, task: str, split: str) -> ClassificationDataset:
        """The (untransformed, memory-cached) dataset of a task split."""
        return load_dataset(task, split, size=self.sizes.get(split))

    def source(self, task: str, split: str) -> str:
        """The task whose encoding store holds this task's images (itself if none shares them).

        Tutorial-world tasks use their distribution's one name
        (:func:`residual_core.data.world.image_set`), so every chapter reads the same store;
        other tasks share with a task of this object that shows the very same images.
        """
        key = (task, split)
        if key not in self._sources:
            canonical = image_set(task)
            if canonical != task:
                self._sources[key] = canonical
                return canonical
            images = self.dataset(task, split).images
            self._sources[key] = next(
                (src for (t, s), src in self._sources.items()
                 if s == split and self.dataset(t, split).images is images),
                task,
            )
        return self._sources[key]

    def store(self, task: str, split: str) -> EncodingStore:
        """The cached encoding store of a task split's images (built on first use)."""
        return encode_dataset(self.loaded, self.source(task, split), split,
                              size=self.sizes.get(split), cache_dir=self.cache_dir,
                              centering=self.centering, progress=self.progress)

    def units(self, task: str, split: str) -> Units:
        """Every unit's projected contribution for every sample of the split (float32, CPU)."""
        key = (self.source(task, split), split)
        if key in self._units:
            self._units.move_to_end(key)
        else:
            store = self.store(task, split)  # all units, chunk by chunk (faster than by label)
            self._units[key] = store.units()
            while len(self._units) > self.keep:
                self._units.popitem(last=False)
        return self._units[key]

    def embeddings(self, task: str, split: str) -> Float[Tensor, "n d_out"]:
        """The image embeddings of a split (the sum of its units), read chunk by chunk."""
        key = (self.source(task, split), split)
        if key in self._units:
            return self._units[key].sum()
        return torch.cat([units.sum() for units in self.store(task, split).iter_units()])

    def classifier(self, task: str, train_split: str = "train") -> ZeroShotClassifier:
        """The task's zero-shot classifier (memoised).

        The prompt ensemble for models with a text tower; for vision-only encoders
        (``vit_l``, ``dinov2_l``) the class means of the ``train_split`` embeddings, the paper's
        stand-in for a text classifier.
        """
        if task not in self._classifiers:
            ds = self.dataset(task, "test")
            train = {}
            if not getattr(self.loaded, "has_text", True):
                train = {"train_features": self.embeddings(task, train_split),
                         "train_labels": self.targets(task, train_split)}
            self._classifiers[task] = build_classifier(self.loaded, ds, **train)
        return self._classifiers[task]

    def targets(self, task: str, split: str) -> Int[Tensor, " n"]:
        """The task's class index of every sample."""
        return torch.as_tensor(self.dataset(task, split).labels)

    def get(self, task: str, split: str) -> tuple[Units, Int[Tensor, " n"]]:
        """``(units, targets)`` of a task split."""
        return self.units(task, split), self.targets(task, split)

    def attributes(self, task: str, split: str) -> dict[str, Int[Tensor, " n"]] | None:
        """Ground-truth attribute labels of the split's samples, if the dataset has them."""
        attrs = self.dataset(task, split).attributes
        return None if attrs is None else {k: torch.as_tensor(v) for k, v in attrs.items()}

    def means(self, task: str, split: str) -> Float[Tensor, "unit d_out"]:
        """Mean contribution of every unit over a split (e.g. the reference split)."""
        return self.units(task, split).mean()

    def probes(self, tasks: Sequence[str], train: str = "train", test: str = "test",
               alpha: float = 0.1) -> pd.DataFrame:
        """Ridge-probe test accuracy of every unit (and the embedding) for every task's labels.

        Tasks sharing images are probed in one batched call (see
        :func:`residual_core.core.probes.probe_table`).

        Returns:
            Units (plus ``embedding``) × tasks.
        """
        cols = []
        for source, group in self.groups(tasks, train).items():
            cols.append(probe_table(
                self.units(source, train), {t: self.targets(t, train) for t in group},
                self.units(source, test), {t: self.targets(t, test) for t in group},
                alpha=alpha))
        return pd.concat(cols, axis=1)[list(tasks)]

    def groups(self, tasks: Sequence[str], split: str) -> dict[str, list[str]]:
        """Tasks grouped by the images they share: source task → tasks."""
        out: dict[str, list[str]] = {}
        for task in tasks:
            out.setdefault(self.source(task, split), []).append(task)
        return out
