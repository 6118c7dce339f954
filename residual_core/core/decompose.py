"""Exact decomposition of an open_clip ViT image embedding into per-unit direct contributions.

A pre-LN ViT writes its CLS residual stream as ``s = e + Σ_l (a_l + m_l)``: the embedding after
``ln_pre``, then per layer the attention output (a sum over heads plus the out-projection bias)
and the MLP output. The image embedding is ``LN_post(s) @ P``. LayerNorm is affine in ``s`` once
the per-sample statistics ``μ(s)`` (mean) and ``σ(s)`` (scale) are fixed, so

    LN_post(s) @ P = Σ_u [ γ ⊙ x_u / σ − (γ ⊙ μ / σ − β) / N_u ] @ P

exactly, where the constants are split over the units (``N_u = 2L+1`` for the embedding and the
MLPs, ``(2L+1)·H`` for a head: one share per residual write, an attention share split over its
heads, like the out-projection bias). A tower with a projection bias (``visual.proj_bias``, e.g.
BLIP's ``vision_proj`` in :mod:`residual_core.models.hf`) gets it split in the same shares.

The LayerNorm's mean removal can be distributed in two exact ways (``centering``):

- ``"shared"`` (default, the paper authors' form, as in their tracer and in clip_text_span): the
  whole stream's mean ``μ(s)`` is split evenly over the units like β,
  ``γ ⊙ x_u / σ − (γ ⊙ μ / σ − β) / N_u``;
- ``"per-unit"`` (TransformerLens's ``apply_ln_to_stack``): each unit's own write is centred,
  ``γ ⊙ (x_u − mean(x_u)) / σ + β / N_u``, so no unit carries another unit's mean.

Sums are identical; single units differ by ``(mean(x_u) − μ / N_u) / σ · (γ @ P)``, a per-sample
multiple of one fixed direction, which moves per-unit statistics (norms, PCA, intrinsic
dimension, TextSpan) by a few percent.

The forward pass is re-run block by block from the model's own modules and weights (nothing is
patched or hooked, so the model is never modified): every block computes exactly what open_clip
computes, and additionally keeps the per-head attention outputs of the CLS query, which the
fused ``nn.MultiheadAttention`` call would otherwise hide. Only the CLS token's unit outputs are
kept; per-token activations live for one block at a time, as in the plain forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from residual_core.core.errors import InputError, ResidualError
from residual_core.core.units import UnitLayout, Units, parse_label

__all__ = [
    "CENTERINGS",
    "Centering",
    "RawUnits",
    "UnitProjector",
    "UnsupportedModelError",
    "check_centering",
    "check_images",
    "check_supported",
    "decompose",
    "decompose_raw",
    "get_visual",
]


class UnsupportedModelError(ResidualError, ValueError):
    """The model has a feature the exact decomposition does not cover."""


Centering = Literal["shared", "per-unit"]
CENTERINGS: tuple[str, ...] = get_args(Centering)


def check_centering(centering: str) -> Centering:
    """Return ``centering`` if it is a known choice.

    Raises:
        InputError: Naming the bad value and the valid choices.
    """
    if centering not in CENTERINGS:
        raise InputError(f"centering={centering!r} is not one of {list(CENTERINGS)}")
    return centering  # type: ignore[return-value]


@dataclass
class RawUnits:
    """Storage-friendly form: unit outputs before folding ``ln_post`` and projecting.

    Heads are kept as their ``d_head`` outputs (before the out-projection), the embedding and
    MLPs as their residual-stream writes, plus the per-sample LayerNorm statistics ``sigma``
    and ``mu``. A :class:`UnitProjector` of the same model turns them into
    :class:`~residual_core.core.units.Units` exactly.

    Attributes:
        embed: CLS embedding after ``ln_pre``.
        mlp: CLS output of every MLP (after LayerScale).
        heads: CLS-query attention output of every head (before the out-projection).
        sigma: ``sqrt(var(s) + eps)`` of the final CLS stream ``s``.
        mu: ``mean(s)`` of the final CLS stream (over its ``d_model`` features).
    """

    embed: Float[Tensor, "batch d_model"]
    mlp: Float[Tensor, "batch layer d_model"]
    heads: Float[Tensor, "batch layer head d_head"]
    sigma: Float[Tensor, " batch"]
    mu: Float[Tensor, " batch"]

    def __len__(self) -> int:
        return self.embed.shape[0]

    def to(self, *args, **kwargs) -> RawUnits:
        """Move or cast every field, like :meth:`torch.Tensor.to`."""
        return RawUnits(*(t.to(*args, **kwargs) for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The five fields in declaration order."""
        return self.embed, self.mlp, self.heads, self.sigma, self.mu

    @staticmethod
    def cat(parts: Sequence[RawUnits]) -> RawUnits:
        """Concatenate along the batch dimension."""
        return RawUnits(*(torch.cat(ts) for ts in zip(*(p.tensors() for p in parts), strict=True)))


def get_visual(model: nn.Module) -> nn.Module:
    """Return the vision tower of an open_clip model (or the tower itself)."""
    return model.visual if hasattr(model, "visual") else model


def check_supported(model: nn.Module) -> UnitLayout:
    """Check that the decomposition is exact for this model and read its sizes.

    Args:
        model: An open_clip ``CLIP``/``CustomTextCLIP`` or its ``VisionTransformer``.

    Returns:
        The model's :class:`UnitLayout`.

    Raises:
        UnsupportedModelError: Naming the unsupported feature (non-ViT tower, attention pooling,
            final LN after pooling, pooling other than the CLS token, register tokens, custom
            attention blocks, cross-attention, active patch dropout or attention dropout).
    """
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    visual = get_visual(model)
    name = type(visual).__name__
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedModelError(
            f"non-ViT vision tower {name}: only open_clip VisionTransformer towers are supported"
        )
    if visual.attn_pool is not None:
        raise UnsupportedModelError("attention pooling (attentional_pool) is not supported")
    if visual.final_ln_after_pool:
        raise UnsupportedModelError("final_ln_after_pool=True is not supported")
    if visual.pool_type != "tok":
        raise UnsupportedModelError(
            f"pool_type={visual.pool_type!r} is not supported; only 'tok' (the CLS token)"
        )
    n_prefix = visual.positional_embedding.shape[0] - visual.grid_size[0] * visual.grid_size[1]
    if n_prefix != 1 or any(hasattr(visual, a) for a in ("reg_token", "register_tokens")):
        raise UnsupportedModelError("register / extra prefix tokens are not supported")
    if visual.training and getattr(visual.patch_dropout, "prob", 0.0) > 0:
        raise UnsupportedModelError("patch dropout is active (training mode): call model.eval()")

    blocks = list(visual.transformer.resblocks)
    for i, block in enumerate(blocks):
        if type(block) is not ResidualAttentionBlock:
            raise UnsupportedModelError(
                f"block {i} is {type(block).__name__} (qk_norm / scaled cosine attention / "
                "head scaling); only ResidualAttentionBlock is supported"
            )
        if hasattr(block, "ln_1_kv"):
            raise UnsupportedModelError(f"block {i} is a cross-attention block")
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise UnsupportedModelError(f"block {i} attention is not a packed MultiheadAttention")
        if attn.bias_k is not None or attn.add_zero_attn:
            raise UnsupportedModelError(f"block {i} attention uses bias_k/add_zero_attn")
        if attn.training and attn.dropout > 0:
            raise UnsupportedModelError(f"block {i} attention dropout is active: call model.eval()")

    d_model = visual.conv1.out_channels
    n_heads = blocks[0].attn.num_heads
    d_out = d_model if visual.proj is None else visual.proj.shape[1]
    return UnitLayout(len(blocks), n_heads, d_model, d_model // n_heads, d_out)


def _block_forward(
    block: nn.Module, x: Float[Tensor, "batch token d_model"], n_heads: int, cls_only: bool
) -> tuple[Tensor, Float[Tensor, "batch head d_head"], Float[Tensor, "batch d_model"]]:
    """One ``ResidualAttentionBlock``, exposing the CLS query's per-head outputs and MLP output.

    With ``cls_only`` (the last block) only the CLS token's output is computed: nothing after
    the last block reads the other tokens.
    """
    attn = block.attn
    batch, n_tokens, d_model = x.shape
    d_head = d_model // n_heads
    h = block.ln_1(x)
    if cls_only:
        w_q, w_kv = attn.in_proj_weight.split([d_model, 2 * d_model])
        b_q, b_kv = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.split(
            [d_model, 2 * d_model]
        )
        q = F.linear(h[:, :1], w_q, b_q).view(batch, 1, n_heads, d_head).transpose(1, 2)
        k, v = F.linear(h, w_kv, b_kv).view(batch, n_tokens, 2, n_heads, d_head).permute(
            2, 0, 3, 1, 4
        )
        x = x[:, :1]
    else:
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(batch, n_tokens, 3, n_heads, d_head).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v)  # (batch, head, token, d_head)
    # Copies, not views: a view of the CLS row would keep every token's attention and MLP
    # output alive until the last block (2 × layers × batch × tokens × width: 6 GB on ViT-L).
    z_cls = o[:, :, 0].clone()
    o = o.transpose(1, 2).reshape(batch, -1, d_model)
    x = x + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
    m = block.ls_2(block.mlp(block.ln_2(x)))
    return x + m, z_cls, m[:, 0].clone()


def check_images(
    model: nn.Module, images: Tensor
) -> Float[Tensor, "batch 3 height width"]:
    """The images as the vision tower takes them, or a clear error naming what is accepted.

    Accepted: a floating tensor ``(batch, 3, H, W)`` with at least one image, ``H × W`` the
    tower's input size, on the tower's device, i.e. images through the model's preprocessing
    (``loaded.preprocess``). A floating dtype other than the tower's is cast to it (float64
    images for a float32 tower, float32 for a float16 one), except under ``torch.autocast``,
    which casts itself. Integer images (uint8 pixels) are refused: they are not preprocessed.

    Raises:
        InputError: Naming the shape, dtype or device given and the one expected.
    """
    visual = get_visual(model)
    size = tuple(getattr(visual, "image_size", ()))
    weight = visual.conv1.weight
    want = f"(batch, 3, {size[0]}, {size[1]})" if len(size) == 2 else "(batch, 3, H, W)"
    preprocess = "pass images through the model's preprocessing (loaded.preprocess)"
    if not isinstance(images, Tensor):
        raise InputError(f"images must be a tensor {want}, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        hint = "; a single image needs a batch dimension: images[None]" if images.ndim == 3 \
            else ""
        raise InputError(f"images must be {want} (batch, RGB channels, height, width), got "
                         f"shape {tuple(images.shape)}{hint}")
    if images.shape[0] == 0:
        raise InputError("images is an empty batch (0 images); give at least one image")
    if len(size) == 2 and tuple(images.shape[2:]) != size:
        raise InputError(f"images are {images.shape[2]}×{images.shape[3]} but this model "
                         f"takes {size[0]}×{size[1]}: {preprocess}")
    if not images.is_floating_point():
        raise InputError(f"images must be floating point, got {images.dtype} (raw pixels?): "
                         f"{preprocess}")
    if images.device != weight.device:
        raise InputError(f"images are on {images.device}, the model on {weight.device}: move "
                         f"them with images.to({str(weight.device)!r})")
    if images.dtype != weight.dtype and not torch.is_autocast_enabled(images.device.type):
        images = images.to(weight.dtype)
    return images


def decompose_raw(
    model: nn.Module, images: Float[Tensor, "batch 3 height width"], *, requires_grad: bool = False
) -> RawUnits:
    """Run the vision tower and keep every unit's CLS output in raw form.

    Runs in the dtype/autocast context of the caller (e.g. under ``torch.autocast``).

    Args:
        model: An open_clip CLIP model or its vision tower (see :func:`check_supported`).
        images: Preprocessed images on the model's device.
        requires_grad: Keep the autograd graph (default: run under ``torch.no_grad``).

    Returns:
        The raw unit outputs; project them with :class:`UnitProjector`.

    Raises:
        InputError: For images the model cannot take (see :func:`check_images`).
    """
    layout = check_supported(model)
    visual = get_visual(model)
    images = check_images(model, images)
    with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
        x = visual._embeds(images)
        embed = x[:, 0]
        heads, mlps = [], []
        blocks = list(visual.transformer.resblocks)
        for i, block in enumerate(blocks):
            x, z_cls, m_cls = _block_forward(block, x, layout.n_heads, i == len(blocks) - 1)
            heads.append(z_cls)
            mlps.append(m_cls)
        # Statistics in at least float32 (fp16/bf16 streams), float64 for a float64 model.
        s = x[:, 0].to(torch.promote_types(x.dtype, torch.float32))
        sigma = torch.sqrt(s.var(-1, unbiased=False) + visual.ln_post.eps)
    return RawUnits(embed, torch.stack(mlps, 1), torch.stack(heads, 1), sigma, s.mean(-1))


class UnitProjector(nn.Module):
    """Folds ``ln_post`` and the projection into per-unit linear maps: raw form → units.

    Built once per model from its weights; holds copies (float32, or float64 for a float64
    model), so it can be saved with an encoding store and used without the model. The
    ``centering`` (see the module docstring) is fixed at construction.
    """

    resid_map: Float[Tensor, "d_model d_out"]
    head_maps: Float[Tensor, "layer head d_head d_out"]
    head_bias: Float[Tensor, "layer d_out"]
    beta_out: Float[Tensor, " d_out"]
    gamma_out: Float[Tensor, " d_out"]

    def __init__(self, layout: UnitLayout, centering: str = "shared",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.layout = layout
        self.centering = check_centering(centering)
        n, h, dm, dh, do = (layout.n_layers, layout.n_heads, layout.d_model, layout.d_head,
                            layout.d_out)
        self.register_buffer("resid_map", torch.zeros(dm, do, dtype=dtype))
        self.register_buffer("head_maps", torch.zeros(n, h, dh, do, dtype=dtype))
        self.register_buffer("head_bias", torch.zeros(n, do, dtype=dtype))
        self.register_buffer("beta_out", torch.zeros(do, dtype=dtype))
        self.register_buffer("gamma_out", torch.zeros(do, dtype=dtype))

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, centering: str = "shared") -> UnitProjector:
        """Build the projector of an open_clip ViT (see :func:`check_supported`).

        Args:
            model: The model (or its vision tower).
            centering: ``"shared"`` (the authors' form, default) or ``"per-unit"``.
        """
        check_centering(centering)
        layout = check_supported(model)
        visual = get_visual(model)
        dev = visual.conv1.weight.device
        dtype = torch.float64 if visual.conv1.weight.dtype == torch.float64 else torch.float32
        dm, n_heads, dh = layout.d_model, layout.n_heads, layout.d_head
        eye = torch.eye(dm, device=dev, dtype=dtype)
        proj = eye if visual.proj is None else visual.proj.to(dtype)
        gamma = _ln_param(visual.ln_post.weight, dm, 1.0, dev, dtype)
        beta = _ln_param(visual.ln_post.bias, dm, 0.0, dev, dtype)
        gamma_proj = gamma[:, None] * proj  # x ↦ (x ⊙ γ) @ P, as a matrix
        # Per-unit centring folds C = I − 11ᵀ/d into the map; shared centring subtracts the
        # stream's mean as a constant share instead (see ``forward``).
        resid_map = (eye - 1.0 / dm) @ gamma_proj if centering == "per-unit" else gamma_proj

        head_maps, head_bias = [], []
        for block in visual.transformer.resblocks:
            ls = _layer_scale(block.ls_1, dm, dev, dtype)
            w_o = block.attn.out_proj.weight.to(dtype) * ls[:, None]  # (d_model, d_model)
            b_o = block.attn.out_proj.bias
            b_o = torch.zeros(dm, device=dev, dtype=dtype) if b_o is None else b_o.to(dtype) * ls
            # Head h reads columns h*dh:(h+1)*dh of W_O; its map is W_O[:, h]ᵀ @ resid_map.
            w_heads = w_o.T.reshape(n_heads, dh, dm)
            head_maps.append(w_heads @ resid_map)
            head_bias.append((b_o / n_heads) @ resid_map)

        projector = cls(layout, centering, dtype).to(dev)
        projector.resid_map.copy_(resid_map)
        projector.head_maps.copy_(torch.stack(head_maps))
        projector.head_bias.copy_(torch.stack(head_bias))
        # A projection bias (HF BLIP's vision_proj) is a constant like β @ P: same shares.
        proj_bias = getattr(visual, "proj_bias", None)
        beta_out = beta @ proj if proj_bias is None else beta @ proj + proj_bias.to(dtype)
        projector.beta_out.copy_(beta_out)
        projector.gamma_out.copy_(gamma @ proj)
        return projector

    @property
    def labels(self) -> list[str]:
        """Unit labels in the fixed order."""
        return self.layout.labels

    def _constant(
        self, sigma: Float[Tensor, " batch"], mu: Float[Tensor, " batch"], n_terms: int
    ) -> Float[Tensor, "batch d_out"]:
        """One unit's share of the constants: ``(β @ P − [μ/σ] γ @ P) / n_terms``."""
        const = self.beta_out.expand(sigma.shape[0], -1)
        if self.centering == "shared":
            const = const - (mu / sigma).to(self.beta_out.dtype)[:, None] * self.gamma_out
        return const / n_terms

    def project_unit(
        self,
        label: str,
        x: Float[Tensor, "batch d_in"],
        sigma: Float[Tensor, " batch"],
        mu: Float[Tensor, " batch"],
    ) -> Float[Tensor, "batch d_out"]:
        """Project one unit's raw output alone (``d_head`` for a head, ``d_model`` otherwise).

        Gives the same numbers as the corresponding column of :meth:`forward`, without
        touching the other units (used to read single units from an encoding store).
        """
        layout = self.layout
        layout.index(label)  # validates the label
        unit = parse_label(label)
        n_writes = 2 * layout.n_layers + 1
        dtype = self.resid_map.dtype
        inv_sigma = (1.0 / sigma.to(dtype))[:, None]
        with torch.autocast(x.device.type, enabled=False):
            if unit.kind != "head":
                out = (x.to(dtype) @ self.resid_map) * inv_sigma
                return out + self._constant(sigma, mu, n_writes)
            layer, head = unit.layer, unit.head
            out = (x.to(dtype) @ self.head_maps[layer, head] + self.head_bias[layer]) * inv_sigma
            return out + self._constant(sigma, mu, n_writes * layout.n_heads)

    def forward(self, raw: RawUnits) -> Units:
        """Project raw unit outputs to their contributions to the image embedding."""
        with torch.autocast(raw.embed.device.type, enabled=False):
            n_layers, n_heads = self.layout.n_layers, self.layout.n_heads
            n_writes = 2 * n_layers + 1
            dtype = self.resid_map.dtype
            inv_sigma = (1.0 / raw.sigma.to(dtype))[:, None, None]
            resid = torch.cat([raw.embed[:, None], raw.mlp], 1).to(dtype) @ self.resid_map
            resid = resid * inv_sigma + self._constant(raw.sigma, raw.mu, n_writes)[:, None]
            heads = torch.einsum("blhk,lhko->blho", raw.heads.to(dtype), self.head_maps)
            heads = (heads + self.head_bias[:, None]).flatten(1, 2) * inv_sigma
            heads = heads + self._constant(raw.sigma, raw.mu, n_writes * n_heads)[:, None]
            units = torch.cat([resid, heads], 1)
        return Units.full(units, self.layout)


def _ln_param(
    p: Tensor | None, dim: int, default: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    return torch.full((dim,), default, device=device, dtype=dtype) if p is None else p.to(dtype)


def _layer_scale(ls: nn.Module, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    gamma = getattr(ls, "gamma", None)
    return torch.ones(dim, device=device, dtype=dtype) if gamma is None else gamma.to(dtype)


def decompose(
    model: nn.Module,
    images: Float[Tensor, "batch 3 height width"],
    *,
    projector: UnitProjector | None = None,
    centering: str | None = None,
    requires_grad: bool = False,
) -> Units:
    """Decompose the image embedding into the direct contributions of every unit.

    ``decompose(model, x).sum()`` equals ``model.encode_image(x)`` (unnormalised) up to float
    rounding. The model is not modified.

    Args:
        model: An open_clip CLIP model or its vision tower (see :func:`check_supported`).
        images: Preprocessed images on the model's device.
        projector: A prebuilt :class:`UnitProjector` (saves rebuilding it on every batch).
        centering: How the final LayerNorm's mean is split over the units: ``"shared"`` (the
            paper authors' form, the default) or ``"per-unit"`` (see the module docstring).
            Default: the projector's, else ``"shared"``.
        requires_grad: Keep the autograd graph (default: run under ``torch.no_grad``).

    Returns:
        The labelled :class:`~residual_core.core.units.Units`, data ``(batch, unit, d_out)`` in
        float32 (float64 for a float64 model).

    Example:
        >>> units = decompose(model, images)
        >>> units["L11H3"].shape                       # (batch, d_out)
        >>> units[["L11H3", "L11.mlp"]].data.shape     # (batch, 2, d_out)
    """
    if projector is None:
        projector = UnitProjector.from_model(model, centering or "shared")
    elif centering is not None and check_centering(centering) != projector.centering:
        raise ValueError(
            f"centering={centering!r} differs from the given projector's "
            f"({projector.centering!r}); pass one or the other"
        )
    elif projector.layout != check_supported(model):
        raise InputError(f"the projector is another model's ({projector.layout}), not this "
                         f"model's ({check_supported(model)}): build it with "
                         "UnitProjector.from_model(model)")
    raw = decompose_raw(model, images, requires_grad=requires_grad)
    with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
        return projector(raw)
