"""The decomposition is exact, per unit and in sum, and leaves the model untouched."""

from __future__ import annotations

import io

import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from residual_core.decompose import (
    RawUnits,
    UnitProjector,
    UnsupportedModelError,
    check_supported,
    decompose,
    decompose_raw,
    unit_labels,
)

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


@torch.no_grad()
def reference_units(visual: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Per-unit contributions by a second, naive route: hooks + explicit float64 attention."""
    inputs, mlp_out = [], []
    hooks = []
    for block in visual.transformer.resblocks:
        hooks.append(block.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach())))
        hooks.append(block.mlp.register_forward_hook(lambda m, a, o: mlp_out.append(o.detach())))
    try:
        visual(x)
    finally:
        for h in hooks:
            h.remove()
    d = visual.conv1.out_channels
    n_layers = len(inputs)
    n_heads = visual.transformer.resblocks[0].attn.num_heads
    dh = d // n_heads
    writes = [inputs[0][:, 0].double()]  # embed
    head_writes = []
    for block, xin, m in zip(visual.transformer.resblocks, inputs, mlp_out, strict=True):
        ls1 = getattr(block.ls_1, "gamma", torch.ones(d)).double()
        ls2 = getattr(block.ls_2, "gamma", torch.ones(d)).double()
        writes.append(m[:, 0].double() * ls2)
        h = block.ln_1(xin).double()
        w, b = block.attn.in_proj_weight.double(), block.attn.in_proj_bias.double()
        q, k, v = (h @ w.T + b).split(d, dim=-1)
        w_o, b_o = block.attn.out_proj.weight.double(), block.attn.out_proj.bias.double()
        for head in range(n_heads):
            sl = slice(head * dh, (head + 1) * dh)
            att = torch.softmax(q[:, :1, sl] @ k[:, :, sl].transpose(1, 2) / dh**0.5, -1)
            z = (att @ v[:, :, sl])[:, 0]
            head_writes.append((z @ w_o[:, sl].T + b_o / n_heads) * ls1)
    stream = torch.stack(writes + head_writes, 1)
    s = stream.sum(1)
    sigma = torch.sqrt(s.var(-1, unbiased=False) + visual.ln_post.eps)[:, None, None]
    gamma, beta = visual.ln_post.weight.double(), visual.ln_post.bias.double()
    centred = stream - stream.mean(-1, keepdim=True)
    n_writes = 2 * n_layers + 1
    shares = torch.tensor([1 / n_writes] * (1 + n_layers) + [1 / (n_writes * n_heads)]
                          * (n_layers * n_heads), dtype=torch.float64)
    folded = centred * gamma / sigma + shares[:, None] * beta
    return folded @ visual.proj.double()


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
    assert dec.units.shape == (5, layout.n_units, 24)
    assert dec.labels == layout.labels
    with torch.no_grad():
        y = visual(x)
    err = max_rel_err(dec.total(), y)
    assert err <= REL_TOL, f"sum of units vs encode_image: max rel err {err:.2e}"
    ref = reference_units(visual, x)
    per_unit = float((dec.units.double() - ref).abs().max() / ref.abs().max())
    assert per_unit <= REL_TOL, f"per-unit vs naive reference: max rel diff {per_unit:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16-quickgelu", "ViT-M-16-alt"])
def test_real_open_clip_configs_exact(name):
    model = randomize_(open_clip.create_model(name), seed=3)
    x = images(2, model.visual.image_size[0])
    with torch.no_grad():
        y = model.encode_image(x)
    dec = decompose(model, x)
    layout = check_supported(model)
    assert layout.d_out == y.shape[-1] and dec.units.shape[1] == layout.n_units
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
    restored = UnitProjector(projector.layout)
    restored.load_state_dict(saved["projector"])
    again = restored(RawUnits(*saved["raw"]))
    assert torch.equal(again.units, decompose(visual, x).units)


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
    assert torch.equal(sel[:, 0], dec["L1H3"])
    assert torch.equal(sel[:, 1], dec.units[:, 0])
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
    with pytest.raises(RuntimeError):
        decompose(visual, images(2, 40))  # wrong size: fails inside the forward
    _assert_same(before, visual)
    with torch.no_grad():
        assert torch.equal(visual(x), y0)


def test_requires_grad_flows_to_the_weights():
    visual = tiny_vit()
    dec = decompose(visual, images(2, 32), requires_grad=True)
    dec.units[:, 5].sum().backward()
    assert visual.transformer.resblocks[0].attn.in_proj_weight.grad is not None
    assert not decompose(visual, images(2, 32)).units.requires_grad


def test_autocast_bfloat16_is_close():
    visual = tiny_vit()
    x = images(3, 32)
    with torch.no_grad():
        y = visual(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = decompose(visual, x)
    assert dec.units.dtype == torch.float32
    assert max_rel_err(dec.total(), y) < 5e-2


def test_deterministic():
    visual = tiny_vit()
    x = images(3, 32)
    assert torch.equal(decompose(visual, x).units, decompose(visual, x).units)


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
    torch.testing.assert_close(projector.project_unit("embed", raw.embed, raw.sigma), full["embed"])
    torch.testing.assert_close(
        projector.project_unit("L1.mlp", raw.mlp[:, 1], raw.sigma), full["L1.mlp"]
    )
    torch.testing.assert_close(
        projector.project_unit("L1H2", raw.heads[:, 1, 2], raw.sigma), full["L1H2"]
    )
    with pytest.raises(KeyError, match="L5H0"):
        projector.project_unit("L5H0", raw.heads[:, 0, 0], raw.sigma)
