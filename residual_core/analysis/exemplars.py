"""Which images to show: the extremes of a unit's principal components, and disagreements.

- :func:`pc_extremes`: for a unit's first principal components, the images whose outputs have
  the highest and the lowest coordinate along each (the figure style of the TextSpan and
  ResiDual papers: what a direction of a head responds to, next to the texts that explain it).
- :func:`disagreements`: images one classifier gets right and another wrong, both ways.
- :func:`spread_sample`: a few images per class, for a grid that shows every class.
- :func:`unit_extremes`: :func:`pc_extremes` of several units of a PCA at once.
- :func:`captions_of`: the text to print under an image (its caption, else its class).
- :func:`prediction_flips`: where zero-shot and a trained variant disagree on being right;
  :func:`task_flips` for every task's test split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from residual_core.core.residual import Variant
from residual_core.core.spectral import PCAResult
from residual_core.core.units import Units

__all__ = ["PCExtremes", "PredictionFlips", "captions_of", "disagreements", "pc_extremes",
           "prediction_flips", "spread_sample", "task_flips", "unit_extremes"]


@dataclass
class PCExtremes:
    """Images at both ends of one principal component of a unit.

    Attributes:
        pc: Component index (0 = most variance).
        explained: Its share of the unit's variance.
        top: Indices of the images with the highest coordinates, highest first.
        bottom: Indices of the images with the lowest coordinates, lowest first.
        top_values: Their coordinates.
        bottom_values: Their coordinates.
    """

    pc: int
    explained: float
    top: list[int]
    bottom: list[int]
    top_values: list[float]
    bottom_values: list[float]


def pc_extremes(
    outputs: Float[Tensor, "n d"],
    components: Float[Tensor, "k d"],
    mean: Float[Tensor, " d"],
    explained_variance_ratio: Float[Tensor, " k"],
    n_pcs: int = 2,
    n_images: int = 4,
) -> list[PCExtremes]:
    """The images at both ends of a unit's first principal components.

    Args:
        outputs: The unit's output for every image (e.g. of the reference set).
        components: The unit's principal directions (rows, most variance first), e.g. from
            the reference PCA.
        mean: The unit's mean output (the PCA's).
        explained_variance_ratio: Each component's share of the variance.
        n_pcs: Components to report.
        n_images: Images at each end.

    Returns:
        One :class:`PCExtremes` per component. A component's sign is arbitrary, so "top" and
        "bottom" are the two ends, not a good and a bad one.
    """
    if outputs.ndim != 2 or outputs.shape[1] != components.shape[1]:
        raise ValueError(f"outputs of shape {tuple(outputs.shape)} do not match components of "
                         f"shape {tuple(components.shape)}")
    n_images = min(n_images, outputs.shape[0] // 2)
    coords = (outputs.double() - mean.double()) @ components[:n_pcs].double().T  # (n, pcs)
    out = []
    for pc in range(min(n_pcs, components.shape[0])):
        order = torch.argsort(coords[:, pc], descending=True, stable=True)
        top, bottom = order[:n_images], order.flip(0)[:n_images]
        out.append(PCExtremes(pc, float(explained_variance_ratio[pc]), top.tolist(),
                              bottom.tolist(), coords[top, pc].tolist(),
                              coords[bottom, pc].tolist()))
    return out


def disagreements(
    first: Int[Tensor, " n"], second: Int[Tensor, " n"], targets: Int[Tensor, " n"],
    n_images: int = 4, seed: int = 0,
) -> tuple[list[int], list[int]]:
    """Images where two classifiers disagree on being right.

    Args:
        first: Predicted classes of the first classifier (e.g. zero-shot).
        second: Predicted classes of the second (e.g. ResiDual).
        targets: True classes.
        n_images: At most this many of each kind, drawn at random (seeded) when there are more.
        seed: Seed of the draw.

    Returns:
        ``(first wrong and second right, first right and second wrong)``, indices in
        increasing order.
    """
    if not first.shape == second.shape == targets.shape:
        raise ValueError(f"predictions {tuple(first.shape)}, {tuple(second.shape)} and targets "
                         f"{tuple(targets.shape)} differ in shape")
    ok1, ok2 = first == targets, second == targets
    rng = np.random.default_rng(seed)

    def draw(mask: Tensor) -> list[int]:
        idx = torch.nonzero(mask).flatten().cpu().numpy()
        if len(idx) > n_images:
            idx = rng.choice(idx, n_images, replace=False)
        return sorted(int(i) for i in idx)

    return draw(~ok1 & ok2), draw(ok1 & ~ok2)


def spread_sample(labels: Sequence[int] | np.ndarray, per_class: int = 1, seed: int = 0
                  ) -> list[int]:
    """A few indices of every class present (seeded), grouped by class in class order."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out += sorted(int(i) for i in rng.choice(idx, min(per_class, len(idx)), replace=False))
    return out


def unit_extremes(
    units: Units, pca: PCAResult, labels: Sequence[str], n_pcs: int = 2, n_images: int = 4,
) -> dict[str, list[PCExtremes]]:
    """:func:`pc_extremes` of every unit in ``labels``, on the images ``units`` were encoded from.

    Args:
        units: Outputs of (at least) the ``labels`` units for every image.
        pca: Per-unit PCA holding the same labels (e.g. computed on ``units``).
        labels: Units to report.
        n_pcs: Components per unit.
        n_images: Images at each end.

    Returns:
        Label → its extremes; the indices refer to the images of ``units``.
    """
    out = {}
    for label in labels:
        unit = pca[label]
        out[label] = pc_extremes(units[label], unit.components.to(units[label]),
                                 unit.mean.to(units[label]),
                                 unit.explained_variance_ratio, n_pcs, n_images)
    return out


def captions_of(dataset, indices: Sequence[int], seed: int = 0) -> list[str]:
    """What to print under each image: a tutorial-world caption, else the image's class name.

    Args:
        dataset: A :class:`~residual_core.data.base.ClassificationDataset`; tutorial-world ones
            carry their ``scenes``, whose captions are drawn like the training captions.
        indices: Images of the dataset.
        seed: Seed of the caption choices (which attributes a caption mentions).
    """
    if getattr(dataset, "scenes", None) is not None:
        from residual_core.tutorial.world import captions

        return list(captions(dataset.scenes.subset(np.asarray(indices, dtype=int)), seed))
    return [dataset.classnames[int(dataset.labels[i])] for i in indices]


@dataclass
class PredictionFlips:
    """Where zero-shot and a trained variant disagree on being right, over one image set.

    Attributes:
        targets: True class per image.
        first: Zero-shot prediction per image.
        second: The variant's prediction per image.
        first_wrong: Indices zero-shot gets wrong and the variant right (at most ``n_images``).
        second_wrong: Indices zero-shot gets right and the variant wrong.
    """

    targets: Tensor
    first: Tensor
    second: Tensor
    first_wrong: list[int]
    second_wrong: list[int]


@torch.no_grad()
def prediction_flips(
    variant: Variant, units: Units | Iterable[Units], targets: Int[Tensor, " n"],
    n_images: int = 4, seed: int = 0, batch_size: int = 1024,
) -> PredictionFlips:
    """Zero-shot (the sum of all units through the same frozen classifier) against a variant.

    Args:
        variant: A trained variant that works on cached units (not ``fine-tune``).
        units: Every unit's output per image, or batches of them in image order (e.g. an
            encoding store's ``iter_units()``): read once.
        targets: True class per image.
        n_images: At most this many images of each kind (:func:`disagreements`).
        seed: Seed of the draw among more.
        batch_size: Images at a time when ``units`` is one :class:`Units`.
    """
    variant.eval()
    batches = units.split(batch_size) if isinstance(units, Units) else units
    zero_shot, adapted = [], []
    for batch in batches:
        zero_shot.append(variant.classifier(batch.sum()).argmax(-1).cpu())
        adapted.append(variant(*variant.encode(batch)).argmax(-1).cpu())
    first, second, targets = torch.cat(zero_shot), torch.cat(adapted), targets.cpu()
    return PredictionFlips(targets, first, second,
                           *disagreements(first, second, targets, n_images, seed))


def task_flips(
    trained: Mapping[str, Variant], enc, n_images: int = 4, seed: int = 0,
    stream_units: bool = False, split: str = "test",
) -> dict[str, tuple[object, PredictionFlips]]:
    """:func:`prediction_flips` of each task's trained variant on the task's ``split``.

    Args:
        trained: Task → its trained variant (e.g. ``ExperimentResults.trained(name)``).
        enc: A :class:`~residual_core.data.encodings.TaskEncodings` holding the split.
        n_images: At most this many images of each kind.
        seed: Seed of the draw among more.
        stream_units: Read the units from the encoding store chunk by chunk (paper scale)
            instead of holding the whole split in memory.
        split: The split compared.

    Returns:
        Task → (its dataset of that split, for the images and class names; the flips).
    """
    out = {}
    for task, variant in trained.items():
        units = (enc.store(task, split).iter_units() if stream_units
                 else enc.units(task, split))
        out[task] = (enc.dataset(task, split),
                     prediction_flips(variant, units, enc.targets(task, split), n_images, seed))
    return out
