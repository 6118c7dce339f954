"""Text embeddings of a dictionary (or any list of texts), computed once per model and cached.

The cache file is keyed by the model's weights fingerprint and a hash of the texts, so another
model, other weights or an edited dictionary are embedded again instead of silently reused::

    {cache_dir}/text/{model name}/{sha256(fingerprint, texts)[:20]}.safetensors

Embeddings are stored unnormalised in float32; :func:`embed_texts` L2-normalises them on return
unless asked not to (TextSpan and SOMP want unit-norm atoms).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["cache_path", "embed_dictionary", "embed_texts"]


def cache_path(loaded, texts: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the embeddings of ``texts`` by ``loaded`` are (or will be) cached.

    Args:
        loaded: A :class:`residual_core.models.LoadedModel` (its ``name`` and ``fingerprint``).
        texts: The texts, in order (the order is part of the key).
        cache_dir: Cache root (default ``residual_core.store.DEFAULT_CACHE``).
    """
    from residual_core.store import DEFAULT_CACHE

    digest = hashlib.sha256()
    digest.update(json.dumps([loaded.fingerprint, list(texts)]).encode())
    return Path(cache_dir or DEFAULT_CACHE) / "text" / loaded.name / (
        f"{digest.hexdigest()[:20]}.safetensors")


@torch.no_grad()
def embed_texts(
    loaded,
    texts: Sequence[str],
    *,
    normalize: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
) -> Float[Tensor, "m d_out"]:
    """``encode_text`` of every text, read from the cache when it holds them.

    Args:
        loaded: A :class:`residual_core.models.LoadedModel`.
        texts: The texts to embed.
        normalize: L2-normalise each row of the result.
        cache_dir: Cache root (default ``residual_core.store.DEFAULT_CACHE``).
        batch_size: Texts per forward pass.

    Returns:
        One float32 row per text, on the CPU.
    """
    if not texts:
        raise ValueError("no texts to embed")
    path = cache_path(loaded, texts, cache_dir)
    if path.exists():
        feats = load_file(str(path))["embeddings"]
    else:
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(list(texts[start : start + batch_size])).to(loaded.device)
            parts.append(loaded.model.encode_text(tokens).float().cpu())
        feats = torch.cat(parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"embeddings": feats.contiguous()}, str(tmp),
                  metadata={"fingerprint": loaded.fingerprint, "n_texts": str(len(texts))})
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache entry
    if feats.shape[0] != len(texts):
        raise RuntimeError(f"{path} holds {feats.shape[0]} rows for {len(texts)} texts; delete it")
    return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


def embed_dictionary(loaded, dictionary, **kwargs) -> Float[Tensor, "m d_out"]:
    """:func:`embed_texts` of a :class:`~residual_core.dictionary.TextDictionary`'s texts."""
    return embed_texts(loaded, dictionary.texts, **kwargs)
