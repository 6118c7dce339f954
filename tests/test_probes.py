"""Probes find the unit that carries a planted attribute."""

from __future__ import annotations

import pytest
import torch

from residual_core.core.probes import probe_table, ridge_probe
from residual_core.core.units import UnitLayout, Units


def planted(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    units = torch.randn(n, 4, 6, generator=g)
    centers = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0]])
    units[:, 2] += centers[y]  # unit 2 carries the attribute
    return units, y


def test_ridge_probe_finds_the_carrier():
    x_tr, y_tr = planted(600, 0)
    x_te, y_te = planted(400, 1)
    acc = ridge_probe(x_tr, y_tr, x_te, y_te)
    assert acc[2] > 0.9
    assert (acc[[0, 1, 3]] < 0.5).all()  # chance is 1/3


def test_probe_table_has_units_and_embedding():
    x_tr, y_tr = planted(600, 0)
    x_te, y_te = planted(400, 1)
    layout = UnitLayout(n_layers=1, n_heads=2, d_model=x_tr.shape[-1], d_head=1,
                        d_out=x_tr.shape[-1])
    train, test = Units.full(x_tr, layout), Units.full(x_te, layout)  # embed, L0.mlp, L0H0, L0H1
    table = probe_table(train, {"a": y_tr}, test, {"a": y_te})
    assert list(table.index) == ["embed", "L0.mlp", "L0H0", "L0H1", "embedding"]
    assert table.loc["L0H0", "a"] == table["a"].iloc[:4].max()
    with pytest.raises(ValueError, match="differ"):
        probe_table(train, {"a": y_tr}, test.heads(), {"a": y_te})
    assert table.loc["embedding", "a"] > 0.6  # the sum adds the other units' noise
