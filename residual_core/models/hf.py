"""The paper's Hugging Face encoders (ViT-L/16, DINOv2-L, BLIP-L) as open_clip-style towers.

Each HF vision tower is converted, weight for weight, into an open_clip ``VisionTransformer``
(:class:`HFVisionTower`), so :mod:`residual_core.core.decompose`, the encoding store and fine-tuning
treat it like any CLIP tower. What differs from open_clip is set explicitly: the LayerNorm eps
(1e-12 ViT, 1e-6 DINOv2, 1e-5 BLIP), a patch convolution with a bias, no ``ln_pre``, position
embeddings interpolated once to the fixed input size (DINOv2 is trained at 518 px and used at
224), LayerScale (DINOv2), and a projection with a bias (BLIP's ``vision_proj``), which the
decomposition splits over the units like the LayerNorm constants. The representations:

- ViT: final-LayerNorm CLS token ``last_hidden_state[:, 0]`` (not the tanh pooler), 1024-d;
- DINOv2: ``pooler_output`` = LayerNorm(CLS), 1024-d;
- BLIP: ``vision_proj(last_hidden_state[:, 0])`` (the ITC image feature before normalising), 256-d;
  its text side (``text_encoder`` + ``text_proj`` on ``[CLS]``) gives the ITC text feature.

``tests/test_hf_models.py`` checks the units against the original HF models' own outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from residual_core.core.decompose import UnsupportedModelError
from residual_core.core.model import NoTextTowerError
from residual_core.models.specs import MODELS, ModelLoadError, get_spec

__all__ = [
    "BLIP_CONTEXT",
    "HFEncoder",
    "HFVisionTower",
    "HubTokenizer",
    "build_hf_model",
    "encoder_from_hf",
    "hf_preprocess",
    "load_hf_encoder",
    "real_config",
    "tower_from_hf",
]

BLIP_CONTEXT = 35
"""Text length of BLIP's retrieval evaluation (longer prompts are truncated)."""


@dataclass(frozen=True)
class _TowerSpec:
    """What an HF vision tower is, in open_clip's terms."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_width: int
    eps: float
    layer_scale: bool
    d_out: int | None  # None: no projection (the LayerNorm output is the embedding)
    proj_bias: bool


class HFVisionTower(VisionTransformer):
    """An open_clip ``VisionTransformer`` that holds a converted HF vision tower.

    Additions to open_clip: the patch convolution has a bias, and the projection may have one
    (``proj_bias``, added after ``@ proj``; :class:`residual_core.core.decompose.UnitProjector`
    splits it over the units). Built on the meta device and filled by :func:`tower_from_hf`.
    """

    proj_bias: nn.Parameter | None

    def __init__(self, spec: _TowerSpec):
        if spec.mlp_width % spec.width:
            # open_clip sizes the MLP as int(width * mlp_ratio); other widths would not round-trip
            raise UnsupportedModelError(
                f"MLP width {spec.mlp_width} is not a multiple of the width {spec.width}"
            )
        super().__init__(
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            width=spec.width,
            layers=spec.layers,
            heads=spec.heads,
            mlp_ratio=spec.mlp_width / spec.width,
            ls_init_value=1.0 if spec.layer_scale else None,
            output_dim=spec.d_out or spec.width,
            no_ln_pre=True,
            act_layer=nn.GELU,  # HF "gelu" is the exact erf GELU
        )
        self.spec = spec
        self.conv1 = nn.Conv2d(3, spec.width, spec.patch_size, spec.patch_size, bias=True)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = spec.eps
        if spec.d_out is None:
            self.proj = None
        bias = torch.zeros(spec.d_out) if spec.proj_bias and spec.d_out else None
        self.proj_bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch d_out"]:
        """The image embedding (open_clip's forward, plus the projection bias)."""
        out = super().forward(x)
        return out if self.proj_bias is None else out + self.proj_bias.to(out.dtype)


def _check_act(name: str, act: str) -> None:
    if act != "gelu":
        raise UnsupportedModelError(
            f"{name}: hidden_act={act!r}; only the exact 'gelu' is supported"
        )


def _qkv(attn: nn.Module, width: int) -> tuple[Tensor, Tensor]:
    """Packed ``in_proj`` weight and bias from separate q/k/v projections (missing bias → 0)."""
    projections = [attn.q_proj, attn.k_proj, attn.v_proj]
    weight = torch.cat([p.weight for p in projections])
    bias = torch.cat([p.bias if p.bias is not None else torch.zeros(width, device=weight.device)
                      for p in projections])
    return weight, bias


def _block_state(
    prefix: str, ln_1: nn.Module, qkv: tuple[Tensor, Tensor], out: nn.Linear, ln_2: nn.Module,
    fc1: nn.Linear, fc2: nn.Linear, ls: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    state = {
        f"{prefix}.ln_1.weight": ln_1.weight, f"{prefix}.ln_1.bias": ln_1.bias,
        f"{prefix}.attn.in_proj_weight": qkv[0], f"{prefix}.attn.in_proj_bias": qkv[1],
        f"{prefix}.attn.out_proj.weight": out.weight, f"{prefix}.attn.out_proj.bias": out.bias,
        f"{prefix}.ln_2.weight": ln_2.weight, f"{prefix}.ln_2.bias": ln_2.bias,
        f"{prefix}.mlp.c_fc.weight": fc1.weight, f"{prefix}.mlp.c_fc.bias": fc1.bias,
        f"{prefix}.mlp.c_proj.weight": fc2.weight, f"{prefix}.mlp.c_proj.bias": fc2.bias,
    }
    if ls is not None:
        state[f"{prefix}.ls_1.gamma"], state[f"{prefix}.ls_2.gamma"] = ls
    return state


def _positions(embeddings: nn.Module, native: Tensor, grid: int, size: int) -> Tensor:
    """Position embeddings at input ``size``, by the HF module's own interpolation method."""
    n_tokens = (size // grid) ** 2 + 1
    if native.shape[1] == n_tokens:
        return native[0]
    dummy = torch.zeros(1, n_tokens, native.shape[-1], device=native.device, dtype=native.dtype)
    return embeddings.interpolate_pos_encoding(dummy, size, size)[0]


def _convert_vit(model: nn.Module, size: int) -> tuple[_TowerSpec, dict[str, Tensor]]:
    cfg = model.config
    _check_act("ViT", cfg.hidden_act)
    emb = model.embeddings
    patch = emb.patch_embeddings.projection
    spec = _TowerSpec(size, patch.kernel_size[0], cfg.hidden_size, len(model.layers),
                      cfg.num_attention_heads, cfg.intermediate_size, cfg.layer_norm_eps,
                      False, None, False)
    state = {"conv1.weight": patch.weight, "conv1.bias": patch.bias,
             "class_embedding": emb.cls_token[0, 0],
             "positional_embedding": _positions(emb, emb.position_embeddings, spec.patch_size,
                                                size),
             "ln_post.weight": model.layernorm.weight, "ln_post.bias": model.layernorm.bias}
    for i, layer in enumerate(model.layers):
        attn = layer.attention
        state |= _block_state(f"transformer.resblocks.{i}", layer.layernorm_before,
                              _qkv(attn, spec.width), attn.o_proj, layer.layernorm_after,
                              layer.mlp.fc1, layer.mlp.fc2)
    return spec, state


def _convert_dinov2(model: nn.Module, size: int) -> tuple[_TowerSpec, dict[str, Tensor]]:
    cfg = model.config
    _check_act("DINOv2", cfg.hidden_act)
    if cfg.use_swiglu_ffn:
        raise UnsupportedModelError("DINOv2 with a SwiGLU FFN (dinov2-giant) is not supported")
    emb = model.embeddings
    patch = emb.patch_embeddings.projection
    layers = list(model.encoder.layer)
    spec = _TowerSpec(size, patch.kernel_size[0], cfg.hidden_size, len(layers),
                      cfg.num_attention_heads, layers[0].mlp.fc1.out_features,
                      cfg.layer_norm_eps, True, None, False)
    state = {"conv1.weight": patch.weight, "conv1.bias": patch.bias,
             "class_embedding": emb.cls_token[0, 0],
             "positional_embedding": _positions(emb, emb.position_embeddings, spec.patch_size,
                                                size),
             "ln_post.weight": model.layernorm.weight, "ln_post.bias": model.layernorm.bias}
    for i, layer in enumerate(layers):
        attn = layer.attention
        state |= _block_state(f"transformer.resblocks.{i}", layer.norm1, _qkv(attn, spec.width),
                              attn.o_proj, layer.norm2, layer.mlp.fc1, layer.mlp.fc2,
                              (layer.layer_scale1.lambda1, layer.layer_scale2.lambda1))
    return spec, state


def _convert_blip(model: nn.Module, size: int) -> tuple[_TowerSpec, dict[str, Tensor]]:
    vision = model.vision_model
    cfg = vision.config
    _check_act("BLIP", cfg.hidden_act)
    emb = vision.embeddings
    proj = model.vision_proj
    spec = _TowerSpec(size, emb.patch_size, cfg.hidden_size, len(vision.encoder.layers),
                      cfg.num_attention_heads, cfg.intermediate_size, cfg.layer_norm_eps,
                      False, proj.out_features, proj.bias is not None)
    state = {"conv1.weight": emb.patch_embedding.weight, "conv1.bias": emb.patch_embedding.bias,
             "class_embedding": emb.class_embedding[0, 0],
             "positional_embedding": _positions(emb, emb.position_embedding, spec.patch_size,
                                                size),
             "ln_post.weight": vision.post_layernorm.weight,
             "ln_post.bias": vision.post_layernorm.bias,
             "proj": proj.weight.T}
    if proj.bias is not None:
        state["proj_bias"] = proj.bias
    for i, layer in enumerate(vision.encoder.layers):
        attn = layer.self_attn
        state |= _block_state(f"transformer.resblocks.{i}", layer.layer_norm1,
                              (attn.qkv.weight, attn.qkv.bias), attn.projection,
                              layer.layer_norm2, layer.mlp.fc1, layer.mlp.fc2)
    return spec, state


_CONVERTERS: dict[str, Callable[[nn.Module, int], tuple[_TowerSpec, dict[str, Tensor]]]] = {
    "ViTModel": _convert_vit,
    "Dinov2Model": _convert_dinov2,
    "BlipForImageTextRetrieval": _convert_blip,
}


@torch.no_grad()
def tower_from_hf(model: nn.Module, image_size: int | None = None) -> HFVisionTower:
    """Convert an HF vision model into an :class:`HFVisionTower` with copied weights.

    Args:
        model: A ``ViTModel``, ``Dinov2Model`` or ``BlipForImageTextRetrieval``.
        image_size: Input size the tower will take (square); position embeddings are
            interpolated to it once, with the HF model's own method. Default: the model's
            configured size (224 for DINOv2, whose checkpoints are configured at 518).

    Returns:
        The tower in eval mode, on the model's device and in float32; its tensors share storage
        with the model's float32 weights where no reshaping was needed.

    Raises:
        UnsupportedModelError: For another model class or an unsupported variant (activation
            other than exact GELU, SwiGLU FFN, image size not a multiple of the patch size).
    """
    name = type(model).__name__
    if name not in _CONVERTERS:
        raise UnsupportedModelError(
            f"HF model class {name} is not supported; supported: {', '.join(_CONVERTERS)}"
        )
    if image_size is None:
        image_size = 224 if name == "Dinov2Model" else _config_size(model)
    spec, state = _CONVERTERS[name](model, image_size)
    if image_size % spec.patch_size:
        raise UnsupportedModelError(
            f"image_size {image_size} is not a multiple of the patch size {spec.patch_size}"
        )
    with torch.device("meta"):
        tower = HFVisionTower(spec)
    # Every parameter comes from the HF weights (strict). Float32 tensors are shared, not copied
    # (a copy of a 300M-parameter tower costs seconds and doubles the memory while loading).
    tower.load_state_dict({k: v.detach().float() for k, v in state.items()}, strict=True,
                          assign=True)
    return tower.eval()


def _config_size(model: nn.Module) -> int:
    cfg = model.config.vision_config if hasattr(model.config, "vision_config") else model.config
    size = cfg.image_size
    return int(size if isinstance(size, int) else size[0])


class HFEncoder(nn.Module):
    """``LoadedModel.model`` for an HF encoder: open_clip-style ``encode_image``/``encode_text``.

    Attributes:
        visual: The converted vision tower (what the decomposition and fine-tuning use).
        text_encoder: BLIP's text transformer, or ``None`` for a vision-only encoder.
        text_proj: BLIP's text projection to the shared 256-d space, or ``None``.
        source: The hub repository id (for messages).
    """

    def __init__(
        self,
        visual: HFVisionTower,
        *,
        text_encoder: nn.Module | None = None,
        text_proj: nn.Module | None = None,
        pad_token_id: int = 0,
        source: str = "",
    ):
        super().__init__()
        self.visual = visual
        self.text_encoder = text_encoder
        self.text_proj = text_proj
        self.pad_token_id = pad_token_id
        self.source = source

    @property
    def has_text(self) -> bool:
        """Whether there is a text tower (else zero-shot uses the class-mean classifier)."""
        return self.text_encoder is not None

    def encode_image(
        self, image: Float[Tensor, "batch 3 height width"], normalize: bool = False
    ) -> Float[Tensor, "batch d_out"]:
        """The image embedding (unnormalised unless ``normalize``)."""
        out = self.visual(image)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(
        self, text: Int[Tensor, "batch context"], normalize: bool = False
    ) -> Float[Tensor, "batch d_out"]:
        """BLIP's ITC text feature: ``text_proj`` of the ``[CLS]`` output (padding masked).

        Raises:
            NoTextTowerError: For a vision-only encoder.
        """
        if self.text_encoder is None:
            raise NoTextTowerError(
                f"{self.source or 'this encoder'} has no text tower; zero-shot classifiers come "
                "from class means of train-split image embeddings "
                "(residual_core.core.zeroshot.class_mean_classifier)"
            )
        mask = (text != self.pad_token_id).long()
        hidden = self.text_encoder(input_ids=text, attention_mask=mask).last_hidden_state
        out = self.text_proj(hidden[:, 0])
        return F.normalize(out, dim=-1) if normalize else out

    def forward(self, image: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch d_out"]:
        """Same as :meth:`encode_image`."""
        return self.encode_image(image)


class HubTokenizer:
    """BLIP's BERT tokenizer from the hub, loaded on first use: texts → padded input ids.

    Args:
        repo: Hub repository holding the tokenizer files.
        context_length: Longer texts are truncated.
        tokenizer: An already loaded HF tokenizer (skips the hub).
    """

    def __init__(self, repo: str, context_length: int = BLIP_CONTEXT, tokenizer: Any = None):
        self.repo = repo
        self.context_length = context_length
        self._tokenizer = tokenizer

    def _load(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.repo)
            except Exception as err:
                raise ModelLoadError(_offline_message(self.repo, "tokenizer", err)) from err
        return self._tokenizer

    def __call__(self, texts: Sequence[str]) -> Int[Tensor, "batch context"]:
        """Token ids padded to the longest text of the batch (pad id 0)."""
        return self._load()(list(texts), padding="longest", truncation=True,
                            max_length=self.context_length, return_tensors="pt")["input_ids"]

    def __repr__(self) -> str:
        return f"HubTokenizer({self.repo!r}, context_length={self.context_length})"


class _NoTextTokenizer:
    """The tokenizer slot of a vision-only encoder: refuses, saying what to do instead."""

    def __init__(self, key: str, repo: str):
        self.key, self.repo = key, repo

    def __call__(self, texts: Sequence[str]) -> Tensor:
        raise NoTextTowerError(
            f"{self.key!r} ({self.repo}) has no text tower, so it cannot encode text; its "
            "zero-shot classifier is the class mean of train-split image embeddings "
            "(build_classifier(..., train_features=..., train_labels=...))"
        )

    def __repr__(self) -> str:
        return f"_NoTextTokenizer({self.key!r})"


def hf_preprocess(key: str) -> Callable[[Any], Float[Tensor, "3 height width"]]:
    """PIL image → normalised tensor, as the repository's HF image processor does it.

    Built from the repositories' ``preprocessor_config.json`` values (no download):
    ViT resize to 224² bilinear, mean = std = 0.5; DINOv2 (``BitImageProcessor``) short side to
    256 bicubic, centre crop 224, ImageNet mean/std; BLIP resize to 384² bicubic, OpenAI CLIP
    mean/std. Images are converted to RGB first (grey datasets).
    """
    from torchvision import transforms as T

    rgb = T.Lambda(_to_rgb)
    if key == "vit_l":
        steps = [rgb, T.Resize((224, 224), T.InterpolationMode.BILINEAR)]
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    elif key == "dinov2_l":
        steps = [rgb, T.Resize(256, T.InterpolationMode.BICUBIC), T.CenterCrop(224)]
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    elif key == "blip_l_flickr":
        steps = [rgb, T.Resize((384, 384), T.InterpolationMode.BICUBIC)]
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    else:
        raise KeyError(f"no HF preprocessing for {key!r}; keys: {', '.join(_hf_keys())}")
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB") if hasattr(image, "convert") else image


def _hf_keys() -> list[str]:
    return [k for k, spec in MODELS.items() if spec.source == "hf"]


def real_config(key: str) -> Any:
    """The HF config of a key with the checkpoint's real sizes (its :class:`HFVision`), offline.

    ViT-L/16: 24 layers, 16 heads, width 1024, 224 px, eps 1e-12. DINOv2-L: 24 × 16 × 1024,
    patch 14, configured at 518 px, LayerScale, eps 1e-6. BLIP-L ITM: vision 24 × 16 × 1024 at
    384 px (eps 1e-5), BERT-base text tower with 1024-d cross-attention, 256-d ITC projections.
    """
    from transformers import BlipConfig, Dinov2Config, ViTConfig

    spec = get_spec(key, "hf")
    v = spec.hf
    large = dict(hidden_size=v.width, num_hidden_layers=v.layers, num_attention_heads=v.heads)
    if v.model_class == "ViTModel":
        return ViTConfig(**large, intermediate_size=v.mlp_width, image_size=v.config_size,
                         patch_size=v.patch_size)
    if v.model_class == "Dinov2Model":
        return Dinov2Config(**large, mlp_ratio=v.mlp_width // v.width, image_size=v.config_size,
                            patch_size=v.patch_size, layerscale_value=1.0)
    return BlipConfig(
        vision_config=dict(**large, intermediate_size=v.mlp_width, image_size=v.config_size,
                           patch_size=v.patch_size),
        text_config=dict(encoder_hidden_size=v.width, num_attention_heads=12),
        image_text_hidden_size=spec.d_out,
    )


def _model_class(key: str) -> Any:
    import transformers

    return getattr(transformers, get_spec(key, "hf").hf.model_class)


def _class_kwargs(key: str) -> dict[str, Any]:
    # ViT's tanh pooler is not the representation (the LayerNorm CLS token is): leave it out.
    return {"add_pooling_layer": False} if get_spec(key).hf.model_class == "ViTModel" else {}


def build_hf_model(key: str, config: Any = None) -> nn.Module:
    """The key's HF model class with random weights (``config`` default: :func:`real_config`)."""
    cls = _model_class(key)
    config = real_config(key) if config is None else config
    return cls(config, **_class_kwargs(key)).eval()


def _offline_message(repo: str, what: str, err: Exception) -> str:
    return (
        f"could not load the {what} of {repo!r} with transformers: the files are downloaded from "
        "the Hugging Face hub on first use, so this needs internet access or a cache that "
        f"already holds them. Fetch them once with `hf download {repo}` (older huggingface_hub: "
        f"`huggingface-cli download {repo}`), into $HF_HOME (default ~/.cache/huggingface), "
        f"then load offline. Original error: {type(err).__name__}: {err}"
    )


def encoder_from_hf(model: nn.Module, key: str, image_size: int | None = None) -> HFEncoder:
    """Wrap a loaded or random HF model of ``key`` as an :class:`HFEncoder` (eval mode)."""
    spec = get_spec(key, "hf")
    visual = tower_from_hf(model, spec.image_size if image_size is None else image_size)
    if spec.has_text:
        pad = model.config.text_config.pad_token_id
        return HFEncoder(visual, text_encoder=model.text_encoder, text_proj=model.text_proj,
                         pad_token_id=0 if pad is None else pad, source=spec.arch).eval()
    return HFEncoder(visual, source=spec.arch).eval()


def load_hf_encoder(
    key: str, pretrained: bool, device: str | torch.device = "cpu"
) -> tuple[HFEncoder, Callable[[Sequence[str]], Tensor], str | None]:
    """Load (or build with random weights) the HF encoder of a registry key.

    Args:
        key: A key of :data:`residual_core.models.specs.MODELS` whose source is ``"hf"``.
        pretrained: Download/read the hub checkpoint; ``False`` builds the real architecture
            with random weights from :func:`real_config` (offline).
        device: Where to put the encoder.

    Returns:
        The encoder, its tokenizer (refusing for vision-only encoders) and the hub commit hash
        of the weights (``None`` for random weights or when unknown).

    Raises:
        ModelLoadError: If the weights cannot be fetched (offline, naming the repository and
            how to download it).
    """
    spec = get_spec(key, "hf")
    repo = spec.arch
    commit = None
    if pretrained:
        cls = _model_class(key)
        try:
            model, info = cls.from_pretrained(repo, output_loading_info=True,
                                              **_class_kwargs(key))
        except Exception as err:
            raise ModelLoadError(_offline_message(repo, "weights", err)) from err
        # transformers fills weights the checkpoint lacks with random ones and only warns.
        missing = list(info.get("missing_keys", []))
        if missing:
            raise ModelLoadError(
                f"{repo}: the checkpoint does not provide {len(missing)} weights of "
                f"{cls.__name__} (e.g. {missing[:3]}), which would stay random; is this the "
                "checkpoint of that key, and is transformers the pinned version?"
            )
        commit = getattr(model.config, "_commit_hash", None)
    else:
        model = build_hf_model(key)
    encoder = encoder_from_hf(model.float().eval(), key).to(device)
    if spec.has_text:
        tokenizer = HubTokenizer(repo)
        if pretrained:
            tokenizer._load()  # the weights came from the hub, so the tokenizer can too
    else:
        tokenizer = _NoTextTokenizer(key, repo)
    return encoder, tokenizer, commit
