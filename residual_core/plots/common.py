"""What every chapter's figures share: offline-safe figure pickers, colour scales, task names."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "claims_view",
    "figure_picker",
    "figure_png",
    "log_norm",
    "plain_colorbar_ticks",
    "styled",
    "task_label",
]


def task_label(task: str) -> str:
    """A dataset name for tables and axes: the tutorial world's prefix (``world2_``...) dropped.

    ``"world.color"`` → ``"color"``, ``"world2_clutter.color"`` → ``"clutter.color"``; other
    names (paper datasets) are returned unchanged.
    """
    return re.sub(r"^world[23]?[._]", "", task)


def log_norm(values: np.ndarray, limits: tuple[float | None, float | None] | None):
    """A logarithmic colour scale over the positive finite values (or the given limits)."""
    from matplotlib.colors import LogNorm

    lo, hi = limits if limits is not None else (None, None)
    positive = values[np.isfinite(values) & (values > 0)]
    lo = float(positive.min()) if lo is None and positive.size else lo
    hi = float(positive.max()) if hi is None and positive.size else hi
    return LogNorm(vmin=lo, vmax=hi)


def plain_colorbar_ticks(ax) -> None:
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


def styled(table: pd.DataFrame, precision: int = 3, *, hide_index: bool = False,
           integers: tuple[str, ...] = ()):
    """A table rendered with padded cells and fixed precision (integers for ``integers``).

    Column names are shown with spaces for underscores, so that a narrow column's header wraps
    between words instead of widening the table.

    Args:
        table: The table.
        precision: Digits after the point of every number.
        hide_index: Leave the index out.
        integers: Columns shown as integers (those that exist).
    """
    style = table.style.format(precision=precision)
    if integers:
        style = style.format("{:.0f}", subset=[c for c in integers if c in table.columns])
    style = style.format_index(lambda name: str(name).replace("_", " "), axis=1)
    style = style.set_table_styles(
        [{"selector": "td, th", "props": "padding: 0.15em 0.6em; text-align: right;"}])
    return style.hide(axis="index") if hide_index else style


def claims_view(claims: pd.DataFrame):
    """A chapter's claims table (:mod:`residual_core.analysis.claims`) as its page shows it.

    One row per claim id: the claim, its criterion, this run's numbers and whether it holds
    (bold when it does); text left-aligned and never cut.
    """
    table = claims.set_index("id")[["claim", "criterion", "measured", "holds"]]
    style = table.style.set_table_styles(
        [{"selector": "td, th", "props": "padding: 0.15em 0.6em; text-align: left; "
                                         "vertical-align: top;"}])
    return style.map(lambda v: "font-weight: bold" if v == "yes" else "", subset=["holds"])
