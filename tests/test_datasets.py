"""Tests of the dataset registry and the tutorial-world task datasets."""

import numpy as np
import pytest
import torch
from PIL import Image

from residual_core import data as D
from residual_core.data import registry
from residual_core.data import world as WD
from residual_core.tutorial import world as W

SIZE = 300  # small splits keep the tests fast; the defaults are SPLIT_SIZES


def _hashes(images: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in images}


def test_registry_lists_every_distribution_task_and_the_reference():
    names = D.list_datasets()
    assert names == sorted(names)
    expected = {f"{d}.{t}" for d in WD.DISTRIBUTIONS for t in W.ATTRIBUTES} | {"world.reference"}
    from residual_core.data.paper import paper_names

    # the paper's datasets register lazily; other modules may add more (e.g. ``synthetic``)
    assert expected | set(paper_names()) <= set(names)
    assert {"world", "world_noise", "world_palette", "world_clutter", "world_sketch"} <= set(
        WD.DISTRIBUTIONS
    )
    assert "world_random" in WD.DISTRIBUTIONS


def test_unknown_name_or_split_lists_valid_choices():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'") as err:
        D.load_dataset("cifar11", "train")
    assert "world.shape" in str(err.value) and "world.reference" in str(err.value)
    with pytest.raises(ValueError, match="valid splits: train, val, test"):
        D.load_dataset("world.shape", "validation")
    with pytest.raises(ValueError, match="size must be an int ≥ 1 or None"):
        D.load_dataset("world.shape", "train", size=0)


def test_register_dataset_is_the_extension_point():
    def build(split, size):
        n = size or 4
        images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(n)]
        return D.ClassificationDataset("toy", split, images, np.arange(n) % 2, ["a", "b"], ["{}"])

    spec = D.DatasetSpec("toy", build, splits=("train", "test"), description="toy")
    D.register_dataset(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            D.register_dataset(spec)
        ds = D.load_dataset("toy", "test", size=3)
        assert len(ds) == 3 and ds.attributes is None
        img, label = ds[2]
        assert isinstance(img, Image.Image) and img.getpixel((0, 0)) == (2, 0, 0) and label == 0
        with pytest.raises(ValueError, match="valid splits: train, test"):
            D.load_dataset("toy", "val")
    finally:
        del registry._REGISTRY["toy"]
        registry._CACHE.clear()


def test_world_task_dataset_interface():
    ds = D.load_dataset("world.color", "val", size=SIZE)
    assert (ds.name, ds.split, len(ds)) == ("world.color", "val", SIZE)
    assert ds.classnames == list(W.ATTRIBUTES["color"])
    assert ds.templates == list(W.TEMPLATES["color"])
    img, label = ds[5]
    assert isinstance(img, Image.Image) and img.size == (64, 64) and img.mode == "RGB"
    assert isinstance(label, int) and label == ds.attributes["color"][5]
    np.testing.assert_array_equal(np.asarray(img), ds.images[5])
    assert set(ds.attributes) == set(W.ATTRIBUTES)
    np.testing.assert_array_equal(ds.labels, ds.attributes["color"])
    assert ds.images.shape == (SIZE, 64, 64, 3) and ds.images.dtype == np.uint8
    assert len(ds.scenes) == SIZE
    assert set(np.unique(ds.labels)) == set(range(len(ds.classnames)))


def test_transform_is_applied_without_touching_the_cache():
    def to_tensor(img):
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255

    ds = D.load_dataset("world.count", "test", transform=to_tensor, size=SIZE)
    x, y = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 64, 64)
    plain = D.load_dataset("world.count", "test", size=SIZE)
    assert isinstance(plain[0][0], Image.Image)
    assert plain.images is ds.images  # shared, generated once


def test_tasks_of_one_distribution_share_images_and_table():
    a = D.load_dataset("world.shape", "train", size=SIZE)
    b = D.load_dataset("world.position", "train", size=SIZE)
    assert a.images is b.images
    np.testing.assert_array_equal(b.labels, a.attributes["position"])


def test_splits_are_disjoint_and_deterministic():
    splits = {s: D.load_dataset("world.shape", s, size=SIZE) for s in D.SPLITS}
    hashes = {s: _hashes(ds.images) for s, ds in splits.items()}
    keys = {s: {row.tobytes() for row in ds.scenes.keys()} for s, ds in splits.items()}
    for s in D.SPLITS:
        assert len(hashes[s]) == SIZE and len(keys[s]) == SIZE  # no duplicates within a split
        for t in D.SPLITS:
            if s < t:
                assert not hashes[s] & hashes[t], (s, t)
                assert not keys[s] & keys[t], (s, t)
    before = splits["test"].images.copy()
    D.clear_cache()
    again = D.load_dataset("world.shape", "test", size=SIZE)
    assert again.images is not splits["test"].images
    np.testing.assert_array_equal(again.images, before)


def test_smaller_size_is_a_prefix():
    small = D.load_dataset("world.background", "train", size=120)
    large = D.load_dataset("world.background", "train", size=WD.BLOCK + 50)
    np.testing.assert_array_equal(small.images, large.images[:120])
    np.testing.assert_array_equal(small.labels, large.labels[:120])


def test_default_sizes():
    assert WD.SPLIT_SIZES == {"train": 2000, "val": 1000, "test": 2000}
    ds = D.load_dataset("world.texture", "val")
    assert len(ds) == WD.SPLIT_SIZES["val"]


def test_shifted_distributions_differ_from_the_base_one():
    base = D.load_dataset("world.shape", "test", size=SIZE).images.astype(float)
    stats = {}
    for dist in WD.DISTRIBUTIONS:
        ds = D.load_dataset(f"{dist}.shape", "test", size=SIZE)
        assert ds.scenes.shift == WD.DISTRIBUTIONS[dist]
        stats[dist] = ds.images.astype(float)
        if dist != "world":
            assert not _hashes(ds.images) & _hashes(base.astype(np.uint8))
    mean = {d: x.mean() for d, x in stats.items()}
    assert mean["world_sketch"] > 200 > 120 > mean["world"]
    assert abs(mean["world_random"] - 127.5) < 2
    # pixel-to-pixel roughness: noise and clutter add high-frequency content
    rough = {d: np.abs(np.diff(x, axis=2)).mean() for d, x in stats.items()}
    assert rough["world_noise"] > 3 * rough["world"]
    assert rough["world_clutter"] > rough["world"]
    assert abs(mean["world_palette"] - mean["world"]) > 3


def test_reference_dataset():
    ds = D.load_dataset("world.reference", "val", size=SIZE)
    assert len(ds.classnames) == 30 and ds.classnames[0] == "red circle"
    color, shape = ds.attributes["color"], ds.attributes["shape"]
    np.testing.assert_array_equal(ds.labels, color * 5 + shape)
    for i in range(5):
        c, s = ds.classnames[ds.labels[i]].split()
        assert (c, s) == (
            W.ATTRIBUTES["color"][color[i]],
            W.ATTRIBUTES["shape"][shape[i]],
        )
    base = D.load_dataset("world.shape", "val", size=SIZE)
    assert not _hashes(ds.images) & _hashes(base.images)
    assert WD.REFERENCE_SIZES["train"] > WD.SPLIT_SIZES["train"]


def test_templates_and_classnames_use_vocabulary_words():
    vocab = set(W.vocabulary())
    for name in ["world.reference", *(f"world.{t}" for t in W.ATTRIBUTES)]:
        ds = D.load_dataset(name, "val", size=20)
        for t in ds.templates:
            for c in ds.classnames:
                assert set(t.format(c).split()) <= vocab, (name, t, c)


@pytest.mark.parametrize("world", ["v1", "v2"])
def test_downstream_tasks_are_the_drawn_attributes_of_the_natural_shifts(world):
    tasks = WD.downstream_tasks(world)
    dists = WD.distributions(world)
    base = next(d for d, s in dists.items() if s is None)
    assert len(tasks) == len(set(tasks))
    assert not any(t.startswith((f"{base}.", f"{base}_random.")) for t in tasks)
    for shift, hidden in W.HIDDEN_BY_SHIFT.items():
        assert not any(t == f"{base}_{shift}.{a}" for a in hidden for t in tasks)
    natural = [s for s in W.world_config(world).shifts if s != "random"]
    expected = sum(len(W.ATTRIBUTES) - len(W.HIDDEN_BY_SHIFT.get(s, ())) for s in natural)
    assert len(tasks) == expected
    assert all(t in D.list_datasets() for t in tasks)
    if world == "v2":
        assert len(tasks) >= 30  # enough tasks for C11's rank correlation
        assert "world2_dark.shape" in tasks


def test_v2_world_datasets_are_registered_apart_from_v1():
    names = set(D.list_datasets())
    assert {f"{d}.{t}" for d in WD.NUISANCE_DISTRIBUTIONS for t in W.ATTRIBUTES} <= names
    assert "world2.reference" in names and WD.reference_name("v2") == "world2.reference"
    assert not any(n.startswith("world_dark") for n in names)  # v1 has no dark shift
    ds = D.load_dataset("world2_dark.color", "test", size=20)
    assert ds.scenes.config is W.NUISANCE_WORLD and ds.scenes.shift == "dark"
    assert ds.scenes.light is not None and len(ds) == 20
    ref = D.load_dataset("world2.reference", "train", size=20)
    assert ref.name == "world2.reference" and ref.scenes.config is W.NUISANCE_WORLD
    v1 = D.load_dataset("world.reference", "train", size=20)
    assert v1.scenes.config is W.DEFAULT_WORLD and v1.scenes.angle is None


def test_v3_world_datasets_draw_pattern_backgrounds_under_their_own_class_names():
    names = set(D.list_datasets())
    assert {f"{d}.{t}" for d in WD.PATTERN_DISTRIBUTIONS for t in W.ATTRIBUTES} <= names
    assert WD.reference_name("v3") == "world3.reference" and "world3.reference" in names
    v3 = D.load_dataset("world3_palette.background", "test", size=12)
    assert v3.scenes.config is W.PATTERN_WORLD and v3.scenes.shift == "palette"
    assert list(v3.classnames) == ["bare", "wavy", "ribbed", "tiled"]
    assert list(D.load_dataset("world2.background", "test", size=2).classnames) == [
        "black", "gray", "brown", "navy"]
    assert len(WD.downstream_tasks("v3")) == len(WD.downstream_tasks("v2"))


def test_world_of_names_the_world_of_every_tutorial_dataset_and_refuses_others():
    for world in W.WORLDS:
        for distribution in WD.distributions(world):
            assert WD.world_of(f"{distribution}.color") == world
        assert WD.world_of(WD.reference_name(world)) == world
    for bad in ("cifar10", "world4.color", "reference2.color"):
        with pytest.raises(ValueError, match="valid distributions: world, "):
            WD.world_of(bad)
