"""Unit geometry: ID tables on known subspaces, depth profiles, subspace similarity, findings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch.utils.data import Dataset

from residual_core.analysis.geometry import (
    depth_profile,
    id_findings,
    intrinsic_dimension_table,
    layer_grid,
    principal_bases,
    random_subspace_similarity,
    stability_findings,
    store_pca,
    subspace_similarity,
    twonn_fit,
    unit_index,
    unit_similarity_matrix,
)
from residual_core.core.intrinsic_dim import twonn
from residual_core.core.spectral import StreamingPCA
from residual_core.core.store import build_store
from residual_core.core.units import UnitLayout, unit_labels


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
        self.labels = layout.labels
        self.centering = "shared"

    def units(self, labels, device="cpu"):
        labels = [labels] if isinstance(labels, str) else list(labels)
        return self.data[:, [self.labels.index(u) for u in labels]].to(device)

    def iter_units(self, device="cpu", progress=False):
        for start in range(0, len(self.data), self.chunk):
            part = self.data[start : start + self.chunk].to(device)
            yield part, torch.zeros(len(part), dtype=torch.long)


LAYOUT = UnitLayout(n_layers=2, n_heads=2, d_model=12, d_head=3, d_out=16)
RANKS = {"embed": 1, "L0.mlp": 5, "L1.mlp": 6, "L0H0": 1, "L0H1": 2, "L1H0": 3, "L1H1": 4}


@pytest.fixture(scope="module")
def known_store() -> FakeStore:
    units = torch.stack([subspace_points(1500, LAYOUT.d_out, RANKS[label], seed=i)
                         for i, label in enumerate(LAYOUT.labels)], 1)
    return FakeStore(units, LAYOUT)


def test_unit_index_parses_labels_in_order():
    table = unit_index(unit_labels(2, 3))
    assert list(table.columns) == ["unit", "kind", "layer", "head"]
    assert table.iloc[0].tolist() == ["embed", "embed", -1, -1]
    assert table.set_index("unit").loc["L1.mlp"].tolist() == ["mlp", 1, -1]
    assert table.set_index("unit").loc["L1H2"].tolist() == ["head", 1, 2]
    with pytest.raises(ValueError, match="L0.attn"):
        unit_index(["embed", "L0.attn"])


def test_twonn_fit_is_twonn_and_recovers_the_dimension():
    x = subspace_points(3000, 20, 4, seed=3)
    fit = twonn_fit(x, max_points=2000, seed=7)
    assert fit.dimension == twonn(x, max_points=2000, seed=7)  # same subsample, same number
    assert fit.dimension == pytest.approx(4, rel=0.15)
    assert fit.n_points == 2000
    assert len(fit.log_mu) == len(fit.neg_log_survival) <= 200
    assert np.all(np.diff(fit.log_mu) >= 0) and np.all(np.diff(fit.neg_log_survival) > 0)


def test_intrinsic_dimension_table_on_known_subspaces(known_store: FakeStore):
    pca = store_pca(known_store)
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
    pca = store_pca(known_store)
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
    pca = store_pca(store)
    every = torch.cat([u for u, _ in store.iter_units()]).double()
    torch.testing.assert_close(pca.mean, every.mean(0))
    full = StreamingPCA().update(every).compute()
    torch.testing.assert_close(pca.explained_variance, full.explained_variance)
    table, _ = intrinsic_dimension_table(store, pca)
    assert table.unit.tolist() == store.labels
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
    grid = layer_grid(table, "x")
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


def test_id_findings_clear_trends_hold():
    table = id_table(ratio={0: 1.0, 1: 1.5, 2: 2.0, 3: 3.0}, twonn={0: 5, 1: 9, 2: 8, 3: 4})
    found = id_findings(table, d_out=128).set_index("claim").holds
    assert found.all(), found


def test_id_findings_noise_and_end_peaks_do_not_hold():
    flat = id_table(ratio={0: 1.0, 1: 1.0, 2: 1.0, 3: 1.01}, twonn={0: 5, 1: 5.02, 2: 5, 3: 5},
                    jitter=0.5)
    found = id_findings(flat, d_out=128).holds.tolist()
    assert found[:2] == [True, True] and found[2:] == [False, False]
    end_peak = id_table(ratio={0: 1.0, 1: 2.0, 2: 3.0}, twonn={0: 5, 1: 6, 2: 9})
    assert not id_findings(end_peak, d_out=128).holds.iloc[3]
    high = id_table(ratio={0: 1, 1: 2}, twonn={0: 60, 1: 70}).assign(linear_id=100)
    assert id_findings(high, d_out=128).holds.iloc[:2].tolist() == [False, False]


def pca_of(units: torch.Tensor):
    return StreamingPCA().update(units).compute()


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
    with pytest.raises(ValueError, match="unit shapes"):
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
    sim = unit_similarity_matrix(pca_of(units), labels, labels)
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


def test_stability_findings():
    chance = pd.Series([0.1, 0.15])
    good = stability_findings(long_similarity({"a": 0.9, "b": 0.7, "rnd": 0.3}), chance, "rnd")
    assert good.holds.tolist() == [True, True]
    assert "rnd 0.31" in good.measured.iloc[1]
    bad = stability_findings(long_similarity({"a": 0.9, "b": 0.05, "rnd": 0.5}), chance, "rnd")
    assert bad.holds.tolist() == [False, False]
    no_control = stability_findings(long_similarity({"a": 0.9}), chance, "rnd")
    assert len(no_control) == 1 and no_control.holds.all()
