"""Text embeddings: computed once per (model weights, texts), then read from the cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from residual_core.core.dictionary import TextDictionary, cache_path, embed_texts
from residual_core.core.model import LoadedModel

TEXTS = ["red", "green", "blue circle", "a photo"]


class CountingModel(nn.Module):
    """encode_text: a fixed random embedding per token id; counts its calls."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)))
        self.calls = 0

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 3.0 * self.table[tokens[:, 0]]


def tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[sum(map(ord, t)) % 16] for t in texts])


def loaded(fingerprint: str = "stub-0") -> LoadedModel:
    return LoadedModel(CountingModel(), lambda x: x, tokenizer, "stub", "stub", None, fingerprint)


def test_embeds_once_then_reads_the_cache(tmp_path):
    model = loaded()
    first = embed_texts(model, TEXTS, cache_dir=tmp_path, batch_size=3)
    assert model.model.calls == 2  # two batches
    assert first.shape == (4, 6)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(4))
    again = embed_texts(model, TEXTS, cache_dir=tmp_path)
    assert model.model.calls == 2  # read from disk
    torch.testing.assert_close(again, first)
    raw = embed_texts(model, TEXTS, cache_dir=tmp_path, normalize=False)
    torch.testing.assert_close(raw, model.model.encode_text(tokenizer(TEXTS)).detach())
    assert cache_path(model, TEXTS, tmp_path).exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_key_depends_on_weights_and_texts(tmp_path):
    a, b = loaded("stub-0"), loaded("stub-1")
    assert cache_path(a, TEXTS, tmp_path) != cache_path(b, TEXTS, tmp_path)
    assert cache_path(a, TEXTS, tmp_path) != cache_path(a, TEXTS[::-1], tmp_path)
    assert cache_path(a, TEXTS, tmp_path).parent.name == "stub"


def test_dictionary_and_empty(tmp_path):
    model = loaded()
    words = TextDictionary(tuple(TEXTS), ((),) * len(TEXTS))
    torch.testing.assert_close(words.embed(model, cache_dir=tmp_path).embeddings,
                               embed_texts(model, TEXTS, cache_dir=tmp_path))
    with pytest.raises(ValueError, match="no texts"):
        embed_texts(model, [], cache_dir=tmp_path)
