"""Figures for the unit-geometry chapters: per-unit grids, depth profiles, spectra, similarities."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from residual_core.analysis.geometry import TwoNNFit
from residual_core.core.spectral import PCAResult
from residual_core.core.units import layer_of

__all__ = [
    "plot_depth_profiles",
    "plot_layer_spectra",
    "plot_similarity_matrix",
    "plot_similarity_summary",
    "plot_unit_grid",
]

_ANNOTATE_MAX_CELLS = 200
"""Grids up to this many cells get their values written in (the tutorial's 4 × 5 does)."""


def plot_unit_grid(
    grid: pd.DataFrame,
    *,
    title: str,
    label: str,
    fmt: str = ".1f",
    embed: float | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    ax=None,
):
    """Heatmap of a layer × (heads, MLP) grid, the MLP column set apart by a white line.

    Args:
        grid: A layer × (heads, MLP) grid (:func:`residual_core.core.units.unit_grid`).
        title: Figure title.
        label: Colour bar label.
        fmt: Format of the cell annotations (written when the grid is small).
        embed: The embedding unit's value, shown in the title when given.
        cmap: Colour map.
        vmin: Lower end of the colour scale (default: the data's).
        vmax: Upper end of the colour scale.
        ax: Axes to draw on (default: a new figure).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(2.2 + 0.6 * grid.shape[1], 1.4 + 0.45 * grid.shape[0]))
    annotate = grid.size <= _ANNOTATE_MAX_CELLS
    sns.heatmap(grid, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, annot=annotate, fmt=fmt,
                annot_kws={"fontsize": 8}, linewidths=0.3, linecolor="white",
                cbar_kws={"label": label})
    if "MLP" in grid.columns:
        ax.axvline(list(grid.columns).index("MLP"), color="white", linewidth=3)
        ax.set_xlabel("head  |  MLP")
    else:
        ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title if embed is None else f"{title}\n(embed: {embed:{fmt}})")
    ax.figure.tight_layout()
    return ax.figure


def plot_depth_profiles(profiles: Mapping[str, pd.DataFrame], *, ncols: int = 2):
    """Depth profiles, one panel per quantity: head mean ± std, head range, MLP.

    Args:
        profiles: Panel title → output of :func:`residual_core.analysis.geometry.depth_profile`.
        ncols: Panels per row.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = len(profiles)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (title, prof) in zip(axes.flat, profiles.items(), strict=False):
        layers = prof.index.to_numpy()
        ax.fill_between(layers, prof["min"], prof["max"], color="C0", alpha=0.12,
                        label="heads: min–max")
        ax.fill_between(layers, prof["mean"] - prof["std"], prof["mean"] + prof["std"],
                        color="C0", alpha=0.3, label="heads: mean ± std")
        ax.plot(layers, prof["mean"], "o-", color="C0", label="heads: mean")
        if prof["mlp"].notna().any():
            ax.plot(layers, prof["mlp"], "s--", color="C3", label="MLP")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_layer_spectra(
    pca: PCAResult,
    fits: Mapping[str, TwoNNFit],
    layer: int,
    threshold: float = 0.99,
):
    """One layer's units: cumulative explained variance and the TwoNN fits.

    Left, the cumulative explained variance ratio against the number of components for every
    head and the MLP, with the linear-ID threshold; right, ``−log(1 − F)`` against ``log μ`` with
    each unit's fitted line through the origin (its slope is the TwoNN ID).

    Args:
        pca: Labelled per-unit PCA.
        fits: Unit → TwoNN fit (from
            :func:`~residual_core.analysis.geometry.intrinsic_dimension_table`).
        layer: The layer to show.
        threshold: The linear-ID threshold drawn as a line.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    units = [u for u in pca.labels if layer_of(u) == layer]
    if not units:
        raise ValueError(f"no units in layer {layer}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, unit in enumerate(units):
        style = dict(color="black", linestyle="--") if unit.endswith(".mlp") else \
            dict(color=f"C{i % 10}")
        cum = np.cumsum(pca[unit].explained_variance_ratio.cpu().numpy())
        left.plot(np.arange(1, len(cum) + 1), cum, label=unit, **style)
        fit = fits[unit]
        right.plot(fit.log_mu, fit.neg_log_survival, ".", markersize=2, alpha=0.6,
                   color=style["color"])
        xs = np.array([0, fit.log_mu.max()])
        right.plot(xs, fit.dimension * xs, label=f"{unit}: {fit.dimension:.1f}", **style)
    left.axhline(threshold, color="grey", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("principal components")
    left.set_ylabel("cumulative explained variance")
    left.set_title(f"Layer {layer}: spectra (line: {threshold:.0%})")
    left.legend(fontsize=7, ncol=2)
    right.set_xlabel("log μ = log(r₂ / r₁)")
    right.set_ylabel("−log(1 − F(μ))")
    right.set_title(f"Layer {layer}: TwoNN fits (slope = ID)")
    right.legend(fontsize=7, ncol=2)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_similarity_summary(
    similarity: pd.DataFrame, chance: float, *, order: list[str] | None = None
):
    """Head similarities to the reference per dataset, and their depth profile.

    Args:
        similarity: Long form with columns ``dataset``, ``kind``, ``layer`` and ``similarity``.
        chance: The chance level (similarity of unrelated subspaces), drawn as a line.
        order: Datasets in display order (default: order of appearance).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    heads = similarity[similarity.kind == "head"]
    order = order or list(dict.fromkeys(heads.dataset))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2),
                                      gridspec_kw={"width_ratios": [1.2, 1]})
    layers = sorted(heads.layer.unique())
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(layers)))
    jitter = np.random.default_rng(0).uniform(-0.22, 0.22, len(heads))
    left.boxplot([heads.loc[heads.dataset == name, "similarity"] for name in order],
                 positions=range(len(order)), widths=0.6, showfliers=False,
                 medianprops={"color": "black"})
    for colour, layer in zip(colours, layers, strict=True):
        mask = (heads.layer == layer).to_numpy()
        xs = heads.dataset.map({name: i for i, name in enumerate(order)}).to_numpy()[mask]
        left.scatter(xs + jitter[mask], heads.similarity.to_numpy()[mask], s=14,
                     color=colour, label=f"L{layer}", zorder=3)
    left.set_xticks(range(len(order)), order)
    left.set_xlabel("dataset")
    left.set_ylabel("similarity")
    left.axhline(chance, color="C3", linestyle=":", label=f"chance ({chance:.2f})")
    left.set_ylim(0, 1.02)
    left.set_title("Heads: similarity to the reference subspace")
    left.legend(fontsize=7, title="layer", title_fontsize=7, loc="lower left",
                ncol=max(2, -(-len(layers) // 6)))
    left.tick_params(axis="x", rotation=20)
    means = heads.groupby(["dataset", "layer"]).similarity.mean().unstack("dataset")
    for i, name in enumerate(order):
        right.plot(means.index, means[name], "o-", label=name, color=f"C{i % 10}")
    right.axhline(chance, color="C3", linestyle=":")
    right.set_ylim(0, 1.02)
    right.set_xticks(means.index)
    right.set_xlabel("layer")
    right.set_ylabel("mean over heads")
    right.set_title("Depth profile")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_similarity_matrix(matrix: pd.DataFrame, n_heads: int, *, title: str):
    """Unit-vs-unit similarity heatmap with lines between layers.

    Args:
        matrix: Square frame of similarities (e.g. every head against every head).
        n_heads: Units per layer block (lines are drawn every ``n_heads`` rows).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    n = matrix.shape[0]
    size = min(11.0, 2.5 + 0.32 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    sns.heatmap(matrix, ax=ax, cmap="mako", vmin=0, vmax=1, square=True,
                annot=n <= 20, fmt=".2f", annot_kws={"fontsize": 6},
                cbar_kws={"label": "spectral cosine similarity", "shrink": 0.8})
    for edge in range(n_heads, n, n_heads):
        ax.axhline(edge, color="white", linewidth=1.5)
        ax.axvline(edge, color="white", linewidth=1.5)
    ax.set_title(title)
    fig.tight_layout()
    return fig
