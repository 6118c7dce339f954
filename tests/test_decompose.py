"""The decomposition is exact, per unit and in sum, and leaves the model untouched."""

from __future__ import annotations

import io

import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from residual_core.core.decompose import (
    RawUnits,
    UnitProjector,
    UnsupportedModelError,
    check_supported,
    decompose,
    decompose_raw,
)
from residual_core.core.units import unit_labels

REL_TOL = 1e-5


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter: zero-initialised biases and unit LN gains would hide bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_vit(**overrides) -> VisionTransformer:
    cfg = dict(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_ratio=2.0,
               output_dim=24)
    cfg.update(overrides)
    return randomize_(VisionTransformer(**cfg))


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def _layer_norm(x: torch.Tensor, ln: nn.Module) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def _gelu(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(block.mlp.gelu, open_clip.model.QuickGELU):
        return x * torch.sigmoid(1.702 * x)
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


@torch.no_grad()
def reference_units(
    visual: VisionTransformer, x: torch.Tensor, centering: str = "shared"
) -> torch.Tensor:
    """Per-unit contributions recomputed in float64 from the weights alone (no model forward).

    Patch embedding by unfolding, explicit LayerNorms, softmax attention of every head for every
    token, MLPs with their activation: an independent route to every unit's residual write,
    then the final LayerNorm folded with the given centring of its mean.
    """
    d = visual.conv1.out_channels
    p = visual.conv1.kernel_size[0]
    x = x.double()
    patches = torch.nn.functional.unfold(x, p, stride=p).transpose(1, 2)  # (b, n, 3·p·p)
    tokens = patches @ visual.conv1.weight.double().reshape(d, -1).T
    cls = visual.class_embedding.double().expand(x.shape[0], 1, d)
    h = torch.cat([cls, tokens], 1) + visual.positional_embedding.double()
    if not isinstance(visual.ln_pre, nn.Identity):
        h = _layer_norm(h, visual.ln_pre)
    writes, head_writes = [h[:, 0]], []
    blocks = list(visual.transformer.resblocks)
    for block in blocks:
        n_heads = block.attn.num_heads
        dh = d // n_heads
        ls1 = getattr(block.ls_1, "gamma", torch.ones(d)).double()
        ls2 = getattr(block.ls_2, "gamma", torch.ones(d)).double()
        a = _layer_norm(h, block.ln_1)
        w, b = block.attn.in_proj_weight.double(), block.attn.in_proj_bias.double()
        q, k, v = (a @ w.T + b).split(d, dim=-1)
        w_o, b_o = block.attn.out_proj.weight.double(), block.attn.out_proj.bias.double()
        attn_out = 0
        for head in range(n_heads):
            sl = slice(head * dh, (head + 1) * dh)
            att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / dh**0.5, -1)
            out = ((att @ v[..., sl]) @ w_o[:, sl].T + b_o / n_heads) * ls1  # (b, tokens, d)
            head_writes.append(out[:, 0])
            attn_out = attn_out + out
        h = h + attn_out
        m = _layer_norm(h, block.ln_2) @ block.mlp.c_fc.weight.double().T
        m = _gelu(block, m + block.mlp.c_fc.bias.double())
        m = (m @ block.mlp.c_proj.weight.double().T + block.mlp.c_proj.bias.double()) * ls2
        writes.append(m[:, 0])
        h = h + m
    n_layers, n_heads = len(blocks), blocks[0].attn.num_heads
    stream = torch.stack(writes + head_writes, 1)  # embed, MLPs, heads (layer-major)
    s = stream.sum(1)
    torch.testing.assert_close(s, h[:, 0])  # the oracle's own bookkeeping
    sigma = torch.sqrt(s.var(-1, unbiased=False) + visual.ln_post.eps)[:, None, None]
    gamma, beta = visual.ln_post.weight.double(), visual.ln_post.bias.double()
    n_writes = 2 * n_layers + 1
    shares = torch.tensor([1 / n_writes] * (1 + n_layers) + [1 / (n_writes * n_heads)]
                          * (n_layers * n_heads), dtype=torch.float64)[:, None]
    if centering == "shared":  # γ ⊙ x_u/σ − (γ ⊙ μ/σ − β)/N_u
        mu = s.mean(-1)[:, None, None]
        folded = gamma * stream / sigma - shares * (gamma * mu / sigma - beta)
    else:  # γ ⊙ (x_u − mean(x_u))/σ + β/N_u
        folded = gamma * (stream - stream.mean(-1, keepdim=True)) / sigma + shares * beta
    return folded @ visual.proj.double()


def max_unit_err(units: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest per-unit error, relative to the norm of the sample's embedding."""
    return float(((units.double() - ref).norm(dim=-1) / ref.sum(1).norm(dim=-1)[:, None]).max())


def test_labels_order_and_count():
    labels = unit_labels(2, 3)
    assert labels == ["embed", "L0.mlp", "L1.mlp", "L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ls_init_value": 0.5},
        {"act_layer": open_clip.model.QuickGELU},
        {"no_ln_pre": True},
        {"layers": 3, "heads": 2, "width": 48},
    ],
    ids=["plain", "layerscale", "quickgelu", "no_ln_pre", "3x2"],
)
def test_tiny_configs_exact_sum_and_per_unit(overrides):
    visual = tiny_vit(**overrides)
    x = images(5, 32)
    dec = decompose(visual, x)
    layout = check_supported(visual)
    assert dec.data.shape == (5, layout.n_units, 24)
    assert list(dec.labels) == layout.labels
    with torch.no_grad():
        y = visual(x)
    err = max_rel_err(dec.total(), y)
    assert err <= REL_TOL, f"sum of units vs encode_image: max rel err {err:.2e}"
    for centering in ("shared", "per-unit"):
        units = decompose(visual, x, centering=centering).data
        err = max_unit_err(units, reference_units(visual, x, centering))
        assert err <= REL_TOL, f"{centering}: per-unit vs float64 oracle: max rel err {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-M-16-alt"])
@pytest.mark.parametrize("centering", ["shared", "per-unit"])
def test_per_unit_against_float64_oracle(name, centering):
    """Every unit against the weights-only oracle: 1e-6 of the embedding norm in float64."""
    model = randomize_(open_clip.create_model(name), seed=4)
    visual = model.visual
    if name == "ViT-M-16-alt":
        assert hasattr(visual.transformer.resblocks[0].ls_1, "gamma")  # LayerScale is real
    x = images(2, visual.image_size[0], seed=5)
    ref = reference_units(visual, x, centering)
    err32 = max_unit_err(decompose(visual, x, centering=centering).data, ref)
    assert err32 <= 1e-5, f"{name} float32 {centering}: max per-unit err {err32:.2e}"
    units64 = decompose(visual.double(), x.double(), centering=centering).data
    assert units64.dtype == torch.float64
    err64 = max_unit_err(units64, ref)
    assert err64 <= 1e-6, f"{name} float64 {centering}: max per-unit err {err64:.2e}"


def test_centrings_differ_per_unit_by_one_direction():
    """Same sum; per unit the difference is (mean(x_u) − μ/N_u)/σ times γ @ P."""
    visual = tiny_vit().double()
    x = images(4, 32).double()
    shared = decompose(visual, x, centering="shared").data
    per_unit = decompose(visual, x, centering="per-unit").data
    torch.testing.assert_close(shared.sum(1), per_unit.sum(1), atol=1e-12, rtol=1e-12)
    diff = shared - per_unit
    assert float(diff.norm(dim=-1).max()) > 1e-3  # they really differ per unit
    direction = (visual.ln_post.weight @ visual.proj).detach()
    resid = diff - (diff @ direction)[..., None] * direction / direction.dot(direction)
    assert float(resid.norm(dim=-1).max() / diff.norm(dim=-1).max()) < 1e-12


@pytest.mark.parametrize(("centering", "extra"), [("shared", 2), ("per-unit", 1)])
def test_head_outputs_span_d_head_plus_the_constants_directions(centering, extra):
    """A head spans its d_head values, its bias share scaled by 1/σ and, with shared centring,
    its share of μ/σ along γ @ P: the `rank_bound` of the intrinsic-dimension table."""
    visual = tiny_vit()  # d_head 16, d_out 24
    units = decompose(visual.double(), images(200, 32).double(), centering=centering)["L1H2"]
    s = torch.linalg.svdvals(units - units.mean(0))
    assert int((s > 1e-9 * s[0]).sum()) == 16 + extra


def test_unknown_centering_is_refused():
    visual = tiny_vit()
    with pytest.raises(ValueError, match=r"centering='mean'.*\['shared', 'per-unit'\]"):
        decompose(visual, images(1, 32), centering="mean")
    projector = UnitProjector.from_model(visual, "per-unit")
    with pytest.raises(ValueError, match="differs from the given projector"):
        decompose(visual, images(1, 32), projector=projector, centering="shared")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16-quickgelu", "ViT-M-16-alt"])
def test_real_open_clip_configs_exact(name):
    model = randomize_(open_clip.create_model(name), seed=3)
    x = images(2, model.visual.image_size[0])
    with torch.no_grad():
        y = model.encode_image(x)
    dec = decompose(model, x)
    layout = check_supported(model)
    assert layout.d_out == y.shape[-1] and dec.data.shape[1] == layout.n_units
    err = max_rel_err(dec.total(), y)
    assert err <= REL_TOL, f"{name}: max rel err {err:.2e}"
    if name == "ViT-M-16-alt":  # the LayerScale config: its gains must be real
        assert hasattr(model.visual.transformer.resblocks[0].ls_1, "gamma")


def test_raw_form_round_trip_is_bit_exact():
    visual = tiny_vit()
    x = images(4, 32)
    raw = decompose_raw(visual, x)
    assert raw.heads.shape == (4, 2, 4, 16) and raw.mlp.shape == (4, 2, 64)
    projector = UnitProjector.from_model(visual)
    buf = io.BytesIO()
    torch.save({"raw": raw.tensors(), "projector": projector.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    restored = UnitProjector(projector.layout, projector.centering)
    restored.load_state_dict(saved["projector"])
    again = restored(RawUnits(*saved["raw"]))
    assert torch.equal(again.data, decompose(visual, x).data)


def test_raw_form_batches_concatenate():
    visual = tiny_vit()
    x = images(6, 32)
    parts = [decompose_raw(visual, x[:2]), decompose_raw(visual, x[2:])]
    whole = decompose_raw(visual, x)
    for a, b in zip(RawUnits.cat(parts).tensors(), whole.tensors(), strict=True):
        torch.testing.assert_close(a, b)


def test_select_by_label():
    visual = tiny_vit()
    dec = decompose(visual, images(2, 32))
    sel = dec.select(["L1H3", "embed"])
    assert sel.labels == ("L1H3", "embed") and sel.layout == dec.layout
    assert torch.equal(sel.data[:, 0], dec["L1H3"])
    assert torch.equal(sel.data[:, 1], dec.data[:, 0])
    assert torch.equal(dec[["L1H3", "embed"]].data, sel.data)
    with pytest.raises(KeyError, match="L7H0"):
        dec.select(["L7H0"])
    with pytest.raises(KeyError, match="valid labels"):
        check_supported(visual).index("L2.mlp")


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "forward": {type(m).forward for m in model.modules()},
    }


def _assert_same(before: dict, model: nn.Module):
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["forward"] == before["forward"]
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


def test_model_unchanged_after_decompose_and_after_error():
    visual = tiny_vit(ls_init_value=0.3)
    x = images(3, 32)
    with torch.no_grad():
        y0 = visual(x)
    before = _snapshot(visual)
    decompose(visual, x)
    _assert_same(before, visual)
    with pytest.raises(ValueError, match="40×40 but this model takes 32×32"):
        decompose(visual, images(2, 40))  # wrong size: refused before the forward
    _assert_same(before, visual)
    with torch.no_grad():
        assert torch.equal(visual(x), y0)


def test_requires_grad_flows_to_the_weights():
    visual = tiny_vit()
    dec = decompose(visual, images(2, 32), requires_grad=True)
    dec.data[:, 5].sum().backward()
    assert visual.transformer.resblocks[0].attn.in_proj_weight.grad is not None
    assert not decompose(visual, images(2, 32)).data.requires_grad


def test_cls_outputs_kept_across_blocks_hold_only_their_own_memory(monkeypatch):
    # What decompose keeps from each block until the last one is the CLS row alone. A view of
    # it would keep the block's whole (batch, token, width) outputs alive: on ViT-L at batch
    # 256, 2 × 24 of them, 6 GB over the plain forward's peak.
    from residual_core.core import decompose as module

    kept = []
    original = module._block_forward

    def spy(block, x, n_heads, cls_only):
        out = original(block, x, n_heads, cls_only)
        kept.extend(out[1:])
        return out

    monkeypatch.setattr(module, "_block_forward", spy)
    visual = tiny_vit(layers=3)
    decompose(visual, images(4, 32))
    assert len(kept) == 2 * 3
    for t in kept:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), tuple(t.shape)


def test_autocast_bfloat16_is_close():
    visual = tiny_vit()
    x = images(3, 32)
    with torch.no_grad():
        y = visual(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = decompose(visual, x)
    assert dec.data.dtype == torch.float32
    assert max_rel_err(dec.total(), y) < 5e-2


def test_deterministic():
    visual = tiny_vit()
    x = images(3, 32)
    assert torch.equal(decompose(visual, x).data, decompose(visual, x).data)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"attentional_pool": True}, "attention pooling"),
        ({"final_ln_after_pool": True}, "final_ln_after_pool"),
        ({"pool_type": "avg"}, "pool_type='avg'"),
        ({"qk_norm": True}, "CustomResidualAttentionBlock"),
        ({"scale_heads": True}, "CustomResidualAttentionBlock"),
    ],
)
def test_unsupported_features_are_named(overrides, match):
    visual = tiny_vit(**overrides)
    with pytest.raises(UnsupportedModelError, match=match):
        decompose(visual, images(1, 32))


def test_non_vit_tower_is_rejected():
    from open_clip.modified_resnet import ModifiedResNet

    resnet = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=2, image_size=64, width=8)
    with pytest.raises(UnsupportedModelError, match="non-ViT vision tower ModifiedResNet"):
        decompose(resnet, images(1, 64))


def test_active_patch_dropout_is_rejected():
    visual = tiny_vit(patch_dropout=0.5).train()
    with pytest.raises(UnsupportedModelError, match="patch dropout"):
        decompose(visual, images(1, 32))
    decompose(visual.eval(), images(1, 32))  # fine once in eval mode


def test_project_unit_matches_full_projection():
    visual = tiny_vit(ls_init_value=0.4)
    x = images(3, 32)
    raw = decompose_raw(visual, x)
    projector = UnitProjector.from_model(visual)
    full = projector(raw)
    stats = (raw.sigma, raw.mu)
    torch.testing.assert_close(projector.project_unit("embed", raw.embed, *stats), full["embed"])
    torch.testing.assert_close(
        projector.project_unit("L1.mlp", raw.mlp[:, 1], *stats), full["L1.mlp"]
    )
    torch.testing.assert_close(
        projector.project_unit("L1H2", raw.heads[:, 1, 2], *stats), full["L1H2"]
    )
    with pytest.raises(KeyError, match="L5H0"):
        projector.project_unit("L5H0", raw.heads[:, 0, 0], *stats)
