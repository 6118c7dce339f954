"""Training of the ResiDual variants: Schedule-Free AdamW, early stopping, best checkpoint on test.

Two engines with the same semantics (tested to give identical λ and accuracies on CPU):

- ``"lightning"``: a :class:`VariantTask` LightningModule with ``ModelCheckpoint`` and
  ``EarlyStopping`` callbacks (any data: cached tensors or a DataLoader of images);
- ``"lean"``: a plain loop for cached tensors, without Lightning's per-step overhead (which
  dominates when a step is one matmul), writing the same kind of checkpoints.

Schedule-Free AdamW keeps two sequences: training steps move ``y``; the averaged weights ``x``
are the ones to evaluate and save. The optimizer is switched to eval mode (parameters ← ``x``)
before every validation, test and checkpoint, and back to train mode (parameters ← ``y``) at
the start of every training epoch.

Cached tensors are served by :class:`TensorBatcher`: the data stay on the device and each
epoch draws one permutation from a generator seeded by ``(seed, epoch)``, so a run is
reproducible and resumable; no DataLoader workers are involved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import pandas as pd
import schedulefree
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from residual_core.core.checks import check_finite
from residual_core.core.io import atomic_write
from residual_core.core.residual import Variant, build_variant, cache_inputs, unit_lambdas
from residual_core.core.spectral import PCAResult
from residual_core.core.units import Units
from residual_core.core.zeroshot import ZeroShotClassifier

__all__ = [
    "FitResult",
    "TensorBatcher",
    "TensorData",
    "VariantTask",
    "evaluate",
    "fit_variant",
    "make_optimizer",
    "quiet_lightning",
    "results_table",
    "train_epoch",
    "train_variant",
    "trainable_state",
]

BETAS = (0.9, 0.999)


@dataclass
class TensorData:
    """Cached inputs of a variant and the class targets, aligned on the first dimension.

    Attributes:
        inputs: What :meth:`Variant.forward` takes (e.g. ``(coords, rest)``).
        targets: Class indices.
    """

    inputs: tuple[Tensor, ...]
    targets: Tensor

    def __post_init__(self) -> None:
        self.inputs = tuple(self.inputs)
        n = len(self.targets)
        if any(len(t) != n for t in self.inputs):
            raise ValueError(f"inputs of lengths {[len(t) for t in self.inputs]} vs {n} targets")
        for t in self.inputs:  # a NaN input makes the loss, and then every λ, NaN
            check_finite(t, "the training inputs")

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: str | torch.device) -> TensorData:
        """Move every tensor (no copy if already there)."""
        return TensorData(tuple(t.to(device) for t in self.inputs), self.targets.to(device))


class _EpochSampler:
    """Holds the epoch; Lightning calls ``set_epoch`` on a loader's ``sampler`` every epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class TensorBatcher:
    """Batches of tensors already on the device, by index permutation; no workers.

    Args:
        data: The tensors to serve.
        batch_size: Samples per batch (the last batch may be smaller).
        shuffle: Draw a fresh permutation every epoch, from ``(seed, epoch)``.
        seed: Seed of the permutations.
        device: Where the tensors are moved once.
    """

    def __init__(
        self, data: TensorData, batch_size: int = 64, *, shuffle: bool = False, seed: int = 0,
        device: str | torch.device | None = None,
    ):
        self.data = data if device is None else data.to(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.sampler = _EpochSampler()  # Lightning calls sampler.set_epoch every epoch
        self.batch_sampler = None  # read by Lightning's loader inspection

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration uses."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def permutation(self, epoch: int) -> Tensor:
        """The sample order of ``epoch`` (the identity without shuffling)."""
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=gen)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        # A generator: the permutation is drawn at the first batch, after set_epoch.
        device = self.data.targets.device
        order = self.permutation(self.sampler.epoch).to(device)
        tensors = (*self.data.inputs, self.data.targets)
        for idx in order.split(self.batch_size):
            if not self.shuffle and len(order) == len(self.data):
                start = int(idx[0])
                yield tuple(t[start : start + len(idx)] for t in tensors)
            else:
                yield tuple(t.index_select(0, idx) for t in tensors)


def trainable_state(variant: Variant) -> dict[str, Tensor]:
    """Copies of the trainable parameters: what a checkpoint needs (the bases are frozen)."""
    return {name: p.detach().clone() for name, p in variant.named_parameters()
            if p.requires_grad}


def _load_trainable(variant: Variant, state: dict[str, Tensor]) -> None:
    missing, unexpected = variant.load_state_dict(state, strict=False)
    absent = set(trainable_state(variant)) - set(state)
    if unexpected or absent:
        raise RuntimeError(f"checkpoint does not match the variant: missing {sorted(absent)}, "
                           f"unexpected {unexpected}")


def make_optimizer(variant: Variant, lr: float) -> schedulefree.AdamWScheduleFree:
    """Schedule-Free AdamW over the variant's trainable parameters (no warmup, no decay)."""
    params = [p for p in variant.parameters() if p.requires_grad]
    return schedulefree.AdamWScheduleFree(params, lr=lr, betas=BETAS, weight_decay=0.0,
                                          warmup_steps=0)


def _optimizers_eval(optimizers: Sequence[Any]) -> None:
    for opt in optimizers:
        getattr(opt, "optimizer", opt).eval()


def _optimizers_train(optimizers: Sequence[Any]) -> None:
    for opt in optimizers:
        getattr(opt, "optimizer", opt).train()


def _in_train_mode(optimizers: Sequence[Any]) -> bool:
    return any(
        g.get("train_mode", False) for opt in optimizers
        for g in getattr(opt, "optimizer", opt).param_groups
    )


class VariantTask(L.LightningModule):
    """Lightning wrapper: cross-entropy of the frozen classifier, accuracy, schedule-free modes.

    Args:
        variant: The module to train.
        lr: Learning rate (Lightning's LR finder reads and writes ``self.lr``).
    """

    def __init__(self, variant: Variant, lr: float):
        super().__init__()
        self.variant = variant
        self.lr = lr
        self.history: list[float] = []
        self.test_acc: float | None = None
        self._correct = 0
        self._total = 0
        self.strict_loading = False  # checkpoints hold the trainable parameters only

    def forward(self, *inputs: Tensor) -> Tensor:
        """Logits."""
        return self.variant(*inputs)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on one batch."""
        *inputs, y = batch
        return F.cross_entropy(self.variant(*inputs), y)

    def _count(self, batch: Sequence[Tensor]) -> None:
        *inputs, y = batch
        self._correct += int((self.variant(*inputs).argmax(-1) == y).sum())
        self._total += len(y)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Count correct predictions."""
        self._count(batch)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Count correct predictions."""
        self._count(batch)

    def _accuracy(self) -> float:
        acc = self._correct / max(self._total, 1)
        self._correct = self._total = 0
        return acc

    def configure_optimizers(self) -> schedulefree.AdamWScheduleFree:
        """Schedule-Free AdamW."""
        return make_optimizer(self.variant, self.lr)

    def _optimizers(self) -> list[Any]:
        trainer = self._trainer
        return list(trainer.optimizers) if trainer is not None else []

    def on_train_epoch_start(self) -> None:
        """Parameters ← ``y`` (train mode)."""
        _optimizers_train(self._optimizers())

    def on_validation_epoch_start(self) -> None:
        """Parameters ← ``x`` (the averaged weights) for validation."""
        _optimizers_eval(self._optimizers())
        self._correct = self._total = 0

    def on_test_epoch_start(self) -> None:
        """Parameters ← ``x`` for test."""
        _optimizers_eval(self._optimizers())
        self._correct = self._total = 0

    def on_validation_epoch_end(self) -> None:
        """Log ``val_acc`` (exact, over the whole split) and keep the history."""
        acc = self._accuracy()
        if not self.trainer.sanity_checking:
            self.history.append(acc)
        self.log("val_acc", torch.tensor(acc, dtype=torch.float64), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        """Log ``test_acc``."""
        self.test_acc = self._accuracy()
        self.log("test_acc", torch.tensor(self.test_acc, dtype=torch.float64))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the averaged weights ``x``, whatever mode the optimizer is in."""
        optimizers = self._optimizers()
        if _in_train_mode(optimizers):
            _optimizers_eval(optimizers)
            checkpoint["state_dict"] = {k: v.detach().clone()
                                        for k, v in self.state_dict().items()}
            _optimizers_train(optimizers)
        # Only what training changes: the frozen bases and classifier are rebuilt, not saved.
        keep = {f"variant.{name}" for name in trainable_state(self.variant)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in keep}
        checkpoint["history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the validation history."""
        self.history = list(checkpoint.get("history", []))


@dataclass
class FitResult:
    """What :func:`fit_variant` returns.

    Attributes:
        row: Tidy result: variant, params, val_acc, test_acc, best_epoch (counted from 1),
            epochs (run), wall_time_s, lr, seed, engine, plus the tags and variant options.
        variant: The trained module holding the best (averaged) weights, in eval mode.
        history: Validation accuracy after every epoch.
        checkpoint: Path of the best checkpoint (``None`` for zero-shot).
    """

    row: dict[str, Any]
    variant: Variant
    history: list[float] = field(default_factory=list)
    checkpoint: Path | None = None

    @property
    def accuracy(self) -> float:
        """Test accuracy of the best-on-validation weights."""
        return float(self.row["test_acc"])

    def lambdas(self, label: str) -> Tensor:
        """The trained λ of one unit (per PC for ResiDual, one value for coarse)."""
        return unit_lambdas(self.variant, label)


@torch.no_grad()
def evaluate(variant: Variant, data: TensorData | DataLoader | TensorBatcher,
             batch_size: int = 1024, device: str | torch.device = "cpu") -> float:
    """Accuracy of a variant on a split."""
    loader = _loader(data, batch_size, shuffle=False, seed=0, device=device)
    variant = variant.to(device)
    was_training = variant.training
    variant.eval()
    correct = total = 0
    for batch in loader:
        *inputs, y = (t.to(device) for t in batch)
        correct += int((variant(*inputs).argmax(-1) == y).sum())
        total += len(y)
    variant.train(was_training)
    return correct / max(total, 1)


def _loader(data, batch_size, *, shuffle, seed, device):
    if isinstance(data, TensorData):
        return TensorBatcher(data, batch_size, shuffle=shuffle, seed=seed, device=device)
    return data


@contextlib.contextmanager
def quiet_lightning():
    """Silence Lightning's info logs and the warnings that do not apply here."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric",
                                              "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for msg in (".*does not have many workers.*", ".*GPU available but not used.*",
                    ".*Checkpoint directory .* exists and is not empty.*",
                    ".*smaller than the logging interval.*", ".*LightningModule.log.*",
                    ".*`srun` command is available.*", ".*Consider setting `persistent_workers.*",
                    ".*isinstance\\(treespec, LeafSpec\\).*", ".*no `val_dataloader`.*"):
            warnings.filterwarnings("ignore", message=msg)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _accelerator(device: torch.device) -> tuple[str, Any]:
    if device.type == "cuda":
        return "gpu", [device.index or 0]
    if device.type == "mps":
        return "mps", 1
    return "cpu", 1


def _find_lr(task: VariantTask, train, val, device: torch.device, progress: bool) -> float:
    from lightning.pytorch.tuner import Tuner

    state = {k: v.detach().clone() for k, v in task.variant.state_dict().items()}
    accelerator, devices = _accelerator(device)
    with tempfile.TemporaryDirectory() as tmp, quiet_lightning():
        trainer = L.Trainer(accelerator=accelerator, devices=devices, logger=False,
                            enable_model_summary=False, enable_checkpointing=False,
                            enable_progress_bar=progress, default_root_dir=tmp,
                            num_sanity_val_steps=0, max_epochs=1000)
        finder = Tuner(trainer).lr_find(task, train_dataloaders=train, val_dataloaders=val,
                                        min_lr=1e-6, max_lr=10.0, update_attr=False)
    task.variant.load_state_dict(state)
    suggestion = finder.suggestion() if finder is not None else None
    return float(suggestion) if suggestion is not None else task.lr


def fit_variant(
    variant: Variant,
    train_data: TensorData | DataLoader,
    val_data: TensorData | DataLoader,
    test_data: TensorData | DataLoader,
    *,
    seed: int,
    max_epochs: int = 30,
    patience: int = 5,
    lr: float | None = None,
    lr_find: bool = False,
    batch_size: int = 64,
    eval_batch_size: int = 1024,
    device: str | torch.device = "cpu",
    engine: Literal["auto", "lean", "lightning"] = "auto",
    ckpt_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    tags: dict[str, Any] | None = None,
) -> FitResult:
    """Train a variant, early-stop on validation accuracy, evaluate the best checkpoint on test.

    Args:
        variant: The module to train (its cached inputs are ``train_data.inputs``).
        train_data: Cached tensors (:class:`TensorData`) or a DataLoader of ``(inputs..., y)``.
        val_data: Validation split, used for early stopping and choosing the checkpoint.
        test_data: Test split, evaluated once with the best checkpoint.
        seed: Seeds the batch order (and anything random in training).
        max_epochs: Upper bound on epochs (30).
        patience: Epochs without a strictly better validation accuracy before stopping (5).
        lr: Learning rate; default the variant's (0.8 ResiDual/coarse, 1e-3 adapters,
            1e-5 fine-tuning).
        lr_find: Run Lightning's LR finder first and train with its suggestion.
        batch_size: Training batch size (64).
        eval_batch_size: Batch size of validation and test.
        device: Where to train; cached tensors are moved there once.
        engine: ``"lean"`` (cached tensors only), ``"lightning"``, or ``"auto"`` (lean for
            cached tensors, Lightning otherwise).
        ckpt_dir: Directory for ``best`` and ``last`` checkpoints and ``result.json`` (a
            temporary one if ``None``). Checkpoints are written after every validation.
        resume: Continue from ``last`` in ``ckpt_dir`` if present.
        progress: Show progress bars.
        tags: Extra columns of the result row, e.g. ``{"model": ..., "dataset": ...}``.

    Returns:
        A :class:`FitResult` with the tidy row and the trained module (best weights).
    """
    device = torch.device(device)
    lr = variant.default_lr if lr is None else float(lr)
    tags = dict(tags or {})
    cached = all(isinstance(d, TensorData) for d in (train_data, val_data, test_data))
    if engine == "auto":
        engine = "lean" if cached else "lightning"
    if engine == "lean" and not cached:
        raise ValueError("the lean engine needs cached TensorData for every split")
    tmp = None
    if ckpt_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="residual-fit-")
        ckpt_dir = tmp.name
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    variant = variant.to(device)
    start = time.perf_counter()

    if variant.n_trainable == 0:  # zero-shot: nothing to train
        history, best_epoch, epochs, best_path = [], 0, 0, None
        val_acc = evaluate(variant, val_data, eval_batch_size, device)
        test_acc = evaluate(variant, test_data, eval_batch_size, device)
    else:
        train = _loader(train_data, batch_size, shuffle=True, seed=seed, device=device)
        val = _loader(val_data, eval_batch_size, shuffle=False, seed=seed, device=device)
        test = _loader(test_data, eval_batch_size, shuffle=False, seed=seed, device=device)
        if lr_find:
            lr = _find_lr(VariantTask(variant, lr), train, val, device, progress)
        runner = _fit_lean if engine == "lean" else _fit_lightning
        history, best_path, test_acc = runner(
            variant, train, val, test, lr=lr, max_epochs=max_epochs, patience=patience,
            device=device, ckpt_dir=ckpt_dir, resume=resume, progress=progress,
        )
        variant = variant.to(device)  # Lightning's teardown leaves the module on the CPU
        epochs = len(history)
        val_acc = max(history) if history else float("nan")
        best_epoch = history.index(val_acc) + 1 if history else 0
    wall = time.perf_counter() - start
    variant.eval()
    row = {
        **tags,
        "variant": variant.name,
        "params": variant.n_trainable,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "best_epoch": best_epoch,
        "epochs": epochs,
        "wall_time_s": wall,
        "lr": lr,
        "seed": seed,
        "batch_size": batch_size,
        "engine": engine if variant.n_trainable else "none",
        **variant.options(),
    }
    atomic_write(ckpt_dir / "result.json", json.dumps({**row, "history": history}, indent=1,
                                                      default=str))
    if tmp is not None:
        best_path = None
        tmp.cleanup()
    return FitResult(row, variant, history, best_path)


def _fit_lightning(variant, train, val, test, *, lr, max_epochs, patience, device, ckpt_dir,
                   resume, progress):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    task = VariantTask(variant, lr)
    accelerator, devices = _accelerator(device)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_acc",
                                 mode="max", save_top_k=1, save_last=True,
                                 enable_version_counter=False)
    stopping = EarlyStopping(monitor="val_acc", mode="max", patience=patience, min_delta=0.0)
    last = ckpt_dir / "last.ckpt"
    with quiet_lightning():
        trainer = L.Trainer(
            accelerator=accelerator, devices=devices, max_epochs=max_epochs, logger=False,
            callbacks=[checkpoint, stopping], enable_model_summary=False,
            enable_progress_bar=progress, num_sanity_val_steps=0, default_root_dir=ckpt_dir,
            deterministic=False,
        )
        trainer.fit(task, train_dataloaders=train, val_dataloaders=val,
                    ckpt_path=str(last) if resume and last.exists() else None)
        history = list(task.history)
        trainer.test(task, dataloaders=test, ckpt_path="best", verbose=False)
    return history, Path(checkpoint.best_model_path), task.test_acc


def train_epoch(
    variant: Variant, optimizer: schedulefree.AdamWScheduleFree, batcher: TensorBatcher,
    epoch: int,
) -> Tensor:
    """One training epoch of the lean engine (optimizer left in train mode).

    No host-device synchronisation per step: the loss stays on the device.

    Returns:
        The last batch's loss (detached).
    """
    variant.train()
    optimizer.train()
    batcher.set_epoch(epoch)
    loss = torch.zeros(())
    for *inputs, y in batcher:
        loss = F.cross_entropy(variant(*inputs), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.detach()


def _fit_lean(variant, train: TensorBatcher, val: TensorBatcher, test: TensorBatcher, *, lr,
              max_epochs, patience, device, ckpt_dir, resume, progress):
    opt = make_optimizer(variant, lr)
    best_path, last_path = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    history: list[float] = []
    best, wait, epoch0 = -math.inf, 0, 0
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        _load_trainable(variant, state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        history, best, wait = state["history"], state["best"], state["wait"]
        epoch0 = len(history)
    bar = tqdm(total=max_epochs, initial=epoch0, desc=f"fit {variant.name}", disable=not progress,
               leave=False)
    stop = wait >= patience
    for epoch in range(epoch0, max_epochs):
        if stop:
            break
        loss = train_epoch(variant, opt, train, epoch)
        opt.eval()
        acc = evaluate(variant, val, device=device)
        history.append(acc)
        if acc > best:  # strict, like Lightning's EarlyStopping / ModelCheckpoint ("max")
            best, wait = acc, 0
            _save({"state_dict": trainable_state(variant), "epoch": epoch,
                          "val_acc": acc}, best_path)
        else:
            wait += 1
            stop = wait >= patience
        _save({"state_dict": trainable_state(variant), "optimizer": opt.state_dict(),
                      "history": history, "best": best, "wait": wait}, last_path)
        bar.update(1)
        bar.set_postfix(val_acc=f"{acc:.4f}", loss=f"{float(loss):.4f}")
    bar.close()
    if best_path.exists():
        _load_trainable(variant, torch.load(best_path, map_location=device,
                                            weights_only=False)["state_dict"])
    test_acc = evaluate(variant, test, device=device)
    return history, best_path, test_acc


def _save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


_COLUMNS = ["model", "dataset", "variant", "test_acc", "val_acc", "params", "epochs",
            "best_epoch", "wall_time_s", "lr", "seed", "engine"]


def results_table(rows: Sequence[dict[str, Any] | FitResult]) -> pd.DataFrame:
    """One row per model × dataset × variant: accuracy, parameters, epochs, wall time.

    Args:
        rows: Result rows (or :class:`FitResult`) from :func:`fit_variant`.

    Returns:
        A DataFrame; ``accuracy`` is the test accuracy; known columns first, then the rest.
    """
    records = [r.row if isinstance(r, FitResult) else dict(r) for r in rows]
    df = pd.DataFrame.from_records(records)
    front = [c for c in _COLUMNS if c in df.columns]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.rename(columns={"test_acc": "accuracy"})


Split = tuple[Units, Tensor] | Any


def _split(data: Split) -> tuple[Units, Tensor]:
    """``(units, targets)`` of a split given as such a pair or as an encoding store."""
    if isinstance(data, tuple):
        units, targets = data
        return units, torch.as_tensor(targets)
    if hasattr(data, "iter_units") and hasattr(data, "targets"):
        return data.units(), torch.as_tensor(data.targets())
    raise TypeError(f"a split is (Units, targets) or an EncodingStore, got {type(data).__name__}")


def train_variant(
    name: str,
    classifier: ZeroShotClassifier,
    train: Split,
    val: Split,
    test: Split,
    *,
    reference: PCAResult,
    output_reference: PCAResult | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    variant_kwargs: dict[str, Any] | None = None,
    **fit_kwargs: Any,
) -> FitResult:
    """Train one variant on cached unit encodings of a task: build, cache inputs, fit.

    The variant is built from the reference PCA (:func:`~residual_core.core.residual.
    build_variant`, units and layout read from it), every split is encoded once into the
    cached inputs it trains on, and it is trained with :func:`fit_variant` (lean engine).

    Args:
        name: A variant of :data:`~residual_core.core.residual.VARIANTS` other than
            ``fine-tune`` (which trains on images).
        classifier: The task's frozen zero-shot classifier.
        train: ``(Units, targets)`` or an :class:`~residual_core.core.store.EncodingStore`.
        val: The same for validation (early stopping, checkpoint choice).
        test: The same for test (evaluated once).
        reference: Labelled per-unit PCA of reference data (:func:`~residual_core.core.
            spectral.unit_pca`).
        output_reference: PCA of the summed output (``spectral-adapter``).
        seed: Seeds batch order and any random init.
        device: Where to train.
        variant_kwargs: Passed to ``build_variant`` (``evr``, ``add_mean``, ``init``, ...).
        **fit_kwargs: Passed to :func:`fit_variant` (``max_epochs``, ``patience``, ``lr``...).

    Returns:
        The fit: ``.accuracy`` (test), ``.lambdas(label)``, ``.row``, the trained ``.variant``.

    Example:
        >>> fit = train_variant("residual-full", classifier, train, val, test,
        ...                     reference=unit_pca(reference_store))
        >>> fit.accuracy, fit.lambdas("L3H1")
    """
    if name == "fine-tune":
        raise ValueError("fine-tune trains on images, not cached units: build it with "
                         "build_variant('fine-tune', ..., visual=...) and fit_variant")
    variant = build_variant(name, classifier, reference=reference,
                            output_reference=output_reference, seed=seed,
                            **(variant_kwargs or {}))
    data = []
    for split in (train, val, test):
        units, targets = _split(split)
        inputs, _ = cache_inputs(variant, units, device=device)
        data.append(TensorData(inputs, targets.to(device)))
    return fit_variant(variant, *data, seed=seed, device=device, **fit_kwargs)
