"""Zero-shot accuracy against what the units carry: headroom, ablation by layer, task summaries.

Everything runs on cached unit contributions (``(n, unit, d_out)``) and a frozen zero-shot
classifier, per task:

- **headroom**: zero-shot accuracy of the full embedding next to the best linear probe on a
  single head and on the embedding (what the image tower *has* versus what the text side reads);
- **ablation by layer** (:func:`layer_ablation`): mean-ablate the direct effect of the heads,
  the MLPs, or both, of the first ``n`` layers, as TextSpan did to find that only CLIP's last
  few attention layers matter directly;
- **coarse selection** (:func:`residual_core.core.ablation.coarse_selection`) and the heads the task
  relies on;
- :func:`task_table` gathers one row per task, with the task-level specialisation and
  alignment that :mod:`residual_core.analysis.specialization` defines, for correlating with
  zero-shot accuracy across tasks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from torch import Tensor

from residual_core.analysis.specialization import classifier_alignment, task_specialization
from residual_core.core.ablation import ablate, accuracy, coarse_selection, head_labels, rank_heads
from residual_core.core.probes import probe_table

__all__ = [
    "ABLATION_KINDS",
    "TaskResult",
    "analyze_task",
    "layer_ablation",
    "layer_of",
    "selected_on_val",
    "selection_summary",
    "task_table",
    "units_of_layer",
]

ABLATION_KINDS = ("heads", "mlps", "heads+mlps")
_LAYER = re.compile(r"^L(\d+)(?:H\d+|\.mlp)$")


def layer_of(label: str) -> int | None:
    """Layer of a unit label (``L3H1`` → 3, ``L2.mlp`` → 2, ``embed`` → ``None``)."""
    match = _LAYER.match(label)
    return None if match is None else int(match[1])


def layer_ablation(
    units: Float[Tensor, "n unit d_out"],
    labels: Sequence[str],
    means: Float[Tensor, "unit d_out"],
    classifier: Float[Tensor, "d_out k"],
    targets: Int[Tensor, " n"],
    normalize: bool = True,
) -> pd.DataFrame:
    """Accuracy after mean-ablating the direct effect of the first ``n`` layers.

    Args:
        units: Per-unit contributions of the evaluated split.
        labels: Unit labels.
        means: Reference means of every unit.
        classifier: Zero-shot classifier ``C``.
        targets: True classes.
        normalize: Cosine logits.

    Returns:
        Tidy table ``kind`` (one of :data:`ABLATION_KINDS`), ``ablated_layers`` (0..L, the
        first layers ablated), ``kept_layers`` (L − ablated) and ``accuracy``.
    """
    layers = {u: layer_of(u) for u in labels}
    n_layers = 1 + max(v for v in layers.values() if v is not None)
    is_mlp = {u: u.endswith(".mlp") for u in labels}
    rows = []
    for kind in ABLATION_KINDS:
        for n in range(n_layers + 1):
            dropped = [u for u, layer in layers.items() if layer is not None and layer < n and (
                kind == "heads+mlps" or is_mlp[u] == (kind == "mlps"))]
            z = ablate(units, labels, dropped, "mean", means)
            rows.append({"kind": kind, "ablated_layers": n, "kept_layers": n_layers - n,
                         "accuracy": accuracy(z, classifier, targets, normalize)})
    return pd.DataFrame(rows)


@dataclass
class TaskResult:
    """Everything chapter 04 computes for one task.

    Attributes:
        task: Dataset name.
        n_classes: Number of classes.
        zero_shot: Zero-shot accuracy of the full embedding on test.
        zero_shot_val: The same on validation.
        probes: Test accuracy of a ridge probe (fitted on train) per unit and ``embedding``.
        alignment: Per head, share of its variance in the span of the classifier directions.
        layers: :func:`layer_ablation` on test.
        coarse: :func:`residual_core.core.ablation.coarse_selection` (ranked on val, test
            evaluated).
        s_order: The first heads of the supervised ranking ``S`` (on val).
        majority: Majority-class accuracy on test.
    """

    task: str
    n_classes: int
    zero_shot: float
    zero_shot_val: float
    probes: pd.Series
    alignment: pd.Series
    layers: pd.DataFrame
    coarse: pd.DataFrame
    s_order: list[str]
    majority: float = field(default=float("nan"))

    @property
    def heads(self) -> list[str]:
        """Head labels (probe rows that are heads)."""
        return head_labels(list(self.probes.index))

    def carriers(self, k: int) -> list[str]:
        """The ``k`` heads with the best probe accuracy for the task (ties: label order)."""
        return list(self.probes[self.heads].sort_values(ascending=False, kind="stable").index[:k])


def analyze_task(
    task: str,
    train: tuple[Float[Tensor, "n unit d_out"], Int[Tensor, " n"]],
    val: tuple[Float[Tensor, "m unit d_out"], Int[Tensor, " m"]],
    test: tuple[Float[Tensor, "t unit d_out"], Int[Tensor, " t"]],
    labels: Sequence[str],
    means: Float[Tensor, "unit d_out"],
    classifier,
    *,
    random_seeds: int = 10,
    ks: Sequence[int] | None = None,
    s_heads: int = 3,
    probe_alpha: float = 0.1,
) -> TaskResult:
    """Zero-shot, probes, alignment, layer ablation and coarse selection of one task.

    Args:
        task: Dataset name (for the record).
        train: ``(units, targets)`` that the probes are fitted on.
        val: ``(units, targets)`` on which heads are ranked and selected.
        test: ``(units, targets)``, only evaluated.
        labels: Unit labels.
        means: Reference means of every unit (mean ablation).
        classifier: The task's :class:`~residual_core.core.zeroshot.ZeroShotClassifier`.
        random_seeds: Seeds of the random ranking ``R``.
        ks: Numbers of heads kept (default :func:`residual_core.core.ablation.k_values`).
        s_heads: How many heads of the ``S`` ranking to record.
        probe_alpha: Ridge penalty of the probes.
    """
    weights, norm = classifier.weights.cpu().float(), classifier.normalize_features
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    probes = probe_table(xtr, {task: ytr}, xte, {task: yte}, labels, alpha=probe_alpha)[task]
    heads = head_labels(labels)
    idx = [list(labels).index(h) for h in heads]
    align = classifier_alignment(xva[:, idx], heads, weights)
    coarse = coarse_selection(xva, yva, xte, yte, labels, means, weights, ks=ks,
                              random_seeds=random_seeds, normalize=norm)
    order = rank_heads("S", xva, labels, means, weights, yva, k_max=s_heads, normalize=norm)
    counts = np.bincount(np.asarray(yte, dtype=np.int64))
    return TaskResult(
        task=task, n_classes=weights.shape[1],
        zero_shot=accuracy(xte.sum(1), weights, yte, norm),
        zero_shot_val=accuracy(xva.sum(1), weights, yva, norm),
        probes=probes, alignment=align,
        layers=layer_ablation(xte, labels, means, weights, yte, norm),
        coarse=coarse, s_order=order[:s_heads], majority=float(counts.max() / counts.sum()),
    )


def selection_summary(coarse: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per ranking and k: mean, min and max over seeds (one seed except ``R``)."""
    sel = coarse[coarse.ranking != "full"]
    out = sel.groupby(["ranking", "k"], sort=False).test_acc.agg(["mean", "min", "max"])
    return out.reset_index()


def selected_on_val(coarse: pd.DataFrame) -> pd.DataFrame:
    """Per ranking: the k with the best validation accuracy and its test accuracy.

    Ties in validation accuracy go to the smaller k. For ``R`` each seed picks its own k and
    the test accuracies are averaged over seeds.

    Returns:
        One row per ranking (and ``full``): ``ranking``, ``k`` (mean over seeds for ``R``),
        ``val_acc``, ``test_acc``.
    """
    rows = []
    for (ranking, _seed), part in coarse.groupby(["ranking", "seed"], sort=False):
        best = part.sort_values(["val_acc", "k"], ascending=[False, True], kind="stable").iloc[0]
        rows.append({"ranking": ranking, "k": float(best.k), "val_acc": float(best.val_acc),
                     "test_acc": float(best.test_acc)})
    return pd.DataFrame(rows).groupby("ranking", sort=False).mean().reset_index()


def task_table(
    results: Sequence[TaskResult],
    shares: pd.DataFrame,
    families: Mapping[str, str | None],
    k_carriers: int = 2,
) -> pd.DataFrame:
    """One row per task: zero-shot, headroom and the specialisation of the heads it relies on.

    Args:
        results: :func:`analyze_task` outputs.
        shares: :func:`residual_core.analysis.specialization.family_shares` of every head.
        families: Task → dictionary family (``None``: the specialisation columns are ``nan``).
        k_carriers: Heads per task counted as "the heads it relies on" (best probes; ``S``
            uses its own first heads).

    Returns:
        Columns ``task``, ``family``, ``K``, ``chance`` (1/K), ``zero_shot``, ``zs_lift``
        ((zero-shot − 1/K)/(1 − 1/K)), ``best_head``, ``best_head_probe``,
        ``embedding_probe``, ``headroom`` (embedding probe − zero-shot), ``carriers``,
        ``spec_carriers``, ``align_carriers``, ``s_heads``, ``spec_s``, ``align_s``.
    """
    rows = []
    for r in results:
        fam = families.get(r.task)
        carriers = r.carriers(k_carriers)
        chance = 1.0 / r.n_classes
        rows.append({
            "task": r.task, "family": fam, "K": r.n_classes, "chance": chance,
            "zero_shot": r.zero_shot, "zs_lift": (r.zero_shot - chance) / (1 - chance),
            "best_head": carriers[0], "best_head_probe": float(r.probes[carriers[0]]),
            "embedding_probe": float(r.probes["embedding"]),
            "headroom": float(r.probes["embedding"]) - r.zero_shot,
            "carriers": ", ".join(carriers),
            "spec_carriers": task_specialization(shares, carriers, fam),
            "align_carriers": float(r.alignment[carriers].mean()),
            "s_heads": ", ".join(r.s_order),
            "spec_s": task_specialization(shares, r.s_order, fam),
            "align_s": float(r.alignment[r.s_order].mean()) if r.s_order else float("nan"),
        })
    return pd.DataFrame(rows)


def units_of_layer(labels: Sequence[str], layer: int, kind: str = "heads") -> list[str]:
    """Labels of one layer's heads (``kind="heads"``) or its MLP (``"mlps"``)."""
    return [u for u in labels if layer_of(u) == layer and u.endswith(".mlp") == (kind == "mlps")]

