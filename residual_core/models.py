"""One model registry: the tutorial CLIP and the paper's seven encoders (``load_model``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = [
    "HF_PAPER_MODELS",
    "MODEL_INFO",
    "PAPER_MODELS",
    "LoadedModel",
    "ModelInfo",
    "ModelLoadError",
    "NoTextTowerError",
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

HF_PAPER_MODELS: dict[str, str] = {
    "vit_l": "google/vit-large-patch16-224",
    "dinov2_l": "facebook/dinov2-large",
    "blip_l_flickr": "Salesforce/blip-itm-large-flickr",
}
"""The paper's Hugging Face encoders (SPEC §2): key → hub repository id (``transformers``)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a paper model costs before it is loaded (for planning and dry runs).

    Attributes:
        key: Registry key.
        source: Where the weights come from (open_clip name and tag, or hub repository).
        params_m: Parameters of the published architecture, all towers, in millions (tested
            against the architecture built on the meta device).
        download_mb: Approximate size of the checkpoint download in MB (1e6 bytes).
        image_size: Input resolution (square).
        d_out: Width of the image embedding, i.e. of every projected unit.
        has_text: Whether it has a text tower (else the class-mean classifier is used).
    """

    key: str
    source: str
    params_m: float
    download_mb: float
    image_size: int
    d_out: int
    has_text: bool


_OC, _HF = "open_clip", "hf"
MODEL_INFO: dict[str, ModelInfo] = {
    info.key: info
    for info in [
        ModelInfo("openclip_b", f"{_OC} ViT-B-16 laion2b_s34b_b88k", 149.6, 599, 224, 512, True),
        ModelInfo("openclip_l", f"{_OC} ViT-L-14 laion2b_s32b_b82k", 427.6, 1710, 224, 768, True),
        ModelInfo("clip_b", f"{_OC} ViT-B-16 openai", 149.6, 599, 224, 512, True),
        ModelInfo("clip_l", f"{_OC} ViT-L-14 openai", 427.6, 1710, 224, 768, True),
        ModelInfo("vit_l", f"{_HF} google/vit-large-patch16-224", 303.3, 1220, 224, 1024, False),
        ModelInfo("dinov2_l", f"{_HF} facebook/dinov2-large", 304.4, 1220, 224, 1024, False),
        ModelInfo("blip_l_flickr", f"{_HF} Salesforce/blip-itm-large-flickr", 446.1, 1785, 384,
                  256, True),
    ]
}
"""Size facts of the seven paper encoders, by key (SPEC §2). Downloads are the fp32 checkpoint
files as published (≈ 4 bytes per parameter), rounded."""

TUTORIAL = "tutorial"
_UNSET: Any = object()


class ModelLoadError(RuntimeError):
    """A model could not be loaded (unknown name, unsupported, or weights not available)."""


class NoTextTowerError(ValueError):
    """Text was asked of an encoder without a text tower (ViT-L, DINOv2-L)."""


@dataclass
class LoadedModel:
    """A model ready for decomposition and zero-shot use, whatever its source.

    Attributes:
        model: An open_clip ``CLIP`` in eval mode (``encode_image``/``encode_text``), or for a
            Hugging Face key a :class:`residual_core.hf_models.HFEncoder` with the same methods
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


def list_models() -> list[str]:
    """Registry keys: ``'tutorial'`` and the paper's seven keys (open_clip names also load)."""
    return [TUTORIAL, *PAPER_MODELS, *HF_PAPER_MODELS]


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


def _load_hf(key: str, pretrained: bool, device: str | torch.device) -> LoadedModel:
    try:
        import transformers
    except ImportError as err:
        raise ModelLoadError(
            f"{key!r} ({HF_PAPER_MODELS[key]}) needs the transformers package "
            "(pinned in requirements.txt): .venv/bin/pip install -r requirements.txt"
        ) from err
    from residual_core.hf_models import hf_preprocess, load_hf_encoder

    repo = HF_PAPER_MODELS[key]
    encoder, tokenizer, commit = load_hf_encoder(key, pretrained, device)
    if not pretrained:
        fingerprint = f"{key}-random-{weights_fingerprint(encoder)}"
    elif commit:
        fingerprint = f"{repo}@{commit[:12]}"
    else:
        fingerprint = f"{repo}-transformers{transformers.__version__}"
    return LoadedModel(
        model=encoder,
        preprocess=hf_preprocess(key),
        tokenizer=tokenizer,
        name=key,
        arch=repo,
        pretrained=repo if pretrained else None,
        fingerprint=fingerprint,
    )


def load_model(
    name: str, pretrained: str | None = _UNSET, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a model by registry key or open_clip name.

    Args:
        name: ``'tutorial'`` (the shipped tiny CLIP), a paper key (``'openclip_b'``,
            ``'openclip_l'``, ``'clip_b'``, ``'clip_l'``, ``'vit_l'``, ``'dinov2_l'``,
            ``'blip_l_flickr'``) or an open_clip model name.
        pretrained: For an open_clip name: the pretrained tag, or ``None`` for random weights
            (must be given). For a paper key it may be omitted or must match the key's tag
            (hub repository for the Hugging Face keys); ``None`` builds the key's real
            architecture with random weights, offline.
        device: Where to put the model.

    Returns:
        The model in eval mode with its preprocessing, tokenizer and weights fingerprint.

    Raises:
        ModelLoadError: For an unknown name (listing the valid ones), a missing ``pretrained``
            for an open_clip name, or weights that cannot be fetched (naming what to download).
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
    if name in HF_PAPER_MODELS:
        repo = HF_PAPER_MODELS[name]
        if pretrained not in (_UNSET, None, repo):
            raise ModelLoadError(f"{name!r} loads {repo!r} (or None for random weights), "
                                 f"not {pretrained!r}")
        return _load_hf(name, pretrained is not None, device)
    if name in PAPER_MODELS:
        arch, tag = PAPER_MODELS[name]
        if pretrained not in (_UNSET, None, tag):
            raise ModelLoadError(f"{name!r} is {arch} with pretrained={tag!r} (or None for "
                                 f"random weights), not {pretrained!r}")
        return _load_open_clip(name, arch, None if pretrained is None else tag, device)

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
