"""Unit geometry: ID tables on known subspaces, depth profiles, subspace similarity, findings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from open_clip.transformer import VisionTransformer
from PIL import Image
from torch.utils.data import Dataset

from residual_core.analysis.geometry import (
    chance_similarity,
    components_needed,
    depth_profile,
    distinct_pairs,
    grayscale,
    grayscale_pca,
    head_medians,
    id_ranges,
    intrinsic_dimension_table,
    principal_bases,
    random_subspace_similarity,
    similarity_summary,
    similarity_table,
    subspace_similarity,
    twonn_fit,
    twonn_halves,
    unit_similarity_matrix,
    variance_ratio,
    weighting_robustness,
)
from residual_core.core.decompose import decompose
from residual_core.core.intrinsic_dim import twonn
from residual_core.core.spectral import unit_pca
from residual_core.core.store import build_store
from residual_core.core.units import UnitLayout, Units, unit_grid
from residual_core.data.base import ClassificationDataset


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def subspace_points(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    """Isotropic Gaussian points in a random ``rank``-dim subspace of R^d, plus an offset."""
    g = gen(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))[0]
    offset = torch.randn(d, generator=g, dtype=torch.float64)
    return (torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis.T + offset).float()


class FakeStore:
    """The slice of the EncodingStore API that unit_geometry reads, over an in-memory tensor."""

    def __init__(self, units: torch.Tensor, layout: UnitLayout, chunk: int = 300):
        self.data, self.layout, self.chunk = units, layout, chunk
        self.n_samples = len(units)
        self.labels = layout.labels
        self.centering = "shared"

    def units(self, labels, device="cpu"):
        return Units.full(self.data, self.layout).select(labels).to(device)

    def iter_units(self, batch_size=None, *, device="cpu", progress=False):
        yield from Units.full(self.data, self.layout).to(device).split(self.chunk)


LAYOUT = UnitLayout(n_layers=2, n_heads=2, d_model=12, d_head=3, d_out=16)
RANKS = {"embed": 1, "L0.mlp": 5, "L1.mlp": 6, "L0H0": 1, "L0H1": 2, "L1H0": 3, "L1H1": 4}


@pytest.fixture(scope="module")
def known_store() -> FakeStore:
    units = torch.stack([subspace_points(1500, LAYOUT.d_out, RANKS[label], seed=i)
                         for i, label in enumerate(LAYOUT.labels)], 1)
    return FakeStore(units, LAYOUT)


def test_twonn_fit_is_twonn_and_recovers_the_dimension():
    x = subspace_points(3000, 20, 4, seed=3)
    fit = twonn_fit(x, max_points=2000, seed=7)
    assert fit.dimension == twonn(x, max_points=2000, seed=7)  # same subsample, same number
    assert fit.dimension == pytest.approx(4, rel=0.15)
    assert fit.n_points == 2000
    assert len(fit.log_mu) == len(fit.neg_log_survival) <= 200
    assert np.all(np.diff(fit.log_mu) >= 0) and np.all(np.diff(fit.neg_log_survival) > 0)


def test_intrinsic_dimension_table_on_known_subspaces(known_store: FakeStore):
    pca = unit_pca(known_store)
    table, fits = intrinsic_dimension_table(known_store, pca, threshold=0.99, group=3)
    assert table.unit.tolist() == LAYOUT.labels and set(fits) == set(LAYOUT.labels)
    by_unit = table.set_index("unit")
    for label, rank in RANKS.items():
        row = by_unit.loc[label]
        # Isotropic in `rank` dims: every direction is needed for 99%, each holds ~1/rank.
        assert row.linear_id == rank, label
        assert row.evr_pc1 == pytest.approx(1 / rank, abs=0.1), label
        assert row.twonn == pytest.approx(rank, rel=0.25), label
        assert row.ratio == pytest.approx(row.linear_id / row.twonn)
        assert row.linear_frac == pytest.approx(rank / LAYOUT.d_out)
    # Shared centring: d_head values, the bias / σ direction and the μ / σ direction.
    assert (by_unit.loc[["L0H0", "L1H1"], "rank_bound"] == LAYOUT.d_head + 2).all()
    assert by_unit.loc["L0.mlp", "rank_bound"] == min(LAYOUT.d_model, LAYOUT.d_out)


def test_twonn_subsample_is_seeded(known_store: FakeStore):
    pca = unit_pca(known_store)
    a, _ = intrinsic_dimension_table(known_store, pca, max_points=500, seed=1)
    b, _ = intrinsic_dimension_table(known_store, pca, max_points=500, seed=1)
    c, _ = intrinsic_dimension_table(known_store, pca, max_points=500, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.twonn, c.twonn)


class Images(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return torch.randn(3, 16, 16, generator=gen(i)), 0


def test_runs_on_a_real_store(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=8, width=32, layers=2, heads=2,
                              mlp_ratio=2.0, output_dim=12).eval()
    store = build_store(tmp_path / "s", model, Images(), {"test": 1}, batch_size=8,
                        chunk_size=16, dtype="float32", progress=False)
    pca = unit_pca(store)
    every = store.units().to(torch.float64)
    torch.testing.assert_close(pca.mean, every.data.mean(0))
    full = unit_pca(every)
    torch.testing.assert_close(pca.explained_variance, full.explained_variance)
    table, _ = intrinsic_dimension_table(store, pca)
    assert table.unit.tolist() == store.labels and pca.labels == tuple(store.labels)
    assert (table.linear_id <= table.rank_bound).all()
    # The CLS embedding is the same vector e for every image: with shared centring its unit
    # varies only as e/σ and μ/σ along γ @ P, two directions (one with per-unit centring).
    assert table.set_index("unit").loc["embed", "linear_id"] == 2


def constructed_table(values: dict[tuple[int, int], float], mlp: dict[int, float]):
    rows = [(f"L{layer}H{h}", "head", layer, h, v) for (layer, h), v in values.items()]
    rows += [(f"L{layer}.mlp", "mlp", layer, -1, v) for layer, v in mlp.items()]
    rows += [("embed", "embed", -1, -1, -5.0)]
    return pd.DataFrame(rows, columns=["unit", "kind", "layer", "head", "x"])


def test_layer_grid_and_depth_profile():
    table = constructed_table({(layer, h): 10 * layer + h for layer in range(3)
                               for h in range(4)}, {layer: 100 + layer for layer in range(3)})
    grid = unit_grid(table.set_index("unit").x)
    assert list(grid.index) == ["L0", "L1", "L2"]
    assert list(grid.columns) == ["H0", "H1", "H2", "H3", "MLP"]
    assert grid.loc["L2", "H3"] == 23 and grid.loc["L1", "MLP"] == 101
    profile = depth_profile(table, "x")
    assert profile.index.tolist() == [0, 1, 2]
    np.testing.assert_allclose(profile["mean"], [1.5, 11.5, 21.5])
    np.testing.assert_allclose(profile["std"], np.std([0, 1, 2, 3]))
    np.testing.assert_allclose(profile["min"], [0, 10, 20])
    np.testing.assert_allclose(profile["max"], [3, 13, 23])
    np.testing.assert_allclose(profile["mlp"], [100, 101, 102])
    assert "embed" not in grid.to_string()  # the embedding is not a layer


def id_table(ratio: dict[int, float], twonn: dict[int, float], jitter: float = 0.05):
    rows = []
    for layer in ratio:
        for h in range(4):
            t = twonn[layer] + jitter * (h - 1.5)
            rows.append((f"L{layer}H{h}", "head", layer, h, 10.0, t, ratio[layer] + jitter * h))
    return pd.DataFrame(rows, columns=["unit", "kind", "layer", "head", "linear_id", "twonn",
                                       "ratio"])


def pca_of(data: torch.Tensor):
    """Labelled PCA of ``(n, unit, d)`` data: its units are the first heads of a 2-head model."""
    layout = UnitLayout(n_layers=(data.shape[1] + 1) // 2, n_heads=2, d_model=data.shape[-1],
                        d_head=1, d_out=data.shape[-1])
    return unit_pca(Units(data, tuple(layout.heads()[: data.shape[1]]), layout))


def test_subspace_similarity_identical_one_unrelated_low():
    a = torch.stack([subspace_points(800, 32, r, seed=r) for r in (1, 3, 5)], 1)
    fresh = torch.stack([subspace_points(800, 32, r, seed=r) for r in (1, 3, 5)], 1)
    other = torch.stack([subspace_points(800, 32, r, seed=100 + r) for r in (1, 3, 5)], 1)
    pa = pca_of(a)
    torch.testing.assert_close(subspace_similarity(pa, pa), torch.ones(3, dtype=torch.float64))
    # Same subspaces (same seeds give the same bases), different samples: close to 1.
    g = gen(0)
    resampled = fresh[torch.randperm(800, generator=g)] + 0.01 * torch.randn(800, 3, 32,
                                                                             generator=g)
    assert (subspace_similarity(pa, pca_of(resampled)) > 0.95).all()
    unrelated = subspace_similarity(pa, pca_of(other))
    assert (unrelated < 0.6).all(), unrelated
    for weighted in (True, False):
        s = subspace_similarity(pa, pca_of(other), weighted=weighted)
        assert ((s >= 0) & (s <= 1 + 1e-9)).all()
    with pytest.raises(ValueError, match="different units"):
        subspace_similarity(pa, pca_of(a[:, :2]))


def test_random_subspace_similarity_is_low_and_seeded():
    pa = pca_of(torch.stack([subspace_points(500, 64, r, seed=r) for r in (2, 4)], 1))
    chance = random_subspace_similarity(pa, seed=3)
    torch.testing.assert_close(chance, random_subspace_similarity(pa, seed=3))
    assert not torch.equal(chance, random_subspace_similarity(pa, seed=4))
    assert (chance < 0.5).all(), chance


def test_principal_bases_cut_at_the_threshold():
    pa = pca_of(torch.stack([subspace_points(500, 16, 4, seed=0)], 1))
    bases, weights = principal_bases(pa, threshold=1.0)
    assert bases[0].shape[0] == weights[0].shape[0] <= 16
    small, _ = principal_bases(pa, threshold=0.5)
    assert 1 <= small[0].shape[0] <= 3  # isotropic in 4 dims: half the variance needs 2-3


def test_unit_similarity_matrix_symmetric_with_duplicates():
    x = subspace_points(600, 24, 3, seed=0)
    units = torch.stack([x, 2 * x + 1, subspace_points(600, 24, 3, seed=9)], 1)
    labels = ["L0H0", "L0H1", "L1H0"]
    sim = unit_similarity_matrix(pca_of(units), labels)
    np.testing.assert_allclose(sim.to_numpy(), sim.to_numpy().T)
    np.testing.assert_allclose(np.diag(sim), 1, atol=1e-9)
    assert sim.loc["L0H0", "L0H1"] == pytest.approx(1, abs=1e-9)  # same subspace and spectrum
    assert sim.loc["L0H0", "L1H0"] < 0.7
    assert list(sim.index) == labels


def long_similarity(medians: dict[str, float]) -> pd.DataFrame:
    rows = [(name, "head", layer, m + 0.01 * layer) for name, m in medians.items()
            for layer in range(3)]
    rows += [(name, "mlp", 0, 0.0) for name in medians]  # MLPs are not part of the claims
    return pd.DataFrame(rows, columns=["dataset", "kind", "layer", "similarity"])


def test_similarity_table_summary_and_chance():
    a = torch.stack([subspace_points(400, 16, r, seed=r) for r in (1, 2, 3)], 1)
    b = torch.stack([subspace_points(400, 16, r, seed=50 + r) for r in (1, 2, 3)], 1)
    ref, same, other = pca_of(a), pca_of(a.flip(0)), pca_of(b)
    sim = similarity_table(ref, {"same": same, "other": other})
    assert sim.columns.tolist() == ["unit", "kind", "layer", "head", "dataset", "similarity"]
    assert sim.unit.tolist() == list(ref.labels) * 2
    np.testing.assert_allclose(sim[sim.dataset == "same"].similarity, 1, atol=1e-6)
    expected = subspace_similarity(ref, other).numpy()
    np.testing.assert_allclose(sim[sim.dataset == "other"].similarity, expected)
    summary = similarity_summary(sim)
    assert summary.index.tolist() == ["same", "other"]
    assert summary.loc["other", "heads: min"] == pytest.approx(expected.min())
    assert head_medians(sim)["other"] == pytest.approx(np.median(expected))
    chance = chance_similarity(ref, seed=3)
    assert chance.index.tolist() == list(ref.labels)
    np.testing.assert_allclose(chance, random_subspace_similarity(ref, seed=3).numpy())
    robust = weighting_robustness(ref, {"other": other}, seed=3)
    pd.testing.assert_frame_equal(robust, weighting_robustness(
        ref, {"other": other}, seed=3, similarity=sim[sim.dataset == "other"]))
    assert robust.index.tolist() == ["weighted", "unweighted"]
    assert robust.loc["weighted", "other"] == pytest.approx(np.median(expected))
    assert robust.loc["unweighted", "chance"] == pytest.approx(
        float(np.median(random_subspace_similarity(ref, weighted=False, seed=3).numpy())))


def test_components_needed_and_distinct_pairs():
    a = torch.stack([subspace_points(400, 16, r, seed=r) for r in (1, 4, 2)], 1)
    k = components_needed({"x": pca_of(a)}, threshold=0.999)
    assert k.index.tolist() == ["median", "min", "max"]
    assert k.x.tolist() == [2, 1, 4]  # isotropic in 1, 4 and 2 dimensions
    m = pd.DataFrame([[1.0, 0.2, 0.3], [0.2, 1.0, 0.4], [0.3, 0.4, 1.0]],
                     index=list("abc"), columns=list("abc"))
    assert distinct_pairs(m).to_dict() == {"a – b": 0.2, "a – c": 0.3, "b – c": 0.4}


def test_variance_ratio_is_planted_scale_squared():
    a = torch.stack([subspace_points(400, 16, r, seed=r) for r in (1, 4, 2)], 1)
    scaled = a * torch.tensor([0.5, 2.0, 1.0]).view(1, 3, 1)  # variance × 0.25, 4, 1
    got = variance_ratio(pca_of(a), {"same": pca_of(a), "scaled": pca_of(scaled)})
    assert got.index.tolist() == ["median", "min", "max"]
    assert got.same.tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert got.scaled.tolist() == pytest.approx([1.0, 0.25, 4.0])


def test_twonn_halves_and_id_ranges(known_store: FakeStore):
    pca = unit_pca(known_store)
    halves = twonn_halves(known_store, pca, 1000, seed=0)
    assert halves.index.tolist() == LAYOUT.labels and (halves >= 0).all()
    a, _ = intrinsic_dimension_table(known_store, pca, max_points=500, seed=1)
    b, _ = intrinsic_dimension_table(known_store, pca, max_points=500, seed=2)
    np.testing.assert_allclose(halves.to_numpy(), (a.twonn - b.twonn).abs().to_numpy())
    table, _ = intrinsic_dimension_table(known_store, pca)
    ranges = id_ranges(table)
    assert ranges.index.tolist() == ["head", "mlp"]
    assert ranges.loc["head", ["linear_min", "linear_max"]].tolist() == [1, 4]
    assert ranges.loc["mlp", "linear_median"] == 5.5


def pil_luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in PIL's fixed-point form, written out independently of PIL."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    luma = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    return np.repeat(luma[..., None], 3, -1)


def test_grayscale_is_luma_in_every_channel():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = np.asarray(grayscale(Image.fromarray(rgb, "RGB")))
    np.testing.assert_array_equal(out, pil_luma(rgb))


def test_grayscale_pca_equals_the_pca_of_greyed_images(loaded):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    colour = ClassificationDataset("planted", "train", rgb, np.zeros(40), ["x"], ["{}"])
    got = grayscale_pca(loaded, colour, batch_size=16)  # three batches, the last one short

    def plain_pca(images: np.ndarray):
        x = torch.stack([loaded.preprocess(Image.fromarray(im, "RGB")) for im in images])
        return unit_pca(decompose(loaded.model, x))

    want = plain_pca(pil_luma(rgb))
    assert got.labels == want.labels
    torch.testing.assert_close(got.explained_variance, want.explained_variance,
                               rtol=1e-4, atol=1e-6)
    assert (subspace_similarity(got, want) > 0.999).all()
    # Colour matters to a random tower too: the coloured images' subspaces are not these.
    assert (subspace_similarity(plain_pca(rgb), want) < 0.999).any()
