"""Probes find the unit that carries a planted attribute."""

from __future__ import annotations

import torch

from residual_core.core.probes import probe_table, ridge_probe


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
    table = probe_table(x_tr, {"a": y_tr}, x_te, {"a": y_te}, ["u0", "u1", "u2", "u3"])
    assert list(table.index) == ["u0", "u1", "u2", "u3", "embedding"]
    assert table.loc["u2", "a"] == table["a"].iloc[:4].max()
    assert table.loc["embedding", "a"] > 0.6  # the sum adds the other units' noise
