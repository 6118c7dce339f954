"""Training: beats zero-shot where it must, schedule-free eval weights, determinism, early stop."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import residual_task_classifier, residual_task_units

from residual_core.core.residual import build_variant, cache_inputs
from residual_core.core.spectral import unit_pca
from residual_core.core.training import (
    TensorBatcher,
    TensorData,
    fit_variant,
    make_optimizer,
    results_table,
)
from residual_core.core.zeroshot import ZeroShotClassifier


@pytest.fixture(scope="module")
def task():
    splits = {name: residual_task_units(n, seed)
              for name, n, seed in [("train", 1024, 0), ("val", 512, 1), ("test", 512, 2)]}
    pca = unit_pca(splits["train"][0])  # the "reference" data
    return splits, pca


def prepared(task, variant: str, **kwargs):
    splits, pca = task
    module = build_variant(variant, residual_task_classifier(), reference=pca,
                           **kwargs)
    data = {}
    for name, (units, y) in splits.items():
        inputs, _ = cache_inputs(module, units)
        data[name] = TensorData(inputs, y)
    return module, data


def fit(module, data, tmp_path, **kwargs):
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("progress", False)
    return fit_variant(module, data["train"], data["val"], data["test"], ckpt_dir=tmp_path,
                       **kwargs)


def test_residual_beats_zero_shot_where_it_must(task, tmp_path):
    zs_module, zs_data = prepared(task, "zero-shot")
    zero = fit(zs_module, zs_data, tmp_path / "zs")
    assert zero.row["params"] == 0 and zero.row["epochs"] == 0
    assert zero.row["test_acc"] < 0.6, zero.row  # near chance by construction
    module, data = prepared(task, "residual-full")
    start = fit(copy.deepcopy(module), data, tmp_path / "start", max_epochs=1, lr=0.0)
    assert abs(start.row["val_acc"] - zero.row["val_acc"]) < 1e-9  # λ = 1 is zero-shot
    result = fit(module, data, tmp_path / "full", max_epochs=15)
    assert result.row["test_acc"] > 0.95, result.row
    assert result.row["val_acc"] > 0.95
    # What it learnt: L0H0's e0 direction is suppressed relative to L0H1's signal PC.
    lam = result.variant.lam.detach()
    sl = result.variant.basis.slices()
    assert lam[sl["L0H1"]][1].abs() > lam[sl["L0H0"]][0].abs()
    assert (tmp_path / "full" / "best.pt").exists() and (tmp_path / "full" / "result.json").exists()


def test_lean_and_lightning_engines_agree(task, tmp_path):
    results = {}
    for engine in ("lean", "lightning"):
        module, data = prepared(task, "residual-fine", init="normal", seed=4)
        results[engine] = fit(module, data, tmp_path / engine, max_epochs=4, engine=engine)
    lean, light = results["lean"], results["lightning"]
    assert lean.history == light.history
    assert lean.row["test_acc"] == light.row["test_acc"]
    assert lean.row["best_epoch"] == light.row["best_epoch"]
    torch.testing.assert_close(lean.variant.lam, light.variant.lam, rtol=0, atol=1e-6)
    assert (tmp_path / "lightning" / "best.ckpt").exists()


def test_same_seed_same_result(task, tmp_path):
    runs = []
    for i in range(2):
        module, data = prepared(task, "coarse")
        runs.append(fit(module, data, tmp_path / str(i), max_epochs=3, seed=7))
    assert torch.equal(runs[0].variant.lam, runs[1].variant.lam)
    assert runs[0].history == runs[1].history
    assert runs[0].row["test_acc"] == runs[1].row["test_acc"]
    module, data = prepared(task, "coarse")
    other = fit(module, data, tmp_path / "other", max_epochs=3, seed=8)
    assert not torch.equal(other.variant.lam, runs[0].variant.lam)  # the batch order matters


class RecordWeights(L.Callback):
    """Records λ in train mode, the optimizer's eval-mode λ, and λ seen by validation/test."""

    def __init__(self):
        self.train_mode, self.eval_mode, self.at_val, self.at_test = [], [], [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx != trainer.num_training_batches - 1:
            return  # the last step of the epoch, before validation
        opt = trainer.optimizers[0]
        lam = module.variant.lam
        self.train_mode.append(lam.detach().clone())
        shadow = copy.deepcopy(opt)  # a copy: the real run is not perturbed
        shadow_lam = shadow.param_groups[0]["params"][0]
        shadow.eval()
        self.eval_mode.append(shadow_lam.detach().clone())

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.at_val.append(module.variant.lam.detach().clone())

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.at_test.append(module.variant.lam.detach().clone())


def test_schedule_free_evaluates_and_saves_the_averaged_weights(task, tmp_path, monkeypatch):
    import residual_core.core.training as training

    recorder = RecordWeights()
    real_trainer = L.Trainer

    def trainer_with_recorder(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), recorder]
        return real_trainer(*args, **kwargs)

    monkeypatch.setattr(training.L, "Trainer", trainer_with_recorder)
    module, data = prepared(task, "residual-full", init="normal", seed=1)
    result = fit(module, data, tmp_path, max_epochs=3, engine="lightning", lr=0.05)
    n = len(result.history)
    assert len(recorder.at_val) == len(recorder.eval_mode) == n == 3
    for epoch in range(n):
        # Validation sees the optimizer's eval-mode (averaged) weights x, not the train ones y.
        torch.testing.assert_close(recorder.at_val[epoch], recorder.eval_mode[epoch])
        gap = (recorder.at_val[epoch] - recorder.train_mode[epoch]).abs().max()
        assert gap > 1e-3, f"epoch {epoch}: x and y coincide ({gap:.1e}), test is vacuous"
    best = result.row["best_epoch"] - 1
    saved = torch.load(result.checkpoint, weights_only=False)["state_dict"]["variant.lam"]
    torch.testing.assert_close(saved, recorder.eval_mode[best])  # checkpoint holds x
    torch.testing.assert_close(recorder.at_test[0], saved)  # test uses the best checkpoint
    torch.testing.assert_close(result.variant.lam.detach(), saved)


def test_lean_loop_evaluates_the_averaged_weights(task, tmp_path):
    module, data = prepared(task, "residual-full", init="normal", seed=1)
    twin = copy.deepcopy(module)
    result = fit(module, data, tmp_path, max_epochs=1, lr=0.05, engine="lean")
    # The same epoch by hand: the fitted λ must be the optimizer's eval-mode λ.
    opt = make_optimizer(twin, 0.05)
    opt.train()
    batcher = TensorBatcher(data["train"], 64, shuffle=True, seed=0)
    batcher.set_epoch(0)
    for *inputs, y in batcher:
        loss = torch.nn.functional.cross_entropy(twin(*inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y_weights = twin.lam.detach().clone()
    opt.eval()
    torch.testing.assert_close(result.variant.lam.detach(), twin.lam.detach(), rtol=0, atol=0)
    assert (y_weights - twin.lam.detach()).abs().max() > 1e-3


@pytest.mark.parametrize("engine", ["lean", "lightning"])
def test_early_stopping_stops_at_patience(task, tmp_path, engine):
    module, data = prepared(task, "residual-fine")
    result = fit(module, data, tmp_path, lr=0.0, patience=2, max_epochs=30, engine=engine)
    # λ never moves: validation never improves after epoch 1, so 1 + patience epochs run.
    assert result.row["epochs"] == 3 and result.row["best_epoch"] == 1, result.row


@pytest.mark.parametrize("engine", ["lean", "lightning"])
def test_resume_continues_where_it_stopped(task, tmp_path, engine):
    module, data = prepared(task, "residual-fine", init="normal", seed=2)
    kw = {"engine": engine}
    full = fit(copy.deepcopy(module), data, tmp_path / "full", max_epochs=4, **kw)
    fit(copy.deepcopy(module), data, tmp_path / "crash", max_epochs=2, **kw)  # "crashes"
    resumed = fit(copy.deepcopy(module), data, tmp_path / "crash", max_epochs=4, resume=True,
                  **kw)
    assert resumed.history == full.history
    torch.testing.assert_close(resumed.variant.lam, full.variant.lam, rtol=0, atol=0)


def test_results_table(task, tmp_path):
    rows = []
    for variant in ("zero-shot", "linear-adapter"):
        module, data = prepared(task, variant)
        rows.append(fit(module, data, tmp_path / variant, max_epochs=1,
                        tags={"model": "toy", "dataset": "synthetic"}))
    table = results_table(rows)
    assert list(table.columns[:8]) == ["model", "dataset", "variant", "accuracy", "val_acc",
                                       "params", "epochs", "best_epoch"]
    assert table["params"].tolist() == [0, 8 * 8 + 8]
    assert table["variant"].tolist() == ["zero-shot", "linear-adapter"]



def test_lr_finder_sets_the_learning_rate(task, tmp_path, monkeypatch):
    import residual_core.core.training as training

    seen = {}
    real = training._find_lr

    def spy(task_, *args, **kwargs):
        seen["state"] = {k: v.clone() for k, v in task_.variant.state_dict().items()}
        lr = real(task_, *args, **kwargs)
        seen["after"] = {k: v.clone() for k, v in task_.variant.state_dict().items()}
        return lr

    monkeypatch.setattr(training, "_find_lr", spy)
    module, data = prepared(task, "residual-full")
    result = fit(module, data, tmp_path, max_epochs=1, lr_find=True)
    assert result.row["lr"] != module.default_lr and 0 < result.row["lr"] < 10
    for key, value in seen["state"].items():  # the finder's trial steps are undone
        assert torch.equal(value, seen["after"][key]), key


def test_fine_tune_trains_the_tower_on_images_quietly(tmp_path, capfd, monkeypatch):
    import warnings

    import lightning.pytorch.trainer.connectors.data_connector as data_connector
    from open_clip.transformer import VisionTransformer
    from torch.utils.data import DataLoader, TensorDataset

    # As on a many-core machine, where Lightning warns about DataLoaders without workers.
    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda n: 8)

    torch.manual_seed(0)
    visual = VisionTransformer(image_size=16, patch_size=8, width=32, layers=1, heads=2,
                               mlp_ratio=2.0, output_dim=8)
    weights = torch.nn.functional.normalize(torch.randn(8, 3), dim=0)
    module = build_variant("fine-tune", ZeroShotClassifier(weights), visual=visual)
    assert module.n_trainable == sum(p.numel() for p in visual.parameters())
    images, y = torch.randn(96, 3, 16, 16), torch.randint(0, 3, (96,))
    loaders = [DataLoader(TensorDataset(images[i::3], y[i::3]), batch_size=16) for i in range(3)]
    before = copy.deepcopy(visual.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (num_workers, ...) fails the test
        result = fit_variant(module, *loaders, seed=0, max_epochs=2, ckpt_dir=tmp_path,
                             progress=False, lr=1e-3)
    assert result.row["engine"] == "lightning" and result.row["epochs"] == 2
    assert any(not torch.equal(before[k], v) for k, v in visual.state_dict().items())
    out = capfd.readouterr()
    assert "GPU available" not in out.err + out.out and "Tip" not in out.err + out.out
