"""Per-unit geometry of stored encodings: intrinsic dimension, depth profiles, subspace stability.

The functions here turn an :class:`~residual_core.core.store.EncodingStore` into the tables behind
the book's §3.1–3.2 chapters: one row per unit (``embed``, ``L{l}.mlp``, ``L{l}H{h}``) with its
linear and nonlinear intrinsic dimension, per-layer profiles over heads, and the spectral cosine
similarity (``SPEC.md`` §3) of a unit's principal subspace on one dataset with the same unit's
subspace on another. Findings are returned as small tables of *measured* numbers and whether a paper
claim holds on them, so chapters print them instead of hard-coding any.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.core.intrinsic_dim import linear_id, twonn_curve
from residual_core.core.spectral import PCAResult, StreamingPCA, spectral_similarity_matrix

__all__ = [
    "TwoNNFit",
    "depth_profile",
    "id_findings",
    "intrinsic_dimension_table",
    "layer_grid",
    "principal_bases",
    "random_subspace_similarity",
    "stability_findings",
    "store_pca",
    "subspace_similarity",
    "twonn_fit",
    "unit_index",
    "unit_similarity_matrix",
]

_LABEL = re.compile(r"^(?:embed|L(?P<layer>\d+)(?:\.(?P<mlp>mlp)|H(?P<head>\d+)))$")


def unit_index(labels: Sequence[str]) -> pd.DataFrame:
    """Parse unit labels into their kind, layer and head.

    Args:
        labels: Unit labels in the standard form (``embed``, ``L{l}.mlp``, ``L{l}H{h}``).

    Returns:
        One row per label, in order, with columns ``unit``, ``kind`` (``embed``/``mlp``/``head``),
        ``layer`` (-1 for the embedding) and ``head`` (-1 unless a head).

    Raises:
        ValueError: For a label that is not in the standard form.
    """
    rows = []
    for label in labels:
        match = _LABEL.match(label)
        if match is None:
            raise ValueError(
                f"unexpected unit label {label!r} (want embed, L{{l}}.mlp or L{{l}}H{{h}})"
            )
        kind = "embed" if label == "embed" else "mlp" if match["mlp"] else "head"
        layer = -1 if kind == "embed" else int(match["layer"])
        rows.append((label, kind, layer, int(match["head"]) if kind == "head" else -1))
    return pd.DataFrame(rows, columns=["unit", "kind", "layer", "head"])


def store_pca(store, device: str | torch.device = "cpu") -> PCAResult:
    """Principal components of every unit of a store, streamed chunk by chunk (float64).

    Args:
        store: An :class:`~residual_core.core.store.EncodingStore`.
        device: Where the scatter matrices are accumulated.

    Returns:
        The per-unit PCA, units in ``store.labels`` order.
    """
    pca = StreamingPCA()
    for units, _ in store.iter_units(device=device):
        pca.update(units)
    return pca.compute()


@dataclass
class TwoNNFit:
    """A TwoNN estimate with a thinned copy of the fitted curve, for plotting.

    Attributes:
        dimension: The estimated intrinsic dimension (slope through the origin).
        log_mu: ``log(r2 / r1)`` at evenly spaced quantiles of the fitted points.
        neg_log_survival: ``−log(1 − F)`` at the same points.
        n_points: Points used (after removing duplicates and subsampling).
        n_duplicates: Duplicate rows removed before the neighbour search.
    """

    dimension: float
    log_mu: np.ndarray
    neg_log_survival: np.ndarray
    n_points: int
    n_duplicates: int = 0


def twonn_fit(
    x: Float[Tensor, "n d"],
    fraction: float = 0.9,
    max_points: int | None = None,
    seed: int = 0,
    curve_points: int = 200,
) -> TwoNNFit:
    """TwoNN estimate as :func:`residual_core.core.intrinsic_dim.twonn`, keeping the fitted curve.

    Args:
        x: Points, one per row.
        fraction: Leading fraction of the sorted ``μ`` used in the fit (0.9 in the paper).
        max_points: Subsample to this many points first (the paper uses 50k), seeded.
        seed: Seed of the subsample.
        curve_points: Points of the curve kept for plotting.

    Returns:
        The estimate (identical to ``twonn`` on the same arguments) and the thinned curve.

    Raises:
        ValueError: If fewer than 3 non-duplicate points remain.
    """
    curve = twonn_curve(x, fraction, max_points, seed)
    xs, ys = curve.log_mu, curve.neg_log_survival
    m = xs.shape[0]
    pick = np.unique(np.linspace(0, m - 1, min(curve_points, m)).round().astype(int))
    return TwoNNFit(curve.dimension, xs.cpu().numpy()[pick], ys.cpu().numpy()[pick],
                    curve.n_points, curve.n_duplicates)


def intrinsic_dimension_table(
    store,
    pca: PCAResult,
    threshold: float = 0.99,
    max_points: int | None = 50_000,
    seed: int = 0,
    group: int = 4,
    device: str | torch.device = "cpu",
) -> tuple[pd.DataFrame, dict[str, TwoNNFit]]:
    """Linear and nonlinear intrinsic dimension of every unit of a store.

    Args:
        store: An :class:`~residual_core.core.store.EncodingStore`.
        pca: Its per-unit PCA (:func:`store_pca`).
        threshold: Explained variance defining the linear ID (0.99 in the paper).
        max_points: TwoNN subsample size (the paper's 50k); ``None`` uses every point.
        seed: Seed of the TwoNN subsample (the same points for every unit).
        group: Units read from the store at a time (memory ``n × group × d_out``).
        device: Where the nearest-neighbour distances are computed.

    Returns:
        ``(table, fits)``: the table has one row per unit with the :func:`unit_index` columns and
        ``linear_id`` (components for ``threshold``), ``evr_pc1`` (first component's explained
        variance ratio), ``twonn``, ``twonn_duplicates`` (rows removed before the TwoNN
        search), ``ratio`` (linear / TwoNN), ``rank_bound`` (the most dimensions the unit can
        span: for a head its ``d_head`` values, plus its share of the out-projection bias
        scaled by ``1/σ`` along one direction, plus with shared centring its share of the
        stream mean ``μ/σ`` along ``γ @ P``; else ``min(d_model, d_out)``) and ``linear_frac``
        (linear ID / ``d_out``); ``fits`` maps unit → its :class:`TwoNNFit`.
    """
    labels = store.labels
    lay = store.layout
    table = unit_index(labels)
    evr = pca.explained_variance_ratio
    table["linear_id"] = linear_id(evr, threshold).cpu().numpy()
    table["evr_pc1"] = evr[:, 0].cpu().numpy()
    fits: dict[str, TwoNNFit] = {}
    for start in range(0, len(labels), group):
        chunk = labels[start : start + group]
        units = store.units(chunk, device=device)
        for j, label in enumerate(chunk):
            fits[label] = twonn_fit(units[:, j], max_points=max_points, seed=seed)
        del units
    table["twonn"] = [fits[label].dimension for label in labels]
    table["twonn_duplicates"] = [fits[label].n_duplicates for label in labels]
    table["ratio"] = table.linear_id / table.twonn
    head_bound = lay.d_head + (2 if store.centering == "shared" else 1)
    table["rank_bound"] = np.where(table.kind == "head", head_bound,
                                   min(lay.d_model, lay.d_out))
    table["linear_frac"] = table.linear_id / lay.d_out
    return table, fits


def layer_grid(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """One column of a unit table as a layer × (heads, MLP) grid.

    Args:
        table: Has the :func:`unit_index` columns and ``column``.
        column: The value to lay out.

    Returns:
        Rows ``L0``..``L{n-1}``, columns ``H0``..``H{h-1}`` then ``MLP`` (if the table has MLPs).
    """
    heads = table[table.kind == "head"].pivot(index="layer", columns="head", values=column)
    heads.columns = [f"H{h}" for h in heads.columns]
    mlp = table[table.kind == "mlp"].set_index("layer")[column].rename("MLP")
    grid = heads.join(mlp, how="outer") if len(mlp) else heads
    grid.index = [f"L{layer}" for layer in grid.index]
    return grid.astype(float)


def depth_profile(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per layer, the spread of one value over that layer's heads, and its MLP's value.

    Args:
        table: Has the :func:`unit_index` columns and ``column``.
        column: The value to summarise.

    Returns:
        Indexed by layer, columns ``mean``, ``std`` (population), ``median``, ``min``, ``max``
        over the layer's heads and ``mlp`` (NaN if the table has no MLP for that layer).
    """
    heads = table[table.kind == "head"].groupby("layer")[column]
    profile = pd.DataFrame({
        "mean": heads.mean(),
        "std": heads.std(ddof=0),
        "median": heads.median(),
        "min": heads.min(),
        "max": heads.max(),
    })
    mlp = table[table.kind == "mlp"].set_index("layer")[column]
    profile["mlp"] = mlp.reindex(profile.index)
    profile.index.name = "layer"
    return profile


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _clear_gap(profile: pd.DataFrame, hi: int, lo: int, counts: pd.Series) -> tuple[float, bool]:
    """Difference of two layers' head means, and whether it exceeds twice its standard error."""
    se = np.sqrt(sum(profile.loc[i, "std"] ** 2 / counts[i] for i in (hi, lo)))
    gap = float(profile.loc[hi, "mean"] - profile.loc[lo, "mean"])
    return gap, bool(gap > 2 * se)


def id_findings(table: pd.DataFrame, d_out: int) -> pd.DataFrame:
    """The paper's §3.1 claims checked on an :func:`intrinsic_dimension_table` (heads only).

    - *low ID*: the median head's linear ID is below half of ``d_out`` and its TwoNN ID below a
      quarter;
    - *ratio grows with depth*: the Spearman correlation of layer and linear/TwoNN ratio over
      heads is positive and the last layer's mean ratio exceeds the first's by more than twice
      the standard error of that difference (head spread / √heads);
    - *hunchback*: the per-layer mean TwoNN ID peaks at an inner layer and exceeds both end
      layers by more than twice the standard error of each difference.

    Args:
        table: Output of :func:`intrinsic_dimension_table`.
        d_out: Width of the units' space.

    Returns:
        One row per claim: ``claim``, ``measured`` (the numbers, as text) and ``holds`` (bool).
    """
    heads = table[table.kind == "head"]
    counts = heads.groupby("layer").size()
    lin, nonlin = heads.linear_id.median(), heads.twonn.median()
    ratio = depth_profile(table, "ratio")
    first, last = int(ratio.index.min()), int(ratio.index.max())
    rho = _spearman(heads.layer.to_numpy(), heads.ratio.to_numpy())
    rise, rise_clear = _clear_gap(ratio, last, first, counts)
    twonn = depth_profile(table, "twonn")
    peak = int(twonn["mean"].idxmax())
    inner = peak not in (first, last)
    gaps = [_clear_gap(twonn, peak, end, counts) for end in (first, last)] if inner else []
    rows = [
        ("heads have a low linear ID relative to d_out",
         f"median linear ID {lin:.0f} of d_out {d_out} ({lin / d_out:.0%})",
         bool(lin / d_out < 0.5)),
        ("heads have a low nonlinear (TwoNN) ID relative to d_out",
         f"median TwoNN ID {nonlin:.1f} ({nonlin / d_out:.0%} of d_out)",
         bool(nonlin / d_out < 0.25)),
        ("the linear/nonlinear ratio grows with depth",
         f"Spearman(layer, ratio) = {rho:.2f}; mean ratio L{first} "
         f"{ratio.loc[first, 'mean']:.2f} → L{last} {ratio.loc[last, 'mean']:.2f} "
         f"({'clear' if rise_clear else 'within noise'})",
         bool(rho > 0 and rise > 0 and rise_clear)),
        ("the nonlinear ID is hunchbacked over depth (peaks inside)",
         f"mean TwoNN per layer {', '.join(f'{v:.1f}' for v in twonn['mean'])}; peak at "
         f"L{peak}" + (f", {gaps[0][0]:+.1f} over L{first} and {gaps[1][0]:+.1f} over L{last}"
                       f" ({'clear' if all(c for _, c in gaps) else 'within noise'})"
                       if inner else " (an end layer)"),
         bool(inner and all(c for _, c in gaps))),
    ]
    return pd.DataFrame(rows, columns=["claim", "measured", "holds"])


def principal_bases(
    pca: PCAResult, threshold: float = 0.9, units: Sequence[int] | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """Truncated principal bases and their variances, one per unit.

    Args:
        pca: Per-unit PCA.
        threshold: Explained variance at which each basis is cut (0.9 in the paper).
        units: Unit positions (default: all).

    Returns:
        ``(bases, weights)``: bases ``(k_u, d)`` and variances ``(k_u,)`` per unit.
    """
    units = range(pca.mean.shape[0]) if units is None else units
    pairs = [pca.basis(u, threshold) for u in units]
    return [b for b, _ in pairs], [w for _, w in pairs]


def subspace_similarity(
    pca_x: PCAResult, pca_y: PCAResult, threshold: float = 0.9, weighted: bool = True
) -> Float[Tensor, " unit"]:
    """Spectral cosine similarity of every unit's principal subspace on two datasets.

    Args:
        pca_x: Per-unit PCA on one dataset.
        pca_y: Per-unit PCA of the same units (same order) on another dataset.
        threshold: Explained variance at which both bases are cut.
        weighted: Weight directions by their variance (the paper's choice).

    Returns:
        Per unit, the similarity in [0, 1] (1: the same subspace with the same spectrum).
    """
    if pca_x.mean.shape != pca_y.mean.shape:
        raise ValueError(f"unit shapes differ: {tuple(pca_x.mean.shape)} vs "
                         f"{tuple(pca_y.mean.shape)}")
    bx, wx = principal_bases(pca_x, threshold)
    by, wy = principal_bases(pca_y, threshold)
    return torch.tensor([
        float(spectral_similarity_matrix([bx[u]], [wx[u]], [by[u]], [wy[u]], weighted)[0, 0])
        for u in range(len(bx))
    ], dtype=torch.float64)


def random_subspace_similarity(
    pca: PCAResult, threshold: float = 0.9, weighted: bool = True, seed: int = 0
) -> Float[Tensor, " unit"]:
    """Chance level: each unit's basis against a random orthonormal basis of the same spectrum.

    The random basis spans a uniformly drawn subspace of the unit's space with the same number
    of directions and the same variances, so the score is what the similarity gives for
    unrelated subspaces of these sizes.

    Args:
        pca: Per-unit PCA.
        threshold: Explained variance at which the basis is cut.
        weighted: As in :func:`subspace_similarity`.
        seed: Seed of the random bases.

    Returns:
        Per unit, the similarity to a random subspace.
    """
    gen = torch.Generator().manual_seed(seed)
    bases, weights = principal_bases(pca, threshold)
    out = []
    for basis, w in zip(bases, weights, strict=True):
        k, d = basis.shape
        gauss = torch.randn(d, k, generator=gen, dtype=torch.float64)
        random = torch.linalg.qr(gauss).Q.T.to(basis)
        out.append(float(spectral_similarity_matrix([basis], [w], [random], [w], weighted)[0, 0]))
    return torch.tensor(out, dtype=torch.float64)


def unit_similarity_matrix(
    pca: PCAResult, labels: Sequence[str], units: Sequence[str], threshold: float = 0.9,
    weighted: bool = True,
) -> pd.DataFrame:
    """Spectral cosine similarity between the principal subspaces of units of one dataset.

    Args:
        pca: Per-unit PCA, units in ``labels`` order.
        labels: All unit labels of the PCA.
        units: The units to compare (e.g. every head), by label.
        threshold: Explained variance at which the bases are cut.
        weighted: As in :func:`subspace_similarity`.

    Returns:
        A symmetric ``units × units`` frame with ones on the diagonal.
    """
    positions = [list(labels).index(u) for u in units]
    bases, weights = principal_bases(pca, threshold, positions)
    sim = spectral_similarity_matrix(bases, weights, bases, weights, weighted)
    sim = (sim + sim.T) / 2  # the greedy matching can break ties differently per side
    return pd.DataFrame(sim.cpu().numpy(), index=list(units), columns=list(units))


def stability_findings(
    similarity: pd.DataFrame, chance: pd.Series, control: str
) -> pd.DataFrame:
    """The paper's §3.2 claims checked on per-head similarities to the reference subspaces.

    - every natural (non-control) dataset's median head similarity is above the chance level;
    - the control (random images) has the lowest median similarity of all datasets.

    Args:
        similarity: Long form with columns ``dataset``, ``kind`` and ``similarity``.
        chance: Per-head chance-level similarity (:func:`random_subspace_similarity`).
        control: The name of the random-images dataset in ``similarity.dataset``.

    Returns:
        One row per claim: ``claim``, ``measured`` and ``holds``.
    """
    heads = similarity[similarity.kind == "head"]
    medians = heads.groupby("dataset", sort=False).similarity.median()
    natural = medians.drop(control, errors="ignore")
    level = float(chance.median())
    rows = [
        ("head subspaces are stable across natural distributions (above chance)",
         f"median head similarity {', '.join(f'{k} {v:.2f}' for k, v in natural.items())}; "
         f"chance {level:.2f}", bool(len(natural) and (natural > level).all())),
    ]
    if control in medians:
        rows.append((
            "random images (the control) are the least similar",
            f"{control} {medians[control]:.2f} vs lowest natural "
            f"{natural.min():.2f} ({natural.idxmin()})" if len(natural) else
            f"{control} {medians[control]:.2f}",
            bool(len(natural) and medians[control] < natural.min()),
        ))
    return pd.DataFrame(rows, columns=["claim", "measured", "holds"])
