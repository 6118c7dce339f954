"""Intrinsic dimension of unit representations: linear (PCA-99) and nonlinear (TwoNN).

TwoNN (Facco et al. 2017): for each point the distances ``r1 < r2`` to its two nearest
neighbours; ``μ = r2 / r1`` follows a Pareto law with exponent the intrinsic dimension,
estimated as the slope through the origin of ``−log(1 − F(μ))`` against ``log μ`` on the first
90% of the sorted ``μ``. Duplicate rows are removed before the neighbour search (as DADApy
does): dropping only the points with ``r1 = 0`` afterwards would keep every point whose two
nearest neighbours are the two copies of a duplicate, with ``μ = 1``, and bias the estimate up
(a 5-d Gaussian with 300 of 2,000 rows duplicated reads ~6 instead of 5). Float16 encodings
make exact duplicates more likely, so the number removed is reported.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.core.spectral import n_components_for

__all__ = [
    "TwoNNCurve",
    "linear_id",
    "two_nearest_neighbours",
    "twonn",
    "twonn_curve",
    "unique_rows",
]


class TwoNNCurve(NamedTuple):
    """A TwoNN fit with its data.

    Attributes:
        dimension: The estimate (slope through the origin).
        log_mu: ``log μ`` of the fitted points (float64).
        neg_log_survival: ``−log(1 − F(μ))`` of the fitted points.
        n_points: Points the estimate is computed from (after removing duplicates).
        n_duplicates: Duplicate rows removed before the neighbour search.
    """

    dimension: float
    log_mu: Tensor
    neg_log_survival: Tensor
    n_points: int
    n_duplicates: int


def unique_rows(x: Float[Tensor, "n d"]) -> Float[Tensor, "m d"]:
    """The distinct rows of ``x``, each at its first occurrence, in the original order."""
    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), x.shape[0], device=x.device)
    first = first.scatter_reduce(0, inverse, torch.arange(x.shape[0], device=x.device), "amin")
    return x[first.sort().values]


def linear_id(
    explained_variance_ratio: Float[Tensor, "*unit k"], threshold: float = 0.99
) -> Tensor:
    """Linear intrinsic dimension: components needed for ``threshold`` explained variance."""
    return n_components_for(explained_variance_ratio, threshold)


def two_nearest_neighbours(
    x: Float[Tensor, "n d"], chunk_size: int = 2048, n_candidates: int = 4
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Exact distances to the first and second nearest neighbour of every point.

    Candidates are found with matrix-product distances in chunks (fast, memory ``chunk × n``),
    then their distances are recomputed exactly from differences, so duplicates give exactly 0.

    Args:
        x: Points (on any device; computed there).
        chunk_size: Query rows per chunk.
        n_candidates: Candidates re-ranked exactly (≥ 2).

    Returns:
        ``(r1, r2)``, each ``(n,)``, in float64.
    """
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"TwoNN needs at least 3 points, got {n}")
    x = x.double()
    sq = (x * x).sum(-1)
    n_cand = min(n_candidates, n - 1)
    r1 = torch.empty(n, dtype=torch.float64, device=x.device)
    r2 = torch.empty_like(r1)
    for start in range(0, n, chunk_size):
        q = x[start : start + chunk_size]
        d2 = sq[start : start + chunk_size, None] + sq[None] - 2 * q @ x.T
        rows = torch.arange(q.shape[0], device=x.device)
        d2[rows, rows + start] = float("inf")  # not its own neighbour
        cand = d2.topk(n_cand, largest=False).indices
        exact = (q[:, None] - x[cand]).norm(dim=-1)
        exact = exact.sort(-1).values
        r1[start : start + q.shape[0]] = exact[:, 0]
        r2[start : start + q.shape[0]] = exact[:, 1]
    return r1, r2


def twonn_curve(
    x: Float[Tensor, "n d"],
    fraction: float = 0.9,
    max_points: int | None = None,
    seed: int = 0,
    chunk_size: int = 2048,
) -> TwoNNCurve:
    """TwoNN fit with its data: the estimate and the fitted points.

    Args:
        x: Points, one per row.
        fraction: Leading fraction of the sorted ``μ`` used in the fit (0.9 in the paper).
        max_points: Subsample to this many distinct points (the paper uses 50k), seeded.
        seed: Seed of the subsample.
        chunk_size: Query rows per distance chunk.

    Returns:
        The estimate, the fitted points, and how many points were used and removed as
        duplicates.

    Raises:
        ValueError: For a bad ``fraction`` or fewer than 3 distinct points.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_rows = x.shape[0]
    x = unique_rows(x)
    n_duplicates = n_rows - x.shape[0]
    if max_points is not None and x.shape[0] > max_points:
        gen = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=gen)[:max_points].to(x.device)]
    if x.shape[0] < 3:
        raise ValueError(f"fewer than 3 distinct points ({x.shape[0]} after removing "
                         f"{n_duplicates} duplicates): TwoNN is undefined")
    r1, r2 = two_nearest_neighbours(x, chunk_size)
    mu = (r2 / r1).sort().values
    n = mu.shape[0]
    f = torch.arange(1, n + 1, dtype=torch.float64, device=mu.device) / n
    m = int(n * fraction)
    xs, ys = mu[:m].log(), -torch.log1p(-f[:m])
    return TwoNNCurve(float((xs * ys).sum() / (xs * xs).sum()), xs, ys, n, n_duplicates)


def twonn(
    x: Float[Tensor, "n d"],
    fraction: float = 0.9,
    max_points: int | None = None,
    seed: int = 0,
    chunk_size: int = 2048,
) -> float:
    """TwoNN intrinsic dimension estimate (see :func:`twonn_curve` for the arguments)."""
    return twonn_curve(x, fraction, max_points, seed, chunk_size).dimension
