"""Zero-shot vs units: layer ablation, validation-chosen k, per-task analysis on planted data."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from residual_core.analysis.alignment import (
    ABLATION_KINDS,
    ablation_by_layer,
    ablation_means_compared,
    analyze_task,
    correlations,
    headroom_findings,
    layer_ablation,
    selected_on_val,
    selection_counts,
    selection_summary,
    selection_table,
    spare_layers,
    task_table,
)
from residual_core.core.errors import InputError
from residual_core.core.probes import probe_table
from residual_core.core.units import UnitLayout, Units
from residual_core.core.zeroshot import ZeroShotClassifier

D, K = 8, 3
LAYOUT = UnitLayout(n_layers=2, n_heads=2, d_model=D, d_head=4, d_out=D)
LABELS = LAYOUT.labels  # embed, L0.mlp, L1.mlp, L0H0, L0H1, L1H0, L1H1


def planted(n: int, seed: int):
    """Only L1H0 carries the class (along the class direction e_y); everything else is noise.

    L0H1 carries the class too, but orthogonally to the classifier (probe sees it, C does not).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    units = 0.15 * torch.randn(n, len(LABELS), D, generator=g)
    units[:, LABELS.index("L1H0")] += 2.0 * torch.nn.functional.one_hot(y, D).float()
    units[:, LABELS.index("L0H1"), K:2 * K] += 2.0 * torch.nn.functional.one_hot(y, K).float()
    units[:, LABELS.index("embed")] += 1.0  # a constant offset, shared by every image
    return Units.full(units, LAYOUT), y


CLASSIFIER = torch.eye(D)[:, :K].contiguous()


def test_layer_ablation_finds_the_carrying_layer():
    units, y = planted(600, 0)
    means = planted(600, 1)[0].mean()
    table = layer_ablation(units, means, CLASSIFIER, y)
    assert len(table) == len(ABLATION_KINDS) * 3
    acc = table.set_index(["kind", "ablated_layers"]).accuracy
    assert acc["heads", 0] > 0.95  # full model
    assert acc["heads", 1] == pytest.approx(acc["heads", 0])  # layer 0 heads: no direct effect
    assert acc["heads", 2] < 0.5  # L1H0 gone: chance-ish
    assert acc["mlps", 2] == pytest.approx(acc["heads", 0], abs=0.02)  # MLPs carry nothing
    assert (table.kept_layers + table.ablated_layers == 2).all()


def test_selected_on_val_and_summary():
    coarse = pd.DataFrame([
        {"ranking": "S", "seed": 0, "k": 1, "val_acc": 0.8, "test_acc": 0.7},
        {"ranking": "S", "seed": 0, "k": 2, "val_acc": 0.8, "test_acc": 0.9},  # tie → smaller k
        {"ranking": "R", "seed": 0, "k": 1, "val_acc": 0.5, "test_acc": 0.4},
        {"ranking": "R", "seed": 0, "k": 2, "val_acc": 0.6, "test_acc": 0.6},
        {"ranking": "R", "seed": 1, "k": 1, "val_acc": 0.7, "test_acc": 0.2},
        {"ranking": "R", "seed": 1, "k": 2, "val_acc": 0.6, "test_acc": 0.8},
        {"ranking": "full", "seed": 0, "k": 2, "val_acc": 0.75, "test_acc": 0.85},
    ])
    picked = selected_on_val(coarse).set_index("ranking")
    assert picked.loc["S", "k"] == 1 and picked.loc["S", "test_acc"] == pytest.approx(0.7)
    assert picked.loc["R", "test_acc"] == pytest.approx((0.6 + 0.2) / 2)
    assert picked.loc["R", "k"] == pytest.approx(1.5)
    assert picked.loc["full", "test_acc"] == pytest.approx(0.85)
    summary = selection_summary(coarse).set_index(["ranking", "k"])
    assert summary.loc[("R", 2), "min"] == pytest.approx(0.6)
    assert summary.loc[("R", 2), "max"] == pytest.approx(0.8)
    assert "full" not in summary.index.get_level_values(0)


@pytest.fixture(scope="module")
def result():
    train, val, test, ref = (planted(300, s) for s in (0, 1, 2, 3))
    clf = ZeroShotClassifier(CLASSIFIER, ["a", "b", "c"], ["{}"])
    return analyze_task("toy.task", train, val, test, ref[0].mean(), clf,
                        random_seeds=3, s_heads=2)


def test_layer_ablation_mean_is_the_evaluated_images_by_default():
    """A constant offset that only the test images carry, in a head without class signal.

    Replacing layer 0 by the test images' own mean keeps the offset (and its bias towards
    class 0); replacing it by the reference mean removes it. Oracle: the sum of the units with
    layer 0 overwritten by hand.
    """
    train, val, ref = planted(300, 0), planted(300, 1), planted(300, 3)
    units, y = planted(300, 2)
    data = units.data.clone()
    data[:, LABELS.index("L0H0"), 0] += 3.0
    clf = ZeroShotClassifier(CLASSIFIER, ["a", "b", "c"], ["{}"])
    got = analyze_task("toy.shifted", train, val, (Units.full(data, LAYOUT), y),
                       ref[0].mean(), clf, random_seeds=2)
    layer0 = [LABELS.index(u) for u in ("L0H0", "L0H1")]

    def oracle(mu):
        z = data.clone()
        z[:, layer0] = mu[layer0]
        return float(((z.sum(1) @ CLASSIFIER).argmax(1) == y).float().mean())

    def heads_acc(table, n):
        return table.set_index(["kind", "ablated_layers"]).accuracy["heads", n]

    own, reference = oracle(data.mean(0)), oracle(ref[0].mean())
    assert heads_acc(got.layers, 1) == pytest.approx(own)
    assert heads_acc(got.layers_by_mean["evaluated"], 1) == pytest.approx(own)
    assert heads_acc(got.layers_by_mean["reference"], 1) == pytest.approx(reference)
    assert reference > own + 0.3  # the offset is what the reference mean takes away
    by_ref = analyze_task("toy.shifted", train, val, (Units.full(data, LAYOUT), y),
                          ref[0].mean(), clf, random_seeds=2, ablation_mean="reference")
    assert heads_acc(by_ref.layers, 1) == pytest.approx(reference)
    both = ablation_means_compared({"toy.shifted": got})
    assert list(both.index) == ["evaluated", "reference"] and list(both.columns) == [0, 1, 2]
    assert both.loc["evaluated", 1] == pytest.approx(own)
    assert both.loc["reference", 1] == pytest.approx(reference)
    assert both.loc["evaluated", 0] == both.loc["reference", 0]  # nothing ablated


def test_analyze_task_refuses_an_unknown_ablation_mean():
    train, val, test = planted(50, 0), planted(50, 1), planted(50, 2)
    clf = ZeroShotClassifier(CLASSIFIER, ["a", "b", "c"], ["{}"])
    with pytest.raises(InputError, match=r"ablation_mean='test' is not one of \['evaluated', "
                                         r"'reference'\]"):
        analyze_task("toy.task", train, val, test, train[0].mean(), clf,
                     ablation_mean="test")


def test_analyze_task_on_planted_heads(result):
    assert result.n_classes == K
    assert result.zero_shot > 0.9 and result.zero_shot_val > 0.9
    assert result.heads == ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert set(result.carriers(2)) == {"L1H0", "L0H1"}  # both carry the class
    assert result.s_order[0] == "L1H0"  # only one of them speaks to the classifier
    assert result.alignment["L1H0"] > 0.5 > result.alignment["L0H1"]
    assert result.probes["embedding"] > 0.95
    assert set(result.coarse.ranking) == {"S", "U|T", "U", "R", "full"}
    assert result.coarse[result.coarse.ranking == "R"].seed.nunique() == 3
    assert set(result.layers.kind) == set(ABLATION_KINDS)


def test_task_table(result):
    shares = pd.DataFrame({"color": [0.0, 0.2, 0.9, 0.1], "shape": [1.0, 0.8, 0.1, 0.9]},
                          index=["L0H0", "L0H1", "L1H0", "L1H1"])
    table = task_table([result], shares, {"toy.task": "color"}, k_carriers=2)
    row = table.iloc[0]
    assert row.chance == pytest.approx(1 / 3)
    assert row.zs_lift == pytest.approx((row.zero_shot - 1 / 3) / (2 / 3))
    assert row.headroom == pytest.approx(row.embedding_probe - row.zero_shot)
    assert row.spec_carriers == pytest.approx((0.9 + 0.2) / 2)
    assert row.spec_s == pytest.approx(shares.loc[result.s_order, "color"].mean())
    assert row.best_head in ("L1H0", "L0H1")
    nofam = task_table([result], shares, {"toy.task": None})
    assert nofam.spec_carriers.isna().all()


def test_headroom_findings():
    table = pd.DataFrame({"task": ["a", "b", "c"], "zero_shot": [0.5, 0.9, 0.3],
                          "embedding_probe": [0.9, 0.95, 0.35], "best_head_probe": [0.6, 0.5, 0.2],
                          "headroom": [0.4, 0.05, 0.05]})
    means, largest = headroom_findings(table, largest=2)
    assert means.zero_shot == pytest.approx(0.5667, abs=1e-4)
    assert means.head_beats_zero_shot == 1 and means.tasks == 3
    assert largest.task.tolist() == ["a", "b"]  # ties keep the table's order


def test_ablation_by_layer_and_spare_layers(result):
    layers, by_layer = ablation_by_layer({"x": result, "y": result})
    assert set(layers.task) == {"x", "y"} and len(layers) == 2 * len(result.layers)
    by = pd.DataFrame({0: [0.9, 0.9], 1: [0.895, 0.7], 2: [0.5, 0.6], 3: [0.89, 0.1]},
                      index=["heads", "mlps"])
    spare = spare_layers(by)
    assert spare.loc["heads"].tolist() == [0.9, 1, 3, 0.89]  # stops at the first big drop
    assert spare.loc["mlps", "spare"] == 0
    assert by_layer.loc["heads", 0] == pytest.approx(result.zero_shot)


def test_selection_table_and_counts(result):
    sel = selection_table({"t1": result, "t2": result})
    assert sel.index.tolist() == ["t1", "t2"]
    assert sel.columns.tolist() == ["full", "S", "U|T", "U", "R", "S k", "U|T k", "U k"]
    counts = selection_counts(pd.DataFrame({"full": [0.5, 0.5], "S": [0.6, 0.5], "U|T": [0.4, 0.5],
                                            "U": [0.5, 0.51], "R": [0.5, 0.5]}))
    assert counts.loc["S", ["better", "worse"]].tolist() == [1, 0]
    assert counts.loc["U|T", ["better", "worse"]].tolist() == [0, 1]
    assert counts.loc["U", "better"] == 1 and counts.loc["R", "mean_test"] == 0.5


def test_correlations():
    table = pd.DataFrame({"zs_lift": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                          "up": [1, 2, 3, 4, 5, 6], "noise": [3, 1, 4, 1, 5, 9]})
    out = correlations(table, ["up", "noise"], seed=0)
    assert out.loc["up", "rho"] == pytest.approx(1.0) and out.loc["up", "significant"]
    assert not out.loc["noise", "significant"] and out.loc["noise", "n"] == 6


def test_analyze_task_takes_the_probes_of_a_batched_call(result):
    # probing the task together with another labelling of the same images (one factorisation)
    # gives the task's own probes; probes of other units are refused
    train, val, test, ref = (planted(300, s) for s in (0, 1, 2, 3))
    other_tr, other_te = (torch.remainder(y + 1, 2) for y in (train[1], test[1]))
    table = probe_table(train[0], {"task": train[1], "other": other_tr},
                        test[0], {"task": test[1], "other": other_te})
    clf = ZeroShotClassifier(CLASSIFIER, ["a", "b", "c"], ["{}"])
    given = analyze_task("toy.task", train, val, test, ref[0].mean(), clf, random_seeds=3,
                         s_heads=2, probes=table["task"])
    pd.testing.assert_series_equal(given.probes, result.probes, check_names=False, atol=1e-12)
    assert given.zero_shot == result.zero_shot
    with pytest.raises(ValueError, match="probes are of other units"):
        analyze_task("toy.task", train, val, test, ref[0].mean(), clf, random_seeds=3,
                     probes=table["task"].iloc[1:])
