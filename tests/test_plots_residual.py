"""Chapter 05 figures: every plotting helper draws on synthetic inputs and returns a figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from residual_core.plots import residual as pr


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def table() -> pd.DataFrame:
    variants = {"zero-shot": 0, "coarse": 16, "residual-fine": 300, "linear-adapter": 16512,
                "fine-tune": 843008}
    rows = [{"dataset": t, "variant": v, "params": p, "accuracy": 0.4 + 0.1 * i + 0.05 * j}
            for j, t in enumerate(["world.a", "world.b"]) for i, (v, p) in enumerate(
                variants.items())]
    return pd.DataFrame(rows)


def is_figure(fig) -> bool:
    return isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) >= 1


def test_accuracy_vs_params(table):
    fig = pr.plot_accuracy_vs_params(table)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "2 tasks" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "zero-shot (0 params)" and "fine-tune (843,008)" in labels
    assert ax.lines[0].get_ydata()[0] == pytest.approx(0.425)  # the mean zero-shot line
    fig = pr.plot_accuracy_vs_params(table, "world.b")
    assert fig.axes[0].get_title() == "world.b"
    with pytest.raises(ValueError, match="no results"):
        pr.plot_accuracy_vs_params(table, "world.zzz")


def test_gains_and_histories():
    gains = pd.DataFrame({"residual-fine": [0.1, -0.05, 0.025], "fine-tune": [0.2, 0.1, 0.15]},
                         index=["world.a", "world.b", "mean"])
    fig = pr.plot_gains(gains)
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert ticks["a"] > ticks["b"] > ticks["mean"]  # tasks top-down, the mean last
    assert len(fig.axes[0].patches) == 6
    fig = pr.plot_histories({"coarse": [0.5, 0.6], "zero-shot": []}, title="h")
    assert len(fig.axes[0].lines) == 1 and fig.axes[0].get_title() == "h"


def test_lambda_heatmaps_and_card(table):
    grid = pd.DataFrame([[0.1, 0.2, np.nan], [0.3, 0.0, 0.5]], index=["L0", "L1"],
                        columns=["H0", "H1", "mlp"])
    assert is_figure(pr.plot_lambda_grid(grid))
    matrix = torch.tensor([[1.5, 0.2, float("nan")], [1.0, 1.1, 0.9]])
    fig = pr.plot_lambda_pcs(matrix, ["L1H0", "L0H1"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["L1H0", "L0H1"]
    norm = fig.axes[0].images[0].norm
    assert norm.vcenter == 1.0 and norm.vmin == pytest.approx(0.2)
    assert is_figure(pr.plot_lambda_pcs(torch.ones(2, 2), ["a", "b"]))  # all λ = 1
    card = pr.plot_task_card(table, "world.a", {"coarse": [0.5, 0.6]}, grid, matrix,
                             ["L1H0", "L0H1"])
    assert card._suptitle.get_text() == "world.a" and len(card.axes) >= 4
    bare = pr.plot_task_card(table, "world.a", {})
    assert not bare.axes[2].axison and not bare.axes[3].axison
