"""Unit ablation and coarse head selection on cached unit contributions.

Everything here works on labelled unit outputs (:class:`~residual_core.core.units.Units`, from
``decompose`` or an encoding store) and a frozen zero-shot classifier ``C`` (``d_out × K``), so
no backbone is run.

- **Ablation**: replace a set of units by zero or by their mean over a reference split.
- **Coarse selection** (the paper's): keep the top-k heads under a ranking, mean-ablate the
  other heads (the embedding and MLPs are kept, so keeping every head is the full model), and
  measure accuracy. Rankings: ``S`` greedy forward selection by validation accuracy
  (supervised), ``U|T`` share of the head's variance inside the span of the task's classifier
  directions, ``U`` share of the head's variance along the full output, ``R`` random (seeded).
  Heads are chosen on the validation split only; test is used once, to evaluate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from residual_core.core.units import Units, is_head

__all__ = [
    "RANKINGS",
    "ablate",
    "accuracy",
    "coarse_selection",
    "k_values",
    "rank_heads",
]

RANKINGS = ("S", "U|T", "U", "R")
DEFAULT_FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75)


def accuracy(
    z: Float[Tensor, "n d_out"],
    classifier: Float[Tensor, "d_out k"],
    targets: Int[Tensor, " n"],
    normalize: bool = True,
) -> float:
    """Zero-shot accuracy of embeddings ``z`` under the classifier (cosine logits by default)."""
    if normalize:
        z = torch.nn.functional.normalize(z, dim=-1)
    logits = z @ classifier.to(z)
    return float(logits.argmax(-1).eq(targets.to(z.device)).float().mean())


def ablate(
    units: Units,
    ablated: Sequence[str],
    mode: str = "mean",
    means: Float[Tensor, "unit d_out"] | None = None,
) -> Float[Tensor, "n d_out"]:
    """The embedding with some units replaced by zero or by their reference mean.

    Args:
        units: Per-unit contributions.
        ablated: Labels of the units to ablate.
        mode: ``"zero"`` or ``"mean"``.
        means: Per-unit means over a reference split, one row per unit of ``units`` (required
            for ``"mean"``).

    Returns:
        The summed embedding after ablation.

    Raises:
        KeyError: For a label that is not among the units.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    idx = torch.tensor(units.index(list(ablated)), dtype=torch.long)
    data = units.data
    z = data.sum(1)
    if len(idx) == 0:
        return z
    z = z - data[:, idx].sum(1)
    if mode == "mean":
        if means is None:
            raise ValueError("mode='mean' needs the reference means")
        z = z + means[idx].sum(0)
    return z


def k_values(n_heads: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[int]:
    """Numbers of heads to keep: 1, then the given fractions of all heads (deduplicated)."""
    ks = {1} | {max(1, round(f * n_heads)) for f in fractions}
    return sorted(ks)


def _centered_heads(units: Tensor, head_idx: Tensor, means: Tensor) -> Tensor:
    return units[:, head_idx] - means[head_idx]


def _greedy_supervised(
    base: Tensor, deltas: Tensor, classifier: Tensor, targets: Tensor, k_max: int,
    normalize: bool, head_chunk: int = 32,
) -> list[int]:
    """Forward selection: repeatedly add the head whose restoration helps accuracy most.

    Ties (frequent on small splits) are broken by the mean logit of the correct class.
    """
    chosen: list[int] = []
    z = base.clone()
    remaining = torch.ones(deltas.shape[1], dtype=torch.bool, device=deltas.device)
    for _ in range(k_max):
        keys = []
        for start in range(0, deltas.shape[1], head_chunk):  # bounded (n, chunk, d) memory
            cand = z[:, None] + deltas[:, start : start + head_chunk]
            if normalize:
                cand = torch.nn.functional.normalize(cand, dim=-1)
            logits = cand @ classifier
            acc = logits.argmax(-1).eq(targets[:, None]).float().mean(0)
            correct = logits.gather(-1, targets[:, None, None].expand(-1, cand.shape[1], 1))
            keys.append(acc + 1e-6 * torch.tanh(correct.squeeze(-1).mean(0)))
        key = torch.cat(keys)
        key[~remaining] = -torch.inf
        j = int(key.argmax())
        chosen.append(j)
        remaining[j] = False
        z = z + deltas[:, j]
    return chosen


def rank_heads(
    ranking: str,
    units: Units,
    means: Float[Tensor, "unit d_out"],
    classifier: Float[Tensor, "d_out k"],
    targets: Int[Tensor, " n"] | None = None,
    k_max: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> list[str]:
    """Heads ordered from most to least important under a ranking (validation data only).

    Args:
        ranking: One of :data:`RANKINGS`.
        units: Validation-split unit contributions.
        means: Reference-split means of every unit (one row per unit of ``units``).
        classifier: Zero-shot classifier of the task.
        targets: Validation labels (used by ``S`` only).
        k_max: For ``S``, how many heads to select greedily (default all).
        seed: Seed of ``R``.
        normalize: Cosine logits (L2-normalised embeddings).

    Returns:
        Head labels in order of selection.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; valid: {list(RANKINGS)}")
    heads = [u for u in units.labels if is_head(u)]
    head_idx = torch.tensor(units.index(heads))
    data = units.data
    # Everything where the units are (a PCA, a classifier or labels may come from elsewhere).
    means, classifier = means.to(data), classifier.to(data)
    targets = None if targets is None else targets.to(data.device)
    deltas = _centered_heads(data, head_idx, means)  # restoring head h adds deltas[:, h]
    if ranking == "R":
        order = np.random.default_rng(seed).permutation(len(heads)).tolist()
    elif ranking == "S":
        if targets is None:
            raise ValueError("ranking 'S' is supervised: pass the validation targets")
        base = data.sum(1) - deltas.sum(1)  # every head mean-ablated
        order = _greedy_supervised(base, deltas, classifier, targets,
                                   k_max or len(heads), normalize)
    else:
        centred = deltas - deltas.mean(0)
        if ranking == "U|T":
            basis = torch.linalg.qr(classifier.double())[0].to(centred.dtype)  # (d, K)
            inside = (centred @ basis).pow(2).sum((0, 2))
        else:  # "U": variance along the full output's centred direction, per sample
            out = data.sum(1)
            out = out - out.mean(0)
            unit_out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            inside = (centred * unit_out[:, None]).sum(-1).pow(2).sum(0)
        total = centred.pow(2).sum((0, 2)).clamp_min(1e-30)
        order = torch.argsort(inside / total, descending=True, stable=True).tolist()
    return [heads[i] for i in order]


def _kept_prefix_parts(
    units: Units, heads: Sequence[str], means: Tensor
) -> tuple[Float[Tensor, "n d_out"], Float[Tensor, "n head d_out"]]:
    """Every head mean-ablated, and what restoring each head adds (``heads`` order)."""
    deltas = _centered_heads(units.data, torch.tensor(units.index(list(heads))),
                             means.to(units.data))
    return units.data.sum(1) - deltas.sum(1), deltas


def _prefix_accuracies(
    base: Tensor, deltas: Tensor, order: Tensor, ks: Sequence[int], classifier: Tensor,
    targets: Tensor, normalize: bool,
) -> list[float]:
    """Accuracy with the first ``k`` heads of ``order`` kept, for every (sorted) ``k``.

    The same embeddings as :func:`ablate` with the other heads mean-ablated, built by adding
    the kept heads' restorations one block of ``order`` at a time instead of re-summing every
    unit for each ``k`` (heads missing from ``order`` stay ablated).
    """
    z, done, out = base.clone(), 0, []
    for k in ks:
        take = order[done:k]
        if len(take):
            z = z + deltas[:, take].sum(1)
        done = max(done, k)
        out.append(accuracy(z, classifier, targets, normalize))
    return out


def coarse_selection(
    val_units: Units,
    val_targets: Int[Tensor, " n_val"],
    test_units: Units,
    test_targets: Int[Tensor, " n_test"],
    means: Float[Tensor, "unit d_out"],
    classifier: Float[Tensor, "d_out k"],
    rankings: Sequence[str] = RANKINGS,
    ks: Sequence[int] | None = None,
    random_seeds: int = 10,
    normalize: bool = True,
) -> pd.DataFrame:
    """Accuracy of keeping the top-k heads under each ranking (others mean-ablated).

    Heads are ranked on the validation split; the test split is only evaluated.

    Returns:
        A tidy table: ``ranking, seed, k, fraction, val_acc, test_acc`` (+ one ``full`` row).
    """
    heads = [u for u in val_units.labels if is_head(u)]
    ks = k_values(len(heads)) if ks is None else sorted(ks)
    position = {h: i for i, h in enumerate(heads)}
    splits = {"val": (*_kept_prefix_parts(val_units, heads, means), val_targets),
              "test": (*_kept_prefix_parts(test_units, heads, means), test_targets)}
    rows = []
    for ranking in rankings:
        seeds = range(random_seeds) if ranking == "R" else [0]
        for seed in seeds:
            order = rank_heads(ranking, val_units, means, classifier, val_targets,
                               k_max=max(ks), seed=seed, normalize=normalize)
            order_idx = torch.tensor([position[h] for h in order], dtype=torch.long)
            accs = {split: _prefix_accuracies(base, deltas, order_idx, ks, classifier, t,
                                              normalize)
                    for split, (base, deltas, t) in splits.items()}
            for i, k in enumerate(ks):
                rows.append({"ranking": ranking, "seed": seed, "k": k, "fraction": k / len(heads),
                             "val_acc": accs["val"][i], "test_acc": accs["test"][i]})
    full = {"ranking": "full", "seed": 0, "k": len(heads), "fraction": 1.0}
    full["val_acc"] = accuracy(val_units.sum(), classifier, val_targets, normalize)
    full["test_acc"] = accuracy(test_units.sum(), classifier, test_targets, normalize)
    return pd.DataFrame([*rows, full])
