"""Explaining units with text: TextSpan (Gandelsman et al. 2024) and SOMP (Tropp et al. 2006).

Both take a unit's outputs ``X`` (n × d_out) and a dictionary of L2-normalised text embeddings
``D`` (m × d_out) and greedily pick texts that explain the variance of ``X``.

- **TextSpan** projects ``D`` on the span of the top-``rank`` right singular vectors of ``X``,
  then centres ``X`` and repeatedly picks the text ``t`` along which ``X`` has the largest
  variance ``tᵀ Σ t``, deflating both ``X`` and the remaining texts by ``t``. The span is taken
  from the *uncentred* ``X`` by default (``span="uncentred"``), as both of the paper authors'
  implementations do (the SVD comes before the mean is removed); ``span="centred"`` takes the
  top principal directions of the centred ``X`` instead. The two differ when ``X`` has a mean
  offset (CLIP heads have one) and ``rank`` is below the width. Everything TextSpan needs is the
  mean and covariance of ``X`` (the uncentred second moment is ``Σ·(n−1)/n + μμᵀ``), so it runs
  from a :class:`~residual_core.core.spectral.PCAResult` (streamed, many units at once) or from
  samples.
- **SOMP** (simultaneous orthogonal matching pursuit) picks the atom maximising
  ``Σ_n |R_n · d_j|`` over the residual ``R``, refits all chosen atoms jointly by least squares
  and updates the residual, which stays orthogonal to every chosen atom.

Computations run in float64: deflation repeated tens of times loses precision in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.core.checks import check_finite
from residual_core.core.dictionary import TextDictionary
from residual_core.core.errors import InputError
from residual_core.core.spectral import PCAResult
from residual_core.core.units import Units

__all__ = ["SPANS", "Span", "TextExplanation", "somp", "textspan", "textspan_from_covariance"]

Span = Literal["uncentred", "centred"]
SPANS: tuple[str, ...] = get_args(Span)


@dataclass
class TextExplanation:
    """Texts chosen for one unit, in order.

    Attributes:
        unit: Unit label (or any name given).
        indices: Dictionary rows chosen, in order.
        texts: The corresponding texts.
        explained_variance: Cumulative fraction of the unit's variance explained after each pick.
        gains: Variance explained by each pick (differences of ``explained_variance``).
    """

    unit: str
    indices: list[int]
    texts: list[str]
    explained_variance: list[float]
    gains: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.gains:
            ev = [0.0, *self.explained_variance]
            self.gains = [b - a for a, b in zip(ev[:-1], ev[1:], strict=True)]


def _dictionary(dictionary: TextDictionary | Tensor, texts: Sequence[str] | None
                ) -> tuple[Tensor, Sequence[str]]:
    """Embeddings and texts from an embedded :class:`TextDictionary`, or as given."""
    if isinstance(dictionary, TextDictionary):
        if texts is not None:
            raise ValueError("a TextDictionary carries its texts: do not pass texts= as well")
        return dictionary.require_embeddings(), dictionary.texts
    if texts is None:
        raise ValueError("pass the texts of the embeddings (texts=), or an embedded "
                         "TextDictionary (load_dictionary(name).embed(loaded))")
    _check_dictionary(dictionary, texts)
    return dictionary, texts


def _check_dictionary(dictionary: Tensor, texts: Sequence[str], width: int | None = None
                      ) -> None:
    """A 2-D dictionary, one text per row, finite, as wide as the units (``width``)."""
    if dictionary.ndim != 2:
        raise InputError(f"dictionary must be (m, d), got shape {tuple(dictionary.shape)}")
    if len(texts) != dictionary.shape[0]:
        raise InputError(f"{len(texts)} texts for {dictionary.shape[0]} dictionary rows")
    if width is not None and dictionary.shape[1] != width:
        raise InputError(
            f"the dictionary's embeddings are {dictionary.shape[1]} wide but the units are "
            f"{width} wide: embed the dictionary with the model whose units it explains "
            "(load_dictionary(name).embed(loaded))")
    check_finite(dictionary, "the dictionary's embeddings")


def textspan_from_covariance(
    cov: Float[Tensor, "unit d d"],
    dictionary: Float[Tensor, "m d"],
    texts: Sequence[str],
    n_iters: int = 10,
    rank: int = 80,
    unit_names: Sequence[str] | None = None,
    unit_chunk: int = 16,
    second_moment: Float[Tensor, "unit d d"] | None = None,
) -> list[TextExplanation]:
    """TextSpan for several units from their covariance matrices.

    Args:
        cov: Covariance of each unit's outputs (the greedy picks run on the centred outputs).
        dictionary: L2-normalised text embeddings (normalised again here).
        texts: One text per dictionary row.
        n_iters: Texts to pick per unit.
        rank: Principal directions the dictionary is projected on (80 in the paper).
        unit_names: Names for the results (default ``"0"``, ``"1"``, ...).
        unit_chunk: Units processed together (memory ``unit_chunk × m × d``).
        second_moment: If given, the span is the top-``rank`` eigenvectors of this matrix
            (the uncentred ``XᵀX / n``: the authors' span) instead of those of ``cov``.

    Returns:
        One :class:`TextExplanation` per unit.
    """
    n_units, d, _ = cov.shape
    _check_dictionary(dictionary, texts, d)
    check_finite(cov, "the units' covariances given to TextSpan")
    names = [str(i) for i in range(n_units)] if unit_names is None else list(unit_names)
    if len(names) != n_units:
        raise ValueError(f"{len(names)} unit names for {n_units} units")
    if n_iters > dictionary.shape[0]:
        raise ValueError(f"n_iters={n_iters} exceeds the dictionary size {dictionary.shape[0]}")
    dictionary = torch.nn.functional.normalize(dictionary.double(), dim=-1).to(cov.device)
    out: list[TextExplanation] = []
    if second_moment is not None and second_moment.shape != cov.shape:
        raise ValueError(f"second_moment of shape {tuple(second_moment.shape)} for covariances "
                         f"of shape {tuple(cov.shape)}")
    if second_moment is not None:
        check_finite(second_moment, "the units' second moments given to TextSpan")
    for start in range(0, n_units, unit_chunk):
        s = cov[start : start + unit_chunk].double()
        u = s.shape[0]
        m = s if second_moment is None else second_moment[start : start + unit_chunk].double()
        evecs = torch.linalg.eigh(m)[1].flip(-1)[..., : min(rank, d)]  # (u, d, r), top first
        span = evecs @ evecs.transpose(1, 2)
        t = dictionary @ span  # (u, m, d): texts projected on each unit's principal span
        total = s.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(torch.finfo(s.dtype).tiny)
        chosen = torch.zeros(u, dictionary.shape[0], dtype=torch.bool, device=s.device)
        rows = torch.arange(u, device=s.device)
        picks, evs = [], []
        for _ in range(n_iters):
            score = ((t @ s) * t).sum(-1)  # var(X t) = tᵀ Σ t
            score = score.masked_fill(chosen, -torch.inf)
            j = score.argmax(-1)
            chosen[rows, j] = True
            direction = t[rows, j]
            direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            # Deflate: X ← X (I − t̂ t̂ᵀ) ⇒ Σ ← P Σ P; the texts likewise.
            proj = torch.eye(d, dtype=s.dtype, device=s.device) - direction[:, :, None] * (
                direction[:, None, :]
            )
            s = proj @ s @ proj
            t = t - (t @ direction[:, :, None]) * direction[:, None, :]
            picks.append(j)
            evs.append(1 - s.diagonal(dim1=1, dim2=2).sum(-1) / total)
        picks_t, evs_t = torch.stack(picks, 1).tolist(), torch.stack(evs, 1).tolist()
        for k in range(u):
            out.append(TextExplanation(names[start + k], picks_t[k],
                                       [texts[i] for i in picks_t[k]], evs_t[k]))
    return out


def textspan(
    x: Units | PCAResult | Float[Tensor, "n d"] | Float[Tensor, "n unit d"],
    dictionary: TextDictionary | Float[Tensor, "m d"],
    texts: Sequence[str] | None = None,
    n_iters: int = 10,
    rank: int = 80,
    *,
    unit_names: Sequence[str] | None = None,
    span: str = "uncentred",
) -> dict[str, TextExplanation] | list[TextExplanation]:
    """TextSpan on the units of a :class:`Units` or a :class:`PCAResult`, or on bare samples.

    Args:
        x: Labelled units (or their PCA: many units at once, streamed), or samples of one unit
            ``(n, d)`` or of several ``(n, unit, d)``.
        dictionary: An embedded :class:`TextDictionary` (texts and embeddings together), or
            L2-normalised text embeddings with their ``texts``.
        texts: One text per embedding row (only with bare embeddings).
        n_iters: Texts to pick per unit.
        rank: Singular directions the dictionary is projected on (80 in the paper).
        unit_names: Names of bare samples' units in the output (default ``"0"``, ``"1"``, ...).
        span: ``"uncentred"`` (the authors': right singular vectors of the raw samples) or
            ``"centred"`` (principal directions of the centred samples).

    Returns:
        For labelled input, unit label → :class:`TextExplanation`, in order; for bare samples,
        one explanation per unit, in order.

    Example:
        >>> words = load_dictionary("tutorial").embed(loaded)
        >>> textspan(units.heads(layer=3), words, n_iters=5)["L3H1"].texts
    """
    if span not in SPANS:
        raise ValueError(f"span={span!r} is not one of {list(SPANS)}")
    embeddings, texts = _dictionary(dictionary, texts)
    labelled = isinstance(x, Units | PCAResult) and x.labels is not None
    if isinstance(x, PCAResult):
        comps, ev = x.components.double(), x.explained_variance.double()
        cov = comps.transpose(1, 2) @ (ev[:, :, None] * comps)
        mean, n = x.mean.double(), x.n_samples
    else:
        data = x.data if isinstance(x, Units) else x
        if data.ndim not in (2, 3):
            raise ValueError(f"samples must be (n, d) or (n, unit, d), got {tuple(data.shape)}")
        check_finite(data, "the units given to textspan")
        data = data.double() if data.ndim == 3 else data.double()[:, None]
        mean, n = data.mean(0), data.shape[0]
        xc = data - mean
        cov = torch.einsum("nud,nue->ude", xc, xc) / max(1, n - 1)
    second = None
    if span == "uncentred":  # XᵀX / n = Σ·(n−1)/n + μμᵀ: same eigenvectors as X's SVD
        second = cov * ((n - 1) / n) + mean[:, :, None] * mean[:, None, :]
    names = list(x.labels) if labelled else unit_names
    out = textspan_from_covariance(cov, embeddings, texts, n_iters, rank, names,
                                   second_moment=second)
    return {e.unit: e for e in out} if labelled else out


def somp(
    x: Units | Float[Tensor, "n d"],
    dictionary: TextDictionary | Float[Tensor, "m d"],
    texts: Sequence[str] | None = None,
    n_iters: int = 10,
    unit: str | None = None,
    center: bool = True,
) -> tuple[TextExplanation, Float[Tensor, "n k"]]:
    """Simultaneous orthogonal matching pursuit of one unit's samples over the dictionary.

    Args:
        x: One unit: :class:`Units` holding a single unit, or its samples ``(n, d)``.
        dictionary: An embedded :class:`TextDictionary`, or L2-normalised text embeddings
            with their ``texts``.
        texts: One text per embedding row (only with bare embeddings).
        n_iters: Atoms to pick.
        unit: Name of the unit in the output (default: its label, else ``"unit"``).
        center: Remove the mean of ``x`` first (explain variance, like TextSpan).

    Returns:
        The explanation, and the least-squares coefficients of the chosen atoms per sample.

    Raises:
        ValueError: For :class:`Units` of more than one unit.
    """
    if isinstance(x, Units):
        if len(x) != 1:
            raise ValueError(f"somp explains one unit; got {len(x)} ({', '.join(x.labels)}): "
                             "select one, e.g. units.select('L3H1')")
        unit = unit or x.labels[0]
        x = x.data[:, 0]
    unit = unit or "unit"
    dictionary, texts = _dictionary(dictionary, texts)
    if x.ndim != 2:
        raise InputError(f"somp explains one unit's samples (n, d), got shape {tuple(x.shape)}")
    _check_dictionary(dictionary, texts, x.shape[1])
    check_finite(x, "the unit's samples given to somp")
    if n_iters > dictionary.shape[0]:
        raise ValueError(f"n_iters={n_iters} exceeds the dictionary size {dictionary.shape[0]}")
    x = x.double()
    if center:
        x = x - x.mean(0)
    atoms = torch.nn.functional.normalize(dictionary.double(), dim=-1).to(x.device)
    total = (x * x).sum().clamp_min(torch.finfo(x.dtype).tiny)
    residual = x
    chosen: list[int] = []
    evs: list[float] = []
    coef = torch.zeros(x.shape[0], 0, dtype=x.dtype, device=x.device)
    for _ in range(n_iters):
        score = (residual @ atoms.T).abs().sum(0)
        if chosen:
            score[chosen] = -torch.inf
        chosen.append(int(score.argmax()))
        sel = atoms[chosen]  # (k, d)
        # Joint least-squares refit: coef = argmin ‖x − coef·sel‖.
        coef = torch.linalg.lstsq(sel.T, x.T).solution.T
        residual = x - coef @ sel
        evs.append(float(1 - (residual * residual).sum() / total))
    return TextExplanation(unit, chosen, [texts[i] for i in chosen], evs), coef
