"""Choosing images to show, on planted data; the image figures lay them out."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from conftest import SHAPE_ERRORS

from residual_core.analysis.exemplars import (
    captions_of,
    disagreements,
    pc_extremes,
    prediction_flips,
    spread_sample,
    task_flips,
    unit_extremes,
)
from residual_core.core.residual import ZeroShot
from residual_core.core.spectral import unit_pca
from residual_core.core.units import UnitLayout, Units
from residual_core.core.zeroshot import ZeroShotClassifier
from residual_core.data.base import ClassificationDataset
from residual_core.data.world import world_split
from residual_core.plots.images import (
    plot_disagreements,
    plot_image_grid,
    plot_image_rows,
    plot_pc_extremes,
    plot_prediction_flips,
)

LAYOUT = UnitLayout(n_layers=1, n_heads=2, d_model=4, d_head=2, d_out=4)


def test_pc_extremes_on_planted_coordinates():
    # Outputs along two orthonormal directions with known coordinates, plus an offset.
    basis = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64))[0][:2]
    c0 = torch.tensor([0.0, 5, -3, 1, 4, -6, 2, 0.5], dtype=torch.float64)
    c1 = torch.tensor([1.0, 0, 2, -2, 0, 0, -1, 3], dtype=torch.float64)
    mean = torch.full((6,), 2.0, dtype=torch.float64)
    outputs = mean + c0[:, None] * basis[0] + c1[:, None] * basis[1]
    ext = pc_extremes(outputs, basis, mean, torch.tensor([0.7, 0.3]), n_pcs=2, n_images=2)
    assert [e.pc for e in ext] == [0, 1]
    assert ext[0].top == [1, 4] and ext[0].bottom == [5, 2]  # c0: 5, 4 … −3, −6
    assert ext[1].top == [7, 2] and ext[1].bottom == [3, 6]
    assert ext[0].top_values == pytest.approx([5, 4]) and ext[0].explained == pytest.approx(0.7)
    with pytest.raises(SHAPE_ERRORS, match="do not match|parameter 'components'"):
        pc_extremes(outputs[:, :5], basis, mean, torch.ones(2))


def test_disagreements_both_ways():
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    first = torch.tensor([1, 1, 2, 2, 1, 0])   # wrong on 0, 3, 5
    second = torch.tensor([0, 0, 2, 0, 1, 0])  # wrong on 1, 5
    assert disagreements(first, second, targets) == ([0, 3], [1])
    few = disagreements(first, second, targets, n_images=1, seed=3)
    assert len(few[0]) == 1 and few[0][0] in (0, 3) and few[1] == [1]
    with pytest.raises(SHAPE_ERRORS, match="differ in shape|parameter 'second'"):
        disagreements(first[:3], second, targets)


def test_spread_sample_covers_every_class():
    labels = np.array([2, 0, 0, 1, 2, 2, 0])
    picked = spread_sample(labels, per_class=2, seed=1)
    assert [labels[i] for i in picked] == [0, 0, 1, 2, 2]
    assert spread_sample(labels, 2, seed=1) == picked


def test_unit_extremes_match_pc_extremes_of_each_unit():
    units = Units.full(torch.randn(30, 4, 4, generator=torch.Generator().manual_seed(0)), LAYOUT)
    pca = unit_pca(units)
    got = unit_extremes(units, pca, ["L0H1"], n_pcs=2, n_images=3)
    one = pca["L0H1"]
    want = pc_extremes(units["L0H1"], one.components.float(), one.mean.float(),
                       one.explained_variance_ratio, 2, 3)
    assert list(got) == ["L0H1"] and [e.top for e in got["L0H1"]] == [e.top for e in want]
    assert len(got["L0H1"][1].bottom) == 3


def test_captions_of_world_images_and_of_other_datasets():
    scenes, images = world_split("world", "val", 4)
    world = ClassificationDataset("world.shape", "val", images, scenes.shape, ["a"] * 9, ["{}"],
                                  scenes=scenes)
    texts = captions_of(world, [2, 0])
    assert len(texts) == 2 and all(t.split()[-1] for t in texts)
    assert texts == captions_of(world, [2, 0])  # seeded
    plain = ClassificationDataset("x", "test", images, np.array([1, 0, 1, 0]), ["cat", "dog"],
                                  ["{}"])
    assert captions_of(plain, [0, 1]) == ["dog", "cat"]


class DropHead(ZeroShot):
    """Zero-shot without the unit L0H1: a variant that differs from zero-shot where L0H1 counts."""

    def encode(self, units):
        return (units.sum() - units["L0H1"],)


def test_prediction_flips_against_zero_shot():
    # The classifier reads the first two dimensions of the summed units; L0H1 (unit 3) pushes
    # images 0 and 1 to class b, so zero-shot says b for both and the variant without it a.
    u = torch.zeros(4, 4, 4)
    u[:, 0, 0] = 1.0
    u[0, 3, 1] = u[1, 3, 1] = 2.0
    u[3, 0, 1] = 3.0  # image 3: class b for both
    clf = ZeroShotClassifier(torch.eye(4)[:, :2].contiguous(), ["a", "b"], ["{}"])
    targets = torch.tensor([0, 1, 0, 1])
    units = Units.full(u, LAYOUT)
    flips = prediction_flips(DropHead(clf), units, targets)
    assert flips.first.tolist() == [1, 1, 0, 1] and flips.second.tolist() == [0, 0, 0, 1]
    assert (flips.first_wrong, flips.second_wrong) == ([0], [1])
    batched = prediction_flips(DropHead(clf), units.split(3), targets)  # batches: same result
    assert batched.second.tolist() == flips.second.tolist()

    class Encodings:  # the part of TaskEncodings that task_flips reads
        def dataset(self, task, split):
            return f"{task}/{split}"

        def units(self, task, split):
            return units

        def targets(self, task, split):
            return targets

    per_task = task_flips({"toy": DropHead(clf)}, Encodings())
    assert per_task["toy"][0] == "toy/test" and per_task["toy"][1].first_wrong == [0]
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    fig = plot_prediction_flips(images, ["a", "b"], flips, title="toy")
    assert sum(bool(ax.images) for ax in fig.axes) == 2


def test_image_figures_show_every_image():
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)
    fig = plot_image_grid(images[:5], [f"caption {i}" for i in range(5)], ncols=3)
    assert sum(bool(ax.images) for ax in fig.axes) == 5
    ext = pc_extremes(torch.randn(10, 4), torch.eye(4)[:2], torch.zeros(4), torch.ones(2), 2, 3)
    fig = plot_pc_extremes(images, ext, "L1H0", ["a text", "another"])
    assert sum(bool(ax.images) for ax in fig.axes) == 12
    fig = plot_disagreements(images, [0, 1], [], ["a", "b"], [0, 1] * 5, [1, 0] * 5, [0, 1] * 5)
    assert sum(bool(ax.images) for ax in fig.axes) == 2
    fig = plot_image_rows({"world": images[:3], "sketch": images[3:5]},
                          {"world": ["a", "b", "c"]})
    assert sum(bool(ax.images) for ax in fig.axes) == 5
    assert [ax.get_ylabel() for ax in fig.axes[::3]] == ["world", "sketch"]
    with pytest.raises(ValueError, match="no images"):
        plot_image_grid([])
    with pytest.raises(ValueError, match="no images"):
        plot_image_rows({"empty": []})
