"""Chapter §5 orchestration: every variant on a task, resumable log, skip, reload, gains, grids."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from residual_core.analysis import experiments as ex
from residual_core.core.dictionary import TextDictionary
from residual_core.core.model import weights_fingerprint
from residual_core.core.residual import VARIANTS, build_variant, unit_lambdas
from residual_core.core.spectral import unit_pca
from residual_core.core.units import UnitLayout, Units
from residual_core.core.zeroshot import ZeroShotClassifier
from residual_core.data.encodings import TaskEncodings

TASKS = ["world.color", "world.count"]




@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("enc")


def setup(loaded, cache):
    enc = TaskEncodings(loaded, {"train": 24, "val": 12, "test": 12}, cache_dir=cache)
    ref = TaskEncodings(loaded, {"train": 40}, cache_dir=cache)
    return enc, unit_pca(ref.units("world.reference", "train"), output=True)


def config(loaded, **kw) -> ex.ExperimentConfig:
    base = dict(max_epochs=2, patience=1, batch_size=8, finetune_epochs=1,
                finetune_train_size=16, lrs={"fine-tune": 1e-4}, weights=loaded.fingerprint)
    return ex.ExperimentConfig(**{**base, **kw})


def test_config_key_tracks_settings_not_device():
    a = ex.ExperimentConfig(lrs={"coarse": 0.1, "fine-tune": 1e-4})
    assert a.key() == ex.ExperimentConfig(lrs={"fine-tune": 1e-4, "coarse": 0.1}).key()
    assert a.key() == ex.ExperimentConfig(lrs=a.lrs, device="cuda").key()
    assert a.key() != ex.ExperimentConfig(lrs=a.lrs, max_epochs=3).key()
    assert a.key() != ex.ExperimentConfig(lrs=a.lrs, weights="other").key()
    assert a.key() != ex.ExperimentConfig(lrs=a.lrs, data={"train": 10}).key()
    assert a.lr("coarse") == 0.1 and a.lr("residual-full") is None
    # Per variant: only what the variant depends on.
    ft = ex.ExperimentConfig(lrs={"coarse": 0.1, "fine-tune": 1e-3}, finetune_epochs=2)
    assert ft.key("coarse") == a.key("coarse") and ft.key("residual-full") == a.key("residual-full")
    assert ft.key("fine-tune") != a.key("fine-tune")
    assert ex.ExperimentConfig(evr=0.5).key("fine-tune") == ex.ExperimentConfig().key("fine-tune")
    assert ex.ExperimentConfig(evr=0.5).key("coarse") != ex.ExperimentConfig().key("coarse")
    assert a.key("coarse") != a.key("residual-full")
    per_unit = ex.ExperimentConfig(lrs=a.lrs, centering="per-unit")
    assert per_unit.key("coarse") != a.key("coarse")  # other encodings, other result
    assert per_unit.key("fine-tune") == a.key("fine-tune")  # images: no centring


def test_encodings_of_another_centering_are_refused(loaded, cache, tmp_path):
    enc, pcas = setup(loaded, cache)
    with pytest.raises(ValueError, match="centering='shared' but config.centering='per-unit'"):
        ex.run_experiments(loaded, TASKS[:1], ["zero-shot"], enc, pcas,
                           config(loaded, centering="per-unit"), tmp_path)


def test_result_log_survives_a_torn_line_and_last_wins(tmp_path):
    log = ex.ResultLog(tmp_path / "r" / "results.jsonl")
    assert log.rows() == [] and log.find(model="m", config="c", dataset="d", variant="v") is None
    key = {"model": "m", "config": "c", "dataset": "d"}
    log.append({**key, "variant": "v", "test_acc": 0.5, "history": torch.tensor([0.5])})
    log.append({**key, "variant": "w", "test_acc": 0.6})
    log.append({**key, "variant": "v", "test_acc": 0.7})
    with open(log.path, "a") as f:
        f.write('{"model": "m", "config": "c", "dat')  # a crash mid-write
    rows = log.rows()
    assert [(r["variant"], r["test_acc"]) for r in rows] == [("w", 0.6), ("v", 0.7)]
    assert log.find(**key, variant="v")["test_acc"] == 0.7
    assert list(log.table().accuracy) == [0.6, 0.7]


def test_reference_pcas_unit_and_output():
    g = torch.Generator().manual_seed(0)
    units = Units.full(torch.randn(50, 3, 4, generator=g), UnitLayout(1, 1, 4, 4, 4))
    pca, out = unit_pca(list(units.split(7)), output=True)
    assert pca.mean.shape == (3, 4) and out.mean.shape == (1, 4)
    assert pca.labels == units.labels and out.labels == ("output",)
    torch.testing.assert_close(out.mean[0], units.sum().mean(0).double())
    cov = torch.cov(units.sum().double().T)
    torch.testing.assert_close(out.explained_variance[0].sum(), torch.trace(cov))


def test_background_finetune_gives_the_rows_of_an_inline_one(loaded, cache, tmp_path):
    """Fine-tunes run in a spawned process while the cached variants train here: same rows."""
    enc, pcas = setup(loaded, cache)
    cfg = config(loaded, finetune_epochs=2)
    variants = ["zero-shot", "residual-full", "fine-tune"]
    inline = ex.run_experiments(loaded, TASKS, variants, enc, pcas, cfg, tmp_path / "a",
                                threads=1)
    background = ex.run_experiments(loaded, TASKS, variants, enc, pcas, cfg, tmp_path / "b",
                                    threads=1, finetune_processes=1)
    cols = ["dataset", "variant", "accuracy", "val_acc", "params", "epochs", "best_epoch"]
    pd.testing.assert_frame_equal(inline.table[cols], background.table[cols])
    history = {(r["dataset"], r["variant"]): r["history"]
               for r in ex.ResultLog(tmp_path / "a" / "results.jsonl").rows()}
    for row in ex.ResultLog(tmp_path / "b" / "results.jsonl").rows():
        assert row["history"] == history[(row["dataset"], row["variant"])]
    assert len(background.table) == len(TASKS) * len(variants)
    assert background.variants[(TASKS[0], "fine-tune")] is None
    with pytest.raises(ValueError, match="finetune_processes must be ≥ 0, got -1"):
        ex.run_experiments(loaded, TASKS, variants, enc, pcas, cfg, tmp_path / "c",
                           finetune_processes=-1)


def test_also_train_gives_the_rows_of_a_separate_run_and_is_read_back(loaded, cache, tmp_path,
                                                                        monkeypatch):
    """The authors' settings trained in the same pass: the rows of a separate run, reused."""
    enc, pcas = setup(loaded, cache)
    cfg = config(loaded)
    variants, more = ["zero-shot", "coarse"], ["residual-fine", "residual-full"]
    ex.run_experiments(loaded, TASKS, variants, enc, pcas, cfg, tmp_path / "a", threads=1)
    separate = ex.run_experiments(loaded, TASKS, more, enc, pcas, cfg.authors(), tmp_path / "a",
                                  threads=1)
    together = ex.run_experiments(loaded, TASKS, variants, enc, pcas, cfg, tmp_path / "b",
                                  threads=1, also_train=[(more, cfg.authors())])
    assert set(together.table.variant) == set(variants)  # the extra runs are not returned
    fits = []
    monkeypatch.setattr(ex, "_fit", lambda *a, **k: fits.append(a[0]))  # nothing may train now
    again = ex.run_experiments(loaded, TASKS, more, enc, pcas, cfg.authors(), tmp_path / "b",
                               threads=1)
    assert fits == []
    cols = ["dataset", "variant", "accuracy", "val_acc", "params", "epochs", "best_epoch"]
    pd.testing.assert_frame_equal(separate.table[cols], again.table[cols])
    for task, name in again.variants:
        lam, ref = again.variants[(task, name)].lam, separate.variants[(task, name)].lam
        assert torch.equal(lam, ref)  # the reloaded weights are the separate run's
    for bad, match in ((["fine-tune"], "cached variants only"), (["nope"], "cached variants")):
        with pytest.raises(ValueError, match=match):
            ex.run_experiments(loaded, TASKS, variants, enc, pcas, cfg, tmp_path / "c",
                               also_train=[(bad, cfg.authors())])
    with pytest.raises(ValueError, match="centering='per-unit'"):
        ex.run_experiments(loaded, TASKS, variants, enc, pcas, cfg, tmp_path / "c",
                           also_train=[(more, replace(cfg.authors(), centering="per-unit"))])
    assert not (tmp_path / "c").exists() or not ex.ResultLog(
        tmp_path / "c" / "results.jsonl").rows()  # refused before any work


def test_a_failing_background_finetune_is_raised(loaded, cache, tmp_path):
    """A fine-tune that fails inline fails the same way from the background process."""
    enc, pcas = setup(loaded, cache)
    cfg = config(loaded, finetune_epochs=0)  # nothing trained: there is no best checkpoint
    variants = ["zero-shot", "fine-tune"]
    with pytest.raises(Exception) as inline:
        ex.run_experiments(loaded, TASKS[:1], variants, enc, pcas, cfg, tmp_path / "a")
    with pytest.raises(type(inline.value)) as background:
        ex.run_experiments(loaded, TASKS[:1], variants, enc, pcas, cfg, tmp_path / "b",
                           finetune_processes=1)
    assert str(background.value) == str(inline.value)
    rows = ex.ResultLog(tmp_path / "b" / "results.jsonl").rows()
    assert [r["variant"] for r in rows] == ["zero-shot"]  # the other variants still finished


def test_every_variant_then_skip_and_reload(loaded, cache, tmp_path, monkeypatch):
    enc, pcas = setup(loaded, cache)
    cfg = config(loaded)
    res = ex.run_experiments(loaded, TASKS, list(VARIANTS), enc, pcas, cfg, tmp_path)
    t = res.table
    assert len(t) == len(TASKS) * len(VARIANTS)
    assert list(t.dataset.unique()) == TASKS and list(t.variant[:len(VARIANTS)]) == list(VARIANTS)
    assert ((t.accuracy >= 0) & (t.accuracy <= 1)).all()
    params = t.set_index(["dataset", "variant"]).params
    d, heads = 16, 2 * 2
    assert params[(TASKS[0], "zero-shot")] == 0
    assert params[(TASKS[0], "coarse")] == heads
    assert params[(TASKS[0], "residual-full")] == heads * 16 + 2 * d  # d_head 16, 2 MLPs
    assert params[(TASKS[0], "spectral-adapter")] == d
    assert params[(TASKS[0], "linear-adapter")] == d * d + d
    tower = sum(p.numel() for p in loaded.model.visual.parameters())
    assert params[(TASKS[0], "fine-tune")] == tower
    assert (t[t.variant == "fine-tune"].epochs <= 1).all()
    assert res.variants[(TASKS[0], "fine-tune")] is None
    lam = unit_lambdas(res.variants[(TASKS[1], "residual-full")], "L1H0").clone()
    assert res.pca.labels == enc.units(TASKS[0], "test").labels and res.layout.n_heads == 2
    assert res.pca.mean.shape == (len(res.pca.labels), d)
    # The tower the model uses was copied, never trained in place.
    assert loaded.fingerprint == f"random-{weights_fingerprint(loaded.model)}"

    # A rerun with the same settings trains nothing and reloads the trained λ.
    lines = (tmp_path / "results.jsonl").read_text()

    def boom(*args, **kwargs):
        raise AssertionError("fit_variant called on a finished (task, variant)")

    monkeypatch.setattr(ex, "fit_variant", boom)
    again = ex.run_experiments(loaded, TASKS, list(VARIANTS), enc, pcas, cfg, tmp_path)
    assert (tmp_path / "results.jsonl").read_text() == lines
    pd.testing.assert_frame_equal(again.table, t)
    torch.testing.assert_close(unit_lambdas(again.variants[(TASKS[1], "residual-full")], "L1H0"),
                               lam)


def test_crash_loses_nothing_and_new_settings_rerun(loaded, cache, tmp_path, monkeypatch):
    enc, pcas = setup(loaded, cache)
    cfg = config(loaded)
    real, calls = ex.fit_variant, []

    def crash_on_third(variant, *args, **kwargs):
        calls.append(variant.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(variant, *args, **kwargs)

    monkeypatch.setattr(ex, "fit_variant", crash_on_third)
    variants = ["zero-shot", "coarse", "residual-fine", "linear-adapter"]
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiments(loaded, TASKS[:1], variants, enc, pcas, cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["zero-shot", "coarse"]
    calls.clear()
    res = ex.run_experiments(loaded, TASKS[:1], variants, enc, pcas, cfg, tmp_path)
    assert calls == ["residual-fine", "linear-adapter"]
    assert list(res.table.variant) == variants
    calls.clear()
    other = config(loaded, max_epochs=1)
    res = ex.run_experiments(loaded, TASKS[:1], ["coarse"], enc, pcas, other, tmp_path)
    assert calls == ["coarse"] and len(res.table) == 1 and res.table.epochs[0] == 1


def test_run_task_is_deterministic(loaded, cache, tmp_path):
    enc, pcas = setup(loaded, cache)
    cfg = config(loaded)
    a = ex.run_experiments(loaded, TASKS[:1], ["residual-fine"], enc, pcas, cfg,
                           tmp_path / "a")
    b = ex.run_experiments(loaded, TASKS[:1], ["residual-fine"], enc, pcas, cfg,
                           tmp_path / "b")
    va, vb = (r.variants[(TASKS[0], "residual-fine")] for r in (a, b))
    assert torch.equal(va.lam, vb.lam)
    assert a.table.accuracy[0] == b.table.accuracy[0]


def test_unknown_variant_and_missing_images():
    layout = UnitLayout(1, 1, 4, 4, 4)
    clf = ZeroShotClassifier(torch.eye(4)[:, :2])
    units = {s: Units.full(torch.randn(6, 3, 4), layout) for s in ex.SPLITS}
    targets = {s: torch.randint(0, 2, (6,)) for s in ex.SPLITS}
    inputs = ex.TaskInputs("t", clf, units, targets)
    pca, out = unit_pca(Units.full(torch.randn(20, 3, 4), layout), output=True)
    with pytest.raises(ValueError, match="unknown variants"):
        ex.run_task(inputs, ["nope"], pca, out, ex.ExperimentConfig(), model="m",
                    log=ex.ResultLog("/nonexistent/x.jsonl"), ckpt_root="/nonexistent")


def toy_variant():
    layout = UnitLayout(2, 2, 4, 2, 4)
    labels = layout.labels
    g = torch.Generator().manual_seed(0)
    pca = unit_pca(Units.full(torch.randn(40, len(labels), 4, generator=g), layout))
    clf = ZeroShotClassifier(torch.eye(4)[:, :3])
    v = build_variant("residual-full", clf, reference=pca)
    with torch.no_grad():
        v.lam.copy_(torch.linspace(0.0, 2.5, len(v.lam)))
    return v, pca, labels, layout


def test_head_grid_places_heads_and_mlps():
    v, _, _, layout = toy_variant()
    grid = ex.head_grid(v, layout)
    assert list(grid.index) == ["L0", "L1"] and list(grid.columns) == ["H0", "H1", "MLP"]
    expected = float((unit_lambdas(v, "L1H0") - 1).abs().mean())
    assert grid.loc["L1", "H0"] == pytest.approx(expected)
    assert grid.loc["L0", "MLP"] == pytest.approx(float((unit_lambdas(v, "L0.mlp") - 1).abs()
                                                        .mean()))
    heads_only = build_variant("coarse", v.classifier, reference=toy_variant()[1])
    assert "MLP" not in ex.head_grid(heads_only, layout).columns


def test_pc_texts_finds_the_aligned_text():
    v, pca, labels, _ = toy_variant()
    sl = v.basis.slices()
    with torch.no_grad():
        v.lam.fill_(1.0)
        v.lam[sl["L1H1"]] = torch.tensor([3.0, 1.0])  # most changed unit, PC 0 amplified
        v.lam[sl["L0H0"]] = torch.tensor([1.0, 0.5])  # second, PC 1 suppressed
    direction = v.components[sl["L1H1"]][0]
    texts = ["aligned", "other", "third"]
    emb = torch.stack([-3 * direction, torch.ones(4), torch.tensor([1.0, -1, 1, -1])])
    emb[1:] -= (emb[1:] @ direction)[:, None] * direction  # orthogonal to the PC
    words = TextDictionary(tuple(texts), (("a",), (), ("b", "c")), emb)
    table = ex.pc_texts(v, pca, words, units=2, top=1)
    assert set(table.columns) == {"unit", "pc", "lambda", "evr", "effect", "text", "cosine",
                                  "families"}
    first = table.iloc[0]
    assert (first.unit, first.pc, first.effect, first.text) == ("L1H1", 0, "amplified", "aligned")
    assert first["lambda"] == pytest.approx(3.0) and first.cosine == pytest.approx(-1, abs=1e-5)
    assert first.evr == pytest.approx(float(pca.explained_variance_ratio[labels.index("L1H1"), 0]))
    assert table.families.iloc[0] == ("a",)
    assert ex.pc_texts(v, pca, words, min_evr=1.01).empty  # no PC qualifies
    tiny = ex.pc_texts(v, pca, words, units=10, top=5, min_evr=0.3)
    for r in tiny.itertuples():  # only PCs carrying ≥ 30% of their unit's variance
        assert pca.explained_variance_ratio[labels.index(r.unit), r.pc] >= 0.3
    low = table[(table.unit == "L0H0") & (table.effect == "suppressed")]
    assert list(low.pc) == [1] and low["lambda"].iloc[0] == pytest.approx(0.5)


def test_gain_table():
    t = pd.DataFrame({"dataset": ["a", "a", "a", "b", "b", "b"],
                      "variant": ["zero-shot", "coarse", "fine-tune"] * 2,
                      "accuracy": [0.5, 0.6, 0.9, 0.2, 0.1, 0.4]})
    g = ex.gain_table(t)
    assert list(g.index) == ["a", "b", "mean"] and list(g.columns) == ["coarse", "fine-tune"]
    assert g.loc["b", "coarse"] == pytest.approx(-0.1)
    assert g.loc["mean", "fine-tune"] == pytest.approx(0.3)
    assert list(ex.gain_table(t, variants=["fine-tune"]).columns) == ["fine-tune"]


def test_fine_tune_streams_or_preloads_the_same_images(loaded, cache, tmp_path):
    enc, pcas = setup(loaded, cache)
    cfg = config(loaded)
    runs = [ex.run_experiments(loaded, TASKS[1:], ["fine-tune"], enc, pcas, cfg,
                               tmp_path / str(pre), preload_images=pre) for pre in (True, False)]
    a, b = (r.table.iloc[0] for r in runs)
    assert a.engine == "lightning" and a.params > 0
    assert (a.accuracy, a.val_acc) == (b.accuracy, b.val_acc)


def test_streamed_units_and_reference_give_the_same_results(loaded, cache, tmp_path):
    enc, pcas = setup(loaded, cache)
    ref = TaskEncodings(loaded, {"train": 40}, cache_dir=cache)
    streamed = unit_pca(ref.store("world.reference", "train"), output=True)
    for a, b in zip(pcas, streamed, strict=True):
        torch.testing.assert_close(a.explained_variance, b.explained_variance)
    cfg = config(loaded)
    names = ["coarse", "residual-full", "linear-adapter"]
    runs = [ex.run_experiments(loaded, TASKS[1:], names, enc, pcas, cfg, tmp_path / str(stream),
                               stream_units=stream) for stream in (False, True)]
    pd.testing.assert_frame_equal(*(r.table[["variant", "accuracy", "val_acc", "epochs"]]
                                    for r in runs))


def test_headroom_table():
    t = pd.DataFrame({"dataset": ["a", "a", "b", "b"], "variant": ["zero-shot", "coarse"] * 2,
                      "accuracy": [0.5, 0.6, 0.9, 0.95]})
    h = ex.headroom_table(t, pd.Series({"a": 0.7, "b": 0.905}), ["coarse"])
    assert list(h.columns) == ["zero-shot", "ceiling", "headroom", "coarse"]
    assert h.loc["a", "coarse"] == pytest.approx(0.5)  # half of 0.5 → 0.7 closed
    assert np.isnan(h.loc["b", "coarse"])  # headroom 0.005: nothing to close
    assert h.loc["mean", "headroom"] == pytest.approx((0.2 + 0.005) / 2)


def test_settings_table_compares_the_same_tasks():
    def rows(accs, epochs):
        pairs = [("t1", "f"), ("t2", "f"), ("t1", "g")]
        return pd.DataFrame([{"dataset": t, "variant": v, "accuracy": a, "epochs": e}
                             for (t, v), a, e in zip(pairs, accs, epochs, strict=True)])

    book = rows([0.8, 0.6, 0.5], [3, 5, 2])
    authors = rows([0.7, 0.61, 0.5], [4, 6, 2])
    out = ex.settings_table(book, authors.iloc[:2])  # g missing on the authors' side
    assert out.index.tolist() == ["f"]
    row = out.loc["f"]
    assert row.accuracy_book == pytest.approx(0.7) and row.accuracy_authors == pytest.approx(0.655)
    assert row.epochs_book == 4 and row.epochs_authors == 5
    assert row.difference == pytest.approx(0.045)
    assert (row.book_ahead, row.authors_ahead, row.tasks) == (1, 1, 2)


def results(rows):
    cols = ["dataset", "variant", "accuracy", "params", "epochs", "wall_time_s"]
    return pd.DataFrame(rows, columns=cols)


TABLE = results([
    ("a", "zero-shot", 0.50, 0, 0, 0.0), ("a", "residual-fine", 0.81, 10, 4, 1.0),
    ("a", "fine-tune", 0.81, 1000, 2, 50.0), ("a", "linear-adapter", 0.70, 20, 3, 2.0),
    ("b", "zero-shot", 0.40, 0, 0, 0.0), ("b", "residual-fine", 0.44, 10, 6, 3.0),
    ("b", "fine-tune", 0.61, 1000, 2, 70.0), ("b", "linear-adapter", 0.30, 20, 5, 4.0),
])


def test_variant_summary_and_gain_summary():
    s = ex.variant_summary(TABLE)
    assert s.index.tolist() == ["zero-shot", "residual-fine", "fine-tune", "linear-adapter"]
    fine = s.loc["residual-fine"]
    assert (fine.params, fine.mean_epochs, fine.total_time_s) == (10, 5.0, 4.0)
    assert fine.mean_accuracy == pytest.approx(0.625) and fine.min_accuracy == 0.44
    g = ex.gain_summary(ex.gain_table(TABLE))
    assert g.loc["residual-fine"].tolist() == pytest.approx([0.175, 2, 0, 2])
    assert g.loc["linear-adapter", "better"] == 1 and g.loc["linear-adapter", "worse"] == 1


def test_headroom_summary():
    room = ex.headroom_table(TABLE, pd.Series({"a": 0.9, "b": 0.405}), ["residual-fine"])
    h = ex.headroom_summary(room)
    assert h.zero_shot == pytest.approx(0.45) and h.ceiling == pytest.approx(0.6525)
    assert h.tasks_with_room == 1 and h.tasks == 2
    # a closes (0.81 − 0.5) / 0.4 of its headroom; b's 0.005 is too small to count
    assert h["closed_residual-fine"] == pytest.approx(0.775)


def test_paper_comparison_lines():
    layout = UnitLayout(4, 4, 64, 16, 32)
    lines = ex.paper_comparison(TABLE, layout, finetune_epochs=2, finetune_train_size=None)
    assert lines[0].startswith("scale: 4 layers × 4 heads of width 16, d_out 32")
    fine = next(line for line in lines if line.startswith("residual-fine"))
    # fine-tune 0.71 vs residual-fine 0.625; within a point on task a only
    assert "(gap +0.085)" in fine and "on 1 of 2 tasks" in fine and "1.0e-02" in fine
    assert any(line.startswith("linear-adapter: 20 parameters, mean accuracy 0.500")
               for line in lines)
    assert "ran 2.0 on average, 120 s in all) vs 10 s" in lines[-1]


def test_results_view_histories_and_config_helpers():
    table = TABLE.assign(val_acc=0.5, best_epoch=1, history=[[0.1]] * len(TABLE))
    view = ex.results_view(table, str.upper)
    assert view.columns.tolist() == ["dataset", "variant", "accuracy", "val_acc", "params",
                                     "epochs", "best", "time_s"]
    assert view.dataset.iloc[0] == "A"
    hist = ex.histories(table)
    assert list(hist) == ["a", "b"] and hist["b"]["fine-tune"] == [0.1]
    cfg = ex.ExperimentConfig()
    assert (cfg.authors().add_mean, cfg.authors().init) == (False, "normal")
    assert cfg.authors().key("residual-full") != cfg.key("residual-full")


def test_lambda_overview_and_pc_text_table():
    v, pca, labels, layout = toy_variant()
    w, *_ = toy_variant()
    with torch.no_grad():
        w.lam.fill_(1.0)
    over = ex.lambda_overview({"world.color": v, "world.shape": w}, layout)
    torch.testing.assert_close(torch.tensor(over.mean_grid.to_numpy()),
                               torch.tensor(over.grids["world.color"].to_numpy()) / 2)
    assert over.ranked_units.index[0] == over.changes["world.color"].idxmax()
    assert over.most_changed_layer == over.by_layer.idxmax()
    assert over.describe().count("\n") == 2 and ex.lambda_overview({}, layout) is None
    direction = v.components[v.basis.slices()[over.ranked_units.index[0]]][0]
    emb = torch.stack([direction, -direction + 0.1, torch.ones(4)])
    words = TextDictionary(("a red object", "a circle", "a thing"), (("color",), ("shape",), ()),
                           emb)
    pcs = ex.pc_text_table({"world.color": v}, pca, words, units=1, top=1)
    assert set(pcs.task) == {"world.color"} and (pcs.task_family == "color").all()
    assert pcs.names_task_family.tolist() == [f == ("color",) for f in pcs.families]
    found = ex.pc_text_findings(pcs)
    assert found.index.tolist() == ["amplified", "suppressed"]
    assert found.pcs.sum() == len(pcs)
    assert found.name_task_family.sum() == pcs.names_task_family.sum()


def test_threads_apply_to_training_only(loaded, cache, tmp_path, monkeypatch):
    enc, pcas = setup(loaded, cache)
    seen: dict[str, int] = {}

    def spy(name, real):
        def call(*args, **kwargs):
            seen.setdefault(name, torch.get_num_threads())
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(ex, "run_task", spy("train", ex.run_task))
    monkeypatch.setattr(enc, "units", spy("encode", enc.units))
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        ex.run_experiments(loaded, TASKS[:1], ["coarse"], enc, pcas, config(loaded), tmp_path,
                           threads=1)
        assert torch.get_num_threads() == 3  # restored
    finally:
        torch.set_num_threads(before)
    assert seen == {"encode": 3, "train": 1}
