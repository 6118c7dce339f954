"""What the library needs of a loaded model: the network, its preprocessing and its tokenizer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = ["LoadedModel", "NoTextTowerError", "weights_checksum", "weights_fingerprint"]


class NoTextTowerError(ValueError):
    """Text was asked of an encoder without a text tower (ViT-L, DINOv2-L)."""


@dataclass
class LoadedModel:
    """A model ready for decomposition and zero-shot use, whatever its source.

    :func:`residual_core.models.load_model` builds one for every key of the model registry.

    Attributes:
        model: An open_clip ``CLIP`` in eval mode (``encode_image``/``encode_text``), or for a
            Hugging Face key a :class:`residual_core.models.hf.HFEncoder` with the same methods
            and a converted open_clip vision tower as ``model.visual``.
        preprocess: PIL image → normalised tensor ``(3, H, W)``.
        tokenizer: ``list[str]`` → ``LongTensor (n, context_length)``; for an encoder without a
            text tower it raises :class:`NoTextTowerError`.
        name: The registry key asked for (``'tutorial'``, ``'clip_b'``, ``'ViT-B-16'``, ...).
        arch: The open_clip architecture (model config name, ``'tutorial-tiny-clip'``, or the
            hub repository id of a Hugging Face key).
        pretrained: Pretrained tag, checkpoint file name or hub repository; ``None`` for random
            init.
        named_fingerprint: Identifies the weights as loaded (checkpoint name, or a hash where
            one is cheap); :attr:`fingerprint` is what cache keys use.
    """

    model: nn.Module
    preprocess: Callable[[Any], Float[Tensor, "3 height width"]]
    tokenizer: Callable[[list[str]], Int[Tensor, "batch context"]]
    name: str
    arch: str
    pretrained: str | None
    named_fingerprint: str
    _checksum: str = field(init=False, repr=False, compare=False)
    _modified: tuple[str, str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Taken now, so that a change of the weights in place is seen later (see fingerprint).
        self._checksum = weights_checksum(self.model)
        self._modified = None

    @property
    def fingerprint(self) -> str:
        """Identifies the weights as they are now, for cache keys.

        :attr:`named_fingerprint` while the weights are those loaded; once they were changed in
        place (fine-tuning, ``p.data.add_()``, ``load_state_dict``, a dtype change, ...), a hash
        of the current weights appended to it, so no cache built from the old weights is
        reused. Each call recomputes :func:`weights_checksum` (exact, on the weights' device).
        """
        checksum = weights_checksum(self.model)
        if checksum == self._checksum:
            return self.named_fingerprint
        if self._modified is None or self._modified[0] != checksum:
            self._modified = (checksum,
                              f"{self.named_fingerprint}~modified-{weights_fingerprint(self.model)}")
        return self._modified[1]

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def has_text(self) -> bool:
        """Whether the model has a text tower (``False``: zero-shot uses class means)."""
        return bool(getattr(self.model, "has_text", True))


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of every parameter and buffer (names, shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BLOCK = 64


def _weighted(x: Int[Tensor, " n"]) -> Int[Tensor, ""]:
    """Sum of ``x`` weighted by position 1..n (int64, wrapping): moves of values change it."""
    return (x * torch.arange(1, x.numel() + 1, device=x.device)).sum()


@torch.no_grad()
def weights_checksum(model: nn.Module) -> str:
    """A fast, exact checksum of every parameter and buffer, computed on their device.

    Each tensor's bytes are read as integers and summed in blocks of 64 (wrapping integer
    sums: exact, so the same on every device and in any order); the block sums weighted by
    their position, the column sums weighted by theirs and the tail make the tensor's part.
    Any change of a value changes it, as do moves of values between blocks or columns (what a
    plain sum would miss). No copy leaves the device but a few numbers per tensor; a ViT-B-16
    CLIP (150M values) takes about 0.2 s on one CPU core.
    """
    names, parts = [], []
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        names.append(f"{name}:{tuple(t.shape)}:{t.dtype}")
        if t.numel() == 0:
            continue
        if t.is_complex():
            t = torch.view_as_real(t)
        v = t.reshape(-1)
        v = v.to(torch.uint8) if v.dtype == torch.bool else v.view(_INT_VIEW[v.element_size()])
        acc = torch.int64 if v.element_size() == 8 else torch.int32
        n = v.numel() // _BLOCK * _BLOCK
        blocks = v[:n].view(-1, _BLOCK)
        rows = blocks.sum(1, dtype=acc).to(torch.int64)
        cols = blocks.sum(0, dtype=acc).to(torch.int64)
        tail = v[n:].to(torch.int64)
        parts.append(torch.stack([_weighted(rows), _weighted(cols), _weighted(tail)]))
    digest = hashlib.blake2b("\n".join(names).encode(), digest_size=12)
    if parts:
        digest.update(torch.stack(parts).cpu().numpy().tobytes())
    return digest.hexdigest()
