"""Figures of the unit-geometry chapters build from the tables they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from residual_core.analysis.geometry import TwoNNFit, depth_profile
from residual_core.core.spectral import unit_pca
from residual_core.core.units import UnitLayout, Units, label_table, unit_grid, unit_labels
from residual_core.plots.geometry import (
    plot_depth_profiles,
    plot_layer_spectra,
    plot_similarity_matrix,
    plot_similarity_summary,
    plot_unit_grid,
)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture
def table() -> pd.DataFrame:
    t = label_table(unit_labels(3, 2))
    t["x"] = np.arange(len(t), dtype=float)
    return t


def test_unit_grid_annotates_small_grids_and_marks_the_mlp(table):
    grid = unit_grid(table.set_index("unit").x)
    fig = plot_unit_grid(grid, title="x", label="x", embed=0.0, fmt=".0f")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["H0", "H1", "MLP"]
    assert len(ax.texts) == 9  # 3 layers × (2 heads + MLP)
    assert "embed: 0" in ax.get_title()
    assert any(line.get_xdata()[0] == 2 for line in ax.lines)  # the MLP separator


def test_depth_profiles_one_panel_each(table):
    profiles = {"a": depth_profile(table, "x"), "b": depth_profile(table, "x"),
                "c": depth_profile(table, "x")}
    fig = plot_depth_profiles(profiles)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b", "c"]


def test_layer_spectra_and_errors():
    layout = UnitLayout(n_layers=2, n_heads=2, d_model=6, d_head=3, d_out=6)
    labels = layout.labels
    g = torch.Generator().manual_seed(0)
    pca = unit_pca(Units.full(torch.randn(50, len(labels), 6, generator=g), layout))
    fit = TwoNNFit(2.0, np.linspace(0, 1, 5), np.linspace(0, 2, 5), 50)
    fig = plot_layer_spectra(pca, dict.fromkeys(labels, fit), layer=1)
    left, right = fig.axes
    assert len(left.get_legend().get_texts()) == 3  # two heads and the MLP
    assert "2.0" in right.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="layer 5"):
        plot_layer_spectra(pca, {}, layer=5)


def test_similarity_summary_and_matrix():
    rows = [(d, "head", layer, h, 0.5 + 0.1 * layer) for d in ("a", "b")
            for layer in range(3) for h in range(2)]
    sim = pd.DataFrame(rows, columns=["dataset", "kind", "layer", "head", "similarity"])
    fig = plot_similarity_summary(sim, 0.1, order=["b", "a"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["b", "a"]
    labels = [f"L{layer}H{h}" for layer in range(3) for h in range(2)]
    matrix = pd.DataFrame(np.eye(6), index=labels, columns=labels)
    fig = plot_similarity_matrix(matrix, 2, title="m")
    assert fig.axes[0].get_title() == "m"
    assert len(fig.axes[0].lines) == 4  # two boundaries, horizontal and vertical
