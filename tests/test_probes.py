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


def test_ridge_probe_of_wide_units_with_two_threads():
    # Batched LU solves of d + 1 > ~150 failed with 2 MKL threads (pytorch#142815): the
    # probe of 192-wide units (the tutorial CLIP's) must run, and match a per-unit numpy fit.
    import numpy as np

    from residual_core.analysis.experiments import torch_threads

    g = torch.Generator().manual_seed(0)
    n, d = 400, 192
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, d, generator=g)
    x[:, 1, :3] += 8 * torch.nn.functional.one_hot(y, 3)  # unit 1 carries the labels
    with torch_threads(2):
        acc = ridge_probe(x[:300], y[:300], x[300:], y[300:])
    for u in range(3):
        xtr, xte = x[:300, u].double().numpy(), x[300:, u].double().numpy()
        mean, std = xtr.mean(0), xtr.std(0, ddof=1) + 1e-6
        a = np.c_[(xtr - mean) / std, np.ones(300)]
        b = np.c_[(xte - mean) / std, np.ones(100)]
        w = np.linalg.solve(a.T @ a + 0.1 * np.eye(d + 1), a.T @ np.eye(3)[y[:300].numpy()])
        assert acc[u].item() == pytest.approx(((b @ w).argmax(1) == y[300:].numpy()).mean())
    assert acc[1] > 0.9


def test_ridge_probes_of_several_labellings_match_one_fit_each():
    # one factorisation for every labelling must give what a separate numpy fit per unit and
    # labelling gives (an oracle that factorises nothing)
    import numpy as np

    from residual_core.core.probes import ridge_probes

    g = torch.Generator().manual_seed(3)
    n, d = 500, 20
    ys = [torch.randint(0, k, (n,), generator=g) for k in (2, 5, 3)]
    x = torch.randn(n, 4, d, generator=g)
    for u, (y, k) in enumerate(zip(ys, (2, 5, 3), strict=True)):
        x[:, u, :k] += 1.5 * torch.nn.functional.one_hot(y, k)  # unit u carries labelling u
    accs = ridge_probes(x[:350], [y[:350] for y in ys], x[350:], [y[350:] for y in ys],
                        alpha=0.1)
    assert len(accs) == 3
    for y, k, acc in zip(ys, (2, 5, 3), accs, strict=True):
        for u in range(4):
            xtr, xte = x[:350, u].double().numpy(), x[350:, u].double().numpy()
            mean, std = xtr.mean(0), xtr.std(0, ddof=1) + 1e-6
            a = np.c_[(xtr - mean) / std, np.ones(350)]
            b = np.c_[(xte - mean) / std, np.ones(150)]
            w = np.linalg.solve(a.T @ a + 0.1 * np.eye(d + 1), a.T @ np.eye(k)[y[:350].numpy()])
            expected = ((b @ w).argmax(1) == y[350:].numpy()).mean()
            assert float(acc[u]) == pytest.approx(expected, abs=1e-12), (k, u)
    assert accs[1][1] > 0.6 and accs[1][0] < 0.4, "unit 1 carries the 5-class labelling"
    with pytest.raises(ValueError, match="2 training labellings but 1 test"):
        ridge_probes(x[:350], [y[:350] for y in ys[:2]], x[350:], [ys[0][350:]])
