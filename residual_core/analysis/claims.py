"""The paper's claims, each checked on a run with a criterion fixed in code (the scoreboard).

Every chapter turns its measurements into rows of a claims table with :func:`write_claims`:
``id``, ``claim`` (the paper's claim in a line), ``measured`` (this run's numbers),
``criterion`` (what must hold) and ``holds`` (yes/no). The criteria are written once, here,
and tested on synthetic inputs where each holds and where it fails; a chapter never decides a
claim by itself. Heads are the units unless a claim says otherwise; "significant" means a
one-sided permutation test of Spearman's rho at p < 0.05, seeded.

| id | chapter | claim |
|---|---|---|
| C1, C2 | 01 | heads have a low linear (PCA-99) and nonlinear (TwoNN) intrinsic dimension |
| C3, C4 | 01 | the linear/TwoNN ratio grows with depth; the TwoNN ID is hunchbacked over depth |
| C5, C6 | 02 | principal subspaces are stable across natural shifts; random images the least |
| C7, C8 | 03 | TextSpan names what a head carries; text and probe views of a head agree |
| C9–C11 | 04 | the last layers carry the direct effect; coarse selection helps; specialisation
  drives zero-shot accuracy |
| C12–C14 | 05 | ResiDual closes most of the gap to fine-tuning, beats a linear adapter with few
  parameters, and ResiDual* beats zero-shot |
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from residual_core.core.io import atomic_write

__all__ = [
    "CLAIMS",
    "COLUMNS",
    "Claim",
    "RESIDUAL_VARIANTS",
    "alignment_claims",
    "claims_path",
    "id_claims",
    "kept_attention_layers",
    "read_claims",
    "residual_claims",
    "scoreboard_markdown",
    "specialization_claims",
    "spearman_greater",
    "stability_claims",
    "write_claims",
]

COLUMNS = ("id", "chapter", "claim", "measured", "criterion", "holds")
ALPHA = 0.05


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and the criterion it is checked with.

    Attributes:
        id: ``C1`` ... ``C14``.
        chapter: The chapter that measures it (``01`` ...).
        claim: The paper's claim, in a line.
        criterion: What must hold on a run, in words (the code is the definition).
    """

    id: str
    chapter: str
    claim: str
    criterion: str


CLAIMS: dict[str, Claim] = {c.id: c for c in [
    Claim("C1", "01", "heads have a low linear intrinsic dimension",
          "median linear ID (PCA-99) of the heads ≤ 50% of d_head"),
    Claim("C2", "01", "heads have a low nonlinear (TwoNN) intrinsic dimension",
          "median TwoNN ID of the heads ≤ 25% of d_head"),
    Claim("C3", "01", "the linear/nonlinear ID ratio grows with depth",
          "Spearman(layer, linear/TwoNN ratio) over heads > 0, significant"),
    Claim("C4", "01", "the nonlinear ID is hunchbacked over depth",
          "per-layer mean TwoNN ID peaks at an inner layer and exceeds the first and the last "
          "layer's mean by more than twice the standard error of each difference"),
    Claim("C5", "02", "unit subspaces are stable across natural distribution shifts",
          "every natural shifted distribution's median head similarity to the reference > "
          "chance + ½(1 − chance)"),
    Claim("C6", "02", "random images are the least similar to the reference",
          "the random images have the lowest median head similarity of all datasets"),
    Claim("C7", "03", "TextSpan's texts name the attribute a head carries",
          "the first 3 TextSpan texts of each attribute's best-probe head name its family for "
          "≥ 80% of attributes, and for more than random texts would"),
    Claim("C8", "03", "a head's text view and its probe view agree",
          "text and probe views name the same family for ≥ 50% of the heads whose best probe "
          "lift is ≥ 0.5"),
    Claim("C9", "04", "only the last attention layers have a significant direct effect",
          "mean-ablating every attention layer but the last third keeps the mean zero-shot "
          "accuracy within 2 points of the full model's"),
    Claim("C10", "04", "selecting heads (coarse selection) improves zero-shot accuracy",
          "S selection (chosen on validation) beats the full model on test for ≥ half of "
          "the tasks"),
    Claim("C11", "04", "head specialisation drives zero-shot accuracy",
          "Spearman(specialisation of the task's carrier heads, zero-shot lift) > 0, "
          "significant, over ≥ 30 tasks"),
    Claim("C12", "05", "ResiDual reaches fine-tuning-level accuracy",
          "ResiDual-full closes ≥ 70% of the mean zero-shot → fine-tune gap"),
    Claim("C13", "05", "ResiDual beats a linear adapter with far fewer parameters",
          "ResiDual-full's mean accuracy ≥ the linear adapter's, with ≤ 10% of its "
          "parameters"),
    Claim("C14", "05", "ResiDual* improves on zero-shot",
          "ResiDual* (heads, 90% EVR) beats zero-shot on ≥ 80% of tasks"),
]}
"""Every claim of the scoreboard, by id."""


def _row(claim_id: str, measured: str, holds: bool) -> dict[str, object]:
    c = CLAIMS[claim_id]
    return {"id": c.id, "chapter": c.chapter, "claim": c.claim, "measured": measured,
            "criterion": c.criterion, "holds": "yes" if holds else "no"}


def _table(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(COLUMNS))


def spearman_greater(x: Sequence[float] | np.ndarray | pd.Series,
                     y: Sequence[float] | np.ndarray | pd.Series, n_permutations: int = 10_000,
                     seed: int = 0) -> tuple[float, float, int]:
    """Spearman's rho with a one-sided (rho > 0) permutation p-value, seeded.

    Pairs with a NaN are dropped; ties get average ranks.

    Returns:
        ``(rho, p, n)``; rho and p are NaN with fewer than 3 pairs.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 3:
        return math.nan, math.nan, n
    ra = pd.Series(a).rank().to_numpy() - (n + 1) / 2
    rb = pd.Series(b).rank().to_numpy() - (n + 1) / 2
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    if den == 0:
        return 0.0, 1.0, n
    rho = float((ra * rb).sum() / den)
    perms = np.argsort(np.random.default_rng(seed).random((n_permutations, n)), axis=1)
    null = (ra[None] * rb[perms]).sum(1) / den
    p = float(((null >= rho - 1e-12).sum() + 1) / (n_permutations + 1))
    return rho, p, n


def _clear_excess(mean_a: float, se_a: float, mean_b: float, se_b: float) -> tuple[float, bool]:
    """``a − b`` and whether it exceeds twice the standard error of the difference."""
    diff = mean_a - mean_b
    return float(diff), bool(diff > 2 * math.hypot(se_a, se_b))


def id_claims(table: pd.DataFrame, d_head: int, seed: int = 0,
              n_permutations: int = 10_000) -> pd.DataFrame:
    """C1–C4 from a unit table with ``kind``, ``layer``, ``linear_id``, ``twonn``, ``ratio``.

    Args:
        table: One row per unit (chapter 01's intrinsic-dimension table); heads have
            ``kind == "head"``.
        d_head: Width of one head.
        seed: Seed of the permutation test.
        n_permutations: Permutations of the test.
    """
    heads = table[table.kind == "head"]
    lin, nonlin = float(heads.linear_id.median()), float(heads.twonn.median())
    rho, p, n = spearman_greater(heads.layer, heads.ratio, n_permutations, seed)
    per_layer = heads.groupby("layer").twonn.agg(["mean", "std", "size"])
    se = per_layer["std"].fillna(0) / np.sqrt(per_layer["size"])
    first, last, peak = per_layer.index.min(), per_layer.index.max(), per_layer["mean"].idxmax()
    inner = peak not in (first, last)
    gaps = [_clear_excess(per_layer["mean"][peak], se[peak], per_layer["mean"][end], se[end])
            for end in (first, last)]
    profile = ", ".join(f"L{k} {v:.1f}±{s:.1f}" for k, v, s in
                        zip(per_layer.index, per_layer["mean"], se, strict=True))
    return _table([
        _row("C1", f"median linear ID {lin:.1f} = {lin / d_head:.0%} of d_head {d_head}",
             lin <= 0.5 * d_head),
        _row("C2", f"median TwoNN ID {nonlin:.2f} = {nonlin / d_head:.0%} of d_head {d_head}",
             nonlin <= 0.25 * d_head),
        _row("C3", f"rho {rho:+.2f}, one-sided p {p:.3f} over {n} heads",
             bool(rho > 0 and p < ALPHA)),
        _row("C4", f"mean TwoNN per layer (± s.e.) {profile}; peak L{peak}"
             + (f", {gaps[0][0]:+.2f} over L{first}, {gaps[1][0]:+.2f} over L{last}"
                if inner else " (an end layer)"),
             bool(inner and all(clear for _, clear in gaps))),
    ])


def stability_claims(medians: Mapping[str, float], chance: float, control: str,
                     same: Sequence[str] = ()) -> pd.DataFrame:
    """C5–C6 from the median head similarity of every dataset to the reference.

    Args:
        medians: Dataset key → median similarity of its heads' subspaces to the reference's.
        chance: The similarity of random subspaces (median over heads).
        control: The key of the random images.
        same: Keys of datasets from the reference's own distribution (not shifts; they count
            for C6 only).

    A run without a shifted dataset, or without the control, gets rows that do not hold and
    say why.
    """
    bar = chance + 0.5 * (1 - chance)
    shifted = {k: v for k, v in medians.items() if k != control and k not in same}
    listing = ", ".join(f"{k} {v:.3f}" for k, v in sorted(medians.items(), key=lambda kv: -kv[1]))
    if shifted:
        c5 = f"shifted: {', '.join(f'{k} {v:.3f}' for k, v in shifted.items())}; "
    else:  # a small run may compare the reference's own distribution only
        c5 = "no shifted dataset in this run (nothing to check); "
    if control not in medians:
        c6, lowest = f"{listing}; no dataset under the control key {control!r} in this run", None
    else:
        lowest = min(medians, key=medians.get)
        c6 = f"{listing}; lowest: {lowest}"
    return _table([
        _row("C5", c5 + f"bar {bar:.3f} (chance {chance:.3f})",
             bool(shifted) and all(v > bar for v in shifted.values())),
        _row("C6", c6, lowest == control),
    ])


def specialization_claims(best: pd.DataFrame, heads: pd.DataFrame) -> pd.DataFrame:
    """C7–C8 from chapter 03's tables.

    Args:
        best: One row per attribute for its best-probe head: ``names_family`` (``"yes"``,
            ``"no"``, or ``"–"`` where the attribute has no dictionary family; those are left
            out) and ``by_chance`` (probability that 3 random dictionary texts name it).
        heads: One row per head: ``top_family`` (text view), ``top_family_probe`` (probe
            view) and ``top_lift`` (best probe lift, 0 at chance, 1 perfect).
    """
    checked = best[best.names_family.isin(["yes", "no"])]
    hits, n = int((checked.names_family == "yes").sum()), len(checked)
    expected = float(checked.by_chance.sum())
    strong = heads[heads.top_lift >= 0.5]
    agree = int((strong.top_family == strong.top_family_probe).sum())
    c8 = f"{agree} of {len(strong)} heads with lift ≥ 0.5 agree"
    counts = strong.top_family_probe.value_counts()
    if len(counts) and counts.iloc[0] > 0.5 * len(strong):
        # The evidence a reader needs when one attribute is easy for every head: the probe
        # view then names it for most heads whatever the texts say.
        c8 += f"; the probe view names {counts.index[0]} for {counts.iloc[0]} of them"
    return _table([
        _row("C7", f"{hits} of {n} attributes named (random texts: {expected:.1f})",
             bool(n) and hits >= 0.8 * n and hits > expected),
        _row("C8", c8, bool(len(strong)) and agree >= 0.5 * len(strong)),
    ])


def kept_attention_layers(n_layers: int) -> int:
    """The last third of the layers, rounded up (4 of 12, 8 of 24, 3 of 8)."""
    return math.ceil(n_layers / 3)


def alignment_claims(layers: pd.DataFrame, selected: pd.DataFrame, tasks: pd.DataFrame,
                     seed: int = 0, n_permutations: int = 10_000,
                     min_tasks: int = 30) -> pd.DataFrame:
    """C9–C11 from chapter 04's tables.

    Args:
        layers: Layer ablation, one row per task, ``kind``, ``ablated_layers`` (the first
            layers mean-ablated, 0 = the full model) and ``accuracy`` (zero-shot, test).
        selected: Coarse selection per task and ranking at the k chosen on validation:
            ``task``, ``ranking`` (``"S"``, ``"full"``, ...) and ``test_acc``; or the same
            wide, tasks × rankings (as chapter 04's selection table).
        tasks: One row per task: ``spec_carriers`` and ``zs_lift``.
        seed: Seed of the permutation test.
        n_permutations: Permutations of the test.
        min_tasks: Fewest tasks for which C11 can hold.
    """
    heads = layers[layers.kind == "heads"]
    n_layers = int(heads.ablated_layers.max())
    ablated = n_layers - kept_attention_layers(n_layers)
    mean = heads.groupby("ablated_layers").accuracy.mean()
    drop = float(mean[0] - mean[ablated])
    test = (selected.pivot(index="task", columns="ranking", values="test_acc")
            if "ranking" in selected.columns else selected)
    wins = int((test["S"] > test["full"]).sum())
    rho, p, n = spearman_greater(tasks.spec_carriers, tasks.zs_lift, n_permutations, seed)
    c11 = (f"rho {rho:+.2f}, one-sided p {p:.3f} over {n} tasks" if n >= 3
           else f"no correlation over {n} tasks")
    if n < min_tasks:  # a small run: the number is shown, the claim cannot hold on it
        c11 += f"; too few tasks to decide (at least {min_tasks} needed)"
    c9 = (f"first {ablated} of {n_layers} attention layers mean-ablated: mean zero-shot "
          f"{mean[ablated]:.3f} vs {mean[0]:.3f} ({-drop:+.3f})")
    steps = mean.loc[:ablated].diff().iloc[1:]  # at k: what ablating layer k - 1 adds
    if drop > 0.02 and len(steps):  # where the cost comes from, for a reader of a "no"
        c9 += f"; the costliest layer is L{int(steps.idxmin()) - 1} ({steps.min():+.3f})"
    return _table([
        _row("C9", c9, drop <= 0.02),
        _row("C10", f"S beats the full model on {wins} of {len(test)} tasks",
             bool(len(test)) and wins >= 0.5 * len(test)),
        _row("C11", c11, bool(n >= min_tasks and rho > 0 and p < ALPHA)),
    ])


RESIDUAL_VARIANTS = ("zero-shot", "fine-tune", "residual-full", "linear-adapter", "residual-fine")
"""The variants of chapter 05 that C12–C14 compare."""


def _still_improving(results: pd.DataFrame, variant: str, tasks: pd.Index) -> str:
    """``"; still improving at its last epoch on n of m tasks"`` for a variant, where it was.

    A run whose best epoch is its last was stopped by its epoch cap, not by early stopping:
    more epochs could have raised its accuracy. Empty where the results have no epoch columns
    or no such run.
    """
    if not {"epochs", "best_epoch"} <= set(results.columns):
        return ""
    runs = results[(results.variant == variant) & results.dataset.isin(tasks)]
    capped = int((runs.best_epoch >= runs.epochs).sum())
    return (f"; the {variant} was still improving at its last epoch on {capped} of "
            f"{len(runs)} tasks" if capped else "")


def residual_claims(results: pd.DataFrame) -> pd.DataFrame:
    """C12–C14 from chapter 05's results (``dataset``, ``variant``, ``accuracy``, ``params``).

    With ``epochs`` and ``best_epoch``, C12 also says on how many tasks the fine-tune was still
    improving when its epoch cap stopped it. Only tasks every variant of
    :data:`RESIDUAL_VARIANTS` that was run has a result on are compared. A claim whose variants
    were not run gets a row that does not hold and says so.
    """
    ran = [v for v in RESIDUAL_VARIANTS if v in set(results.variant)]
    acc = results[results.variant.isin(ran)].pivot(index="dataset", columns="variant",
                                                   values="accuracy").dropna()
    params = results.groupby("variant").params.first()
    mean = acc.mean()

    def missing(claim_id: str, *needed: str) -> dict[str, object] | None:
        lacking = [v for v in needed if v not in ran]
        return (_row(claim_id, f"not measured: variant {', '.join(lacking)} not run", False)
                if lacking else None)

    def c12() -> dict[str, object]:
        gap = mean["fine-tune"] - mean["zero-shot"]
        closed = (mean["residual-full"] - mean["zero-shot"]) / gap if gap > 0 else math.nan
        # Above 100%, the fine-tune is the weaker model: a capped fine-tuning budget, not
        # ResiDual, is then the likelier reason, and the row says so.
        beyond = ("; ResiDual-full beats the fine-tune, whose budget may be too small "
                  "(finetune_epochs, finetune_train_size)" if gap > 0 and closed > 1 else "")
        return _row("C12", f"mean zero-shot {mean['zero-shot']:.3f}, ResiDual-full "
                    f"{mean['residual-full']:.3f}, fine-tune {mean['fine-tune']:.3f}: "
                    + (f"{closed:.0%} of the gap closed" if gap > 0 else "no gap to close")
                    + beyond + _still_improving(results, "fine-tune", acc.index),
                    bool(gap > 0 and closed >= 0.7))

    def c13() -> dict[str, object]:
        ratio = params["residual-full"] / params["linear-adapter"]
        return _row("C13", f"ResiDual-full {mean['residual-full']:.3f} with "
                    f"{params['residual-full']:,} parameters vs linear adapter "
                    f"{mean['linear-adapter']:.3f} with {params['linear-adapter']:,} ({ratio:.1%})",
                    bool(mean["residual-full"] >= mean["linear-adapter"] and ratio <= 0.1))

    def c14() -> dict[str, object]:
        wins = int((acc["residual-fine"] > acc["zero-shot"]).sum())
        return _row("C14", f"ResiDual* beats zero-shot on {wins} of {len(acc)} tasks",
                    bool(len(acc)) and wins >= 0.8 * len(acc))

    return _table([
        missing("C12", "zero-shot", "residual-full", "fine-tune") or c12(),
        missing("C13", "residual-full", "linear-adapter") or c13(),
        missing("C14", "zero-shot", "residual-fine") or c14(),
    ])


def claims_path(results_file: str | os.PathLike) -> Path:
    """The claims table next to a chapter's results table (``*.results.csv`` → ``*.claims.csv``)."""
    path = Path(results_file)
    stem = path.name.removesuffix(".csv").removesuffix(".results")
    return path.with_name(f"{stem}.claims.csv")


def write_claims(table: pd.DataFrame, results_file: str | os.PathLike | None) -> Path | None:
    """Write a chapter's claims next to its results table (atomically); ``None``: nothing.

    Returns:
        The written file, or ``None`` for a chapter run by hand (no ``results_file``).
    """
    if results_file is None:
        return None
    return atomic_write(claims_path(results_file), table.loc[:, list(COLUMNS)].to_csv(index=False))


def read_claims(path: str | os.PathLike) -> pd.DataFrame:
    """A claims table written by :func:`write_claims`, every cell as text (``"–"`` stays)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False).loc[:, list(COLUMNS)]


def scoreboard_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """The book's first-page scoreboard: every claim, this run's numbers, whether it holds.

    Args:
        tables: Chapter page (a path the page links to, e.g.
            ``chapters/01_intrinsic_dimension-tutorial.ipynb``) → that chapter's claims table.

    Returns:
        A MyST markdown table, one row per claim in id order (claims no chapter measured are
        listed as not run), and a line counting the claims that hold.
    """
    rows = {}
    for page, table in tables.items():
        for r in table.itertuples():
            rows[r.id] = (page, r)
    lines = ["| | the paper's claim | this run | holds |", "|---|---|---|---|"]
    for claim in CLAIMS.values():
        if claim.id not in rows:
            lines.append(f"| {claim.id} | {claim.claim} | (chapter {claim.chapter} not run) | – |")
            continue
        page, r = rows[claim.id]
        mark = "**yes**" if r.holds == "yes" else "no"
        measured = str(r.measured).replace("|", "/")
        lines.append(f"| [{claim.id}]({page}) | {claim.claim} | {measured} | {mark} |")
    held = sum(r.holds == "yes" for _, r in rows.values())
    lines += ["", f"**{held} of {len(CLAIMS)} claims hold** on this run "
              f"({len(rows)} measured). Each id links to the chapter that measures it, where "
              "the criterion is stated and a failed claim is discussed."]
    return "\n".join(lines) + "\n"
