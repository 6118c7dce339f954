"""Comparing the two centrings: against direct decompositions, and a model where they coincide."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import VisionTransformer

from residual_core.analysis.conventions import compare_centerings
from residual_core.core.decompose import decompose
from residual_core.core.dictionary import TextDictionary


def tiny(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    visual = VisionTransformer(image_size=16, patch_size=8, width=32, layers=2, heads=2,
                               mlp_ratio=2.0, output_dim=12)
    with torch.no_grad():
        for p in visual.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return visual.eval()


def batches(n: int = 96, size: int = 32):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(n, 3, 16, 16, generator=g)
    return list(images.split(size)), images


def dictionary(d: int = 12, m: int = 20):
    emb = torch.nn.functional.normalize(torch.randn(m, d, generator=torch.Generator()
                                                    .manual_seed(4)), dim=-1)
    texts = tuple(f"t{i}" for i in range(m))
    return TextDictionary(texts, ((),) * m, emb)


def test_differences_match_direct_decompositions():
    visual = tiny()
    parts, images = batches()
    cmp = compare_centerings(visual, parts, dictionary(), n_texts=2)
    shared = decompose(visual, images, centering="shared")
    per_unit = decompose(visual, images, centering="per-unit")
    rel = (shared.data - per_unit.data).norm(dim=-1) / shared.data.norm(dim=-1)
    table = cmp.units.set_index("unit")
    assert table.index.tolist() == list(shared.labels)
    torch.testing.assert_close(torch.tensor(table.rel_diff_max.values), rel.max(0).values.double(),
                               rtol=1e-4, atol=1e-6)
    assert (table.rel_diff_max > 1e-3).all()  # on a random model every unit moves
    assert cmp.texts.unit.tolist() == ["L1H0", "L1H1"]
    summary = cmp.summary()
    assert summary.index.tolist() == ["embed", "MLP", "head"]
    assert summary.units.tolist() == [1, 2, 4]
    heads = rel[:, 3:].double()
    assert summary.loc["head", "max_rel_diff"] == pytest.approx(float(heads.max()), rel=1e-4)
    assert all(len(t) == 2 for t in cmp.texts.shared)


def test_centrings_coincide_when_gamma_projects_to_zero():
    """If γ @ P = 0 the mean is invisible after the projection: both centrings are the same
    decomposition, so nothing may move (a planted answer)."""
    visual = tiny(seed=1)
    with torch.no_grad():
        gamma = visual.ln_post.weight
        visual.proj.sub_(torch.outer(gamma, gamma @ visual.proj) / gamma.dot(gamma))
        assert (gamma @ visual.proj).abs().max() < 1e-5
    parts, _ = batches()
    cmp = compare_centerings(visual, parts, dictionary(), n_texts=3)
    assert cmp.units.rel_diff_max.max() < 1e-4
    assert (cmp.units["linear_id_shared"] == cmp.units["linear_id_per-unit"]).all()
    assert (cmp.units["twonn_shared"] - cmp.units["twonn_per-unit"]).abs().max() < 1e-3
    assert (cmp.texts.common == 3).all()
