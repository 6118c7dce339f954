"""Figures made of images: sample grids, a head's principal-component extremes, disagreements."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure, SubFigure
from torch import Tensor

from residual_core.analysis.exemplars import PCExtremes, PredictionFlips

__all__ = ["plot_disagreements", "plot_image_grid", "plot_image_rows", "plot_pc_extremes",
           "plot_prediction_flips"]


def _pixels(image) -> np.ndarray:
    """An HWC uint8 array from an array or a PIL image."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    return array


def _show(ax, image, title: str | None = None, fontsize: float = 7, color: str = "black") -> None:
    ax.imshow(_pixels(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=fontsize, color=color)


def plot_image_grid(
    images: Sequence | np.ndarray, titles: Sequence[str] | None = None, ncols: int = 8,
    size: float = 1.3,
    suptitle: str | None = None, wrap: int = 22,
) -> Figure:
    """Images in a grid, each with an optional (wrapped) title.

    Args:
        images: HWC uint8 arrays or PIL images.
        titles: One per image (e.g. its caption).
        ncols: Images per row.
        size: Inches per image.
        suptitle: Title of the figure.
        wrap: Characters per title line.
    """
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    extra = 0.35 * max((len(textwrap.wrap(t, wrap)) for t in titles), default=0) if titles else 0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + extra) * nrows),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            title = "\n".join(textwrap.wrap(titles[i], wrap)) if titles else None
            _show(ax, images[i], title)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_rows(
    rows: Mapping[str, Sequence | np.ndarray], titles: Mapping[str, Sequence[str]] | None = None,
    size: float = 1.2, wrap: int = 20,
) -> Figure:
    """Images side by side: one labelled row per image set (e.g. per dataset).

    Args:
        rows: Row label → its images (HWC uint8 arrays or PIL images); rows may differ in length.
        titles: Row label → one title per image (e.g. class names), for the rows that have them.
        size: Inches per image.
        wrap: Characters per title line.
    """
    if not rows or not any(len(images) for images in rows.values()):
        raise ValueError("no images to show")
    ncols = max(len(images) for images in rows.values())
    lines = max((len(textwrap.wrap(t, wrap)) for ts in (titles or {}).values() for t in ts),
                default=0)
    fig, axes = plt.subplots(len(rows), ncols, squeeze=False, figsize=(
        1.2 + size * ncols, (size + 0.3 * lines) * len(rows)))
    for r, (label, images) in enumerate(rows.items()):
        row_titles = (titles or {}).get(label)
        for j, ax in enumerate(axes[r]):
            if j >= len(images):
                ax.axis("off")
                continue
            title = "\n".join(textwrap.wrap(row_titles[j], wrap)) if row_titles else None
            _show(ax, images[j], title)
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def plot_pc_extremes(
    images: Sequence | np.ndarray, extremes: Sequence[PCExtremes], unit: str,
    texts: Sequence[str] = (), size: float = 1.1, fig: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """What a unit's first principal components respond to: the images at both ends of each.

    One row per component: the images with the highest coordinates, then those with the
    lowest; the unit's explaining texts (e.g. TextSpan's first picks) are listed on the right.

    Args:
        images: The images the extremes index into.
        extremes: :func:`residual_core.analysis.exemplars.pc_extremes` of the unit.
        unit: Its label.
        texts: Texts that explain the unit, shown beside the images.
        size: Inches per image.
        fig: Draw into this (sub)figure instead of a new one, e.g. below a head's other panels.
    """
    k = max(len(e.top) for e in extremes)
    text_width = 2.6 if texts else 0
    if fig is None:
        fig = plt.figure(figsize=(size * (2 * k) + 0.8 + text_width,
                                  size * len(extremes) + 0.5))
    grid = fig.add_gridspec(len(extremes), 2 * k + 2, width_ratios=[
        *([1] * k), 0.25, *([1] * k), text_width / size if texts else 0.01])
    for row, ext in enumerate(extremes):
        for j, i in enumerate(ext.top):
            ax = fig.add_subplot(grid[row, j])
            _show(ax, images[i], "highest" if row == 0 and j == 0 else None)
            if j == 0:
                ax.set_ylabel(f"PC{ext.pc}\n{ext.explained:.0%}", fontsize=8, rotation=0,
                              ha="right", va="center")
        for j, i in enumerate(ext.bottom):
            _show(fig.add_subplot(grid[row, k + 1 + j]), images[i],
                  "lowest" if row == 0 and j == 0 else None)
    if texts:
        ax = fig.add_subplot(grid[:, -1])
        ax.axis("off")
        lines = "\n".join(f"{i + 1}. " + "\n    ".join(textwrap.wrap(t, 30))
                          for i, t in enumerate(texts))
        ax.text(0.02, 0.95, f"TextSpan\n{lines}", va="top", ha="left", fontsize=7.5,
                transform=ax.transAxes)
    # in a subfigure, the (constrained) layout places the title above the images itself
    fig.suptitle(f"{unit}: images at both ends of its first principal components",
                 fontsize=9, **({"y": 1.02} if isinstance(fig, Figure) else {}))
    return fig


def plot_disagreements(
    images: Sequence | np.ndarray, first_wrong: Sequence[int], second_wrong: Sequence[int],
    classnames: Sequence[str], targets: Sequence[int] | np.ndarray | Tensor,
    first: Sequence[int] | np.ndarray | Tensor, second: Sequence[int] | np.ndarray | Tensor,
    names: tuple[str, str] = ("zero-shot", "ResiDual"),
    size: float = 1.3,
) -> Figure:
    """Two rows of images: where the first classifier errs and the second is right, and back.

    Args:
        images: The images the indices refer to.
        first_wrong: Indices the first gets wrong and the second right.
        second_wrong: Indices the first gets right and the second wrong.
        classnames: Class names.
        targets: True class per image.
        first: Predictions of the first classifier per image.
        second: Predictions of the second.
        names: The two classifiers' names.
        size: Inches per image.
    """
    k = max(len(first_wrong), len(second_wrong), 1)
    fig, axes = plt.subplots(2, k, figsize=(size * k + 1.6, 2 * size + 1.3), squeeze=False)
    rows = [(first_wrong, f"{names[0]} wrong,\n{names[1]} right"),
            (second_wrong, f"{names[0]} right,\n{names[1]} wrong")]
    for r, (indices, label) in enumerate(rows):
        for j, ax in enumerate(axes[r]):
            if j >= len(indices):
                ax.axis("off")
                continue
            i = indices[j]
            title = (f"true {classnames[targets[i]]}\n{names[0][:4]}: {classnames[first[i]]}\n"
                     f"{names[1][:4]}: {classnames[second[i]]}")
            _show(ax, images[i], title, fontsize=6.5)
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
        if not indices:
            axes[r, 0].axis("on")
            axes[r, 0].set_xticks([])
            axes[r, 0].set_yticks([])
            axes[r, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_prediction_flips(
    images: Sequence | np.ndarray, classnames: Sequence[str], flips: PredictionFlips,
    names: tuple[str, str] = ("zero-shot", "ResiDual"), title: str | None = None,
) -> Figure:
    """:func:`plot_disagreements` of a :class:`~residual_core.analysis.exemplars.PredictionFlips`.

    Args:
        images: The images the flips index into (e.g. a task's test split).
        classnames: The task's class names.
        flips: Zero-shot against a variant on those images.
        names: The two classifiers' names.
        title: Title of the figure.
    """
    fig = plot_disagreements(images, flips.first_wrong, flips.second_wrong, classnames,
                             flips.targets, flips.first, flips.second, names)
    if title:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig
