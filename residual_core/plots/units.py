"""Figures of chapter 00: unit norms per layer and head, and per image."""

from __future__ import annotations

import pandas as pd

from residual_core.core.units import unit_grid
from residual_core.plots.common import log_norm, plain_colorbar_ticks

__all__ = ["norm_grid", "plot_layer_head_heatmap", "plot_layer_units"]


def norm_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Mean norm over images of every unit as the layer × (heads, MLP) grid.

    Args:
        table: :func:`residual_core.analysis.decomposition.unit_norm_table`.
    """
    return unit_grid(table.groupby("unit", sort=False).norm.mean())


def plot_layer_head_heatmap(grid: pd.DataFrame, embed_norm: float | None = None, *, ax=None,
                            title: str = "Mean contribution norm per unit", log: bool = True):
    """Heatmap of a :func:`layer_head_grid`, the MLP column set apart by a line.

    Args:
        grid: Layers × (heads, ``MLP``) values (:func:`norm_grid`).
        embed_norm: The embedding unit's value, shown in the title when given.
        ax: Axes to draw on (default: a new figure).
        title: Figure title.
        log: Logarithmic colour scale (MLPs and heads often differ by orders of magnitude).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.55 * grid.shape[1], 1.2 + 0.42 * grid.shape[0]))
    norm = log_norm(grid.to_numpy(), None) if log else None
    sns.heatmap(grid, ax=ax, cmap="viridis", norm=norm, linewidths=0.3, linecolor="white",
                cbar_kws={"label": "‖unit‖₂ (mean over images)"})
    ax.axvline(grid.shape[1] - 1, color="white", linewidth=3)
    plain_colorbar_ticks(ax)
    ax.set_xlabel("head  |  MLP")
    ax.set_ylabel("layer")
    ax.set_title(title if embed_norm is None else f"{title}  (embed: {embed_norm:.3g})")
    ax.figure.tight_layout()
    return ax.figure


def plot_layer_units(table: pd.DataFrame, layer: int, *, vmin: float | None = None,
                     vmax: float | None = None, log: bool = True, ax=None):
    """Heatmap of one layer's units (heads, then the MLP) per image.

    Args:
        table: Output of :func:`unit_norm_table`.
        layer: The layer to show.
        vmin: Lower end of the colour scale (share it across layers to compare them).
        vmax: Upper end of the colour scale.
        log: Logarithmic colour scale.
        ax: Axes to draw on (default: a new figure).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = table[(table.layer == layer) & (table.kind != "embed")]
    if rows.empty:
        raise ValueError(f"no units in layer {layer}")
    order = rows.sort_values(["kind", "head"]).unit.unique()  # heads first, then the MLP
    grid = rows.pivot(index="image", columns="unit", values="norm")[order]
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.55 * grid.shape[1], 1.2 + 0.35 * grid.shape[0]))
    if log:
        norm, vmin, vmax = log_norm(grid.to_numpy(), (vmin, vmax)), None, None
    else:
        norm = None
    sns.heatmap(grid, ax=ax, cmap="magma", norm=norm, vmin=vmin, vmax=vmax,
                cbar_kws={"label": "‖unit‖₂"})
    ax.axvline(grid.shape[1] - 1, color="white", linewidth=3)
    plain_colorbar_ticks(ax)
    ax.set_title(f"Layer {layer}: contribution norm per image and unit")
    ax.set_xlabel("unit")
    ax.set_ylabel("image")
    ax.figure.tight_layout()
    return ax.figure
