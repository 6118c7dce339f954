"""Ablation and coarse head selection on planted units."""

from __future__ import annotations

import pytest
import torch

from residual_core.core.ablation import (
    ablate,
    accuracy,
    coarse_selection,
    k_values,
    rank_heads,
)
from residual_core.core.units import UnitLayout, Units, is_head

LAYOUT = UnitLayout(n_layers=2, n_heads=4, d_model=16, d_head=4, d_out=16)
LABELS = LAYOUT.labels  # embed, 2 MLPs, 8 heads
SIGNAL = "L1H2"


def planted(n: int, seed: int):
    """Head L1H2 writes the class direction; every other unit writes larger class-free noise."""
    d, k = 16, 4
    g = torch.Generator().manual_seed(1234)  # one task: the same classifier for every split
    classifier = torch.nn.functional.normalize(torch.randn(d, k, generator=g), dim=0)
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, k, (n,), generator=g)
    units = 0.6 * torch.randn(n, len(LABELS), d, generator=g)
    units[:, LABELS.index(SIGNAL)] = 2.0 * classifier.T[targets] + 0.1 * torch.randn(n, d,
                                                                                     generator=g)
    return Units.full(units, LAYOUT), targets, classifier


def test_k_values():
    assert k_values(144) == [1, 7, 14, 36, 72, 108]
    assert k_values(8) == [1, 2, 4, 6]


def test_ablate_zero_mean_and_errors():
    units, _, _ = planted(50, 0)
    means = units.mean()
    torch.testing.assert_close(ablate(units, []), units.sum())
    assert ablate(units, LABELS, "zero").abs().max() == 0
    torch.testing.assert_close(ablate(units, LABELS, "mean", means),
                               means.sum(0).expand(50, -1))
    z = ablate(units, ["L0H1"], "zero")
    torch.testing.assert_close(z, units.sum() - units["L0H1"])
    # Labels, not positions: the same units in another order ablate the same way.
    shuffled = units.select(list(reversed(LABELS)))
    torch.testing.assert_close(ablate(shuffled, ["L0H1"], "mean", shuffled.mean()),
                               ablate(units, ["L0H1"], "mean", means))
    with pytest.raises(KeyError, match="L9H9"):
        ablate(units, ["L9H9"])
    with pytest.raises(ValueError, match="mode must be"):
        ablate(units, [], mode="drop")
    with pytest.raises(ValueError, match="needs the reference means"):
        ablate(units, ["L0H0"], "mean")


@pytest.mark.parametrize("ranking", ["S", "U|T"])
def test_informed_rankings_find_the_signal_head(ranking):
    units, targets, classifier = planted(400, 1)
    order = rank_heads(ranking, units, units.mean(), classifier, targets)
    assert order[0] == SIGNAL
    assert sorted(order) == sorted(u for u in LABELS if is_head(u))


def test_random_ranking_is_seeded():
    units, targets, classifier = planted(50, 2)
    a = rank_heads("R", units, units.mean(), classifier, seed=3)
    assert a == rank_heads("R", units, units.mean(), classifier, seed=3)
    assert a != rank_heads("R", units, units.mean(), classifier, seed=4)
    with pytest.raises(ValueError, match="valid"):
        rank_heads("X", units, units.mean(), classifier)


def test_coarse_selection_keeps_signal_and_never_looks_at_test():
    val, val_t, classifier = planted(300, 3)
    test, test_t, _ = planted(300, 4)
    means = val.mean()
    table = coarse_selection(val, val_t, test, test_t, means, classifier, random_seeds=3)
    s1 = table[(table.ranking == "S") & (table.k == 1)].iloc[0]
    full = table[table.ranking == "full"].iloc[0]
    # The noise heads hurt: keeping the one good head beats keeping all of them by far.
    assert s1.test_acc > full.test_acc + 0.15
    assert set(table.ranking) == {"S", "U|T", "U", "R", "full"}
    assert (table.ranking == "R").sum() == 3 * len(k_values(8))
    # Garbage test data changes test accuracies only: the selection is made on validation.
    garbage = coarse_selection(val, val_t, test.with_data(torch.randn_like(test.data)),
                               test_t.flip(0), means, classifier, random_seeds=3)
    assert garbage.val_acc.tolist() == table.val_acc.tolist()
    assert garbage.test_acc.tolist() != table.test_acc.tolist()


def test_accuracy_normalisation_is_explicit():
    classifier = torch.eye(2)
    z = torch.tensor([[3.0, 1.0], [0.1, 0.2]])
    assert accuracy(z, classifier, torch.tensor([0, 1])) == 1.0
    assert accuracy(z, classifier, torch.tensor([0, 1]), normalize=False) == 1.0


def test_coarse_selection_rows_equal_ablating_the_dropped_heads():
    # Oracle: each row's accuracy recomputed from scratch with ``ablate`` on the heads that the
    # row's ranking drops (the incremental prefix sums must give the same embeddings).
    val, val_t, classifier = planted(200, 5)
    test, test_t, _ = planted(200, 6)
    g = torch.Generator().manual_seed(7)
    means = val.mean() + 0.3 * torch.randn(val.mean().shape, generator=g)  # unlike either split
    heads = [u for u in val.labels if is_head(u)]
    ks = [1, 3, 3, 6]  # a repeated k too
    table = coarse_selection(val, val_t, test, test_t, means, classifier, ks=ks, random_seeds=2)
    for (ranking, seed), rows in table[table.ranking != "full"].groupby(["ranking", "seed"]):
        order = rank_heads(ranking, val, means, classifier, val_t, k_max=max(ks), seed=seed)
        for row in rows.itertuples():
            dropped = [h for h in heads if h not in order[: row.k]]
            for units, t, got in ((val, val_t, row.val_acc), (test, test_t, row.test_acc)):
                want = accuracy(ablate(units, dropped, "mean", means), classifier, t)
                assert got == pytest.approx(want, abs=1e-9), (ranking, seed, row.k)
