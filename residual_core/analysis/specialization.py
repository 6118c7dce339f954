"""Head specialisation: which attribute family a head's text explanation (and its probes) is about.

Every dictionary text is tagged with the attribute families it names (``color``, ``shape``,
...). A head's TextSpan (or SOMP) explanation is a list of texts with the variance each one
explained, so it can be summarised as a distribution over families:

- :func:`family_shares`: the share of the head's *explained* variance credited to each family
  (a pick's gain is split equally among the families its text names; texts naming none go to
  ``(none)``). Rows sum to one.
- :func:`specialization_scores`: the **specialisation score** of a head is the share of its
  dominant family (``1`` = every chosen text is about one family; ``1/F`` = spread evenly over
  F families), with the normalised entropy as a second view.

Ground truth, where the dataset has it (the tutorial world), comes from linear probes:
:func:`probe_lift` rescales probe accuracy so that chance is 0 and perfect is 1, and
:func:`ground_truth_table` puts, for every attribute, the best head(s) by probe next to the
texts TextSpan chose for them and whether those texts name the attribute's family.

Task level: :func:`task_specialization` averages, over the heads a task relies on, the share
of their explanation that names the task's family; :func:`classifier_alignment` is the share of
a head's variance inside the span of the task's zero-shot classifier directions; and
:func:`rank_correlation` correlates either with zero-shot accuracy across tasks (Spearman, with
a seeded permutation p-value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from residual_core.core.dictionary import TextDictionary
from residual_core.core.textspan import TextExplanation, somp, textspan
from residual_core.core.units import Units

__all__ = [
    "NONE_FAMILY",
    "chance_levels",
    "classifier_alignment",
    "dictionary_prior",
    "explanation_table",
    "explain_heads",
    "family_shares",
    "ground_truth_table",
    "head_views",
    "names_family",
    "pick_overlap",
    "probe_lift",
    "probe_specialization",
    "rank_correlation",
    "specialization_scores",
    "task_family",
    "task_specialization",
    "truth_summary",
    "views_agreement",
]

NONE_FAMILY = "(none)"
"""Family credited with the variance explained by texts that name no family."""


def task_family(task: str, families: Sequence[str],
                mapping: Mapping[str, str] | None = None) -> str | None:
    """The dictionary family a task's classes belong to.

    ``mapping`` wins; otherwise the task's last dotted component is split on ``_`` and the last
    piece that is a family is used (``"world_clutter.color"`` → ``"color"``).

    Args:
        task: Dataset name.
        families: The dictionary's families.
        mapping: Explicit task → family entries (e.g. ``{"mnist": "number"}``).

    Returns:
        The family, or ``None`` if the task names none.
    """
    if mapping and task in mapping:
        return mapping[task]
    pieces = task.split(".")[-1].split("_")
    found = [p for p in pieces if p in set(families)]
    return found[-1] if found else None


def family_shares(
    explanations: Sequence[TextExplanation],
    dictionary: TextDictionary,
    ignore: Sequence[str] = (),
) -> pd.DataFrame:
    """Share of each unit's explained variance credited to each attribute family.

    Args:
        explanations: TextSpan or SOMP results (``indices`` index the dictionary).
        dictionary: The dictionary the explanations were computed with.
        ignore: Families treated as modifiers and not credited (e.g. ``("side",)`` for
            "on the left"); a text naming only ignored families counts as naming none.

    Returns:
        Units × families (the dictionary's, minus ``ignore``, plus :data:`NONE_FAMILY`); each
        row sums to one (all zeros if nothing was explained).
    """
    fams = [f for f in dictionary.family_names() if f not in set(ignore)] + [NONE_FAMILY]
    col = {f: i for i, f in enumerate(fams)}
    out = np.zeros((len(explanations), len(fams)))
    for row, expl in enumerate(explanations):
        for idx, gain in zip(expl.indices, expl.gains, strict=True):
            named = [f for f in dictionary.families[idx] if f in col] or [NONE_FAMILY]
            for f in named:
                out[row, col[f]] += max(gain, 0.0) / len(named)
    total = out.sum(1, keepdims=True)
    out = np.divide(out, total, out=np.zeros_like(out), where=total > 0)
    return pd.DataFrame(out, index=[e.unit for e in explanations], columns=fams)


def dictionary_prior(dictionary: TextDictionary, ignore: Sequence[str] = ()) -> pd.Series:
    """:func:`family_shares` of a head that explained equal variance with every text.

    The baseline of the shares: a head whose picks were unrelated to families would land near
    it, since families with many texts are picked more often by chance.
    """
    n = len(dictionary)
    flat = TextExplanation("dictionary", list(range(n)), list(dictionary.texts),
                           [(i + 1) / n for i in range(n)])
    return family_shares([flat], dictionary, ignore).iloc[0]


def specialization_scores(shares: pd.DataFrame) -> pd.DataFrame:
    """The specialisation score of every unit from its :func:`family_shares`.

    Returns:
        Per unit: ``top_family``, ``score`` (share of the top family, in [1/F, 1]),
        ``second_family``, ``entropy_score`` (1 − entropy / log F, in [0, 1]).
    """
    values = shares.to_numpy()
    order = np.argsort(-values, axis=1, kind="stable")
    p = np.clip(values, 1e-300, None)
    entropy = -(values * np.log(p)).sum(1)
    n_fam = shares.shape[1]
    cols = shares.columns.to_numpy()
    return pd.DataFrame({
        "top_family": cols[order[:, 0]],
        "score": values[np.arange(len(values)), order[:, 0]],
        "second_family": cols[order[:, 1]] if n_fam > 1 else None,
        "entropy_score": 1 - entropy / math.log(n_fam) if n_fam > 1 else 1.0,
    }, index=shares.index)


def names_family(explanation: TextExplanation, dictionary: TextDictionary, family: str,
                 top: int = 1) -> bool:
    """Whether any of the first ``top`` texts of an explanation names ``family``."""
    return any(family in dictionary.families[i] for i in explanation.indices[:top])


def chance_levels(attributes: Mapping[str, Tensor | np.ndarray]) -> dict[str, float]:
    """Majority-class accuracy of every attribute (the floor a probe must beat)."""
    out = {}
    for name, y in attributes.items():
        counts = np.bincount(torch.as_tensor(y).cpu().numpy().astype(np.int64))
        out[name] = float(counts.max() / counts.sum())
    return out


def probe_lift(probes: pd.DataFrame, chance: Mapping[str, float]) -> pd.DataFrame:
    """Probe accuracy rescaled per attribute: 0 at chance, 1 at perfect (clipped at 0)."""
    base = pd.Series({c: chance[c] for c in probes.columns})
    return ((probes - base) / (1 - base)).clip(lower=0.0)


def probe_specialization(lift: pd.DataFrame,
                         attribute_families: Mapping[str, str | None]) -> pd.DataFrame:
    """Ground-truth view of each unit: its best attribute by probe lift and how dominant it is.

    Args:
        lift: :func:`probe_lift`, units × attributes.
        attribute_families: Attribute → dictionary family.

    Returns:
        Per unit: ``top_attribute``, ``top_family``, ``top_lift`` and ``concentration``
        (top lift / sum of lifts: 1 if the unit carries one attribute only, 1/A if all alike).
    """
    values = lift.to_numpy()
    top = values.argmax(1)
    total = values.sum(1)
    attrs = lift.columns.to_numpy()[top]
    return pd.DataFrame({
        "top_attribute": attrs,
        "top_family": [attribute_families.get(a) for a in attrs],
        "top_lift": values[np.arange(len(values)), top],
        "concentration": np.divide(values.max(1), total, out=np.zeros(len(values)),
                                   where=total > 0),
    }, index=lift.index)


def explanation_table(explanations: Mapping[str, TextExplanation], n_texts: int | None = None,
                      ) -> pd.DataFrame:
    """Units × pick order, each cell ``"text (gain %)"``, plus the total explained variance."""
    rows = {}
    for unit, expl in explanations.items():
        k = len(expl.texts) if n_texts is None else min(n_texts, len(expl.texts))
        cells = {f"#{i + 1}": f"{t} ({100 * g:.1f}%)"
                 for i, (t, g) in enumerate(zip(expl.texts[:k], expl.gains[:k], strict=True))}
        rows[unit] = {**cells, "explained": f"{100 * expl.explained_variance[k - 1]:.1f}%"}
    return pd.DataFrame.from_dict(rows, orient="index")


def _random_hit_rate(dictionary: TextDictionary, family: str, n_texts: int) -> float:
    """Probability that ``n_texts`` distinct random dictionary texts include one naming it."""
    m, hit = len(dictionary), len(dictionary.with_family(family))
    miss = 1.0
    for i in range(min(n_texts, m)):
        miss *= max(m - hit - i, 0) / (m - i)
    return 1.0 - miss


def ground_truth_table(
    probes: pd.DataFrame,
    explanations: Mapping[str, TextExplanation],
    dictionary: TextDictionary,
    attribute_families: Mapping[str, str | None],
    chance: Mapping[str, float],
    *,
    n_heads: int = 1,
    n_texts: int = 3,
    ignore: Sequence[str] = (),
) -> pd.DataFrame:
    """For every attribute: its best head(s) by probe and whether TextSpan names its family.

    Args:
        probes: Probe accuracy, units × attributes (rows not in ``explanations`` are skipped,
            so the embedding and MLP rows may stay in).
        explanations: Unit label → its explanation (TextSpan, usually).
        dictionary: The dictionary of the explanations.
        attribute_families: Attribute → dictionary family (``None``: no family to check).
        chance: Majority-class accuracy per attribute.
        n_heads: Best heads listed per attribute.
        n_texts: A head "names the family" if one of its first ``n_texts`` texts does.
        ignore: Modifier families not credited in ``family_share`` (see :func:`family_shares`).

    Returns:
        One row per (attribute, rank): ``attribute``, ``family``, ``rank``, ``head``,
        ``probe_acc``, ``chance``, ``top_texts`` (joined with `` | ``), ``names_family``
        (``"yes"``/``"no"``/``"–"``), ``by_chance`` (probability that ``n_texts`` random
        dictionary texts would name the family), ``family_share`` (share of the head's
        explained variance credited to the family) and ``family_prior`` (the same share for a
        head explained by the whole dictionary evenly, :func:`dictionary_prior`).
    """
    heads = [u for u in probes.index if u in explanations]
    shares = family_shares([explanations[h] for h in heads], dictionary, ignore)
    prior = dictionary_prior(dictionary, ignore)
    rows = []
    for attr in probes.columns:
        family = attribute_families.get(attr)
        best = probes.loc[heads, attr].sort_values(ascending=False, kind="stable")
        for rank, (head, acc) in enumerate(best.iloc[:n_heads].items(), start=1):
            expl = explanations[head]
            named = "–" if family is None else (
                "yes" if names_family(expl, dictionary, family, n_texts) else "no")
            share = float(shares.loc[head, family]) if family in shares.columns else float("nan")
            by_chance = (float("nan") if family is None
                         else _random_hit_rate(dictionary, family, n_texts))
            rows.append({"attribute": attr, "family": family, "rank": rank, "head": head,
                         "probe_acc": float(acc), "chance": chance[attr],
                         "top_texts": " | ".join(expl.texts[:n_texts]), "names_family": named,
                         "by_chance": by_chance, "family_share": share,
                         "family_prior": float(prior.get(family, float("nan")))})
    return pd.DataFrame(rows)


def explain_heads(
    units: Units,
    heads: Sequence[str],
    dictionary: TextDictionary,
    *,
    method: str = "textspan",
    n_iters: int = 10,
    rank: int = 80,
    span: str = "uncentred",
) -> dict[str, TextExplanation]:
    """TextSpan (from each head's covariance) or SOMP (on its samples) for the given units.

    Args:
        units: Per-unit contributions (e.g. of the reference split).
        heads: The units to explain.
        dictionary: An embedded dictionary (``load_dictionary(name).embed(loaded)``).
        method: ``"textspan"`` or ``"somp"``.
        n_iters: Texts picked per unit.
        rank: TextSpan's number of singular directions.
        span: TextSpan's span, ``"uncentred"`` (the authors') or ``"centred"`` (see
            :func:`residual_core.core.textspan.textspan`).

    Returns:
        Unit label → explanation, in the order of ``heads``.
    """
    selected = units.select(heads)
    if method == "textspan":
        return textspan(selected, dictionary, n_iters=n_iters, rank=rank, span=span)
    if method == "somp":
        return {h: somp(selected.select(h), dictionary, n_iters=n_iters)[0] for h in heads}
    raise ValueError(f"method must be 'textspan' or 'somp', got {method!r}")


def classifier_alignment(units: Units, classifier: Float[Tensor, "d_out k"]) -> pd.Series:
    """Share of each unit's variance that lies in the span of the classifier's directions.

    A head whose output varies only inside ``span(C)`` (1) speaks directly to the zero-shot
    classifier; one varying orthogonally to it (0) is invisible to it whatever it carries.
    Chance level for a random direction is ``K / d_out``.

    Returns:
        Per unit label, the share.
    """
    x = units.data.double() - units.data.double().mean(0)
    basis = torch.linalg.qr(classifier.double().to(x.device))[0]
    inside = (x @ basis).pow(2).sum((0, 2))
    total = x.pow(2).sum((0, 2)).clamp_min(1e-30)
    return pd.Series((inside / total).cpu().numpy(), index=list(units.labels),
                     name="alignment")


def task_specialization(shares: pd.DataFrame, heads: Sequence[str], family: str | None,
                        weights: Sequence[float] | np.ndarray | None = None) -> float:
    """(Weighted) mean over ``heads`` of the share of their explanation naming ``family``.

    ``nan`` when the task has no family in the dictionary.
    """
    if family is None or family not in shares.columns or not heads:
        return float("nan")
    values = shares.loc[list(heads), family].to_numpy()
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=float)
    return float((values * w).sum() / w.sum())


def rank_correlation(x: Sequence[float] | np.ndarray | pd.Series,
                     y: Sequence[float] | np.ndarray | pd.Series, n_permutations: int = 10_000,
                     seed: int = 0) -> dict[str, float]:
    """Spearman correlation with a two-sided permutation p-value (seeded, so reproducible).

    Pairs with a ``nan`` are dropped.

    Returns:
        ``rho``, ``p`` (permutation), ``pearson`` (on the raw values) and ``n`` (pairs used).
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 3:
        return {"rho": float("nan"), "p": float("nan"), "pearson": float("nan"), "n": n}
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()

    def corr(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        u = u - u.mean(-1, keepdims=True)
        v = v - v.mean(-1, keepdims=True)
        den = np.sqrt((u * u).sum(-1) * (v * v).sum(-1))
        return np.divide((u * v).sum(-1), den, out=np.zeros(np.broadcast(u, v).shape[:-1]),
                         where=den > 0)

    rho = float(corr(ra, rb))
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_permutations, n)), axis=1)
    null = corr(ra[None], rb[perms])
    p = float(((np.abs(null) >= abs(rho) - 1e-12).sum() + 1) / (n_permutations + 1))
    return {"rho": rho, "p": p, "pearson": float(corr(a, b)), "n": n}


def pick_overlap(a: Mapping[str, TextExplanation], b: Mapping[str, TextExplanation]
                 ) -> pd.Series:
    """Per unit explained by both, how many texts the two explanations share."""
    return pd.Series({u: len(set(a[u].indices) & set(b[u].indices)) for u in a if u in b},
                     name="shared texts", dtype=int)


def truth_summary(truth: pd.DataFrame) -> pd.Series:
    """How often TextSpan names what the probes find, on a :func:`ground_truth_table`.

    Only each attribute's best head (rank 1) with a family to check counts.

    Returns:
        ``attributes`` (checked), ``named`` (the first texts name the family), ``by_chance``
        (how many random texts would name it, summed), ``strong`` (attributes whose best head's
        probe is over half-way from chance to perfect), ``strong_named`` and ``above_prior``
        (the head's family share exceeds the dictionary's prior).
    """
    best = truth[truth["rank"] == 1]
    checked = best[best.names_family != "–"]
    strong = checked[checked.probe_acc - checked.chance > 0.5 * (1 - checked.chance)]
    return pd.Series({
        "attributes": len(checked),
        "named": int((checked.names_family == "yes").sum()),
        "by_chance": float(checked.by_chance.sum()),
        "strong": len(strong),
        "strong_named": int((strong.names_family == "yes").sum()),
        "above_prior": int((checked.family_share > checked.family_prior).sum()),
    })


def head_views(scores: pd.DataFrame, lift: pd.DataFrame,
               attribute_families: Mapping[str, str | None]) -> pd.DataFrame:
    """The text view (:func:`specialization_scores`) of each head beside its probe view.

    Args:
        scores: Per head, from the TextSpan family shares.
        lift: :func:`probe_lift` of the same heads, heads × attributes.
        attribute_families: Attribute → dictionary family.

    Returns:
        ``scores`` joined with :func:`probe_specialization` (its family as
        ``top_family_probe``) and ``agree`` (``"yes"`` when both views give the same family).
    """
    probe = probe_specialization(lift, attribute_families)
    view = scores.join(probe.rename(columns={"top_family": "top_family_probe"}))
    view["agree"] = (view.top_family == view.top_family_probe).map({True: "yes", False: "no"})
    return view


def views_agreement(view: pd.DataFrame, seed: int = 0) -> pd.Series:
    """How well the text and probe views of :func:`head_views` agree over the heads.

    Returns:
        ``agree`` and ``heads`` (those with a probe family), and the Spearman ``rho`` and
        permutation ``p`` of the specialisation score against the probe concentration.
    """
    both = view.dropna(subset=["top_family_probe"])
    rho = rank_correlation(both.score, both.concentration, seed=seed)
    return pd.Series({"agree": int((both.agree == "yes").sum()), "heads": len(both),
                      "rho": rho["rho"], "p": rho["p"]})
