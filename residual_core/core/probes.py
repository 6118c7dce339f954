"""Linear probes on unit outputs: which units carry which attribute (ground truth permitting).

A ridge least-squares probe (one-hot targets, standardised features, closed form) is fitted
for every unit at once with one batched solve, so probing hundreds of units is one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from residual_core.core.units import Units

__all__ = ["probe_table", "ridge_probe", "ridge_probes"]


def ridge_probe(
    train_x: Float[Tensor, "n unit d"],
    train_y: Int[Tensor, " n"],
    test_x: Float[Tensor, "m unit d"],
    test_y: Int[Tensor, " m"],
    n_classes: int | None = None,
    alpha: float = 0.1,
) -> Float[Tensor, " unit"]:
    """Test accuracy of a ridge linear probe fitted on each unit separately.

    Args:
        train_x: Training features per unit (pass ``x[:, None]`` for a single feature set).
        train_y: Training labels.
        test_x: Test features, same units.
        test_y: Test labels.
        n_classes: Number of classes (default: from the labels).
        alpha: Ridge penalty on the standardised features.

    Returns:
        One accuracy per unit.
    """
    return ridge_probes(train_x, [train_y], test_x, [test_y], [n_classes], alpha=alpha)[0]


def ridge_probes(
    train_x: Float[Tensor, "n unit d"],
    train_ys: Sequence[Int[Tensor, " n"]],
    test_x: Float[Tensor, "m unit d"],
    test_ys: Sequence[Int[Tensor, " m"]],
    n_classes: Sequence[int | None] | None = None,
    alpha: float = 0.1,
) -> list[Float[Tensor, " unit"]]:
    """:func:`ridge_probe` for several labellings of the same samples, factorised once.

    The standardised features and the Cholesky factor of each unit's normal matrix depend on
    the samples only, so every labelling (the attributes of one image set) is one more set of
    right-hand sides: a single solve instead of one factorisation per labelling.

    Returns:
        One accuracy per unit for each labelling, in order.
    """
    if train_x.ndim != 3 or test_x.ndim != 3:
        raise ValueError("features must be (n, unit, d); use x[:, None] for one unit")
    if len(train_ys) != len(test_ys):
        raise ValueError(f"{len(train_ys)} training labellings but {len(test_ys)} test ones")
    ks = [int(k or max(int(y.max()), int(t.max())) + 1)
          for k, y, t in zip(n_classes or [None] * len(train_ys), train_ys, test_ys,
                             strict=True)]
    xtr, xte = train_x.double(), test_x.double()
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    a = torch.cat([(xtr - mean) / std, xtr.new_ones(*xtr.shape[:2], 1)], -1)
    b = torch.cat([(xte - mean) / std, xte.new_ones(*xte.shape[:2], 1)], -1)
    a, b = a.transpose(0, 1), b.transpose(0, 1)  # (unit, n, d + 1)
    onehot = torch.cat([torch.nn.functional.one_hot(y.long().to(a.device), k).double()
                        for y, k in zip(train_ys, ks, strict=True)], 1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    # The normal matrix is symmetric positive definite (alpha > 0): Cholesky, not the batched
    # LU of torch.linalg.solve, which fails with several MKL threads once d + 1 > ~150
    # (pytorch/pytorch#142815: "Pivots given to lu_solve must all be greater or equal to 1").
    chol = torch.linalg.cholesky(a.transpose(1, 2) @ a + alpha * eye)
    scores = b @ torch.cholesky_solve(a.transpose(1, 2) @ onehot, chol)  # (unit, m, Σ k)
    out, start = [], 0
    for y, k in zip(test_ys, ks, strict=True):
        pred = scores[..., start:start + k].argmax(-1)  # (unit, m)
        out.append((pred == y.long().to(pred.device)[None]).double().mean(1))
        start += k
    return out


def probe_table(
    train_units: Units,
    train_attributes: Mapping[str, Int[Tensor, " n"]],
    test_units: Units,
    test_attributes: Mapping[str, Int[Tensor, " m"]],
    alpha: float = 0.1,
) -> pd.DataFrame:
    """Probe accuracy of every unit (and of the summed embedding) for every attribute.

    Args:
        train_units: The units the probes are fitted on.
        train_attributes: Attribute name → class index per training sample.
        test_units: The same units of the test samples.
        test_attributes: Attribute name → class index per test sample.
        alpha: Ridge penalty on the standardised features.

    Returns:
        A DataFrame indexed by unit label (plus ``"embedding"``), one column per attribute.

    Raises:
        ValueError: If train and test hold different units.
    """
    if train_units.labels != test_units.labels:
        raise ValueError("probe_table: the train and test units differ")
    xtr, xte = train_units.data, test_units.data
    attrs = list(train_attributes)
    y_tr = [torch.as_tensor(train_attributes[a]) for a in attrs]
    y_te = [torch.as_tensor(test_attributes[a]) for a in attrs]
    per_unit = ridge_probes(xtr, y_tr, xte, y_te, alpha=alpha)  # every attribute at once
    whole = ridge_probes(xtr.sum(1, keepdim=True), y_tr, xte.sum(1, keepdim=True), y_te,
                         alpha=alpha)
    cols = {a: [*u.tolist(), float(w[0])] for a, u, w in zip(attrs, per_unit, whole, strict=True)}
    return pd.DataFrame(cols, index=[*train_units.labels, "embedding"])
