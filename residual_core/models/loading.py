"""One ``load_model`` for every model: the tutorial CLIP, open_clip and HF keys, stand-ins.

``load_model(key)`` loads a key of :data:`residual_core.models.specs.MODELS` (or any open_clip
name with ``pretrained=``) as a :class:`~residual_core.core.model.LoadedModel`;
``weights="random"`` builds a key's architecture with random weights instead, named
``"{key}-random"`` so that its caches and results never mix with the real model's (what the
paper profile's smoke runs use before anything is downloaded).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from residual_core.core.checks import check_device
from residual_core.core.errors import InputError
from residual_core.core.model import LoadedModel, weights_fingerprint
from residual_core.models.specs import MODELS, TUTORIAL, ModelLoadError, get_spec, list_models

__all__ = ["WEIGHTS", "load_model", "load_tutorial_checkpoint"]

WEIGHTS = ("pretrained", "random")
"""Valid values of ``load_model``'s ``weights`` (and of the chapters' ``weights`` parameter)."""

_UNSET: Any = object()


def _valid_names_message() -> str:
    import open_clip

    return (f"valid keys: {', '.join(list_models())}; or any open_clip model name with "
            f"pretrained=<tag> or None (e.g. 'ViT-B-16', {len(open_clip.list_models())} names: "
            "open_clip.list_models())")


def load_tutorial_checkpoint(
    path: Any = None, device: str | torch.device = "cpu"
) -> tuple[LoadedModel, dict[str, Any]]:
    """A tutorial CLIP checkpoint (sha256-checked) as a ``LoadedModel``, with its json record.

    Args:
        path: The ``.safetensors`` file (default: the shipped checkpoint). Another checkpoint
            (a training run's, a snapshot) gets its own fingerprint, so caches never mix.
        device: Where to put the model.
    """
    from residual_core.tutorial.model import (
        CHECKPOINT_PATH,
        load_tiny_clip,
        preprocess_transform,
        record_fingerprint,
    )

    path = CHECKPOINT_PATH if path is None else Path(path)
    model, tokenizer, record = load_tiny_clip(path, device)
    image_size = record["model_cfg"]["vision_cfg"]["image_size"]
    loaded = LoadedModel(
        model=model,
        preprocess=preprocess_transform(image_size),
        tokenizer=tokenizer,
        name=TUTORIAL,
        arch="tutorial-tiny-clip",
        pretrained=path.name,
        named_fingerprint=record_fingerprint(record),
    )
    return loaded, record


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
        named_fingerprint=fingerprint,
    )


def _load_hf(key: str, pretrained: bool, device: str | torch.device) -> LoadedModel:
    repo = get_spec(key, "hf").arch
    try:
        import transformers
    except ImportError as err:
        raise ModelLoadError(
            f"{key!r} ({repo}) needs the transformers package (the 'paper' extra: "
            "pip install '.[paper]', or pip install -r requirements.txt)"
        ) from err
    from residual_core.models.hf import hf_preprocess, load_hf_encoder

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
        named_fingerprint=fingerprint,
    )


def _load_random(name: str, device: str | torch.device) -> LoadedModel:
    """A key's architecture (or any open_clip name's) with random weights, named ``{name}-random``.

    OpenAI's weights use QuickGELU, so ``clip_b``/``clip_l`` build the ``-quickgelu`` configs
    (as loading their pretrained tag does); the Hugging Face keys build their real architecture
    with random weights. Seed torch first for reproducible weights (the fingerprint hashes them
    anyway).
    """
    import open_clip

    spec = MODELS.get(name)
    if spec is not None and spec.source == "open_clip":
        arch = spec.arch
        if spec.quick_gelu and f"{arch}-quickgelu" in open_clip.list_models():
            arch = f"{arch}-quickgelu"
        loaded = load_model(arch, pretrained=None, device=device)
    elif (spec is not None and spec.source == "hf") or name in open_clip.list_models():
        loaded = load_model(name, pretrained=None, device=device)
    else:
        raise ModelLoadError(
            f"no random stand-in for {name!r}; valid: "
            f"{', '.join(m for m in list_models() if m != TUTORIAL)} or an open_clip name")
    return dataclasses.replace(loaded, name=f"{name}-random")


def load_model(
    name: str,
    pretrained: str | None = _UNSET,
    device: str | torch.device = "cpu",
    *,
    weights: str = "pretrained",
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
        weights: ``"pretrained"`` (default), or ``"random"``: a random-initialised stand-in of
            ``name`` (a paper key or an open_clip name), named ``"{name}-random"``.

    Returns:
        The model in eval mode with its preprocessing, tokenizer and weights fingerprint.

    Raises:
        ValueError: For a ``weights`` value other than ``"pretrained"`` or ``"random"``.
        DeviceError: For ``device="cuda"`` (or ``"mps"``) on a machine without one; a device
            string of another form is an ``InputError``.
        ModelLoadError: For an unknown name (listing the valid ones), a missing ``pretrained``
            for an open_clip name, or weights that cannot be fetched (naming what to download).
        ChecksumError: If the tutorial checkpoint does not match its recorded sha256.

    Example:
        >>> loaded = load_model("tutorial")
        >>> loaded.model.encode_text(loaded.tokenizer(["a red circle on the left"])).shape
        torch.Size([1, 128])
    """
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    check_device(device)  # before any weights are read: torch's own error names no parameter
    if weights == "random":
        if pretrained is not _UNSET:
            raise ModelLoadError("weights='random' takes no pretrained tag")
        return _load_random(name, device)
    spec = MODELS.get(name)
    if name == TUTORIAL:
        if pretrained is not _UNSET:
            raise ModelLoadError("'tutorial' takes no pretrained tag (it ships one checkpoint)")
        return load_tutorial_checkpoint(device=device)[0]
    if spec is not None and spec.source == "hf":
        if pretrained not in (_UNSET, None, spec.arch):
            raise ModelLoadError(f"{name!r} loads {spec.arch!r} (or None for random weights), "
                                 f"not {pretrained!r}")
        return _load_hf(name, pretrained is not None, device)
    if spec is not None:
        if pretrained not in (_UNSET, None, spec.pretrained):
            raise ModelLoadError(f"{name!r} is {spec.arch} with pretrained={spec.pretrained!r} "
                                 f"(or None for random weights), not {pretrained!r}")
        return _load_open_clip(name, spec.arch, None if pretrained is None else spec.pretrained,
                               device)

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
