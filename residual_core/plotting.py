"""Tables, figures and offline-safe widgets for the book's chapters."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.decompose import Decomposition

__all__ = [
    "figure_picker",
    "figure_png",
    "layer_head_grid",
    "plot_layer_head_heatmap",
    "plot_layer_units",
    "relative_error",
    "task_label",
    "unit_norm_table",
]

_LABEL = re.compile(r"^(?:embed|L(?P<layer>\d+)(?:\.(?P<mlp>mlp)|H(?P<head>\d+)))$")


def task_label(task: str) -> str:
    """A dataset name for tables and axes: the tutorial's ``world`` prefix dropped.

    ``"world.color"`` → ``"color"``, ``"world_clutter.color"`` → ``"clutter.color"``; other
    names (paper datasets) are returned unchanged.
    """
    return re.sub(r"^world[._]", "", task)


def relative_error(
    approx: Float[Tensor, "batch d_out"], exact: Float[Tensor, "batch d_out"]
) -> float:
    """Largest per-sample relative error ``max_i ‖approx_i − exact_i‖₂ / ‖exact_i‖₂``."""
    diff = torch.linalg.vector_norm(approx.float() - exact.float(), dim=-1)
    return float((diff / torch.linalg.vector_norm(exact.float(), dim=-1)).max())


def unit_norm_table(dec: Decomposition) -> pd.DataFrame:
    """L2 norm of every unit's contribution for every image, in long form.

    Args:
        dec: A decomposition with the standard labels (``embed``, ``L{l}.mlp``, ``L{l}H{h}``).

    Returns:
        One row per (image, unit) with columns ``image``, ``unit`` (label), ``kind``
        (``embed``/``mlp``/``head``), ``layer`` (-1 for the embedding), ``head`` (-1 unless a
        head) and ``norm``.
    """
    norms = torch.linalg.vector_norm(dec.units.float(), dim=-1).cpu().numpy()  # (batch, unit)
    rows = []
    for label in dec.labels:
        match = _LABEL.match(label)
        if match is None:
            raise ValueError(f"unexpected unit label {label!r}")
        kind = "embed" if label == "embed" else "mlp" if match["mlp"] else "head"
        layer = -1 if kind == "embed" else int(match["layer"])
        head = int(match["head"]) if kind == "head" else -1
        rows.append((label, kind, layer, head))
    meta = pd.DataFrame(rows, columns=["unit", "kind", "layer", "head"])
    batch = norms.shape[0]
    table = meta.loc[np.tile(np.arange(len(meta)), batch)].reset_index(drop=True)
    table.insert(0, "image", np.repeat(np.arange(batch), len(meta)))
    table["norm"] = norms.reshape(-1)
    return table


def layer_head_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Mean norm over images as a layer × (heads, MLP) grid.

    Args:
        table: Output of :func:`unit_norm_table`.

    Returns:
        Rows ``L0``..``L{n-1}``; columns ``H0``..``H{h-1}`` then ``MLP``.
    """
    mean = table.groupby(["kind", "layer", "head"], as_index=False)["norm"].mean()
    heads = mean[mean.kind == "head"].pivot(index="layer", columns="head", values="norm")
    heads.columns = [f"H{h}" for h in heads.columns]
    mlp = mean[mean.kind == "mlp"].set_index("layer")["norm"].rename("MLP")
    grid = heads.join(mlp)
    grid.index = [f"L{layer}" for layer in grid.index]
    return grid


def plot_layer_head_heatmap(grid: pd.DataFrame, embed_norm: float | None = None, *, ax=None,
                            title: str = "Mean contribution norm per unit", log: bool = True):
    """Heatmap of a :func:`layer_head_grid`, the MLP column set apart by a line.

    Args:
        grid: Layers × (heads, ``MLP``) values.
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
    norm = _log_norm(grid.to_numpy(), None) if log else None
    sns.heatmap(grid, ax=ax, cmap="viridis", norm=norm, linewidths=0.3, linecolor="white",
                cbar_kws={"label": "‖unit‖₂ (mean over images)"})
    ax.axvline(grid.shape[1] - 1, color="white", linewidth=3)
    _plain_colorbar_ticks(ax)
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
        norm, vmin, vmax = _log_norm(grid.to_numpy(), (vmin, vmax)), None, None
    else:
        norm = None
    sns.heatmap(grid, ax=ax, cmap="magma", norm=norm, vmin=vmin, vmax=vmax,
                cbar_kws={"label": "‖unit‖₂"})
    ax.axvline(grid.shape[1] - 1, color="white", linewidth=3)
    _plain_colorbar_ticks(ax)
    ax.set_title(f"Layer {layer}: contribution norm per image and unit")
    ax.set_xlabel("unit")
    ax.set_ylabel("image")
    ax.figure.tight_layout()
    return ax.figure


def _log_norm(values: np.ndarray, limits: tuple[float | None, float | None] | None):
    from matplotlib.colors import LogNorm

    lo, hi = limits if limits is not None else (None, None)
    positive = values[np.isfinite(values) & (values > 0)]
    lo = float(positive.min()) if lo is None and positive.size else lo
    hi = float(positive.max()) if hi is None and positive.size else hi
    return LogNorm(vmin=lo, vmax=hi)


def _plain_colorbar_ticks(ax) -> None:
    """Label a (log) colour bar with plain numbers instead of ``3 × 10⁰``."""
    from matplotlib.ticker import FuncFormatter

    colorbar = ax.collections[0].colorbar
    if colorbar is not None:
        fmt = FuncFormatter(lambda value, _: f"{value:.2g}")
        colorbar.ax.yaxis.set_major_formatter(fmt)
        colorbar.ax.yaxis.set_minor_formatter(fmt)


def figure_png(fig, dpi: int = 90) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure_picker(figures: Mapping[str, object], description: str = "Show",
                  default: str | None = None):
    """A dropdown choosing among precomputed figures, working without a kernel.

    Every figure is rendered to PNG up front and stacked; the dropdown switches the stack with a
    front-end link (``jslink``), so the choice also works on the static HTML page, where the
    widget state is embedded and no Python runs.

    Args:
        figures: Option label → matplotlib figure (closed after rendering) or PNG bytes.
        description: Label shown next to the dropdown.
        default: Option shown first (default: the first one).

    Returns:
        An ``ipywidgets.VBox`` of the dropdown and the stack of images.
    """
    import ipywidgets as widgets

    if not figures:
        raise ValueError("figure_picker needs at least one figure")
    options = list(figures)
    index = options.index(default) if default is not None else 0
    images = [
        widgets.Image(value=fig if isinstance(fig, bytes) else figure_png(fig), format="png")
        for fig in figures.values()
    ]
    dropdown = widgets.Dropdown(options=options, index=index, description=description)
    stack = widgets.Stack(images, selected_index=index)
    widgets.jslink((dropdown, "index"), (stack, "selected_index"))
    return widgets.VBox([dropdown, stack])
