"""Figures of the ResiDual chapter (05): accuracy vs parameters, gains, learned λ."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from residual_core.analysis.experiments import histories
from residual_core.core.residual import lambda_matrix, lambda_summary
from residual_core.plots.common import task_label

__all__ = [
    "VARIANT_COLORS",
    "plot_accuracy_vs_params",
    "plot_gains",
    "plot_histories",
    "plot_lambda_grid",
    "plot_lambda_pcs",
    "plot_task_card",
    "plot_top_lambdas",
    "task_cards",
]

VARIANT_COLORS = {
    "zero-shot": "black",
    "coarse": "tab:gray",
    "residual-fine": "tab:blue",
    "residual-full": "tab:cyan",
    "spectral-adapter": "tab:purple",
    "linear-adapter": "tab:orange",
    "fine-tune": "tab:red",
}
_MARKERS = {"residual-fine": "*", "residual-full": "P", "fine-tune": "s", "linear-adapter": "D"}


def _color(variant: str) -> str:
    return VARIANT_COLORS.get(variant, "tab:green")


def plot_accuracy_vs_params(table: pd.DataFrame, task: str | None = None, *, ax=None):
    """Test accuracy against trainable parameters (log x); zero-shot as a dashed line.

    Args:
        table: Results with ``dataset``, ``variant``, ``params``, ``accuracy``.
        task: One task; default all: faint dots per task, large markers for the mean.
        ax: Axes to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(6.5, 4.2))
    t = table if task is None else table[table.dataset == task]
    if t.empty:
        raise ValueError(f"no results for task {task!r}")
    mean = t.groupby("variant", sort=False).agg(accuracy=("accuracy", "mean"),
                                                params=("params", "first"))
    for variant, row in mean.iterrows():
        color = _color(variant)
        if row.params == 0:
            ax.axhline(row.accuracy, color=color, ls="--", lw=1, label=f"{variant} (0 params)")
            continue
        if task is None:
            pts = t[t.variant == variant]
            ax.scatter(pts.params, pts.accuracy, color=color, alpha=0.25, s=14, lw=0)
        ax.scatter([row.params], [row.accuracy], color=color, marker=_MARKERS.get(variant, "o"),
                   s=90, edgecolor="black", lw=0.5, label=f"{variant} ({int(row.params):,})",
                   zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy" + (" (mean over tasks)" if task is None else ""))
    ax.set_title(task or f"All {t.dataset.nunique()} tasks")
    ax.legend(fontsize=7, loc="best", framealpha=0.6)
    ax.grid(alpha=0.3)
    if own:  # a card lays out its panels once
        ax.figure.tight_layout()
    return ax.figure


def plot_gains(gains: pd.DataFrame, *, ax=None):
    """Grouped horizontal bars: gain in test accuracy over zero-shot, per task and variant.

    Args:
        gains: Tasks (and ``mean``) × variants, e.g.
            :func:`residual_core.analysis.experiments.gain_table`.
        ax: Axes to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(7, 0.9 + 0.3 * len(gains) * max(1, gains.shape[1] / 3)))
    n = gains.shape[1]
    height = 0.8 / n
    y = np.arange(len(gains))[::-1]
    for i, variant in enumerate(gains.columns):
        ax.barh(y + (n / 2 - i - 0.5) * height, gains[variant], height, color=_color(variant),
                label=variant)
    ax.set_yticks(y, [task_label(str(i)) for i in gains.index])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("test accuracy − zero-shot accuracy")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    if own:  # a card lays out its panels once
        ax.figure.tight_layout()
    return ax.figure


def plot_histories(histories: dict[str, Sequence[float]], *, title: str = "", ax=None):
    """Validation accuracy after every epoch, one line per variant.

    Args:
        histories: Variant → validation accuracies (epoch 1, 2, ...).
        title: Axes title.
        ax: Axes to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for variant, hist in histories.items():
        if len(hist):
            ax.plot(np.arange(1, len(hist) + 1), hist, marker=".", color=_color(variant),
                    label=variant)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if own:  # a card lays out its panels once
        ax.figure.tight_layout()
    return ax.figure


def plot_lambda_grid(grid: pd.DataFrame, *, title: str = "mean |λ − 1| per unit", ax=None):
    """Layer × head (and MLP) heatmap of a λ statistic, annotated.

    Args:
        grid: E.g. :func:`residual_core.analysis.experiments.head_grid`.
        title: Axes title.
        ax: Axes to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(1.5 + 0.7 * grid.shape[1], 1.0 + 0.5 * grid.shape[0]))
    sns.heatmap(grid.astype(float), ax=ax, cmap="magma", vmin=0, annot=True, fmt=".2f",
                annot_kws={"fontsize": 7}, cbar_kws={"label": "mean |λ − 1|"})
    ax.set_title(title)
    ax.set_xlabel("head (and MLP)")
    ax.set_ylabel("layer")
    if own:  # a card lays out its panels once
        ax.figure.tight_layout()
    return ax.figure


def plot_lambda_pcs(
    matrix: Float[Tensor, "unit k"] | np.ndarray, labels: Sequence[str], *,
    title: str = "λ per principal component", ax=None,
):
    """Units × PCs heatmap of λ, diverging around 1 (red amplified, blue suppressed).

    Args:
        matrix: λ rows (NaN where a unit has fewer PCs), e.g. from
            :func:`residual_core.core.residual.lambda_matrix`.
        labels: Row labels.
        title: Axes title.
        ax: Axes to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    values = np.asarray(matrix, dtype=float)
    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * len(labels)))
    finite = values[np.isfinite(values)]
    lo = min(float(finite.min()) if finite.size else 0.0, 0.99)
    hi = max(float(finite.max()) if finite.size else 2.0, 1.01)
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                      norm=TwoSlopeNorm(vcenter=1.0, vmin=lo, vmax=hi))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("principal component (0 = most reference variance)")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="λ")
    if own:  # a card lays out its panels once
        ax.figure.tight_layout()
    return ax.figure


def plot_task_card(
    table: pd.DataFrame, task: str, histories: dict[str, Sequence[float]],
    grid: pd.DataFrame | None = None, matrix: Float[Tensor, "unit k"] | None = None,
    matrix_labels: Sequence[str] = (), *, lambda_variant: str = "residual-fine",
):
    """One task on one figure: accuracy vs parameters, validation curves and the learned λ.

    Args:
        table: Results (all tasks; the task's rows are used).
        task: The task.
        histories: Variant → validation accuracy per epoch for this task.
        grid: Layer × head grid of mean ``|λ − 1|`` (omitted if ``None``).
        matrix: λ per PC of the most changed units (omitted if ``None``).
        matrix_labels: Row labels of ``matrix``.
        lambda_variant: Name of the variant whose λ are shown (titles only).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    plot_accuracy_vs_params(table, task, ax=axes[0, 0])
    plot_histories(histories, title="validation accuracy per epoch", ax=axes[0, 1])
    if grid is not None:
        plot_lambda_grid(grid, title=f"{lambda_variant}: mean |λ − 1| per unit", ax=axes[1, 0])
    else:
        axes[1, 0].axis("off")
    if matrix is not None:
        plot_lambda_pcs(matrix, list(matrix_labels),
                        title=f"{lambda_variant}: λ per PC, most changed units", ax=axes[1, 1])
    else:
        axes[1, 1].axis("off")
    fig.suptitle(task)
    fig.tight_layout()
    return fig


def plot_top_lambdas(variant, n_units: int, *, title: str, ax=None):
    """:func:`plot_lambda_pcs` of the ``n_units`` units whose λ moved most (mean ``|λ − 1|``).

    Args:
        variant: A trained ResiDual / coarse variant.
        n_units: How many units.
        title: Axes title.
        ax: Axes to draw on (default: a new figure).
    """
    top = lambda_summary(variant).unit.head(n_units).tolist()
    matrix, labels = lambda_matrix(variant, top)
    return plot_lambda_pcs(matrix, labels, title=title, ax=ax)


def task_cards(table: pd.DataFrame, trained: Mapping[str, object],
               grids: Mapping[str, pd.DataFrame], *, n_units: int, lambda_variant: str
               ) -> dict[str, object]:
    """One :func:`plot_task_card` per task of the results, for a figure picker.

    Args:
        table: Results of every task (with the ``history`` column).
        trained: Task → the trained ``lambda_variant`` (tasks without one get no λ panels).
        grids: Task → its mean ``|λ − 1|`` grid.
        n_units: Units shown in the λ-per-PC panel.
        lambda_variant: The variant whose λ are shown.

    Returns:
        Task → figure, in the order of the results.
    """
    cards = {}
    for task, history in histories(table).items():
        matrix, labels = None, ()
        if task in trained:
            top = lambda_summary(trained[task]).unit.head(n_units).tolist()
            matrix, labels = lambda_matrix(trained[task], top)
        cards[task] = plot_task_card(table, task, history, grids.get(task), matrix, labels,
                                     lambda_variant=lambda_variant)
    return cards
