"""Chapter 03/04 figures: every plotting helper draws on synthetic inputs and returns a figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from residual_core.analysis.alignment import analyze_task, task_table
from residual_core.analysis.exemplars import pc_extremes
from residual_core.core.textspan import TextExplanation
from residual_core.core.units import UnitLayout, Units
from residual_core.core.zeroshot import ZeroShotClassifier
from residual_core.plots import heads as ph
from residual_core.plots.common import claims_view, styled


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def expl(unit: str) -> TextExplanation:
    return TextExplanation(unit, [0, 1, 2], ["a red object", "a circle", "three stars"],
                           [0.3, 0.45, 0.5])


@pytest.fixture(scope="module")
def result():
    g = torch.Generator().manual_seed(0)
    layout = UnitLayout(n_layers=1, n_heads=2, d_model=4, d_head=2, d_out=4)

    def split(n):
        y = torch.randint(0, 2, (n,), generator=g)
        u = 0.2 * torch.randn(n, 4, 4, generator=g)  # embed, L0.mlp, L0H0, L0H1
        u[:, 2] += torch.nn.functional.one_hot(y, 4).float()
        return Units.full(u, layout), y

    data = [split(60) for _ in range(4)]
    clf = ZeroShotClassifier(torch.eye(4)[:, :2].contiguous(), ["a", "b"], ["{}"])
    return analyze_task("toy.a", *data[:3], data[3][0].mean(), clf, random_seeds=2)


def is_figure(fig) -> bool:
    return isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) >= 1


def test_probe_heatmap_and_family_shares():
    probes = pd.DataFrame(np.random.default_rng(0).random((3, 2)), index=["h0", "h1", "embedding"],
                          columns=["color", "count"])
    fig = ph.plot_probe_heatmap(probes, {"color": 0.2, "count": 0.25})
    assert is_figure(fig)
    assert "chance 0.20" in fig.axes[0].get_xticklabels()[0].get_text()
    shares = pd.DataFrame({"color": [0.7, 0.1], "(none)": [0.3, 0.9]}, index=["h0", "h1"])
    fig = ph.plot_family_shares(shares, pd.Series({"color": 0.5, "(none)": 0.5}))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["dictionary", "h0", "h1"]


def test_explained_variance_and_head_card():
    fig = ph.plot_explained_variance({"h0": expl("h0"), "h1": expl("h1")}, {"h0": expl("h0")})
    assert len(fig.axes[0].lines) == 3  # two TextSpan curves, one SOMP curve
    card = ph.plot_head_card("h0", expl("h0"), pd.Series({"color": 0.9, "count": 0.3}),
                             {"color": 0.2, "count": 0.25}, somp=expl("h0"))
    assert len(card.axes) == 2
    assert len(ph.plot_head_card("h0", expl("h0")).axes) == 1  # no ground truth: one panel
    images = np.zeros((6, 4, 4, 3), dtype=np.uint8)
    ext = pc_extremes(torch.randn(6, 3), torch.eye(3)[:2], torch.zeros(3), torch.ones(2), 2, 2)
    card = ph.plot_head_card("h0", expl("h0"), images=images, extremes=ext)
    assert sum(bool(ax.images) for ax in card.axes) == 8  # 2 PCs × (2 highest + 2 lowest)


def test_task_level_plots(result):
    table = task_table([result, result], pd.DataFrame({"color": [1.0, 0.0]},
                                                      index=["L0H0", "L0H1"]),
                       {"toy.a": "color"}, k_carriers=1)
    assert is_figure(ph.plot_headroom(table))
    layers = pd.concat([result.layers.assign(task="toy.a"), result.layers.assign(task="toy.b")])
    fig = ph.plot_layer_ablation(layers)
    assert len(fig.axes) == 4  # three kinds and the legend panel
    fig = ph.plot_coarse_selection(result.coarse, "toy.a", chance=0.5)
    assert any("full model" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert len(ph.plot_task_card(result, chance=0.5).axes) == 2
    fig = ph.plot_correlation(table, "spec_carriers", "zero_shot",
                              stats={"rho": 0.5, "p": 0.2, "n": 2})
    assert "0.50" in fig.axes[0].get_title()


def test_styled_and_truth_view():
    table = pd.DataFrame({"k": [1.0, 2.0], "acc": [0.12345, 0.5]}, index=["a", "b"])
    html = styled(table, integers=("k",), hide_index=True).to_html()
    assert "0.123" in html and ">1<" in html and "padding" in html
    truth = pd.DataFrame([{"attribute": "count", "family": None, "rank": 1, "head": "L0H0",
                           "probe_acc": 0.5, "chance": 0.25, "top_texts": "a | b",
                           "names_family": "–", "by_chance": float("nan"),
                           "family_share": float("nan"), "family_prior": float("nan")}])
    html = ph.truth_table_view(truth).to_html()
    assert "L0H0 (#1)" in html and "0.50 (0.25)" in html and "a; b" in html
    assert "count (–)" in html and "font-size" in html


def test_claims_view_shows_every_claim_in_full():
    from residual_core.analysis import claims

    table = claims.stability_claims({"world": 0.9, "sketch": 0.8, "random": 0.2}, 0.3, "random",
                                    same=["world"])
    html = claims_view(table).to_html()
    assert "C5" in html and "C6" in html and claims.CLAIMS["C5"].criterion in html
    assert "lowest: random" in html and "_row0_col3, #" in html  # both hold: both bold
    table.loc[0, "holds"] = "no"
    assert "_row0_col3, #" not in claims_view(table).to_html()
