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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
from jaxtyping import Float, Int
from torch import Tensor

from residual_core.analysis.specialization import (
    chance_levels,
    classifier_alignment,
    task_specialization,
)
from residual_core.core.ablation import ablate, accuracy, coarse_selection, rank_heads
from residual_core.core.errors import InputError
from residual_core.core.probes import probe_table
from residual_core.core.units import Units, is_head, layer_of

__all__ = [
    "ABLATION_KINDS",
    "ABLATION_MEANS",
    "RANKING_ORDER",
    "TaskResult",
    "ablation_by_layer",
    "ablation_means_compared",
    "analyze_task",
    "correlations",
    "headroom_findings",
    "layer_ablation",
    "selected_on_val",
    "selection_counts",
    "selection_summary",
    "selection_table",
    "spare_layers",
    "task_table",
]

ABLATION_KINDS = ("heads", "mlps", "heads+mlps")
ABLATION_MEANS = ("evaluated", "reference")
"""What layer ablation replaces a unit's direct contribution with: its mean over the images
being evaluated (TextSpan's ablation, whose finding C9 checks: the mean is taken over the same
ImageNet images it scores) or over the reference set (which on a shifted task also moves the
embedding by the difference of the two means)."""


def layer_ablation(
    units: Units,
    means: Float[Tensor, "unit d_out"],
    classifier: Float[Tensor, "d_out k"],
    targets: Int[Tensor, " n"],
    normalize: bool = True,
) -> pd.DataFrame:
    """Accuracy after mean-ablating the direct effect of the first ``n`` layers.

    Args:
        units: Per-unit contributions of the evaluated split.
        means: Reference means of every unit (one row per unit of ``units``).
        classifier: Zero-shot classifier ``C``.
        targets: True classes.
        normalize: Cosine logits.

    Returns:
        Tidy table ``kind`` (one of :data:`ABLATION_KINDS`), ``ablated_layers`` (0..L, the
        first layers ablated), ``kept_layers`` (L − ablated) and ``accuracy``.
    """
    layers = {u: layer_of(u) for u in units.labels}
    n_layers = units.layout.n_layers
    is_mlp = {u: u.endswith(".mlp") for u in units.labels}
    rows = []
    for kind in ABLATION_KINDS:
        for n in range(n_layers + 1):
            dropped = [u for u, layer in layers.items() if layer is not None and layer < n and (
                kind == "heads+mlps" or is_mlp[u] == (kind == "mlps"))]
            z = ablate(units, dropped, "mean", means)
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
        layers: :func:`layer_ablation` on test, with the ``ablation_mean`` it was run with.
        layers_by_mean: :func:`layer_ablation` on test with each of :data:`ABLATION_MEANS`.
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
    layers_by_mean: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def heads(self) -> list[str]:
        """Head labels (probe rows that are heads)."""
        return [u for u in self.probes.index if is_head(u)]

    def carriers(self, k: int) -> list[str]:
        """The ``k`` heads with the best probe accuracy for the task (ties: label order)."""
        return list(self.probes[self.heads].sort_values(ascending=False, kind="stable").index[:k])


def analyze_task(
    task: str,
    train: tuple[Units, Int[Tensor, " n"]],
    val: tuple[Units, Int[Tensor, " m"]],
    test: tuple[Units, Int[Tensor, " t"]],
    means: Float[Tensor, "unit d_out"],
    classifier,
    *,
    random_seeds: int = 10,
    ks: Sequence[int] | None = None,
    s_heads: int = 3,
    probe_alpha: float = 0.1,
    probes: pd.Series | None = None,
    ablation_mean: str = "evaluated",
) -> TaskResult:
    """Zero-shot, probes, alignment, layer ablation and coarse selection of one task.

    Args:
        task: Dataset name (for the record).
        train: ``(units, targets)`` that the probes are fitted on.
        val: ``(units, targets)`` on which heads are ranked and selected.
        test: ``(units, targets)``, only evaluated.
        means: Reference means of every unit (mean ablation in coarse selection and, with
            ``ablation_mean="reference"``, in layer ablation), one row per unit.
        classifier: The task's :class:`~residual_core.core.zeroshot.ZeroShotClassifier`.
        random_seeds: Seeds of the random ranking ``R``.
        ks: Numbers of heads kept (default :func:`residual_core.core.ablation.k_values`).
        s_heads: How many heads of the ``S`` ranking to record.
        probe_alpha: Ridge penalty of the probes.
        probes: This task's column of :func:`~residual_core.core.probes.probe_table` on the
            same train and test units, if already computed (tasks sharing images are probed
            in one call, e.g. by ``TaskEncodings.probes``); ``None``: fitted here.
        ablation_mean: The mean of layer ablation, one of :data:`ABLATION_MEANS`; both are
            computed (``layers_by_mean``), this one is ``layers``.
    """
    if ablation_mean not in ABLATION_MEANS:
        raise InputError(f"ablation_mean={ablation_mean!r} is not one of {list(ABLATION_MEANS)}")
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    weights = classifier.weights.float().to(xva.data.device)
    norm = classifier.normalize_features
    if probes is None:
        probes = probe_table(xtr, {task: ytr}, xte, {task: yte}, alpha=probe_alpha)[task]
    elif list(probes.index) != [*xtr.labels, "embedding"]:
        raise ValueError(f"analyze_task({task!r}): the probes are of other units than the "
                         f"task's ({len(probes)} rows for {len(xtr.labels)} units + embedding)")
    align = classifier_alignment(xva.heads(), weights)
    coarse = coarse_selection(xva, yva, xte, yte, means, weights, ks=ks,
                              random_seeds=random_seeds, normalize=norm)
    order = rank_heads("S", xva, means, weights, yva, k_max=s_heads, normalize=norm)
    layers = {m: layer_ablation(xte, xte.mean() if m == "evaluated" else means, weights, yte,
                                norm) for m in ABLATION_MEANS}
    return TaskResult(
        task=task, n_classes=weights.shape[1],
        zero_shot=accuracy(xte.sum(), weights, yte, norm),
        zero_shot_val=accuracy(xva.sum(), weights, yva, norm),
        probes=probes, alignment=align,
        layers=layers[ablation_mean],
        coarse=coarse, s_order=order[:s_heads], majority=chance_levels({task: yte})[task],
        layers_by_mean=layers,
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


def headroom_findings(table: pd.DataFrame, largest: int = 3) -> tuple[pd.Series, pd.DataFrame]:
    """Zero-shot against what the units carry, over the tasks of a :func:`task_table`.

    Returns:
        ``(means, largest)``: ``means`` holds the mean ``zero_shot``, ``embedding_probe`` and
        ``headroom`` and ``head_beats_zero_shot`` (tasks where the best single head's probe
        beats zero-shot) of ``tasks``; ``largest`` the tasks with the largest headroom.
    """
    means = pd.Series({
        "zero_shot": float(table.zero_shot.mean()),
        "embedding_probe": float(table.embedding_probe.mean()),
        "headroom": float(table.headroom.mean()),
        "head_beats_zero_shot": int((table.best_head_probe > table.zero_shot).sum()),
        "tasks": len(table),
    })
    top = table.sort_values("headroom", ascending=False, kind="stable").head(largest)
    return means, top[["task", "zero_shot", "embedding_probe", "headroom"]]


def ablation_by_layer(results: Mapping[str, TaskResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Layer ablation of every task, and its mean over tasks.

    Returns:
        ``(layers, by_layer)``: every task's :func:`layer_ablation` rows with a ``task`` column,
        and the mean accuracy per ``kind`` (rows) and number of ablated first layers (columns,
        0 = the full model).
    """
    layers = pd.concat([r.layers.assign(task=t) for t, r in results.items()], ignore_index=True)
    by_layer = layers.groupby(["kind", "ablated_layers"]).accuracy.mean().unstack(
        "ablated_layers")
    return layers, by_layer


def ablation_means_compared(results: Mapping[str, TaskResult], kind: str = "heads"
                            ) -> pd.DataFrame:
    """The mean over tasks of :func:`layer_ablation` under each of :data:`ABLATION_MEANS`.

    Returns:
        Ablation mean (rows) × number of ablated first layers of ``kind`` (columns, 0 = the
        full model): mean accuracy over the tasks.
    """
    rows = {}
    for mean in ABLATION_MEANS:
        layers = pd.concat([r.layers_by_mean[mean] for r in results.values()])
        rows[mean] = layers[layers.kind == kind].groupby("ablated_layers").accuracy.mean()
    return pd.DataFrame(rows).T.rename_axis(index="ablation mean")


def spare_layers(by_layer: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """How many first layers each kind of unit can lose while staying near the full model.

    Args:
        by_layer: :func:`ablation_by_layer`'s mean accuracy, kind × ablated first layers.
        tolerance: The largest drop from the full model (column 0) that counts as "near".

    Returns:
        Per kind: ``full`` (accuracy with nothing ablated), ``spare`` (the first layers that can
        be ablated, one after the other, within ``tolerance``), ``layers`` (all of them) and
        ``all_ablated`` (accuracy with every layer ablated).
    """
    rows = {}
    for kind, row in by_layer.iterrows():
        spare = 0
        for n in row.index[1:]:
            if row[0] - row[n] > tolerance:
                break
            spare += 1
        rows[kind] = {"full": float(row[0]), "spare": spare, "layers": int(row.index.max()),
                      "all_ablated": float(row.iloc[-1])}
    return pd.DataFrame.from_dict(rows, orient="index")


RANKING_ORDER = ("full", "S", "U|T", "U", "R")


def selection_table(results: Mapping[str, TaskResult]) -> pd.DataFrame:
    """Per task, the test accuracy of each ranking at its validation-chosen k, and those k.

    Returns:
        Tasks (in order) × ``full``, ``S``, ``U|T``, ``U``, ``R`` (test accuracy, see
        :func:`selected_on_val`), then ``S k``, ``U|T k``, ``U k``.
    """
    picked = pd.concat([selected_on_val(r.coarse).assign(task=t) for t, r in results.items()])
    tests = picked.pivot(index="task", columns="ranking", values="test_acc")[list(RANKING_ORDER)]
    ks = picked.pivot(index="task", columns="ranking", values="k")[["S", "U|T", "U"]]
    return tests.join(ks.add_suffix(" k")).loc[list(results)]


def selection_counts(selection: pd.DataFrame, margin: float = 0.005) -> pd.DataFrame:
    """Per ranking: mean test accuracy, and on how many tasks it beats or trails the full model.

    Args:
        selection: :func:`selection_table`.
        margin: Differences within ``±margin`` count as neither.

    Returns:
        Indexed by ``S``, ``U|T``, ``U``, ``R``: ``mean_test``, ``full`` (the full model's mean),
        ``better``, ``worse`` and ``tasks``.
    """
    gain = selection[list(RANKING_ORDER)].sub(selection["full"], axis=0)
    return pd.DataFrame({
        r: {"mean_test": float(selection[r].mean()), "full": float(selection["full"].mean()),
            "better": int((gain[r] > margin).sum()), "worse": int((gain[r] < -margin).sum()),
            "tasks": len(selection)}
        for r in RANKING_ORDER[1:]
    }).T


def correlations(table: pd.DataFrame, columns: Sequence[str], target: str = "zs_lift",
                 seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Spearman correlation of each column with ``target`` across tasks, with its p-value.

    Args:
        table: One row per task (e.g. :func:`task_table`).
        columns: The columns correlated with ``target``.
        target: The column they are correlated with.
        seed: Seed of the permutation p-values.
        alpha: Significance level of ``significant``.

    Returns:
        Indexed by column: ``rho``, ``p``, ``pearson``, ``n`` and ``significant`` (``p <
        alpha``; ``False`` with fewer than 3 tasks).
    """
    from residual_core.analysis.specialization import rank_correlation

    rows = {c: rank_correlation(table[c], table[target], seed=seed) for c in columns}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out["significant"] = (out.n >= 3) & (out.p < alpha)
    return out
