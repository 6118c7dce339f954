"""PCA (streamed vs full SVD), intrinsic dimension and spectral similarity on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from residual_core.core.intrinsic_dim import linear_id, twonn, twonn_curve, unique_rows
from residual_core.core.spectral import (
    StreamingPCA,
    n_components_for,
    spectral_similarity,
    spectral_similarity_matrix,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def low_rank_units(n: int, n_units: int, d: int, ranks: list[int], seed: int = 0):
    """Units whose data lie (up to tiny noise) in subspaces of the given ranks, with offsets."""
    g = gen(seed)
    out = []
    for r in ranks:
        basis = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
        scales = torch.linspace(3.0, 1.0, r, dtype=torch.float64)
        coords = torch.randn(n, r, generator=g, dtype=torch.float64) * scales
        offset = 5 * torch.randn(d, generator=g, dtype=torch.float64)
        out.append(coords @ basis.T + offset + 1e-4 * torch.randn(n, d, generator=g,
                                                                  dtype=torch.float64))
    return torch.stack(out, 1)


def test_streaming_pca_matches_full_svd_and_recovers_rank():
    x = low_rank_units(600, 3, 20, ranks=[2, 5, 9])
    pca = StreamingPCA()
    for part in torch.split(x, [1, 100, 37, 262, 200]):  # uneven batches, one of size 1
        pca.update(part)
    res = pca.compute()
    assert res.n_samples == 600
    for u, rank in enumerate([2, 5, 9]):
        xu = x[:, u]
        xc = xu - xu.mean(0)
        _, s, vh = torch.linalg.svd(xc, full_matrices=False)
        torch.testing.assert_close(res.mean[u], xu.mean(0))
        torch.testing.assert_close(res.explained_variance[u], s**2 / 599, rtol=1e-8, atol=1e-10)
        # Signal directions only (noise directions are degenerate); sign is arbitrary.
        dots = (res.components[u, :rank] * vh[:rank]).sum(-1).abs()
        torch.testing.assert_close(dots, torch.ones(rank, dtype=torch.float64))
    assert linear_id(res.explained_variance_ratio).tolist() == [2, 5, 9]


def test_streaming_pca_merge_equals_single_pass():
    x = low_rank_units(300, 2, 8, ranks=[3, 4], seed=1)
    one = StreamingPCA().update(x)
    a, b = StreamingPCA().update(x[:120]), StreamingPCA().update(x[120:])
    merged = a.merge(b).compute()
    torch.testing.assert_close(merged.explained_variance, one.compute().explained_variance)
    torch.testing.assert_close(merged.mean, one.compute().mean)


def test_pca_errors_are_clear():
    with pytest.raises(ValueError, match="at least 2 samples"):
        StreamingPCA().update(torch.zeros(1, 2, 3)).compute()
    with pytest.raises(ValueError, match=r"\(batch, unit, d\)"):
        StreamingPCA().update(torch.zeros(4, 3))


def test_n_components_for():
    evr = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.99, 0.01, 0.0, 0.0]])
    assert n_components_for(evr, 0.8).tolist() == [2, 1]
    assert n_components_for(evr, 0.99).tolist() == [4, 1]
    assert n_components_for(evr, 1.0).tolist() == [4, 2]
    with pytest.raises(ValueError, match="threshold"):
        n_components_for(evr, 0.0)


def embed(points: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    q = torch.linalg.qr(torch.randn(d, points.shape[1], generator=gen(seed),
                                    dtype=torch.float64))[0]
    return points.double() @ q.T


@pytest.mark.parametrize("true_dim", [2, 5, 8])
def test_twonn_recovers_gaussian_dimension(true_dim):
    pts = torch.randn(4000, true_dim, generator=gen(true_dim), dtype=torch.float64)
    est = twonn(embed(pts, 40, seed=1))
    assert abs(est - true_dim) / true_dim < 0.1, f"estimated {est:.2f} for {true_dim}"


def test_twonn_recovers_swiss_roll_dimension():
    g = gen(3)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(4000, generator=g, dtype=torch.float64))
    h = 20 * torch.rand(4000, generator=g, dtype=torch.float64)
    roll = torch.stack([t * torch.cos(t), h, t * torch.sin(t)], 1)
    est = twonn(embed(roll, 30, seed=2))
    assert abs(est - 2) / 2 < 0.1, f"estimated {est:.2f} for a swiss roll"


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_twonn_with_duplicated_rows_keeps_the_dimension(seed):
    """A 5-d Gaussian in 20-d with 300 of its 2,000 rows duplicated still reads 5 (within 10%):
    duplicates are removed before the neighbour search, and counted."""
    pts = embed(torch.randn(2000, 5, generator=gen(seed), dtype=torch.float64), 20, seed=seed)
    fit = twonn_curve(pts)
    dup = twonn_curve(torch.cat([pts, pts[:300]])[torch.randperm(2300, generator=gen(seed))])
    assert abs(fit.dimension - 5) / 5 < 0.1 and abs(dup.dimension - 5) / 5 < 0.1
    assert (fit.n_duplicates, dup.n_duplicates) == (0, 300)
    assert dup.n_points == 2000
    assert dup.dimension == pytest.approx(numpy_twonn(pts.numpy()), rel=1e-9)


def test_unique_rows_keeps_first_occurrences_in_order():
    x = torch.tensor([[1.0, 2], [3, 4], [1, 2], [0, 0], [3, 4]])
    assert unique_rows(x).tolist() == [[1.0, 2], [3, 4], [0, 0]]


def numpy_twonn(x: np.ndarray, fraction: float = 0.9) -> float:
    """An independent reference: brute force distances, numpy least squares."""
    x = np.unique(x, axis=0)  # duplicates removed first
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    d.sort(axis=1)
    r1, r2 = d[:, 0], d[:, 1]
    keep = r1 > 0
    mu = np.sort(r2[keep] / r1[keep])
    n = len(mu)
    f = np.arange(1, n + 1) / n
    m = int(n * fraction)
    xs, ys = np.log(mu[:m])[:, None], -np.log(1 - f[:m])
    return float(np.linalg.lstsq(xs, ys, rcond=None)[0][0])


def test_twonn_agrees_with_independent_implementation():
    x = torch.randn(700, 6, generator=gen(7), dtype=torch.float64)
    ours = twonn(x, chunk_size=128)
    assert ours == pytest.approx(numpy_twonn(x.numpy()), rel=1e-9)


def test_twonn_subsampling_is_seeded():
    x = torch.randn(1500, 3, generator=gen(8), dtype=torch.float64)
    assert twonn(x, max_points=500, seed=1) == twonn(x, max_points=500, seed=1)
    assert twonn(x, max_points=500, seed=1) != twonn(x, max_points=500, seed=2)


def orthonormal(k: int, d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, k, generator=gen(seed), dtype=torch.float64))[0].T


def test_similarity_identical_is_one_and_orthogonal_is_zero():
    q = orthonormal(6, 12, seed=0)
    w = torch.tensor([5.0, 4.0, 2.0], dtype=torch.float64)
    x, y = q[:3], q[3:]
    assert spectral_similarity(x, w, x, w) == pytest.approx(1.0)
    assert spectral_similarity(x, w, x, w, weighted=False) == pytest.approx(1.0)
    assert spectral_similarity(x, w, y, w) == pytest.approx(0.0, abs=1e-12)


def test_similarity_partial_overlap_closed_forms():
    e = torch.eye(4, dtype=torch.float64)
    x, y = e[[0, 1]], e[[0, 2]]  # share one of two directions
    assert spectral_similarity(x, torch.ones(2), y, torch.ones(2), weighted=False) == (
        pytest.approx(math.sqrt(0.5))
    )
    wx, wy = torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.5])
    expected = 3 * 2 / math.hypot(3 * 2, 1 * 0.5)
    assert spectral_similarity(x, wx, y, wy) == pytest.approx(expected)
    # y is x rotated by θ within the same plane: the unweighted score is |cos θ|.
    theta = 0.3
    rot = torch.tensor([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]],
                       dtype=torch.float64)
    assert spectral_similarity(x, torch.ones(2), rot @ x, torch.ones(2), weighted=False) == (
        pytest.approx(math.cos(theta))
    )


def test_similarity_matrix_matches_pairwise_and_handles_ragged_bases():
    bases = [orthonormal(k, 10, seed=k) for k in (2, 5, 3)]
    weights = [torch.linspace(3, 1, b.shape[0], dtype=torch.float64) for b in bases]
    m = spectral_similarity_matrix(bases, weights, bases, weights)
    for i in range(3):
        for j in range(3):
            one = spectral_similarity(bases[i], weights[i], bases[j], weights[j])
            assert m[i, j].item() == pytest.approx(one)
    torch.testing.assert_close(m, m.T)
    torch.testing.assert_close(m.diagonal(), torch.ones(3, dtype=torch.float64))
    assert ((m >= 0) & (m <= 1 + 1e-12)).all()
