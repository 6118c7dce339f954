"""Unit-norm tables, heatmaps and the offline figure picker."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets
import pytest
import torch
from ipywidgets.embed import embed_data

from residual_core.analysis.decomposition import relative_error, unit_norm_table
from residual_core.core.units import UnitLayout, Units
from residual_core.plots.common import figure_picker, figure_png
from residual_core.plots.units import norm_grid, plot_layer_head_heatmap, plot_layer_units

LAYOUT = UnitLayout(n_layers=2, n_heads=3, d_model=6, d_head=2, d_out=5)


@pytest.fixture
def dec() -> Units:
    labels = LAYOUT.labels  # embed, 2 MLPs, 6 heads
    units = torch.zeros(4, len(labels), 5)
    for i in range(len(labels)):
        units[:, i, 0] = i + 1.0  # unit i has norm i + 1 in every image
    units[1, 0, 1] = 3.0  # image 1's embed: norm sqrt(1 + 9)
    return Units.full(units, LAYOUT)


def test_unit_norm_table(dec: Units):
    table = unit_norm_table(dec)
    assert len(table) == 4 * 9
    row = table[(table.image == 2) & (table.unit == "L1H2")].iloc[0]
    assert (row.kind, row.layer, row["head"], row.norm) == ("head", 1, 2, pytest.approx(9.0))
    mlp = table[(table.image == 0) & (table.unit == "L0.mlp")].iloc[0]
    assert (mlp.kind, mlp.layer, mlp["head"], mlp.norm) == ("mlp", 0, -1, pytest.approx(2.0))
    embed = table[table.unit == "embed"].set_index("image").norm
    assert embed[1] == pytest.approx(10**0.5) and embed[0] == pytest.approx(1.0)


def test_unit_norm_table_rejects_unknown_labels():
    with pytest.raises(ValueError, match="unexpected unit label"):
        unit_norm_table(Units(torch.ones(1, 1, 2), ("L0.attn",), LAYOUT))


def test_norm_grid(dec: Units):
    grid = norm_grid(unit_norm_table(dec))
    assert list(grid.index) == ["L0", "L1"]
    assert list(grid.columns) == ["H0", "H1", "H2", "MLP"]
    assert grid.loc["L1", "H0"] == pytest.approx(7.0)  # L1H0 is unit 6 → norm 7
    assert grid.loc["L1", "MLP"] == pytest.approx(3.0)


def test_plots_return_figures(dec: Units):
    table = unit_norm_table(dec)
    fig = plot_layer_head_heatmap(norm_grid(table), embed_norm=1.5)
    assert "embed: 1.5" in fig.axes[0].get_title()
    fig2 = plot_layer_units(table, 1, vmin=1.0, vmax=9.0)
    labels = [t.get_text() for t in fig2.axes[0].get_xticklabels()]
    assert labels == ["L1H0", "L1H1", "L1H2", "L1.mlp"]  # heads first, then the MLP
    assert figure_png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no units in layer 5"):
        plot_layer_units(table, 5)


def test_relative_error():
    exact = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert relative_error(exact, exact) == 0.0
    assert relative_error(exact + torch.tensor([[0.5, 0.0], [0.0, 0.0]]), exact) == (
        pytest.approx(0.1)
    )


def test_figure_picker_is_linked_in_the_frontend(dec: Units):
    table = unit_norm_table(dec)
    figures = {f"layer {layer}": plot_layer_units(table, layer) for layer in range(2)}
    box = figure_picker(figures, "Layer", default="layer 1")
    dropdown, stack = box.children
    assert isinstance(dropdown, widgets.Dropdown) and isinstance(stack, widgets.Stack)
    assert dropdown.value == "layer 1" and stack.selected_index == 1
    assert all(isinstance(c, widgets.Image) and c.value[:4] == b"\x89PNG" for c in stack.children)
    # The switch is a jslink, part of the embeddable state: it works on a static page.
    state = embed_data(views=[box])["manager_state"]["state"]
    links = [s["state"] for s in state.values() if s["model_name"] == "LinkModel"]
    ends = {(ln["source"][1], ln["target"][1]) for ln in links}
    assert ("index", "selected_index") in ends


def test_figure_picker_needs_figures():
    with pytest.raises(ValueError, match="at least one"):
        figure_picker({})


def test_task_label_drops_only_the_world_prefix():
    from residual_core.plots.common import task_label

    assert task_label("world.color") == "color"
    assert task_label("world_clutter.color") == "clutter.color"
    assert task_label("world.reference") == "reference"
    assert task_label("world2_dark.count") == "dark.count"
    assert task_label("world2.reference") == "reference"
    assert task_label("world3_sketch.shape") == "sketch.shape"  # the v3 world's datasets
    assert task_label("eurosat") == "eurosat"
    assert task_label("worldwide.x") == "worldwide.x"
