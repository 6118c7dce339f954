"""The one model table: a :class:`ModelSpec` per key feeds loading, stand-ins and dry runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from residual_core.core.errors import ResidualError

__all__ = [
    "MODELS",
    "TUTORIAL",
    "HFVision",
    "ModelLoadError",
    "ModelSpec",
    "get_spec",
    "list_models",
]

TUTORIAL = "tutorial"


class ModelLoadError(ResidualError, RuntimeError):
    """A model could not be loaded (unknown name, unsupported, or weights not available)."""


@dataclass(frozen=True)
class HFVision:
    """The vision tower of a Hugging Face checkpoint, as its config describes it.

    Attributes:
        model_class: The ``transformers`` class holding the checkpoint.
        layers: Transformer blocks.
        heads: Attention heads per block.
        width: Residual stream width.
        mlp_width: Hidden width of the MLPs.
        patch_size: Side of a patch, in pixels.
        config_size: Image size the checkpoint is configured at (DINOv2: 518, used at 224).
    """

    model_class: str
    layers: int
    heads: int
    width: int
    mlp_width: int
    patch_size: int
    config_size: int


@dataclass(frozen=True)
class ModelSpec:
    """Everything the library knows about one model key before loading it.

    Attributes:
        key: Registry key.
        source: ``"tutorial"`` (the shipped tiny CLIP), ``"open_clip"`` or ``"hf"``.
        arch: The open_clip model name, the hub repository, or ``"tutorial-tiny-clip"``.
        pretrained: The open_clip pretrained tag (``None`` for the other sources).
        quick_gelu: The weights were trained with QuickGELU (OpenAI's): a random stand-in builds
            the ``-quickgelu`` config, as loading the pretrained tag does.
        params_m: Parameters of the published architecture, all towers, in millions (tested
            against the architecture built on the meta device).
        download_mb: Approximate size of the checkpoint download in MB (1e6 bytes; fp32, ≈ 4
            bytes per parameter, rounded).
        image_size: Input resolution (square) the model is used at.
        d_out: Width of the image embedding, i.e. of every projected unit.
        has_text: Whether it has a text tower (else the class-mean classifier is used).
        hf: The vision tower of a Hugging Face checkpoint (``None`` otherwise).
    """

    key: str
    source: Literal["tutorial", "open_clip", "hf"]
    arch: str
    pretrained: str | None = None
    quick_gelu: bool = False
    params_m: float | None = None
    download_mb: float = 0.0
    image_size: int = 224
    d_out: int = 0
    has_text: bool = True
    hf: HFVision | None = None

    @property
    def description(self) -> str:
        """Where the weights come from, in one line (``open_clip ViT-B-16 openai``, ...)."""
        if self.source == "open_clip":
            return f"open_clip {self.arch} {self.pretrained}"
        return f"{self.source} {self.arch}"


_LARGE = dict(layers=24, heads=16, width=1024, mlp_width=4096)

MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(TUTORIAL, "tutorial", "tutorial-tiny-clip", image_size=64),
        ModelSpec("openclip_b", "open_clip", "ViT-B-16", "laion2b_s34b_b88k", False, 149.6, 599,
                  224, 512),
        ModelSpec("openclip_l", "open_clip", "ViT-L-14", "laion2b_s32b_b82k", False, 427.6, 1710,
                  224, 768),
        ModelSpec("clip_b", "open_clip", "ViT-B-16", "openai", True, 149.6, 599, 224, 512),
        ModelSpec("clip_l", "open_clip", "ViT-L-14", "openai", True, 427.6, 1710, 224, 768),
        ModelSpec("vit_l", "hf", "google/vit-large-patch16-224", None, False, 303.3, 1220, 224,
                  1024, False, HFVision("ViTModel", **_LARGE, patch_size=16, config_size=224)),
        ModelSpec("dinov2_l", "hf", "facebook/dinov2-large", None, False, 304.4, 1220, 224, 1024,
                  False, HFVision("Dinov2Model", **_LARGE, patch_size=14, config_size=518)),
        ModelSpec("blip_l_flickr", "hf", "Salesforce/blip-itm-large-flickr", None, False, 446.1,
                  1785, 384, 256, True,
                  HFVision("BlipForImageTextRetrieval", **_LARGE, patch_size=16,
                           config_size=384)),
    ]
}
"""The tutorial CLIP and the paper's seven encoders, by key."""


def list_models() -> list[str]:
    """Registry keys: ``'tutorial'`` and the paper's seven keys (open_clip names also load)."""
    return list(MODELS)


def get_spec(key: str, source: str | None = None) -> ModelSpec:
    """The spec of a registry key (of the given ``source``, if one is named).

    Raises:
        KeyError: Naming the key and the valid ones.
    """
    spec = MODELS.get(key)
    if spec is None or (source is not None and spec.source != source):
        valid = [k for k, s in MODELS.items() if source is None or s.source == source]
        raise KeyError(f"no model key {key!r}{'' if source is None else f' of {source}'}; "
                       f"keys: {', '.join(valid)}")
    return spec
