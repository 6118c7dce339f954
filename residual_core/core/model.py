"""What the library needs of a loaded model: the network, its preprocessing and its tokenizer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = ["LoadedModel", "NoTextTowerError", "weights_fingerprint"]


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
        fingerprint: Identifies the weights, for cache keys (a hash where one is cheap).
    """

    model: nn.Module
    preprocess: Callable[[Any], Float[Tensor, "3 height width"]]
    tokenizer: Callable[[list[str]], Int[Tensor, "batch context"]]
    name: str
    arch: str
    pretrained: str | None
    fingerprint: str

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
