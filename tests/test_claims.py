"""Each claim's criterion on synthetic inputs where it holds and where it fails."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from residual_core.analysis import claims


def holds(table: pd.DataFrame) -> dict[str, bool]:
    assert list(table.columns) == list(claims.COLUMNS)
    return dict(zip(table.id, table.holds == "yes", strict=True))


# ----- the test statistic ----------------------------------------------------------------------

def test_spearman_greater_matches_scipy_rho_and_is_one_sided():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    rho, p, n = claims.spearman_greater(x, y, seed=1)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic) and n == 40
    assert p < 0.01
    rho_neg, p_neg, _ = claims.spearman_greater(x, -y, seed=1)
    assert rho_neg == pytest.approx(-rho) and p_neg > 0.99  # one-sided: a negative rho fails
    assert claims.spearman_greater(x, y, seed=1) == (rho, p, n)  # seeded
    rho_nan, _, n_nan = claims.spearman_greater([1.0, np.nan, 3.0, 2.0], [1, 2, 3, 4])
    assert n_nan == 3 and rho_nan == pytest.approx(stats.spearmanr([1, 3, 2], [1, 3, 4]).statistic)


# ----- C1–C4 -----------------------------------------------------------------------------------

def id_table(twonn_by_layer, linear=4, ratio_slope=0.0, heads=8, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for layer, mean in enumerate(twonn_by_layer):
        for h in range(heads):
            twonn = mean + noise * rng.normal()
            ratio = 1 + ratio_slope * layer + 0.1 * rng.normal()
            rows.append({"unit": f"L{layer}H{h}", "kind": "head", "layer": layer,
                         "linear_id": linear, "twonn": twonn, "ratio": ratio})
    rows.append({"unit": "L0.mlp", "kind": "mlp", "layer": 0, "linear_id": 60, "twonn": 30.0,
                 "ratio": 2.0})
    return pd.DataFrame(rows)


def test_id_claims_hold_on_a_planted_hunchback_with_growing_ratio():
    table = id_table([4, 6, 7, 5, 3], linear=7, ratio_slope=0.5)
    assert holds(claims.id_claims(table, d_head=24)) == {"C1": True, "C2": True, "C3": True,
                                                          "C4": True}


def test_id_claims_fail_where_they_should():
    flat = id_table([5, 5, 5, 5, 5], linear=9, ratio_slope=-0.3)
    got = holds(claims.id_claims(flat, d_head=16))
    assert got == {"C1": False, "C2": False, "C3": False, "C4": False}  # 9 > 8, 5 > 4
    # A peak inside but within noise: not a hunchback.
    noisy = id_table([4, 4.2, 4.1, 4], noise=1.0)
    assert not holds(claims.id_claims(noisy, d_head=32))["C4"]
    # A clear peak at an end layer is not a hunchback either.
    assert not holds(claims.id_claims(id_table([8, 6, 4, 2]), d_head=32))["C4"]


# ----- C5–C6 -----------------------------------------------------------------------------------

def test_stability_claims():
    medians = {"world": 0.99, "sketch": 0.8, "noise": 0.9, "random": 0.4}
    assert holds(claims.stability_claims(medians, chance=0.3, control="random", same=["world"])
                 ) == {"C5": True, "C6": True}
    # bar = 0.3 + 0.35 = 0.65: a shift at 0.6 fails C5; random not lowest fails C6.
    medians = {"world": 0.99, "sketch": 0.6, "random": 0.7}
    assert holds(claims.stability_claims(medians, chance=0.3, control="random", same=["world"])
                 ) == {"C5": False, "C6": False}
    # A small run: no shifted dataset, no control. Rows that do not hold, saying why.
    small = claims.stability_claims({"world": 0.99}, chance=0.3, control="random",
                                    same=["world"])
    assert holds(small) == {"C5": False, "C6": False}
    assert "no shifted dataset" in small.measured[0]
    assert "no dataset under the control key 'random'" in small.measured[1]


# ----- C7–C8 -----------------------------------------------------------------------------------

def test_specialization_claims():
    best = pd.DataFrame({"names_family": ["yes", "yes", "yes", "yes", "no", "–"],
                         "by_chance": [0.3, 0.2, 0.5, 0.1, 0.2, np.nan]})
    heads = pd.DataFrame({"top_family": ["colour", "shape", "count", "size"],
                          "top_family_probe": ["colour", "shape", "size", "colour"],
                          "top_lift": [0.9, 0.6, 0.55, 0.2]})
    assert holds(claims.specialization_claims(best, heads)) == {"C7": True, "C8": True}
    best.loc[1, "names_family"] = "no"  # 3 of 5 < 80%
    heads.loc[1, "top_family_probe"] = "count"  # 1 of 3 strong heads agree
    assert holds(claims.specialization_claims(best, heads)) == {"C7": False, "C8": False}
    # Named for every attribute, but random texts would do as well: not a finding.
    lucky = pd.DataFrame({"names_family": ["yes", "yes"], "by_chance": [1.0, 1.0]})
    assert not holds(claims.specialization_claims(lucky, heads))["C7"]


def test_c8_names_a_probe_family_that_dominates():
    best = pd.DataFrame({"names_family": ["yes"], "by_chance": [0.1]})
    heads = pd.DataFrame({"top_family": ["colour", "shape", "count", "size"],
                          "top_family_probe": ["background", "background", "background", "size"],
                          "top_lift": [0.9, 0.8, 0.7, 0.2]})
    c8 = claims.specialization_claims(best, heads).set_index("id").loc["C8"]
    assert c8.holds == "no"
    assert c8.measured == ("0 of 3 heads with lift ≥ 0.5 agree; "
                           "the probe view names background for 3 of them")
    heads.loc[1, "top_family_probe"] = "shape"  # no probe family takes most heads now
    heads.loc[2, "top_family_probe"] = "count"
    c8 = claims.specialization_claims(best, heads).set_index("id").loc["C8"]
    assert c8.measured == "2 of 3 heads with lift ≥ 0.5 agree"


# ----- C9–C11 ----------------------------------------------------------------------------------

def alignment_inputs(drop_at_kept, s_wins, n_tasks, slope, seed=0):
    """Tasks of a 6-layer model: the last ceil(6/3) = 2 layers kept for C9."""
    rng = np.random.default_rng(seed)
    layers, selected, tasks = [], [], []
    for t in range(n_tasks):
        for n in range(7):
            acc = 0.8 - (drop_at_kept if n >= 4 else 0.0) - (0.2 if n == 6 else 0.0)
            layers.append({"task": f"t{t}", "kind": "heads", "ablated_layers": n,
                           "accuracy": acc})
            layers.append({"task": f"t{t}", "kind": "mlps", "ablated_layers": n,
                           "accuracy": 0.1})
        full = 0.7
        selected += [{"task": f"t{t}", "ranking": "full", "test_acc": full},
                     {"task": f"t{t}", "ranking": "S",
                      "test_acc": full + (0.05 if t < s_wins else -0.05)}]
        spec = rng.random()
        tasks.append({"spec_carriers": spec, "zs_lift": slope * spec + 0.1 * rng.normal()})
    return pd.DataFrame(layers), pd.DataFrame(selected), pd.DataFrame(tasks)


def test_alignment_claims_hold():
    got = claims.alignment_claims(*alignment_inputs(0.015, s_wins=15, n_tasks=30, slope=1.0))
    assert holds(got) == {"C9": True, "C10": True, "C11": True}
    assert "first 4 of 6" in got.measured[0]
    layers, selected, tasks = alignment_inputs(0.015, s_wins=15, n_tasks=30, slope=1.0)
    wide = selected.pivot(index="task", columns="ranking", values="test_acc")  # same, wide
    pd.testing.assert_frame_equal(claims.alignment_claims(layers, wide, tasks), got)


def test_alignment_claims_fail():
    table = claims.alignment_claims(*alignment_inputs(0.03, s_wins=14, n_tasks=30, slope=-1.0))
    assert holds(table) == {"C9": False, "C10": False, "C11": False}
    # The fixture's whole drop comes with the fourth layer (index 3).
    assert table.measured[0].endswith("(-0.030); the costliest layer is L3 (-0.030)")
    # A strong positive correlation over too few tasks does not count for C11.
    few = claims.alignment_claims(*alignment_inputs(0.0, 5, n_tasks=11, slope=1.0))
    assert not holds(few)["C11"] and "too few tasks to decide (at least 30" in few.measured[2]
    two = claims.alignment_claims(*alignment_inputs(0.0, 1, n_tasks=2, slope=1.0))
    assert not holds(two)["C11"] and two.measured[2].startswith("no correlation over 2 tasks")


def test_kept_attention_layers():
    assert [claims.kept_attention_layers(n) for n in (4, 8, 12, 24)] == [2, 3, 4, 8]


# ----- C12–C14 ---------------------------------------------------------------------------------

def residual_results(full_acc, adapter_acc, full_params, fine_wins, n_tasks=5):
    rows = []
    for t in range(n_tasks):
        accs = {"zero-shot": 0.5, "fine-tune": 0.9, "residual-full": full_acc,
                "linear-adapter": adapter_acc,
                "residual-fine": 0.6 if t < fine_wins else 0.45}
        params = {"zero-shot": 0, "fine-tune": 10**6, "residual-full": full_params,
                  "linear-adapter": 10_000, "residual-fine": 50}
        rows += [{"dataset": f"t{t}", "variant": v, "accuracy": a, "params": params[v]}
                 for v, a in accs.items()]
    return pd.DataFrame(rows)


def got_text(table):
    return " ".join(table.measured)


def test_residual_claims():
    got = claims.residual_claims(residual_results(0.8, 0.78, 1_000, fine_wins=4))
    assert holds(got) == {"C12": True, "C13": True, "C14": True}  # 75% of the gap; 10%
    got = holds(claims.residual_claims(residual_results(0.77, 0.78, 1_001, fine_wins=3)))
    assert got == {"C12": False, "C13": False, "C14": False}  # 67.5%; worse; 3 of 5
    few_params = holds(claims.residual_claims(residual_results(0.8, 0.78, 1_001, 4)))
    assert not few_params["C13"]  # 10.01% of the adapter's parameters
    # ResiDual above the fine-tune (0.95 vs 0.9: 112% of the gap) holds, flagged
    above = claims.residual_claims(residual_results(0.95, 0.78, 1_000, 4)).set_index("id")
    assert above.loc["C12", "holds"] == "yes" and "112% of the gap" in above.loc["C12", "measured"]
    assert "fine-tune, whose budget may be too small" in above.loc["C12", "measured"]
    assert "budget" not in got_text(claims.residual_claims(residual_results(0.8, 0.78, 1_000, 4)))


def test_c12_says_where_the_fine_tune_was_still_improving_at_its_cap():
    results = residual_results(0.8, 0.78, 1_000, 4)
    assert "still improving" not in got_text(claims.residual_claims(results))  # no epoch columns
    results["epochs"], results["best_epoch"] = 10, 4
    fine = results.variant == "fine-tune"
    results.loc[fine & results.dataset.isin(["t1", "t3"]), "best_epoch"] = 10  # cap reached
    results.loc[~fine, "best_epoch"] = 10  # other variants do not count
    c12 = claims.residual_claims(results).set_index("id").loc["C12", "measured"]
    assert c12.endswith("the fine-tune was still improving at its last epoch on 2 of 5 tasks")
    results.loc[fine, "best_epoch"] = 3
    assert "still improving" not in got_text(claims.residual_claims(results))


def test_residual_claims_without_some_variants_say_what_was_not_run():
    results = residual_results(0.8, 0.78, 1_000, fine_wins=4)
    got = claims.residual_claims(results[~results.variant.isin(["fine-tune", "linear-adapter"])])
    assert holds(got) == {"C12": False, "C13": False, "C14": True}
    assert got.measured[0] == "not measured: variant fine-tune not run"
    assert got.measured[1] == "not measured: variant linear-adapter not run"


def test_write_claims_next_to_the_results(tmp_path):
    table = claims.residual_claims(residual_results(0.8, 0.78, 1_000, fine_wins=4))
    path = claims.write_claims(table, tmp_path / "05_residual-tutorial.results.csv")
    assert path == tmp_path / "05_residual-tutorial.claims.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path, keep_default_na=False, dtype=str), table,
                                  check_dtype=False)
    assert claims.write_claims(table, None) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    pd.testing.assert_frame_equal(claims.read_claims(path), table.astype(str))
    assert set(claims.CLAIMS) == {f"C{i}" for i in range(1, 15)}


def test_scoreboard_lists_every_claim_and_counts_what_holds():
    t05 = claims.residual_claims(residual_results(0.8, 0.78, 1_000, fine_wins=3))  # C14 fails
    t02 = claims.stability_claims({"a": 0.9, "random": 0.2}, 0.3, "random")
    md = claims.scoreboard_markdown({"chapters/05.ipynb": t05, "chapters/02.ipynb": t02})
    lines = md.splitlines()
    rows = [line for line in lines if line.startswith("| ")][1:]
    assert [r.split(" | ")[0].strip("| [") .split("]")[0] for r in rows] == list(claims.CLAIMS)
    assert "| [C12](chapters/05.ipynb) |" in md and "| [C5](chapters/02.ipynb) |" in md
    assert "| C1 | heads have a low linear intrinsic dimension | (chapter 01 not run) | – |" in md
    assert md.count("**yes**") == 4 and "**4 of 14 claims hold** on this run (5 measured)" in md
