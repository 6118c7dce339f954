"""The encoding and text caches as a chapter uses them: what a rerun reuses, and when it rebuilds
(damaged chunks or projector, weights changed in place after loading)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from residual_core.core import store as store_module
from residual_core.core.dictionary import cache_path, embed_texts
from residual_core.core.model import LoadedModel, weights_checksum
from residual_core.data.encodings import encode_dataset
from residual_core.data.registry import load_dataset


def own_copy(loaded: LoadedModel) -> LoadedModel:
    """A LoadedModel with its own weights (the fixture's are shared by the module)."""
    return LoadedModel(copy.deepcopy(loaded.model), loaded.preprocess, loaded.tokenizer,
                       loaded.name, loaded.arch, loaded.pretrained, loaded.named_fingerprint)


def encode(loaded, cache, **kw):
    return encode_dataset(loaded, "world.color", "test", size=8, cache_dir=cache,
                          batch_size=4, progress=False, **kw)


def embeddings(loaded) -> torch.Tensor:
    """Independent reference: the model's own encode_image on the same images."""
    ds = load_dataset("world.color", "test", loaded.preprocess, size=8)
    with torch.no_grad():
        return loaded.model.encode_image(torch.stack([ds[i][0] for i in range(len(ds))]))


def flip(path, offset=-3):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_weights_changed_in_place_are_encoded_again(loaded, tmp_path):
    mine = own_copy(loaded)
    before = encode(mine, tmp_path).units()
    torch.testing.assert_close(before.sum(), embeddings(mine), rtol=1e-4, atol=1e-5)
    assert mine.fingerprint == mine.named_fingerprint
    with torch.no_grad():
        for p in mine.model.visual.parameters():
            p.data.add_(0.01 * torch.randn_like(p))  # p.data: no version counter moves
    assert mine.fingerprint.startswith(f"{mine.named_fingerprint}~modified-")
    with pytest.warns(UserWarning, match="rebuilding the store.*weights"):
        after = encode(mine, tmp_path).units()
    torch.testing.assert_close(after.sum(), embeddings(mine), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(after.sum(), before.sum(), atol=1e-3)


def test_text_cache_follows_weights_changed_in_place(loaded, tmp_path):
    mine = own_copy(loaded)
    texts = ["a red circle", "a blue square"]
    first = embed_texts(mine, texts, cache_dir=tmp_path, normalize=False)
    with torch.no_grad():
        mine.model.text_projection.data.mul_(2.0)
    again = embed_texts(mine, texts, cache_dir=tmp_path, normalize=False)
    torch.testing.assert_close(again, 2 * first)


def test_weights_checksum_is_cheap_and_sees_moves():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
    before = weights_checksum(model)
    assert weights_checksum(model) == before
    with torch.no_grad():
        w = model[0].weight
        w.data.copy_(w.data.flip(0))  # same values, rows swapped: a plain sum would not see it
    assert weights_checksum(model) != before
    with torch.no_grad():
        w.data.copy_(w.data.flip(0))
        assert weights_checksum(model) == before
        w.data.copy_(w.data.flip(1))  # columns swapped
    assert weights_checksum(model) != before
    assert weights_checksum(model.double()) != weights_checksum(model.float())


def test_a_damaged_cache_is_rebuilt_not_reused(loaded, tmp_path):
    """Flipped bytes in a chunk, a truncated or flipped projector: the rerun repairs them."""
    first = encode(loaded, tmp_path)
    root = first.root
    want = first.units()
    for damage, message in [
        (lambda: flip(root / "c000000.sigma.npy"), r"rebuilding 1 of 1 chunks.*c000000\.sigma"),
        (lambda: flip(root / "c000000.target.npy"), r"rebuilding 1 of 1 chunks.*c000000\.target"),
        (lambda: flip(root / "projector.safetensors"), r"rebuilding the store.*projector"),
        (lambda: (root / "projector.safetensors").write_bytes(
            (root / "projector.safetensors").read_bytes()[:-5]),
         r"rebuilding the store.*projector"),
    ]:
        damage()
        store_module._VERIFIED.clear()  # as a rerun in a new process
        with pytest.warns(UserWarning, match=message):
            store = encode(loaded, tmp_path)
        torch.testing.assert_close(store.units().data, want.data)
        assert store.targets().tolist() == first.targets().tolist()
        store_module._VERIFIED.clear()
        store.verify()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # intact: reused silently
        encode(loaded, tmp_path)


def test_a_damaged_text_cache_is_recomputed(loaded, tmp_path):
    texts = ["a red circle", "a blue square"]
    first = embed_texts(loaded, texts, cache_dir=tmp_path)
    path = cache_path(loaded, texts, tmp_path)
    flip(path)
    with pytest.warns(UserWarning, match=r"recomputing .*safetensors.*CRC-32"):
        again = embed_texts(loaded, texts, cache_dir=tmp_path)
    torch.testing.assert_close(again, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(embed_texts(loaded, texts, cache_dir=tmp_path), first)
