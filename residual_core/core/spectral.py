"""Per-unit principal components (streamed batch by batch) and spectral cosine similarity.

PCA is accumulated as per-unit means and centred scatter matrices merged batch by batch
(Chan et al.'s parallel update, float64), so a dataset whose unit encodings exceed memory is
never materialised; :func:`unit_pca` runs it over :class:`~residual_core.core.units.Units`, a
stream of them or an encoding store, and its :class:`PCAResult` is indexed by unit label. The
spectral cosine similarity compares two principal bases, weighting directions by their variance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.core.checks import check_finite
from residual_core.core.units import UnitLayout, Units

__all__ = [
    "PCAResult",
    "StreamingPCA",
    "UnitPCA",
    "n_components_for",
    "spectral_similarity",
    "spectral_similarity_matrix",
    "unit_pca",
]


def n_components_for(
    explained_variance_ratio: Float[Tensor, "*unit k"], threshold: float
) -> Tensor:
    """Smallest number of leading components whose explained variance reaches ``threshold``.

    Args:
        explained_variance_ratio: Per-component ratios, sorted descending, summing to 1.
        threshold: Fraction in (0, 1], e.g. 0.99 for the linear intrinsic dimension.

    Returns:
        Integer tensor with the leading shape of the input.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    cum = explained_variance_ratio.cumsum(-1)
    # A small slack so that a threshold of 1.0 is reached despite float rounding.
    reached = cum >= threshold - 1e-9
    k = reached.float().argmax(-1) + 1
    return torch.where(reached.any(-1), k, torch.full_like(k, cum.shape[-1]))


@dataclass
class UnitPCA:
    """Principal components of one unit.

    Attributes:
        mean: The unit's mean.
        components: Principal directions as rows, sorted by decreasing variance.
        explained_variance: Variance along each direction (unbiased, ``n - 1``).
        n_samples: Number of samples the statistics were computed from.
    """

    mean: Float[Tensor, " d"]
    components: Float[Tensor, "k d"]
    explained_variance: Float[Tensor, " k"]
    n_samples: int

    @property
    def explained_variance_ratio(self) -> Float[Tensor, " k"]:
        """Explained variance normalised to sum to one."""
        total = self.explained_variance.sum(-1, keepdim=True)
        return self.explained_variance / total.clamp_min(torch.finfo(total.dtype).tiny)

    def n_components(self, threshold: float) -> int:
        """The number of components reaching ``threshold`` explained variance."""
        return int(n_components_for(self.explained_variance_ratio, threshold))

    def basis(self, threshold: float = 1.0) -> tuple[Float[Tensor, "k d"], Float[Tensor, " k"]]:
        """Directions and variances, truncated at ``threshold`` explained variance."""
        k = self.n_components(threshold)
        return self.components[:k], self.explained_variance[:k]


@dataclass
class PCAResult:
    """Principal components of every unit, indexed by unit label.

    Attributes:
        mean: Per-unit mean.
        components: Principal directions as rows, sorted by decreasing variance.
        explained_variance: Variance along each direction (unbiased, ``n - 1``).
        n_samples: Number of samples the statistics were computed from.
        labels: Unit labels of the ``unit`` dimension (``None`` for unlabelled data).
        layout: The model's unit layout (``None`` for unlabelled data).

    Example:
        >>> pca = unit_pca(store)
        >>> pca["L3H1"].basis(0.9)            # one unit: (components (k, d), variances (k,))
        >>> pca.select(pca.layout.heads())    # every head, still a PCAResult
    """

    mean: Float[Tensor, "unit d"]
    components: Float[Tensor, "unit k d"]
    explained_variance: Float[Tensor, "unit k"]
    n_samples: int
    labels: tuple[str, ...] | None = None
    layout: UnitLayout | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:
            self.labels = tuple(self.labels)
            if len(self.labels) != self.mean.shape[0]:
                raise ValueError(f"{len(self.labels)} labels for {self.mean.shape[0]} units")

    @property
    def explained_variance_ratio(self) -> Float[Tensor, "unit k"]:
        """Explained variance normalised to sum to one per unit."""
        total = self.explained_variance.sum(-1, keepdim=True)
        return self.explained_variance / total.clamp_min(torch.finfo(total.dtype).tiny)

    def n_components(self, threshold: float) -> Tensor:
        """Per unit, the number of components reaching ``threshold`` explained variance."""
        return n_components_for(self.explained_variance_ratio, threshold)

    def index(self, labels: str | Sequence[str]) -> list[int]:
        """Positions of unit labels along the ``unit`` dimension.

        Raises:
            KeyError: For a label that is not here (or a PCA without labels).
        """
        if self.labels is None:
            raise KeyError("this PCA has no unit labels: compute it from Units (unit_pca)")
        return Units(self.mean[None], self.labels, self.layout).index(labels)

    def __getitem__(self, key: str | Sequence[str]) -> UnitPCA | PCAResult:
        """``pca["L3H1"]`` → that unit's :class:`UnitPCA`; a list of labels → a PCAResult."""
        if not isinstance(key, str):
            return self.select(key)
        i = self.index(key)[0]
        return UnitPCA(self.mean[i], self.components[i], self.explained_variance[i],
                       self.n_samples)

    def __len__(self) -> int:
        """Number of units."""
        return self.mean.shape[0]

    def select(self, labels: str | Sequence[str]) -> PCAResult:
        """The PCA of the given units, in the order asked."""
        idx = self.index(labels)
        return PCAResult(self.mean[idx], self.components[idx], self.explained_variance[idx],
                         self.n_samples, tuple(self.labels[i] for i in idx), self.layout)

    def basis(self, label: str, threshold: float = 1.0) -> tuple[Tensor, Tensor]:
        """Directions and variances of one unit, truncated at ``threshold`` explained variance.

        Returns:
            ``(components (k, d), explained_variance (k,))``.
        """
        return self[label].basis(threshold)


class StreamingPCA:
    """Accumulates per-unit means and scatter matrices batch by batch.

    Example:
        >>> pca = StreamingPCA()
        >>> for units in store.iter_units():   # Units, or (batch, unit, d) tensors
        ...     pca.update(units)
        >>> result = pca.compute()             # labelled when Units were given
    """

    def __init__(self, dtype: torch.dtype = torch.float64):
        self.dtype = dtype
        self.n = 0
        self.mean: Tensor | None = None
        self.scatter: Tensor | None = None
        self.labels: tuple[str, ...] | None = None
        self.layout: UnitLayout | None = None

    def update(self, x: Tensor | Units) -> StreamingPCA:
        """Merge one batch ``(batch, unit, d)`` into the running statistics (on its device).

        Raises:
            ValueError: For a batch that is not ``(batch, unit, d)``, or Units with other
                labels than the batches before.
            InputError: For a batch holding NaN or infinite values.
        """
        if isinstance(x, Units):
            if self.labels is not None and x.labels != self.labels:
                raise ValueError("StreamingPCA.update: these units differ from the earlier ones")
            self.labels, self.layout = x.labels, x.layout
            x = x.data
        if x.ndim != 3:
            raise ValueError(f"expected (batch, unit, d), got shape {tuple(x.shape)}")
        # one NaN would make every mean and component of its unit NaN, silently
        check_finite(x, "the units given to the PCA")
        x = x.to(self.dtype)
        b = x.shape[0]
        if b == 0:
            return self
        batch_mean = x.mean(0)
        xc = x - batch_mean
        batch_scatter = torch.einsum("bud,bue->ude", xc, xc)
        return self._merge(b, batch_mean, batch_scatter)

    def merge(self, other: StreamingPCA) -> StreamingPCA:
        """Merge statistics accumulated elsewhere (another process or shard)."""
        if other.n == 0:
            return self
        if self.labels is None:
            self.labels, self.layout = other.labels, other.layout
        return self._merge(other.n, other.mean, other.scatter)

    def _merge(self, n_b: int, mean_b: Tensor, scatter_b: Tensor) -> StreamingPCA:
        if self.n == 0:
            self.n, self.mean, self.scatter = n_b, mean_b.clone(), scatter_b.clone()
            return self
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"shape mismatch: {tuple(mean_b.shape)} vs {tuple(self.mean.shape)}")
        n = self.n + n_b
        delta = mean_b.to(self.mean) - self.mean
        self.scatter += scatter_b.to(self.scatter) + torch.einsum(
            "ud,ue->ude", delta, delta
        ) * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n
        return self

    def compute(self) -> PCAResult:
        """Eigen-decompose the covariance of every unit.

        Raises:
            ValueError: With fewer than two samples.
        """
        if self.n < 2:
            raise ValueError(f"PCA needs at least 2 samples, got {self.n}")
        cov = self.scatter / (self.n - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals = evals.flip(-1).clamp_min(0)
        components = evecs.flip(-1).transpose(-1, -2)
        return PCAResult(self.mean.clone(), components, evals, self.n, self.labels, self.layout)


@overload
def unit_pca(source, *, device: str | torch.device | None = None,
             output: Literal[False] = False) -> PCAResult: ...


@overload
def unit_pca(source, *, device: str | torch.device | None = None,
             output: Literal[True]) -> tuple[PCAResult, PCAResult]: ...


@torch.no_grad()
def unit_pca(
    source: Units | Iterable[Units] | object,
    *,
    device: str | torch.device | None = None,
    output: bool = False,
) -> PCAResult | tuple[PCAResult, PCAResult]:
    """Principal components of every unit, in one streamed pass (float64), indexed by label.

    Args:
        source: :class:`Units`, an iterable of them (batches), or anything with an
            ``iter_units`` method (an :class:`~residual_core.core.store.EncodingStore`: read
            chunk by chunk).
        device: Where the scatter matrices are accumulated (default: where the units are).
        output: Also the PCA of the summed output ``Σ_u h_u`` (the spectral adapter's basis),
            from the same pass, as a one-unit PCA labelled ``"output"``.

    Returns:
        The per-unit PCA, or ``(per_unit, output)`` with ``output=True``.
    """
    if isinstance(source, Units):
        batches: Iterable[Units] = [source]
    elif hasattr(source, "iter_units"):
        batches = source.iter_units(device=device or "cpu")
    else:
        batches = source
    per_unit, total = StreamingPCA(), StreamingPCA()
    for units in batches:
        if device is not None:
            units = units.to(device)
        per_unit.update(units)
        if output:
            total.update(units.data.sum(1, keepdim=True))
    result = per_unit.compute()
    if not output:
        return result
    out = total.compute()
    out.labels, out.layout = ("output",), result.layout
    return result, out


def _greedy_pick(c: Float[Tensor, "pair kx ky"], k: Tensor) -> Float[Tensor, "pair kmax"]:
    """Greedily take the largest entry, drop its row and column; ``k`` picks per pair."""
    c = c.clone()
    pairs = torch.arange(c.shape[0], device=c.device)
    kmax = int(k.max())
    picks = torch.zeros(c.shape[0], kmax, dtype=c.dtype, device=c.device)
    ky = c.shape[2]
    for step in range(kmax):
        flat = c.flatten(1).argmax(1)
        row, col = flat // ky, flat % ky
        picks[:, step] = torch.where(step < k, c[pairs, row, col], torch.zeros_like(picks[:, 0]))
        c[pairs, row, :] = -1.0
        c[pairs, :, col] = -1.0
    return picks


def spectral_similarity_matrix(
    bases_x: list[Float[Tensor, "_kx d"]],
    weights_x: list[Float[Tensor, " _kx"]],
    bases_y: list[Float[Tensor, "_ky d"]],
    weights_y: list[Float[Tensor, " _ky"]],
    weighted: bool = True,
) -> Float[Tensor, "nx ny"]:
    """Spectral cosine similarity of every basis in ``x`` with every basis in ``y``.

    For bases ``X`` (k_x × d) and ``Y`` (k_y × d) with weights (squared singular values or
    variances) ``wx``, ``wy`` and ``k = min(k_x, k_y)``:
    ``W = outer(wx, wy) / ‖(wx_i wy_i)_{i<k}‖``, ``C = |X Yᵀ| ⊙ W``; take the largest entry of
    ``C`` k times, removing its row and column; the score is the 2-norm of the taken values,
    in [0, 1] (1 for identical bases, 0 for orthogonal ones). Unweighted, ``W = 1/√k`` and the
    score is ``√(Σ c_i² / k)``.

    Args:
        bases_x: Orthonormal row bases (already truncated, e.g. at 90% explained variance).
        weights_x: Per-direction weights, sorted descending like the bases.
        bases_y: As ``bases_x``.
        weights_y: As ``weights_x``.
        weighted: Use the weights; ``False`` gives the unweighted score.

    Returns:
        Scores, shape ``(len(bases_x), len(bases_y))``.
    """
    nx, ny = len(bases_x), len(bases_y)
    if nx != len(weights_x) or ny != len(weights_y):
        raise ValueError("each basis needs one weight vector")
    ref = bases_x[0]
    kx = max(b.shape[0] for b in bases_x)
    ky = max(b.shape[0] for b in bases_y)
    d = ref.shape[1]

    def pad(bases, weights, kmax):
        b = torch.zeros(len(bases), kmax, d, dtype=torch.float64, device=ref.device)
        w = torch.zeros(len(bases), kmax, dtype=torch.float64, device=ref.device)
        for i, (bi, wi) in enumerate(zip(bases, weights, strict=True)):
            if bi.shape[0] != wi.shape[0]:
                raise ValueError(f"basis {i} has {bi.shape[0]} rows but {wi.shape[0]} weights")
            b[i, : bi.shape[0]] = bi.double()
            w[i, : wi.shape[0]] = wi.double() if weighted else 1.0
        return b, w, torch.tensor([bi.shape[0] for bi in bases], device=ref.device)

    bx_all, wx_all, kxs_all = pad(bases_x, weights_x, kx)
    by, wy, kys = pad(bases_y, weights_y, ky)
    # Rows of x in chunks, so the (chunk, ny, kx, ky) tensors stay around 2e7 entries.
    chunk = max(1, int(2e7 // max(1, ny * kx * ky)))
    rows = [
        _similarity_rows(bx_all[i : i + chunk], wx_all[i : i + chunk], kxs_all[i : i + chunk],
                         by, wy, kys)
        for i in range(0, nx, chunk)
    ]
    return torch.cat(rows)


def _similarity_rows(bx, wx, kxs, by, wy, kys) -> Tensor:
    nx, kx = wx.shape
    ny, ky = wy.shape
    ref = bx
    # All pairs (i, j) flattened into one batch.
    cos = torch.einsum("iad,jbd->ijab", bx, by).abs()
    w = torch.einsum("ia,jb->ijab", wx, wy)
    k = torch.minimum(kxs[:, None], kys[None, :])
    kk = min(kx, ky)
    diag = wx[:, None, :kk] * wy[None, :, :kk]
    diag = diag * (torch.arange(kk, device=ref.device) < k[..., None])
    norm = diag.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    c = cos * w / norm[..., None, None]
    valid = (torch.arange(kx, device=ref.device)[:, None] < kxs[:, None, None])[:, None] & (
        torch.arange(ky, device=ref.device)[None, :] < kys[:, None, None]
    )[None]
    c = torch.where(valid, c, torch.full_like(c, -1.0))
    picks = _greedy_pick(c.flatten(0, 1), k.flatten())
    return picks.norm(dim=-1).reshape(nx, ny)


def spectral_similarity(
    x: Float[Tensor, "kx d"],
    wx: Float[Tensor, " kx"],
    y: Float[Tensor, "ky d"],
    wy: Float[Tensor, " ky"],
    weighted: bool = True,
) -> float:
    """Spectral cosine similarity of two bases (see :func:`spectral_similarity_matrix`)."""
    return float(spectral_similarity_matrix([x], [wx], [y], [wy], weighted)[0, 0])
