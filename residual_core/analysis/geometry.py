"""Per-unit geometry of stored encodings: intrinsic dimension, depth profiles, subspace stability.

The functions here turn an :class:`~residual_core.core.store.EncodingStore` into the tables behind
the book's §3.1–3.2 chapters: one row per unit (``embed``, ``L{l}.mlp``, ``L{l}H{h}``) with its
linear and nonlinear intrinsic dimension, per-layer profiles over heads, and the spectral cosine
similarity of a unit's principal subspace on one dataset with the same unit's
subspace on another. Findings are returned as small tables of *measured* numbers and whether a paper
claim holds on them, so chapters print them instead of hard-coding any.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from residual_core.core.decompose import UnitProjector, decompose
from residual_core.core.intrinsic_dim import linear_id, twonn_curve
from residual_core.core.model import LoadedModel
from residual_core.core.spectral import PCAResult, spectral_similarity_matrix, unit_pca
from residual_core.core.units import Units, label_table
from residual_core.data.base import ClassificationDataset

__all__ = [
    "TwoNNFit",
    "chance_similarity",
    "components_needed",
    "depth_profile",
    "distinct_pairs",
    "head_medians",
    "id_ranges",
    "intrinsic_dimension_table",
    "principal_bases",
    "random_subspace_similarity",
    "similarity_summary",
    "similarity_table",
    "subspace_similarity",
    "twonn_fit",
    "twonn_halves",
    "unit_similarity_matrix",
    "variance_ratio",
    "weighting_robustness",
]

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
        pca: Its per-unit PCA (:func:`~residual_core.core.spectral.unit_pca`).
        threshold: Explained variance defining the linear ID (0.99 in the paper).
        max_points: TwoNN subsample size (the paper's 50k); ``None`` uses every point.
        seed: Seed of the TwoNN subsample (the same points for every unit).
        group: Units read from the store at a time (memory ``n × group × d_out``).
        device: Where the nearest-neighbour distances are computed.

    Returns:
        ``(table, fits)``: the table has one row per unit with the
        :func:`~residual_core.core.units.label_table` columns and
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
    table = label_table(labels)
    evr = pca.explained_variance_ratio
    table["linear_id"] = linear_id(evr, threshold).cpu().numpy()
    table["evr_pc1"] = evr[:, 0].cpu().numpy()
    fits: dict[str, TwoNNFit] = {}
    for start in range(0, len(labels), group):
        chunk = labels[start : start + group]
        units = store.units(chunk, device=device)
        for label in chunk:
            fits[label] = twonn_fit(units[label], max_points=max_points, seed=seed)
        del units
    table["twonn"] = [fits[label].dimension for label in labels]
    table["twonn_duplicates"] = [fits[label].n_duplicates for label in labels]
    table["ratio"] = table.linear_id / table.twonn
    head_bound = lay.d_head + (2 if store.centering == "shared" else 1)
    table["rank_bound"] = np.where(table.kind == "head", head_bound,
                                   min(lay.d_model, lay.d_out))
    table["linear_frac"] = table.linear_id / lay.d_out
    return table, fits


def depth_profile(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per layer, the spread of one value over that layer's heads, and its MLP's value.

    Args:
        table: Has the :func:`~residual_core.core.units.label_table` columns and ``column``.
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


def principal_bases(
    pca: PCAResult, threshold: float = 0.9, units: Sequence[str] | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """Truncated principal bases and their variances, one per unit.

    Args:
        pca: Labelled per-unit PCA.
        threshold: Explained variance at which each basis is cut (0.9 in the paper).
        units: Unit labels (default: every unit of the PCA).

    Returns:
        ``(bases, weights)``: bases ``(k_u, d)`` and variances ``(k_u,)`` per unit.
    """
    pairs = [pca.basis(u, threshold) for u in (pca.labels if units is None else units)]
    return [b for b, _ in pairs], [w for _, w in pairs]


def subspace_similarity(
    pca_x: PCAResult, pca_y: PCAResult, threshold: float = 0.9, weighted: bool = True
) -> Float[Tensor, " unit"]:
    """Spectral cosine similarity of every unit's principal subspace on two datasets.

    Args:
        pca_x: Labelled per-unit PCA on one dataset.
        pca_y: Per-unit PCA of the same units on another dataset.
        threshold: Explained variance at which both bases are cut.
        weighted: Weight directions by their variance (the paper's choice).

    Returns:
        Per unit of ``pca_x``, in order, the similarity in [0, 1] (1: the same subspace with the
        same spectrum).

    Raises:
        ValueError: If the two PCAs hold different units.
    """
    if pca_x.labels != pca_y.labels:
        raise ValueError("subspace_similarity: the two PCAs hold different units")
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
        pca: Labelled per-unit PCA.
        threshold: Explained variance at which the basis is cut.
        weighted: As in :func:`subspace_similarity`.
        seed: Seed of the random bases.

    Returns:
        Per unit, in order, the similarity to a random subspace.
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
    pca: PCAResult, units: Sequence[str], threshold: float = 0.9, weighted: bool = True,
) -> pd.DataFrame:
    """Spectral cosine similarity between the principal subspaces of units of one dataset.

    Args:
        pca: Labelled per-unit PCA.
        units: The units to compare (e.g. every head), by label.
        threshold: Explained variance at which the bases are cut.
        weighted: As in :func:`subspace_similarity`.

    Returns:
        A symmetric ``units × units`` frame with ones on the diagonal.
    """
    bases, weights = principal_bases(pca, threshold, units)
    sim = spectral_similarity_matrix(bases, weights, bases, weights, weighted)
    sim = (sim + sim.T) / 2  # the greedy matching can break ties differently per side
    return pd.DataFrame(sim.cpu().numpy(), index=list(units), columns=list(units))


def components_needed(pcas: Mapping[str, PCAResult], threshold: float = 0.9,
                      kind: str = "head") -> pd.DataFrame:
    """Per dataset, how many principal components the units of one kind need for ``threshold``.

    Args:
        pcas: Dataset name → labelled per-unit PCA.
        threshold: Explained variance.
        kind: ``"head"``, ``"mlp"`` or ``"embed"``.

    Returns:
        Rows ``median``, ``min``, ``max``; one column per dataset.
    """
    return _kind_summary({name: pca.n_components(threshold).cpu().numpy()
                          for name, pca in pcas.items()}, pcas, kind)


def _kind_summary(values: Mapping[str, np.ndarray], pcas: Mapping[str, PCAResult],
                  kind: str) -> pd.DataFrame:
    """Median, min and max per dataset of per-unit ``values``, over the units of ``kind``."""
    out = {name: pd.Series(v[(label_table(pcas[name].labels).kind == kind).to_numpy()])
           for name, v in values.items()}
    return pd.DataFrame(out).describe().loc[["50%", "min", "max"]].rename(index={"50%": "median"})


def variance_ratio(reference: PCAResult, pcas: Mapping[str, PCAResult],
                   kind: str = "head") -> pd.DataFrame:
    """Per dataset, each unit's total variance on it ÷ its total variance on the reference.

    A unit that barely varies on a dataset (ratio near 0) has a principal subspace there that
    is set by little, atypical variation: a low similarity then says the dataset hardly moves
    the unit, not that it moves it elsewhere.

    Returns:
        Rows ``median``, ``min``, ``max`` over the units of ``kind``; one column per dataset.
    """
    def total(pca: PCAResult) -> np.ndarray:
        return pca.explained_variance.sum(-1).double().cpu().numpy()

    base = total(reference)
    return _kind_summary({name: total(pca) / base for name, pca in pcas.items()}, pcas, kind)


def grayscale(image: Image.Image) -> Image.Image:
    """The image with its colour removed: ITU-R 601 luma copied into all three channels."""
    return image.convert("L").convert("RGB")


@torch.no_grad()
def grayscale_pca(loaded: LoadedModel, dataset: ClassificationDataset, *,
                  batch_size: int = 256, centering: str = "shared",
                  device: str | torch.device | None = None) -> PCAResult:
    """Per-unit PCA of a dataset's images with their colour removed (:func:`grayscale`).

    Against the reference subspace it separates what losing colour alone does to a unit from
    what a shift's other changes do: a sketch, say, loses colour *and* texture and background.
    The images are converted before the model's preprocessing, decomposed batch by batch and
    not cached.

    Args:
        loaded: The model.
        dataset: The images (:func:`~residual_core.data.load_dataset`); a transform it
            has is replaced by greyscale then the model's preprocessing.
        batch_size: Images per forward pass.
        centering: As in :func:`~residual_core.core.decompose.decompose`.
        device: Where to run (default: the model's device).

    Returns:
        The per-unit PCA, labelled as the model's units.
    """
    device = device or loaded.device
    projector = UnitProjector.from_model(loaded.model, centering).to(device)
    grey = dataset.with_transform(lambda image: loaded.preprocess(grayscale(image)))

    def batches() -> Iterator[Units]:
        for start in range(0, len(grey), batch_size):
            x, _ = grey.batch(range(start, min(start + batch_size, len(grey))))
            yield decompose(loaded.model, x.to(device), projector=projector)

    return unit_pca(batches())


def similarity_table(reference: PCAResult, pcas: Mapping[str, PCAResult],
                     threshold: float = 0.9, weighted: bool = True) -> pd.DataFrame:
    """Every unit's subspace on every dataset against its subspace on the reference, long form.

    Returns:
        One row per (dataset, unit): the :func:`~residual_core.core.units.label_table` columns,
        ``dataset`` and ``similarity`` (:func:`subspace_similarity`).
    """
    units = label_table(reference.labels)
    rows = [units.assign(dataset=name,
                         similarity=subspace_similarity(reference, pca, threshold,
                                                        weighted).numpy())
            for name, pca in pcas.items()]
    return pd.concat(rows, ignore_index=True)


def chance_similarity(reference: PCAResult, threshold: float = 0.9, weighted: bool = True,
                      seed: int = 0) -> pd.Series:
    """:func:`random_subspace_similarity` of every unit, indexed by label."""
    sim = random_subspace_similarity(reference, threshold, weighted, seed)
    return pd.Series(sim.numpy(), index=list(reference.labels), name="chance")


def similarity_summary(similarity: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: the median similarity of heads and of MLPs, the lowest head, the embedding.

    Args:
        similarity: :func:`similarity_table`.

    Returns:
        Datasets (in order) × ``heads: median``, ``heads: min``, ``MLPs: median``, ``embed``.
    """
    summary = similarity.pivot_table(index="dataset", columns="kind", values="similarity",
                                     aggfunc="median", sort=False)
    summary["head_min"] = similarity[similarity.kind == "head"].groupby(
        "dataset", sort=False).similarity.min()
    names = {"head": "heads: median", "head_min": "heads: min", "mlp": "MLPs: median",
             "embed": "embed"}
    return summary[[c for c in names if c in summary]].rename(columns=names)


def head_medians(similarity: pd.DataFrame) -> pd.Series:
    """Median head similarity per dataset (in order), from a :func:`similarity_table`."""
    heads = similarity[similarity.kind == "head"]
    return heads.groupby("dataset", sort=False).similarity.median()


def distinct_pairs(matrix: pd.DataFrame) -> pd.Series:
    """The upper triangle of a symmetric unit × unit matrix: each pair once, ``"a – b"``."""
    upper = matrix.where(~np.tri(len(matrix), dtype=bool)).stack().dropna()
    upper.index = [f"{a} – {b}" for a, b in upper.index]
    return upper.rename("similarity")


def weighting_robustness(reference: PCAResult, pcas: Mapping[str, PCAResult],
                         threshold: float = 0.9, weighted: bool = True, seed: int = 0,
                         similarity: pd.DataFrame | None = None) -> pd.DataFrame:
    """Median head similarity per dataset under both weightings, with their chance levels.

    Args:
        reference: Labelled per-unit PCA of the reference.
        pcas: Dataset name → per-unit PCA of the same units.
        threshold: Explained variance at which the bases are cut.
        weighted: The chosen weighting (its row comes first).
        seed: Seed of the chance level's random bases.
        similarity: :func:`similarity_table` under the chosen weighting, if already computed
            (its head medians are used instead of computing them again).

    Returns:
        Rows ``weighted`` and ``unweighted`` (the chosen one first); columns the datasets, then
        ``chance`` (the median over heads of :func:`random_subspace_similarity`).
    """
    heads = (label_table(reference.labels).kind == "head").to_numpy()
    out = {}
    for w in (weighted, not weighted):
        if w == weighted and similarity is not None:
            row = {name: float(v) for name, v in head_medians(similarity).items()}
        else:
            row = {name: float(np.median(subspace_similarity(reference, pca, threshold, w)
                                         .numpy()[heads])) for name, pca in pcas.items()}
        row["chance"] = float(np.median(
            random_subspace_similarity(reference, threshold, w, seed).numpy()[heads]))
        out["weighted" if w else "unweighted"] = row
    return pd.DataFrame(out).T


def twonn_halves(store, pca: PCAResult, points: int, *, seed: int = 0,
                 threshold: float = 0.99, device: str | torch.device = "cpu") -> pd.Series:
    """A rough error bar of TwoNN: the estimate on two random halves of the images, per unit.

    Args:
        store: The encodings (as for :func:`intrinsic_dimension_table`).
        pca: Their per-unit PCA.
        points: Images of the full estimate; each half uses half as many (other seeds).
        seed: The full estimate's seed; the halves use ``seed + 1`` and ``seed + 2``.
        threshold: Linear-ID threshold (unused by TwoNN, passed on).
        device: Where the distances are computed.

    Returns:
        Per unit (label), ``|TwoNN(half 1) − TwoNN(half 2)|``.
    """
    half = min(points, store.n_samples) // 2
    a, b = (intrinsic_dimension_table(store, pca, threshold=threshold, max_points=half,
                                      seed=seed + 1 + i, device=device)[0].set_index("unit").twonn
            for i in range(2))
    return (a - b).abs().rename(f"TwoNN difference of two halves of {half}")


def id_ranges(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind of unit, the range and median of its IDs in an :func:`intrinsic_dimension_table`.

    Returns:
        Indexed by ``head`` and ``mlp``: min, median and max of ``linear_id`` and ``twonn``, the
        median ``evr_pc1`` and the largest ``rank_bound``.
    """
    units = table[table.kind.isin(["head", "mlp"])]
    out = units.groupby("kind").agg(
        linear_min=("linear_id", "min"), linear_median=("linear_id", "median"),
        linear_max=("linear_id", "max"), twonn_min=("twonn", "min"),
        twonn_median=("twonn", "median"), twonn_max=("twonn", "max"),
        evr_pc1_median=("evr_pc1", "median"), rank_bound=("rank_bound", "max"))
    return out.reindex(["head", "mlp"])
