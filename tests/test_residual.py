"""ResiDual variants: parameter counts, identity at λ = 1, and the one-matmul forward vs a loop."""

from __future__ import annotations

import dataclasses
import math

import open_clip
import pytest
import torch

from residual_core.core.decompose import check_supported
from residual_core.core.residual import (
    Coarse,
    ResiDual,
    build_variant,
    cache_inputs,
    lambda_matrix,
    lambda_summary,
    make_basis,
    pca_coordinates,
    unit_lambdas,
)
from residual_core.core.spectral import PCAResult, unit_pca
from residual_core.core.units import UnitLayout, Units, is_head
from residual_core.core.zeroshot import ZeroShotClassifier

LAYOUT = UnitLayout(n_layers=2, n_heads=3, d_model=6, d_head=2, d_out=8)
LABELS = LAYOUT.labels
TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def make_units(n: int = 300, seed: int = 0, head_rank: int | None = LAYOUT.d_head) -> Units:
    """Random units with distinct means; heads of rank ``head_rank`` around their mean."""
    gen = torch.Generator().manual_seed(seed)
    d = LAYOUT.d_out
    out = []
    for label in LABELS:
        rank = head_rank if (is_head(label) and head_rank is not None) else d
        mix = torch.randn(rank, d, generator=gen) * torch.rand(rank, 1, generator=gen) * 2
        mean = torch.randn(d, generator=gen)
        out.append(mean + torch.randn(n, rank, generator=gen) @ mix)
    return Units.full(torch.stack(out, 1), LAYOUT)


def make_pca(units: Units) -> PCAResult:
    return unit_pca(units)


def classifier(n_classes: int = 4, seed: int = 1, d_out: int = LAYOUT.d_out) -> ZeroShotClassifier:
    w = torch.randn(d_out, n_classes, generator=torch.Generator().manual_seed(seed))
    return ZeroShotClassifier(torch.nn.functional.normalize(w, dim=0), scale=100.0)


def embed_of(variant, units):
    return variant.embed(*variant.encode(units))


# ---------------------------------------------------------------- parameter counts, real layouts


@pytest.fixture(scope="module", params=["ViT-B-16", "ViT-L-14"])
def real_model(request):
    # Built on the meta device: real module structure and sizes, no memory, no download.
    with torch.device("meta"):
        model = open_clip.create_model(request.param, device="meta")
    return request.param, model


def fake_pca(layout: UnitLayout) -> PCAResult:
    """Identity bases (expanded views: no memory); heads have exactly d_head directions."""
    d, n = layout.d_out, layout.n_units
    ev = torch.linspace(2.0, 1.0, d).repeat(n, 1)
    for i, label in enumerate(layout.labels):
        if is_head(label):
            ev[i, layout.d_head :] = 0.0
    return PCAResult(torch.zeros(n, d), torch.eye(d).expand(n, d, d), ev, 1000,
                     tuple(layout.labels), layout)


EXPECTED = {  # the paper's parameter counts
    "ViT-B-16": {"coarse": 144, "residual-full": 15_360, "linear-adapter": 262_656,
                 "spectral-adapter": 512, "zero-shot": 0},
    "ViT-L-14": {"coarse": 384, "residual-full": 43_008, "linear-adapter": 590_592,
                 "spectral-adapter": 768, "zero-shot": 0},
}


def test_parameter_counts_of_real_layouts(real_model):
    name, model = real_model
    layout = check_supported(model)
    pca = fake_pca(layout)
    d = layout.d_out
    clf = ZeroShotClassifier(torch.zeros(d, 10))
    out_pca = PCAResult(torch.zeros(1, d), torch.eye(d)[None], torch.linspace(2, 1, d)[None], 10,
                        ("output",))
    for variant, expected in EXPECTED[name].items():
        module = build_variant(variant, clf, reference=pca, output_reference=out_pca)
        assert module.n_trainable == expected, f"{name} {variant}: {module.n_trainable}"
        del module
    # ResiDual*: one λ per PC reaching 90% explained variance, heads only.
    fine = build_variant("residual-fine", clf, reference=pca)
    heads = [i for i, label in enumerate(layout.labels) if is_head(label)]
    assert fine.n_trainable == int(pca.n_components(0.9)[heads].sum())
    assert fine.n_trainable < EXPECTED[name]["residual-full"]
    # Fine-tuning trains the whole vision tower.
    tuned = build_variant("fine-tune", clf, visual=model.visual)
    n_visual = sum(p.numel() for p in model.visual.parameters())
    assert tuned.n_trainable == n_visual
    assert (80e6 < n_visual < 90e6) if name == "ViT-B-16" else (300e6 < n_visual < 310e6)


def test_full_counts_follow_the_layout():
    units = make_units()
    full = build_variant("residual-full", classifier(), reference=make_pca(units))
    n_heads = LAYOUT.n_layers * LAYOUT.n_heads
    assert full.n_trainable == n_heads * LAYOUT.d_head + LAYOUT.n_layers * LAYOUT.d_out


# ------------------------------------------------------------------------------- identity


def test_identity_all_units_all_pcs_mean_added():
    units = make_units(head_rank=None)  # full-rank heads
    basis = make_basis(make_pca(units), LABELS, "all")
    module = ResiDual(classifier(), basis)
    z = embed_of(module, units)
    assert rel_err(z, units.sum()) < TOL, rel_err(z, units.sum())
    # And the logits are the zero-shot ones.
    zs = build_variant("zero-shot", classifier())
    torch.testing.assert_close(module(*module.encode(units)), zs(*zs.encode(units)),
                               rtol=1e-4, atol=1e-4)


def test_full_variant_starts_at_zero_shot_when_heads_have_rank_d_head():
    units = make_units()  # heads of rank d_head, as a head's projected output is
    full = build_variant("residual-full", classifier(), reference=make_pca(units))
    z = embed_of(full, units)
    assert rel_err(z, units.sum()) < TOL, rel_err(z, units.sum())


def test_keep_residue_restores_identity_with_truncated_bases():
    units = make_units(head_rank=None)
    pca = make_pca(units)
    plain = build_variant("residual-full", classifier(), reference=pca)
    assert rel_err(embed_of(plain, units), units.sum()) > 1e-2  # truncation visible
    kept = build_variant("residual-full", classifier(), reference=pca, keep_residue=True)
    assert rel_err(embed_of(kept, units), units.sum()) < TOL


def test_spectral_adapter_identity():
    units = make_units()
    _, out_pca = unit_pca(units, output=True)
    assert out_pca.labels == ("output",)
    torch.testing.assert_close(out_pca.mean[0], units.sum().double().mean(0))
    module = build_variant("spectral-adapter", classifier(), output_reference=out_pca)
    assert module.n_trainable == LAYOUT.d_out
    assert rel_err(embed_of(module, units), units.sum()) < TOL


def test_linear_adapter_starts_at_zero_shot():
    units = make_units()
    lin = build_variant("linear-adapter", classifier())
    torch.testing.assert_close(embed_of(lin, units), units.sum())


def test_coarse_lambda_one_is_sum_of_heads():
    units = make_units()
    coarse = build_variant("coarse", classifier(), reference=make_pca(units))
    heads = [i for i, label in enumerate(LABELS) if is_head(label)]
    assert coarse.n_trainable == len(heads)
    expected = units.data[:, heads].sum(1)
    assert rel_err(embed_of(coarse, units), expected) < TOL
    # With random λ: Σ_h λ_h h_h exactly (means scaled too).
    with torch.no_grad():
        coarse.lam.copy_(torch.randn(len(heads), generator=torch.Generator().manual_seed(5)))
    expected = torch.einsum("h,bhd->bd", coarse.lam.detach(), units.data[:, heads])
    assert rel_err(embed_of(coarse, units), expected) < TOL


# ------------------------------------------------------------ one matmul == per-unit loop


def explicit_loop(module, units, pca):
    """Σ_r B_rᵀ diag(λ_r) B_r (h_r − μ_r) (+ μ_r) + non-selected units, in float64."""
    basis = module.basis
    lam = module.lam.detach().double()
    data = units.data
    z = torch.zeros(data.shape[0], data.shape[-1], dtype=torch.float64)
    for label, sl in basis.slices().items():
        i = LABELS.index(label)
        b = pca.components[i, : sl.stop - sl.start].double()
        mu = pca.mean[i].double()
        c = (data[:, i].double() - mu) @ b.T
        if isinstance(module, Coarse):
            lam_r = lam[basis.labels.index(label)].expand(b.shape[0])
            z += (c * lam_r) @ b + lam[basis.labels.index(label)] * mu
            continue
        z += (c * lam[sl]) @ b
        if module.add_mean:
            z += mu
    for label in basis.other_labels:
        i = LABELS.index(label)
        if module.rest == "keep":
            z += data[:, i].double()
        elif module.rest == "mean":
            z += pca.mean[i].double()
    return z


@pytest.mark.parametrize("rest", ["drop", "keep", "mean"])
@pytest.mark.parametrize("add_mean", [True, False])
@pytest.mark.parametrize("pcs", [0.9, "all", 3])
def test_forward_equals_explicit_loop(rest, add_mean, pcs):
    units = make_units(head_rank=None)
    pca = make_pca(units)
    selected = ["L0.mlp", "L0H1", "L1H0", "L1H2"]
    basis = make_basis(pca, selected, pcs)
    module = ResiDual(classifier(), basis, rest=rest, add_mean=add_mean,
                      init="normal", seed=3)
    assert module.n_trainable == sum(basis.sizes)
    z = embed_of(module, units)
    ref = explicit_loop(module, units, pca)
    assert rel_err(z.double(), ref) < TOL, f"max rel err {rel_err(z.double(), ref):.2e}"


def test_fine_variant_equals_explicit_loop_and_drops_others():
    units = make_units(head_rank=None)
    pca = make_pca(units)
    fine = build_variant("residual-fine", classifier(), reference=pca, init="normal",
                         seed=7)
    assert fine.basis.labels == [u for u in LABELS if is_head(u)]
    assert all(k == int(pca.n_components(0.9)[LABELS.index(u)])
               for u, k in zip(fine.basis.labels, fine.basis.sizes, strict=True))
    ref = explicit_loop(fine, units, pca)
    assert rel_err(embed_of(fine, units).double(), ref) < TOL


def test_coarse_with_other_units_equals_explicit_loop():
    units = make_units()
    pca = make_pca(units)
    coarse = build_variant("coarse", classifier(), reference=pca, rest="mean",
                           init="normal", seed=2)
    ref = explicit_loop(coarse, units, pca)
    assert rel_err(embed_of(coarse, units).double(), ref) < TOL


def test_cache_inputs_batches_equal_one_shot():
    units = make_units()
    full = build_variant("residual-full", classifier(), reference=make_pca(units))
    targets = torch.arange(units.n_samples) % 4
    whole, _ = cache_inputs(full, units)
    batched, y = cache_inputs(full, zip(units.split(64), targets.split(64), strict=True))
    assert len(whole) == len(batched) == 2  # coords and the kept embed
    for a, b in zip(whole, batched, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(y, targets)
    assert whole[0].shape == (units.n_samples, full.n_trainable)


def test_pca_coordinates_helper_matches_the_definition():
    units = make_units(head_rank=None)
    pca = make_pca(units)
    selected = ["L1.mlp", "L0H2", "L1H1"]
    coords, basis = pca_coordinates(units.split(70), pca, selected, 0.9)
    for label, sl in basis.slices().items():
        i = LABELS.index(label)
        expected = (units.data[:, i].double() - pca.mean[i]) @ pca.components[
            i, : sl.stop - sl.start].T
        torch.testing.assert_close(coords[:, sl].double(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ init and options


def test_normal_init_is_seeded():
    pca = make_pca(make_units())
    a = build_variant("residual-fine", classifier(), reference=pca, init="normal",
                      seed=11)
    b = build_variant("residual-fine", classifier(), reference=pca, init="normal",
                      seed=11)
    c = build_variant("residual-fine", classifier(), reference=pca, init="normal",
                      seed=12)
    assert torch.equal(a.lam, b.lam) and not torch.equal(a.lam, c.lam)
    default = build_variant("residual-fine", classifier(), reference=pca)
    assert torch.equal(default.lam.detach(), torch.ones(default.n_trainable))
    assert default.options()["init"] == "ones" and default.options()["add_mean"] is True


@pytest.mark.parametrize("cls", [ResiDual, Coarse])
@pytest.mark.parametrize("rest", ["drop", "keep", "mean"])
@pytest.mark.parametrize("init", ["ones", "normal"])
def test_reweightings_live_on_the_device_of_their_basis(cls, rest, init):
    # A reference PCA fitted on the GPU gives a basis on the GPU: λ and every buffer must follow
    # it (a CPU offset broke ResiDual's mean-adding on CUDA). The meta device stands in for it.
    meta = torch.device("meta")
    basis = make_basis(make_pca(make_units()), [label for label in LABELS if is_head(label)], 2)
    basis = dataclasses.replace(basis, **{
        f.name: getattr(basis, f.name).to(meta) for f in dataclasses.fields(basis)
        if isinstance(getattr(basis, f.name), torch.Tensor)})
    variant = cls(classifier(), basis, rest=rest, init=init)
    tensors = dict(variant.named_buffers()) | dict(variant.named_parameters())
    assert {name: t.device for name, t in tensors.items()
            if not name.startswith("classifier.")} == {
        name: meta for name in tensors if not name.startswith("classifier.")}


def test_unknown_labels_and_bad_specs_raise():
    pca = make_pca(make_units())
    with pytest.raises(KeyError, match="L9H9"):
        make_basis(pca, ["L9H9"])
    with pytest.raises(ValueError, match="fraction"):
        make_basis(pca, ["L0H0"], 1.5)
    with pytest.raises(ValueError, match="unknown variant"):
        build_variant("nope", classifier(), reference=pca)


# --------------------------------------------------------------------------- λ helpers


def test_lambda_helpers():
    units = make_units()
    full = build_variant("residual-full", classifier(), reference=make_pca(units))
    with torch.no_grad():
        sl = full.basis.slices()["L1H2"]
        full.lam[sl] = torch.tensor([3.0, 0.0])
    lam = unit_lambdas(full, "L1H2")
    assert torch.equal(lam, torch.tensor([3.0, 0.0]))
    summary = lambda_summary(full, top=1)
    assert len(summary) == len(full.basis.labels)
    first = summary.iloc[0]
    assert first["unit"] == "L1H2" and math.isclose(first["mean_abs_dev"], 1.5)
    assert first["top_amplified"] == [(0, 3.0)] and first["top_suppressed"] == [(1, 0.0)]
    assert (summary["mean_abs_dev"].iloc[1:] == 0).all()
    matrix, labels = lambda_matrix(full)
    assert matrix.shape == (len(labels), LAYOUT.d_out)
    assert torch.isnan(matrix[labels.index("L1H2"), 2:]).all()
    with pytest.raises(KeyError):
        unit_lambdas(full, "embed")  # kept, not trained


def test_end_to_end_from_a_real_decomposition():
    """open_clip tower → units → PCA → ResiDual at λ = 1 reproduces ``encode_image``."""
    from open_clip.transformer import VisionTransformer

    from residual_core.core.decompose import decompose

    torch.manual_seed(0)
    visual = VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=4,
                               mlp_ratio=2.0, output_dim=24)
    with torch.no_grad():
        for p in visual.parameters():  # non-zero biases, like a trained model
            p.add_(0.05 * torch.randn_like(p))
    visual.eval()
    images = torch.randn(160, 3, 32, 32)
    dec = decompose(visual, images)
    layout = check_supported(visual)
    with torch.no_grad():
        target = visual(images)
    pca = make_pca(dec)
    heads = [i for i, label in enumerate(dec.labels) if is_head(label)]
    # A head's output spans its d_head value directions plus the out-projection bias / σ and
    # (shared centring) the μ / σ ones.
    ranks = [make_basis(pca, [dec.labels[i]], "rank").sizes[0] for i in heads]
    assert max(ranks) <= layout.d_head + 2
    clf = classifier(d_out=layout.d_out)
    full = build_variant("residual-full", clf, reference=pca)
    exact = build_variant("residual-full", clf, reference=pca,
                          keep_residue=True)
    assert rel_err(embed_of(exact, dec), target) < TOL
    # Truncating heads at d_head PCs loses only the (small) bias and mean directions.
    err = rel_err(embed_of(full, dec), target)
    assert 0 < err < 0.05, err
