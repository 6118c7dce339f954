"""Units: one owner of labels and layouts; the labelled stack picks by label, never by index."""

from __future__ import annotations

import math

import pytest
import torch

from residual_core.core.units import (
    UnitLayout,
    Units,
    is_head,
    label_table,
    layer_of,
    parse_label,
    unit_grid,
    unit_labels,
)

LAYOUT = UnitLayout(n_layers=3, n_heads=2, d_model=8, d_head=4, d_out=5)


def stack(batch: int = 4, seed: int = 0) -> Units:
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(batch, LAYOUT.n_units, LAYOUT.d_out, generator=gen)
    return Units.full(data, LAYOUT)


def test_labels_and_parsing_agree():
    labels = unit_labels(3, 2)
    assert labels == ["embed", "L0.mlp", "L1.mlp", "L2.mlp",
                      "L0H0", "L0H1", "L1H0", "L1H1", "L2H0", "L2H1"] == LAYOUT.labels
    parsed = [parse_label(u) for u in labels]
    assert [p.kind for p in parsed] == ["embed"] + ["mlp"] * 3 + ["head"] * 6
    assert [(p.layer, p.head) for p in parsed[4:]] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0),
                                                        (2, 1)]
    assert [is_head(u) for u in ["L10H3", "L1.mlp", "embed", "L1H", "H1", 3]] == [
        True, False, False, False, False, False]
    assert layer_of("L12H0") == 12 and layer_of("L3.mlp") == 3 and layer_of("embed") is None
    for bad in ["L1", "l1h1", "L1H1.mlp", "mlp", ""]:
        with pytest.raises(ValueError, match="'embed', 'L{l}.mlp' or 'L{l}H{h}'"):
            parse_label(bad)
    table = label_table(labels)
    assert table.columns.tolist() == ["unit", "kind", "layer", "head"]
    assert table.iloc[0].tolist() == ["embed", "embed", -1, -1]
    assert table.iloc[-1].tolist() == ["L2H1", "head", 2, 1]


def test_pick_by_label_matches_positions():
    units = stack()
    data = units.data
    assert torch.equal(units["L1H0"], data[:, 6]) and torch.equal(units["embed"], data[:, 0])
    pair = units[["L2H1", "L0.mlp"]]
    assert isinstance(pair, Units) and pair.labels == ("L2H1", "L0.mlp")
    assert torch.equal(pair.data, data[:, [9, 1]])
    assert pair.layout == LAYOUT, "a selection keeps the model's layout"
    assert units.heads(layer=1).labels == ("L1H0", "L1H1")
    assert units.heads().labels == tuple(LAYOUT.labels[4:])
    assert units.mlps().labels == ("L0.mlp", "L1.mlp", "L2.mlp")
    assert units.layer(2).labels == ("L2.mlp", "L2H0", "L2H1")  # in the stack's order
    assert units.layer(-1).labels == units.layer(2).labels
    assert len(units) == LAYOUT.n_units and units.n_samples == 4 and "L0H1" in units


def test_grid_is_layer_by_head():
    units = stack()
    grid = units.grid()
    assert grid.shape == (4, 3, 2, LAYOUT.d_out)
    for layer in range(3):
        for head in range(2):
            assert torch.equal(grid[:, layer, head], units[f"L{layer}H{head}"])
    with pytest.raises(KeyError, match="L0H0"):
        units.mlps().grid()


def test_errors_name_the_valid_labels():
    units = stack()
    with pytest.raises(KeyError, match=r"'L7H0'.*10 units are embed, L0\.mlp"):
        units["L7H0"]
    with pytest.raises(KeyError, match="valid labels are 'embed'"):
        LAYOUT.index("L3.mlp")
    with pytest.raises(IndexError, match="3 layers"):
        units.heads(layer=3)
    with pytest.raises(ValueError, match="want \\(batch, unit, d\\)"):
        Units(torch.zeros(2, 3, 4), ("embed",), LAYOUT)


def test_sum_mean_split_cat_and_to():
    units = stack(batch=5)
    torch.testing.assert_close(units.sum(), units.data.sum(1))
    assert units.total is not None and torch.equal(units.total(), units.sum())
    torch.testing.assert_close(units.mean(), units.data.mean(0))
    parts = list(units.split(2))
    assert [p.n_samples for p in parts] == [2, 2, 1]
    again = Units.cat(parts)
    assert torch.equal(again.data, units.data) and again.labels == units.labels
    with pytest.raises(ValueError, match="different units"):
        Units.cat([units, units.heads()])
    doubled = units.to(torch.float64)
    assert doubled.data.dtype == torch.float64 and doubled.labels == units.labels


def test_unit_grid_lays_values_out_by_layer_and_head():
    values = {"embed": 9.0, "L0.mlp": 1.0, "L1.mlp": 2.0, "L0H0": 3.0, "L1H1": 4.0}
    grid = unit_grid(values)
    assert grid.index.tolist() == ["L0", "L1"] and grid.columns.tolist() == ["H0", "H1", "MLP"]
    assert grid.loc["L1", "H1"] == 4.0 and grid.loc["L0", "MLP"] == 1.0
    assert math.isnan(grid.loc["L0", "H1"])
    full = unit_grid({"L0H0": 1.0}, LAYOUT)
    assert full.shape == (3, 2), "a layout gives every cell; no MLP column without MLP values"
