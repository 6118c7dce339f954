"""Head specialisation: family shares, scores, ground-truth table, planted heads, correlation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from residual_core.analysis import specialization as spec
from residual_core.core.dictionary import TextDictionary
from residual_core.core.textspan import TextExplanation
from residual_core.core.units import UnitLayout, Units

# A toy dictionary: 3 colour texts, 3 shape texts, one naming both, one naming none,
# one naming only the "side" modifier.
TEXTS = ("red", "green", "blue", "circle", "square", "star", "red circle", "a photo", "on the left")
FAMS = (("color",), ("color",), ("color",), ("shape",), ("shape",), ("shape",),
        ("color", "shape"), (), ("side",))
DICT = TextDictionary(TEXTS, FAMS)


def expl(unit: str, indices: list[int], gains: list[float]) -> TextExplanation:
    return TextExplanation(unit, indices, [TEXTS[i] for i in indices],
                           list(np.cumsum(gains)))


def test_task_family():
    fams = DICT.family_names()
    assert spec.task_family("world.left_color", fams) == "color"
    assert spec.task_family("world.right_shape", fams) == "shape"
    assert spec.task_family("cifar10", fams) is None
    assert spec.task_family("mnist", fams, {"mnist": "shape"}) == "shape"


def test_family_shares_split_gains_and_ignore():
    explanations = [
        expl("A", [0, 1], [0.3, 0.1]),  # all colour
        expl("B", [6, 7], [0.2, 0.2]),  # half to colour+shape split, half to none
        expl("C", [8, 3], [0.1, 0.3]),  # side (ignored → none), then shape
    ]
    shares = spec.family_shares(explanations, DICT, ignore=["side"])
    assert list(shares.columns) == ["color", "shape", spec.NONE_FAMILY]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert shares.loc["A", "color"] == pytest.approx(1.0)
    assert shares.loc["B"].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert shares.loc["C"].tolist() == pytest.approx([0.0, 0.75, 0.25])
    with_side = spec.family_shares(explanations, DICT)
    assert with_side.loc["C", "side"] == pytest.approx(0.25)


def test_scores_one_family_and_uniform():
    shares = pd.DataFrame([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], index=["one", "flat"],
                          columns=["a", "b", "c", "d"])
    scores = spec.specialization_scores(shares)
    assert scores.loc["one", "top_family"] == "a"
    assert scores.loc["one", "score"] == pytest.approx(1.0)
    assert scores.loc["one", "entropy_score"] == pytest.approx(1.0)
    assert scores.loc["flat", "score"] == pytest.approx(0.25)
    assert scores.loc["flat", "entropy_score"] == pytest.approx(0.0, abs=1e-12)


def test_dictionary_prior_sums_to_one():
    prior = spec.dictionary_prior(DICT, ignore=["side"])
    assert prior.sum() == pytest.approx(1.0)
    # 3.5 of 9 texts' weight is colour (3 + half of "red circle").
    assert prior["color"] == pytest.approx(3.5 / 9)


def test_probe_lift_and_probe_specialization():
    probes = pd.DataFrame({"x": [0.5, 1.0, 0.4], "y": [0.25, 0.25, 1.0]}, index=["h0", "h1", "h2"])
    lift = spec.probe_lift(probes, {"x": 0.5, "y": 0.25})
    assert lift.loc["h0"].tolist() == [0.0, 0.0]
    assert lift.loc["h1", "x"] == pytest.approx(1.0)
    assert lift.loc["h2", "x"] == 0.0  # below chance clips to 0
    view = spec.probe_specialization(lift, {"x": "color", "y": "shape"})
    assert view.loc["h1", "top_family"] == "color"
    assert view.loc["h2", "top_attribute"] == "y"
    assert view.loc["h2", "concentration"] == pytest.approx(1.0)
    assert view.loc["h0", "concentration"] == 0.0


def test_chance_levels_is_majority_rate():
    assert spec.chance_levels({"a": torch.tensor([0, 0, 0, 1])}) == {"a": 0.75}


def test_ground_truth_table_names_family_and_chance():
    explanations = {"h0": expl("h0", [0, 7, 3], [0.3, 0.1, 0.1]),
                    "h1": expl("h1", [4, 5, 7], [0.2, 0.1, 0.05])}
    probes = pd.DataFrame({"left_color": [0.9, 0.3, 0.95], "count": [0.4, 0.6, 0.7]},
                          index=["h0", "h1", "embedding"])
    table = spec.ground_truth_table(probes, explanations, DICT,
                                    {"left_color": "color", "count": None},
                                    {"left_color": 0.2, "count": 0.25}, n_heads=2, n_texts=1)
    assert table.family_prior.iloc[0] == pytest.approx(3.5 / 9)  # "side" credited here
    first = table[(table.attribute == "left_color") & (table["rank"] == 1)].iloc[0]
    assert first.family_share == pytest.approx(0.3 / 0.5)  # "red" explained 0.3 of 0.5
    assert first["head"] == "h0" and first.probe_acc == pytest.approx(0.9)  # embedding skipped
    assert first.names_family == "yes"
    assert first.by_chance == pytest.approx(4 / 9)  # one random text of 9, 4 name colour
    second = table[(table.attribute == "left_color") & (table["rank"] == 2)].iloc[0]
    assert second.names_family == "no"
    assert set(table[table.attribute == "count"].names_family) == {"–"}
    # Two random texts: 1 − C(5, 2)/C(9, 2).
    assert spec._random_hit_rate(DICT, "color", 2) == pytest.approx(1 - 10 / 36)


def test_names_family_looks_at_top_texts_only():
    e = expl("h", [7, 0], [0.1, 0.1])
    assert not spec.names_family(e, DICT, "color", top=1)
    assert spec.names_family(e, DICT, "color", top=2)


def planted():
    """Two heads: one varying along the 'green' text, one along 'square'; a third is noise."""
    g = torch.Generator().manual_seed(0)
    d, n = 16, 400
    emb = torch.nn.functional.normalize(torch.randn(len(TEXTS), d, generator=g), dim=-1)
    units = 0.01 * torch.randn(n, 4, d, generator=g)
    units[:, 1] += 3 * torch.randn(n, 1, generator=g) * emb[1]  # green
    units[:, 2] += 3 * torch.randn(n, 1, generator=g) * emb[4]  # square
    layout = UnitLayout(n_layers=1, n_heads=3, d_model=d, d_head=d // 3, d_out=d)
    words = TextDictionary(DICT.texts, DICT.families, emb)
    return Units(units, ("embed", "L0H0", "L0H1", "L0H2"), layout), words


@pytest.mark.parametrize("method", ["textspan", "somp"])
def test_explain_heads_finds_planted_texts_and_family(method):
    units, words = planted()
    heads = ["L0H0", "L0H1", "L0H2"]
    out = spec.explain_heads(units, heads, words, method=method, n_iters=3, rank=8)
    assert list(out) == heads
    assert out["L0H0"].texts[0] == "green"
    assert out["L0H1"].texts[0] == "square"
    assert out["L0H0"].explained_variance[0] > 0.95
    shares = spec.family_shares([out[h] for h in heads], DICT)
    scores = spec.specialization_scores(shares)
    assert scores.loc["L0H0", "top_family"] == "color"
    assert scores.loc["L0H1", "top_family"] == "shape"
    assert scores.loc["L0H0", "score"] > 0.9


def test_explain_heads_rejects_unknown_method():
    units, words = planted()
    with pytest.raises(ValueError, match="method"):
        spec.explain_heads(units, ["L0H0"], words, method="pca")


def test_classifier_alignment_inside_and_orthogonal():
    g = torch.Generator().manual_seed(2)
    c = torch.eye(6)[:, :2]  # class directions e0, e1
    units = torch.zeros(100, 3, 6)
    units[:, 0, :2] = torch.randn(100, 2, generator=g)  # inside span(C)
    units[:, 1, 3:] = torch.randn(100, 3, generator=g)  # orthogonal
    units[:, 2, [0, 5]] = torch.randn(100, 1, generator=g)  # half in, half out
    layout = UnitLayout(n_layers=1, n_heads=3, d_model=6, d_head=2, d_out=6)
    a = spec.classifier_alignment(Units(units, ("L0H0", "L0H1", "L0H2"), layout), c)
    assert a["L0H0"] == pytest.approx(1.0)
    assert a["L0H1"] == pytest.approx(0.0, abs=1e-12)
    assert a["L0H2"] == pytest.approx(0.5)


def test_task_specialization():
    shares = pd.DataFrame({"color": [1.0, 0.5], "shape": [0.0, 0.5]}, index=["h0", "h1"])
    assert spec.task_specialization(shares, ["h0", "h1"], "color") == pytest.approx(0.75)
    assert spec.task_specialization(shares, ["h0", "h1"], "color", [3, 1]) == pytest.approx(0.875)
    assert math.isnan(spec.task_specialization(shares, ["h0"], None))
    assert math.isnan(spec.task_specialization(shares, ["h0"], "count"))


def test_rank_correlation():
    x = [1, 2, 3, 4, 5, 6, 7, 8]
    up = spec.rank_correlation(x, [10, 20, 30, 40, 50, 60, 70, 800])
    assert up["rho"] == pytest.approx(1.0) and up["p"] < 0.01 and up["n"] == 8
    assert up["pearson"] < 1.0  # Pearson sees the outlier, Spearman does not
    down = spec.rank_correlation(x, x[::-1])
    assert down["rho"] == pytest.approx(-1.0)
    assert spec.rank_correlation(x, [3, 1, 4, 1, 5, 9, 2, 6]) == spec.rank_correlation(
        x, [3, 1, 4, 1, 5, 9, 2, 6])  # seeded: reproducible
    dropped = spec.rank_correlation([1, 2, float("nan"), 4], [1, 2, 3, 4])
    assert dropped["n"] == 3
    assert math.isnan(spec.rank_correlation([1, 2], [1, 2])["rho"])


def test_explanation_table():
    table = spec.explanation_table({"h0": expl("h0", [0, 3], [0.25, 0.05])}, n_texts=2)
    assert table.loc["h0", "#1"] == "red (25.0%)"
    assert table.loc["h0", "explained"] == "30.0%"


def test_pick_overlap_truth_summary_and_views():
    a = {"h0": expl("h0", [0, 1, 2], [0.1, 0.1, 0.1]), "h1": expl("h1", [3], [0.2])}
    b = {"h0": expl("h0", [2, 0, 7], [0.1, 0.1, 0.1])}
    assert spec.pick_overlap(a, b).to_dict() == {"h0": 2}
    truth = pd.DataFrame({
        "rank": [1, 2, 1, 1], "names_family": ["yes", "no", "no", "–"],
        "by_chance": [0.3, 0.1, 0.2, float("nan")], "probe_acc": [0.95, 0.5, 0.4, 0.9],
        "chance": [0.5, 0.5, 0.3, 0.2], "family_share": [0.6, 0.1, 0.1, 0.0],
        "family_prior": [0.3, 0.3, 0.2, 0.1]})
    s = spec.truth_summary(truth)
    assert s.to_dict() == {"attributes": 2, "named": 1, "by_chance": pytest.approx(0.5),
                           "strong": 1, "strong_named": 1, "above_prior": 1}
    shares = pd.DataFrame({"color": [0.9, 0.2], "shape": [0.1, 0.8]}, index=["h0", "h1"])
    lift = pd.DataFrame({"colour_task": [0.9, 0.7], "shape_task": [0.1, 0.2]}, index=["h0", "h1"])
    view = spec.head_views(spec.specialization_scores(shares), lift,
                           {"colour_task": "color", "shape_task": "shape"})
    assert view.agree.tolist() == ["yes", "no"]
    assert view.top_family_probe.tolist() == ["color", "color"]
    agree = spec.views_agreement(view)
    assert (agree.agree, agree.heads) == (1, 2)
