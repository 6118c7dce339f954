"""TaskEncodings: tutorial tasks sharing images are encoded once; labels come per task."""

from __future__ import annotations

import torch

from residual_core.data.encodings import TaskEncodings


def test_shared_images_are_encoded_once(loaded, tmp_path):
    enc = TaskEncodings(loaded, {"train": 12, "test": 8}, cache_dir=tmp_path, keep=2)
    tasks = ["world.color", "world.count", "world.background"]
    assert enc.groups(tasks, "test") == {"world.shape": tasks}
    units, y = enc.get("world.count", "test")
    assert units.shape == (8, 1 + 2 + 2 * 2, 16) and units.labels[-1] == "L1H1"
    assert enc.units("world.color", "test") is units  # same images, same tensor
    assert torch.equal(y, torch.as_tensor(enc.dataset("world.count", "test").labels))
    assert not torch.equal(y, enc.targets("world.color", "test"))
    stores = list((tmp_path / "encodings" / "random-tiny").iterdir())
    assert [p.name for p in stores] == ["world.shape"]  # the distribution's one store
    attrs = enc.attributes("world.count", "test")
    assert torch.equal(attrs["color"], enc.targets("world.color", "test"))
    torch.testing.assert_close(enc.means("world.count", "test"), units.mean())
    # The stored units add up to the image embedding.
    ds = enc.dataset("world.count", "test").with_transform(loaded.preprocess)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        torch.testing.assert_close(units.sum(), loaded.model.encode_image(images),
                                   rtol=1e-4, atol=1e-5)


def test_probes_and_memory_bound(loaded, tmp_path):
    enc = TaskEncodings(loaded, {"train": 12, "test": 8}, cache_dir=tmp_path, keep=1)
    probes = enc.probes(["world.color", "world.count"])
    assert list(probes.columns) == ["world.color", "world.count"]
    assert list(probes.index) == [*enc.units("world.count", "test").labels, "embedding"]
    assert ((probes >= 0) & (probes <= 1)).all().all()
    assert len(enc._units) == 1  # keep=1: the train tensor was dropped for the test one


def test_every_chapter_reads_one_store_per_distribution(loaded, tmp_path):
    # two chapters asking for different tasks of one distribution first (chapter 05 starts
    # with palette.color, chapter 04 with palette.shape) share a store; the reference and
    # another distribution keep their own
    from residual_core.data.world import image_set

    first = TaskEncodings(loaded, {"test": 8}, cache_dir=tmp_path)
    second = TaskEncodings(loaded, {"test": 8}, cache_dir=tmp_path)
    a = first.store("world_palette.color", "test")
    b = second.store("world_palette.count", "test")
    assert a.root == b.root and a.root.parent.name == "world_palette.shape"
    assert torch.equal(first.units("world_palette.color", "test").data,
                       second.units("world_palette.count", "test").data)
    assert image_set("world.reference") == "world.reference"
    assert image_set("world2_dark.texture") == "world2_dark.shape"
    assert image_set("eurosat") == "eurosat"
    stores = sorted(p.name for p in (tmp_path / "encodings" / "random-tiny").iterdir())
    assert stores == ["world_palette.shape"]
