"""Text dictionaries to explain units with: texts, the families they name, their embeddings.

A :class:`TextDictionary` carries its texts and, once embedded with a model
(:meth:`TextDictionary.embed`), that model's text embeddings, so TextSpan and SOMP take one
object. Embeddings are computed once per model and cached, keyed by the model's weights
fingerprint and a hash of the texts, so another model, other weights or an edited dictionary are
embedded again instead of silently reused::

    {cache_dir}/text/{model name}/{sha256(fingerprint, texts)[:20]}.safetensors

Embeddings are stored unnormalised in float32; :func:`embed_texts` L2-normalises them on return
unless asked not to (TextSpan and SOMP want unit-norm atoms). The dictionaries themselves (the
tutorial world's and the general one) are in :mod:`residual_core.data.dictionaries`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from residual_core.core.io import atomic_write, cache_root

__all__ = ["TextDictionary", "cache_path", "embed_texts", "read_tsv", "to_tsv"]


@dataclass(frozen=True)
class TextDictionary:
    """Texts with the attribute families each one names and, once embedded, a model's embeddings.

    Attributes:
        texts: The descriptions, unique, in a fixed order.
        families: Per text, the sorted attribute families it mentions.
        embeddings: L2-normalised text embeddings of one model, one row per text (``None``
            until :meth:`embed`).
        model: Name of the model the embeddings come from.

    Example:
        >>> words = load_dictionary("tutorial").embed(loaded)   # cached per model on disk
        >>> textspan(units, words)                             # texts and embeddings together
    """

    texts: tuple[str, ...]
    families: tuple[tuple[str, ...], ...]
    embeddings: Float[Tensor, "m d_out"] | None = field(default=None, compare=False, repr=False)
    model: str | None = None

    def __post_init__(self) -> None:
        if len(self.families) != len(self.texts):
            raise ValueError(f"{len(self.families)} family tuples for {len(self.texts)} texts")
        if self.embeddings is not None and self.embeddings.shape[0] != len(self.texts):
            raise ValueError(f"{self.embeddings.shape[0]} embeddings for {len(self.texts)} texts")

    def embed(self, loaded, *, cache_dir: str | os.PathLike | None = None) -> TextDictionary:
        """The same dictionary with ``loaded``'s L2-normalised embedding of every text.

        The embeddings are computed once per model and cached on disk (:func:`embed_texts`).
        """
        return replace(self, embeddings=embed_texts(loaded, self.texts, cache_dir=cache_dir),
                       model=loaded.name)

    def require_embeddings(self) -> Float[Tensor, "m d_out"]:
        """The embeddings, or a clear error if the dictionary was not embedded yet."""
        if self.embeddings is None:
            raise ValueError("this dictionary has no embeddings yet: call dictionary.embed(loaded)"
                             " with the model whose units it explains")
        return self.embeddings

    def __len__(self) -> int:
        return len(self.texts)

    def family_names(self) -> list[str]:
        """All families that occur, sorted."""
        return sorted({f for fams in self.families for f in fams})

    def with_family(self, family: str) -> list[int]:
        """Indices of the texts naming ``family``."""
        return [i for i, fams in enumerate(self.families) if family in fams]



def cache_path(loaded, texts: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the embeddings of ``texts`` by ``loaded`` are (or will be) cached.

    Args:
        loaded: A :class:`~residual_core.core.model.LoadedModel` (its ``name`` and
            ``fingerprint``).
        texts: The texts, in order (the order is part of the key).
        cache_dir: Cache root (default :func:`residual_core.core.io.cache_root`).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([loaded.fingerprint, list(texts)]).encode())
    return Path(cache_dir or cache_root()) / "text" / loaded.name / (
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
        loaded: A :class:`~residual_core.core.model.LoadedModel`.
        texts: The texts to embed.
        normalize: L2-normalise each row of the result.
        cache_dir: Cache root (default :func:`residual_core.core.io.cache_root`).
        batch_size: Texts per forward pass.

    Returns:
        One float32 row per text, on the CPU.
    """
    if not texts:
        raise ValueError("no texts to embed")
    path = cache_path(loaded, texts, cache_dir)
    feats = _read_cached(path, len(texts))
    if feats is None:
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(list(texts[start : start + batch_size])).to(loaded.device)
            parts.append(loaded.model.encode_text(tokens).float().cpu())
        feats = torch.cat(parts).contiguous()
        # atomic: a crash never leaves a half-written cache entry; the CRC-32 of the values
        # lets a reader tell a damaged entry from a good one
        atomic_write(path, save({"embeddings": feats},
                                metadata={"fingerprint": loaded.fingerprint,
                                          "n_texts": str(len(texts)),
                                          "crc32": _crc32(feats)}))
    return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


def _crc32(feats: Tensor) -> str:
    return f"{zlib.crc32(feats.numpy().tobytes()):08x}"


def _read_cached(path: Path, n_texts: int) -> Tensor | None:
    """A cache entry's embeddings, or ``None`` if absent or damaged (warned: it is recomputed)."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            feats = f.get_tensor("embeddings")
        problem = None
        if "crc32" not in meta:
            return None  # written before entries carried a checksum: recomputed silently
        if meta["crc32"] != _crc32(feats):
            problem = f"CRC-32 {_crc32(feats)}, recorded {meta.get('crc32')}"
        elif feats.shape[0] != n_texts:
            problem = f"{feats.shape[0]} rows for {n_texts} texts"
    except Exception as err:  # safetensors raises several types on bad files
        problem = f"unreadable: {err}"
    if problem is None:
        return feats
    warnings.warn(f"recomputing {path}: the cached text embeddings are damaged ({problem})",
                  stacklevel=3)
    return None


def to_tsv(d: TextDictionary) -> str:
    """One line per text: ``text<TAB>family,family``."""
    return "".join(f"{t}\t{','.join(f)}\n" for t, f in zip(d.texts, d.families, strict=True))


def read_tsv(path: Path) -> TextDictionary:
    """Read a dictionary written by :func:`to_tsv`."""
    texts, fams = [], []
    for line in path.read_text().splitlines():
        text, _, families = line.partition("\t")
        texts.append(text)
        fams.append(tuple(f for f in families.split(",") if f))
    return TextDictionary(tuple(texts), tuple(fams))
