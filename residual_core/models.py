"""One model registry: the tutorial CLIP and the paper's open_clip encoders (``load_model``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = [
    "PAPER_MODELS",
    "UNSUPPORTED_MODELS",
    "LoadedModel",
    "ModelLoadError",
    "list_models",
    "load_model",
    "weights_fingerprint",
]

PAPER_MODELS: dict[str, tuple[str, str]] = {
    "openclip_b": ("ViT-B-16", "laion2b_s34b_b88k"),
    "openclip_l": ("ViT-L-14", "laion2b_s32b_b82k"),
    "clip_b": ("ViT-B-16", "openai"),
    "clip_l": ("ViT-L-14", "openai"),
}
"""The paper's CLIP encoders (SPEC §2): key → (open_clip model name, pretrained tag)."""

UNSUPPORTED_MODELS: dict[str, str] = {
    "vit_l": "google/vit-large-patch16-224",
    "dinov2_l": "facebook/dinov2-large",
    "blip_l_flickr": "Salesforce/blip-itm-large-flickr",
}
"""Paper encoders known but not yet supported (Hugging Face models, no open_clip ViT)."""

TUTORIAL = "tutorial"
_UNSET: Any = object()


class ModelLoadError(RuntimeError):
    """A model could not be loaded (unknown name, unsupported, or weights not available)."""


@dataclass
class LoadedModel:
    """A model ready for decomposition and zero-shot use, whatever its source.

    Attributes:
        model: An open_clip ``CLIP`` in eval mode (``encode_image``/``encode_text``).
        preprocess: PIL image → normalised tensor ``(3, H, W)``.
        tokenizer: ``list[str]`` → ``LongTensor (n, context_length)``.
        name: The registry key asked for (``'tutorial'``, ``'clip_b'``, ``'ViT-B-16'``, ...).
        arch: The open_clip architecture (model config name, or ``'tutorial-tiny-clip'``).
        pretrained: Pretrained tag or checkpoint file name; ``None`` for random init.
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


def list_models() -> list[str]:
    """Registry keys: ``'tutorial'`` and the paper's keys (open_clip names also load)."""
    return [TUTORIAL, *PAPER_MODELS]


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of every parameter and buffer (names, shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _valid_names_message() -> str:
    import open_clip

    return (f"valid keys: {', '.join(list_models())}; or any open_clip model name with "
            f"pretrained=<tag> or None (e.g. 'ViT-B-16', {len(open_clip.list_models())} names: "
            "open_clip.list_models())")


def _load_tutorial(device: str | torch.device) -> LoadedModel:
    from residual_core.tutorial.model import (
        CHECKPOINT_PATH,
        load_tiny_clip,
        preprocess_transform,
    )

    model, tokenizer, record = load_tiny_clip(CHECKPOINT_PATH, device)
    image_size = record["model_cfg"]["vision_cfg"]["image_size"]
    return LoadedModel(
        model=model,
        preprocess=preprocess_transform(image_size),
        tokenizer=tokenizer,
        name=TUTORIAL,
        arch="tutorial-tiny-clip",
        pretrained=CHECKPOINT_PATH.name,
        fingerprint=f"tutorial-{record['sha256'][:16]}",
    )


def _load_open_clip(
    key: str, arch: str, pretrained: str | None, device: str | torch.device
) -> LoadedModel:
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device=device
        )
    except Exception as err:
        if pretrained is None:
            raise
        raise ModelLoadError(
            f"could not load open_clip {arch!r} with pretrained={pretrained!r} ({key!r}): the "
            "weights are downloaded from the Hugging Face hub on first use, so this needs "
            "internet access or a cache that already holds them (HF_HOME / ~/.cache/huggingface, "
            f"or open_clip's cache_dir). Original error: {type(err).__name__}: {err}"
        ) from err
    model.eval()
    if pretrained is None:
        fingerprint = f"{arch}-random-{weights_fingerprint(model)}"
    else:
        fingerprint = f"{arch}-{pretrained}-open_clip{open_clip.__version__}"
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(arch),
        name=key,
        arch=arch,
        pretrained=pretrained,
        fingerprint=fingerprint,
    )


def load_model(
    name: str, pretrained: str | None = _UNSET, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a model by registry key or open_clip name.

    Args:
        name: ``'tutorial'`` (the shipped tiny CLIP), a paper key (``'openclip_b'``,
            ``'openclip_l'``, ``'clip_b'``, ``'clip_l'``) or an open_clip model name.
        pretrained: For an open_clip name: the pretrained tag, or ``None`` for random weights
            (must be given). For a key it may be omitted or must match the key's tag.
        device: Where to put the model.

    Returns:
        The model in eval mode with its preprocessing, tokenizer and weights fingerprint.

    Raises:
        ModelLoadError: For an unknown or not yet supported name (listing the valid ones), a
            missing ``pretrained`` for an open_clip name, or weights that cannot be fetched.
        ChecksumError: If the tutorial checkpoint does not match its recorded sha256.

    Example:
        >>> loaded = load_model("tutorial")
        >>> loaded.model.encode_text(loaded.tokenizer(["a red circle on the left"])).shape
        torch.Size([1, 128])
    """
    if name == TUTORIAL:
        if pretrained is not _UNSET:
            raise ModelLoadError("'tutorial' takes no pretrained tag (it ships one checkpoint)")
        return _load_tutorial(device)
    if name in UNSUPPORTED_MODELS:
        raise ModelLoadError(
            f"{name!r} ({UNSUPPORTED_MODELS[name]}) is a paper model that is not supported yet "
            f"(Hugging Face encoder, no open_clip ViT); supported: {', '.join(list_models())}"
        )
    if name in PAPER_MODELS:
        arch, tag = PAPER_MODELS[name]
        if pretrained is not _UNSET and pretrained != tag:
            raise ModelLoadError(f"{name!r} is {arch} with pretrained={tag!r}, not {pretrained!r}")
        return _load_open_clip(name, arch, tag, device)

    import open_clip

    if name not in open_clip.list_models():
        raise ModelLoadError(f"unknown model {name!r}; {_valid_names_message()}")
    if pretrained is _UNSET:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelLoadError(
            f"open_clip model {name!r} needs pretrained=<tag> (one of {tags}) or pretrained=None "
            "for random weights"
        )
    return _load_open_clip(name, name, pretrained, device)
