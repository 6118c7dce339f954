"""Figures of the head-specialisation and zero-shot chapters (03, 04); each returns its figure."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from residual_core.analysis.exemplars import PCExtremes
from residual_core.core.textspan import TextExplanation
from residual_core.plots.images import plot_pc_extremes

__all__ = [
    "RANKING_COLORS",
    "plot_coarse_selection",
    "plot_correlation",
    "plot_explained_variance",
    "plot_family_shares",
    "plot_head_card",
    "plot_headroom",
    "plot_task_card",
    "plot_layer_ablation",
    "plot_probe_heatmap",
]

RANKING_COLORS = {"S": "tab:blue", "U|T": "tab:orange", "U": "tab:green", "R": "tab:gray"}


def _wrap(text: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def plot_probe_heatmap(probes: pd.DataFrame, chance: Mapping[str, float] | None = None, *,
                       title: str = "Probe accuracy per unit and attribute", ax=None):
    """Units × attributes heatmap of probe accuracy, annotated, with chance in the labels.

    Args:
        probes: Accuracy table (rows: units, columns: attributes).
        chance: Majority-class accuracy per attribute, appended to the column labels.
        title: Figure title.
        ax: Axes to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 0.75 * probes.shape[1], 1.2 + 0.32 * probes.shape[0]))
    shown = probes.copy()
    if chance is not None:
        shown.columns = [f"{c}\n(chance {chance[c]:.2f})" for c in probes.columns]
    sns.heatmap(shown, ax=ax, cmap="viridis", vmin=0, vmax=1, annot=True, fmt=".2f",
                annot_kws={"fontsize": 7}, cbar_kws={"label": "probe accuracy (test)"})
    ax.set_title(title)
    ax.set_xlabel("attribute")
    ax.set_ylabel("unit")
    ax.tick_params(axis="x", labelsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_explained_variance(
    textspan: Mapping[str, TextExplanation],
    somp: Mapping[str, TextExplanation] | None = None,
    *, ax=None,
):
    """Cumulative explained variance against the number of texts, TextSpan solid, SOMP dashed."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    colors = plt.get_cmap("tab10")
    for i, (unit, expl) in enumerate(textspan.items()):
        steps = np.arange(1, len(expl.explained_variance) + 1)
        ax.plot(steps, expl.explained_variance, "-o", ms=3, color=colors(i % 10), label=unit)
        if somp and unit in somp:
            ax.plot(steps, somp[unit].explained_variance, "--", color=colors(i % 10))
    ax.set_xlabel("texts chosen")
    ax.set_ylabel("explained variance (cumulative)")
    ax.set_ylim(0, None)
    ax.set_title("TextSpan (solid) and SOMP (dashed)" if somp else "TextSpan")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_family_shares(shares: pd.DataFrame, prior: pd.Series | None = None, *, ax=None,
                       title: str = "What each head's TextSpan texts are about"):
    """Stacked bars: each head's explained variance split over attribute families.

    Args:
        shares: :func:`residual_core.analysis.specialization.family_shares` (rows sum to one).
        prior: :func:`residual_core.analysis.specialization.dictionary_prior`, drawn as a first bar.
        ax: Axes to draw on.
        title: Figure title.
    """
    import matplotlib.pyplot as plt

    table = shares if prior is None else pd.concat([prior.to_frame("dictionary").T, shares])
    if ax is None:
        _, ax = plt.subplots(figsize=(2.5 + 0.42 * len(table), 4.2))
    colors = plt.get_cmap("tab10")
    bottom = np.zeros(len(table))
    for j, fam in enumerate(table.columns):
        color = "lightgray" if fam.startswith("(") else colors(j % 10)
        ax.bar(range(len(table)), table[fam], bottom=bottom, color=color, label=fam, width=0.8)
        bottom += table[fam].to_numpy()
    ax.set_xticks(range(len(table)), table.index, rotation=90, fontsize=8)
    if prior is not None:
        ax.axvline(0.5, color="black", lw=1)
    ax.set_ylabel("share of explained variance")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_head_card(
    unit: str,
    textspan: TextExplanation,
    probes: pd.Series | None = None,
    chance: Mapping[str, float] | None = None,
    somp: TextExplanation | None = None,
    images: Sequence | np.ndarray | None = None,
    extremes: Sequence[PCExtremes] | None = None,
):
    """One head at a glance: its TextSpan texts (and SOMP's), its probe accuracies, its images.

    Args:
        unit: Head label.
        textspan: Its TextSpan explanation (bars: variance explained by each text).
        probes: Its probe accuracy per attribute (right panel), if there is ground truth.
        chance: Majority-class accuracy per attribute (ticks on the right panel).
        somp: Its SOMP explanation, listed under the title.
        images: The images ``extremes`` index into (e.g. the reference set).
        extremes: :func:`residual_core.analysis.exemplars.pc_extremes` of the head, drawn as
            a row of images per component under the texts.
    """
    import matplotlib.pyplot as plt

    n_panels = 1 + (probes is not None)
    width, height = 6.5 * n_panels, 0.45 * len(textspan.texts) + 2.2
    if extremes and images is not None:
        below = 1.1 * len(extremes) + 0.6
        fig = plt.figure(figsize=(width, height + below), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[height, below])
        plot_pc_extremes(images, extremes, unit, size=1.1, fig=bottom)
    else:
        fig = top = plt.figure(figsize=(width, height), layout="tight")
    axes = top.subplots(1, n_panels, squeeze=False)
    ax = axes[0, 0]
    y = np.arange(len(textspan.texts))[::-1]
    ax.barh(y, textspan.gains, color="tab:blue")
    ax.set_yticks(y, [_wrap(t) for t in textspan.texts], fontsize=8)
    ax.set_xlabel("variance explained by the text (TextSpan)")
    ax.set_title(f"{unit}: TextSpan texts, {textspan.explained_variance[-1]:.0%} explained")
    if somp is not None:
        ax.text(0, -0.2, "SOMP: " + _wrap("; ".join(somp.texts), 90),
                transform=ax.transAxes, fontsize=7, va="top")
    if probes is not None:
        ax = axes[0, 1]
        ax.barh(np.arange(len(probes))[::-1], probes.to_numpy(), color="tab:green")
        if chance is not None:
            ax.scatter([chance[a] for a in probes.index], np.arange(len(probes))[::-1],
                       marker="|", s=200, color="black", label="chance", zorder=3)
            ax.legend(fontsize=8, loc="lower right")
        ax.set_yticks(np.arange(len(probes))[::-1], probes.index, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probe accuracy (test)")
        ax.set_title(f"{unit}: what a linear probe reads from it")
    return fig


def plot_headroom(table: pd.DataFrame, *, ax=None):
    """Per task: chance, zero-shot, best single-head probe and embedding probe accuracy.

    Args:
        table: :func:`residual_core.analysis.alignment.task_table`.
        ax: Axes to draw on.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(1.5 + 0.8 * len(table), 4.2))
    x = np.arange(len(table))
    bars = [("zero_shot", "zero-shot", "tab:blue"),
            ("best_head_probe", "probe, best head", "tab:olive"),
            ("embedding_probe", "probe, embedding", "tab:green")]
    width = 0.8 / len(bars)
    for i, (col, name, color) in enumerate(bars):
        ax.bar(x + (i - 1) * width, table[col], width, label=name, color=color)
    ax.scatter(x, table["chance"], marker="_", s=400, color="black", label="chance (1/K)",
               zorder=3)
    ax.set_xticks(x, [t.split(".")[-1] for t in table.task], rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("Zero-shot vs what a linear probe reads (the headroom)")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.figure.tight_layout()
    return ax.figure


def plot_layer_ablation(layers: pd.DataFrame):
    """Accuracy against the number of first layers mean-ablated, one panel per unit kind.

    Args:
        layers: :func:`residual_core.analysis.alignment.layer_ablation` rows with a ``task`` column.

    Returns:
        The figure: one panel per kind on a two-column grid, the legend in a spare panel.
    """
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(layers.kind))
    n_rows = (len(kinds) + 2) // 2
    fig, axes = plt.subplots(n_rows, 2, figsize=(9, 3.4 * n_rows), sharey=True, squeeze=False)
    axes = axes.ravel()
    colors = plt.get_cmap("tab20")
    tasks = list(dict.fromkeys(layers.task))
    for a, kind in zip(axes, kinds, strict=False):
        part = layers[layers.kind == kind]
        for i, task in enumerate(tasks):
            row = part[part.task == task]
            a.plot(row.ablated_layers, row.accuracy, "-", color=colors(i % 20), alpha=0.7,
                   lw=1, label=task.split(".")[-1])
        mean = part.groupby("ablated_layers").accuracy.mean()
        a.plot(mean.index, mean.to_numpy(), "-o", color="black", lw=2.5, label="mean")
        a.set_title(f"mean-ablate {kind} of the first n layers", fontsize=10)
        a.set_xlabel("n (first layers ablated)")
        a.set_ylabel("zero-shot accuracy (test)")
        a.set_xticks(sorted(part.ablated_layers.unique()))
        a.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    for a in axes[len(kinds):]:
        a.axis("off")
    axes[-1].legend(handles, names, fontsize=8, ncol=2, loc="center")
    fig.tight_layout()
    return fig


def plot_coarse_selection(coarse: pd.DataFrame, task: str = "", *, chance: float | None = None,
                          ax=None):
    """Test accuracy of keeping the top-k heads per ranking, R as a min–max band over seeds.

    Args:
        coarse: :func:`residual_core.core.ablation.coarse_selection` output (with its ``full`` row).
        task: Shown in the title.
        chance: Drawn as a dotted line when given.
        ax: Axes to draw on.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    sel = coarse[coarse.ranking != "full"]
    for ranking, part in sel.groupby("ranking", sort=False):
        stats = part.groupby("k").test_acc.agg(["mean", "min", "max"])
        color = RANKING_COLORS.get(ranking, None)
        if part.seed.nunique() > 1:
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.25)
            label = f"{ranking} (mean of {part.seed.nunique()} seeds, band min–max)"
        else:
            label = ranking
        ax.plot(stats.index, stats["mean"], "-o", ms=3, color=color, label=label)
    full = coarse[coarse.ranking == "full"].test_acc
    if len(full):
        ax.axhline(float(full.iloc[0]), color="black", ls="--", lw=1, label="full model")
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    ks = sorted(sel.k.unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("heads kept (others mean-ablated; selected on val)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Coarse head selection: {task}" if task else "Coarse head selection")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.figure.tight_layout()
    return ax.figure


def plot_correlation(table: pd.DataFrame, x: str, y: str, labels: Sequence[str] | None = None,
                     stats: Mapping[str, float] | None = None, *, ax=None,
                     xlabel: str | None = None, ylabel: str | None = None):
    """Scatter of two task-level columns, each point labelled, the correlation in the title.

    Args:
        table: One row per task.
        x: Column on the x axis.
        y: Column on the y axis.
        labels: Point labels (default: the last dotted part of ``table.task``).
        stats: :func:`residual_core.analysis.specialization.rank_correlation` result for the title.
        ax: Axes to draw on.
        xlabel: Axis label (default: ``x``).
        ylabel: Axis label (default: ``y``).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.2))
    names = labels if labels is not None else [t.split(".")[-1] for t in table.task]
    ax.scatter(table[x], table[y], color="tab:blue")
    for xi, yi, name in zip(table[x], table[y], names, strict=True):
        ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if stats is not None:
        ax.set_title(f"Spearman ρ = {stats['rho']:.2f} (permutation p = {stats['p']:.2f}, "
                     f"n = {stats['n']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_task_card(result, chance: float | None = None):
    """One task at a glance: coarse selection curves, and each head's probe and alignment.

    Args:
        result: A :class:`residual_core.analysis.alignment.TaskResult`.
        chance: Drawn on both panels when given (e.g. 1/K).
    """
    import matplotlib.pyplot as plt

    heads = result.heads
    fig, (left, right) = plt.subplots(2, 1, figsize=(8.5, 8.5))
    plot_coarse_selection(result.coarse, result.task, chance=chance, ax=left)
    x = np.arange(len(heads))
    right.bar(x, result.probes[heads].to_numpy(), color="tab:green", label="probe accuracy")
    right.plot(x, result.alignment[heads].to_numpy(), "o", color="tab:orange",
               label="alignment with classifier (share of variance in span C)")
    if chance is not None:
        right.axhline(chance, color="gray", ls=":", lw=1, label="chance")
    for h in result.s_order:
        right.annotate("S", (heads.index(h), 0.02), ha="center", fontsize=8, color="tab:blue")
    right.set_xticks(x, heads, rotation=90, fontsize=7 if len(heads) <= 48 else 4)
    right.set_ylim(0, 1.05)
    right.set_title(f"{result.task}: per head (S marks the first heads of the S ranking)",
                    fontsize=10)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def truth_table_view(truth: pd.DataFrame):
    """A compact rendering of :func:`~residual_core.analysis.specialization.ground_truth_table`.

    Merges attribute and family, accuracy and chance, "names family" and its chance level,
    share and prior into one column each, puts the texts last and hides the index.

    Returns:
        A pandas ``Styler``.
    """
    view = pd.DataFrame({
        "attribute (family)": [f"{a.replace('_', ' ')} ({f or '–'})"
                               for a, f in zip(truth.attribute, truth.family, strict=True)],
        "head": [f"{h} (#{r})" for h, r in zip(truth["head"], truth["rank"], strict=True)],
        "probe (chance)": [f"{a:.2f} ({c:.2f})"
                           for a, c in zip(truth.probe_acc, truth.chance, strict=True)],
        "named (by chance)": [n if np.isnan(c) else f"{n} ({c:.2f})"
                              for n, c in zip(truth.names_family, truth.by_chance, strict=True)],
        "share (prior)": [
            "–" if np.isnan(a) else f"{a:.2f} ({b:.2f})"
            for a, b in zip(truth.family_share, truth.family_prior, strict=True)],
        "TextSpan's first texts": truth.top_texts.str.replace(" | ", "; ", regex=False),
    })
    return (view.style.hide(axis="index")
            .set_table_styles([{"selector": "td, th", "props": "padding: 0.15em 0.6em;"}])
            .set_properties(subset=["TextSpan's first texts"],
                            **{"min-width": "12em", "font-size": "0.85em", "text-align": "left"}))
