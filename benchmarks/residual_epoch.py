"""Time one training epoch of ResiDual-full and of the linear adapter on a ViT-L/14-sized problem.

Random cached data shaped like ViT-L/14 (24 layers × 16 heads, d_head 64, d_out 768): every
head keeps 64 PCs and every MLP 768, so λ has 43,008 entries and each cached sample 43,008
coordinates plus the kept embedding (768). The linear adapter trains on the 768-d embedding.
Both use the lean engine (:func:`residual_core.core.training.train_epoch`: data on the device,
index-permutation batches, Schedule-Free AdamW); ``--lightning`` also times the same epoch
through Lightning to show its per-step overhead.

    python benchmarks/residual_epoch.py                       # 50k samples, GPU if available
    python benchmarks/residual_epoch.py --n-samples 2000      # a quick CPU check

Target on an H100: one ResiDual epoch (50k samples, batch 64) in ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from residual_core.core.residual import LinearAdapter, ResiDual, StackedBasis
from residual_core.core.training import (
    TensorBatcher,
    TensorData,
    VariantTask,
    make_optimizer,
    quiet_lightning,
    train_epoch,
)
from residual_core.core.units import unit_labels
from residual_core.core.zeroshot import ZeroShotClassifier

N_LAYERS, N_HEADS, D_HEAD, D_OUT = 24, 16, 64, 768
VIT_L14 = (N_LAYERS, N_HEADS, D_HEAD, D_OUT)
"""ViT-L/14's (layers, heads, d_head, d_out): the sizes of the timed problem."""


def residual_full(classifier: ZeroShotClassifier, device: torch.device,
                  shape: tuple[int, int, int, int] = VIT_L14) -> ResiDual:
    """ResiDual-full for a tower of ``shape`` with random orthonormal-ish bases (timing only)."""
    n_layers, n_heads, d_head, d_out = shape
    labels = unit_labels(n_layers, n_heads)
    selected = labels[1:]  # MLPs and heads; the embedding is kept as is
    sizes = [d_out if label.endswith(".mlp") else d_head for label in selected]
    gen = torch.Generator(device=device).manual_seed(0)
    comps = torch.randn(sum(sizes), d_out, generator=gen, device=device) / d_out**0.5
    basis = StackedBasis(
        labels=selected, sizes=sizes, components=comps,
        mean=torch.zeros(len(selected), d_out, device=device), other_labels=["embed"],
        other_mean=torch.zeros(1, d_out, device=device),
        discarded=torch.zeros(len(selected)),
    )
    return ResiDual(classifier, basis, rest="keep", name="residual-full").to(device)


def make_problem(n: int, n_classes: int, device: torch.device, seed: int = 1,
                 shape: tuple[int, int, int, int] = VIT_L14) -> dict:
    """ResiDual-full and the linear adapter with random cached data of ``n`` samples.

    ``shape`` is the tower's (layers, heads, d_head, d_out); ViT-L/14's gives 43,008 λ.

    Returns:
        ``residual``/``linear`` (the variants) and ``residual_data``/``linear_data`` (their
        cached inputs and targets, on ``device``).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    d_out = shape[-1]
    clf_w = torch.nn.functional.normalize(
        torch.randn(d_out, n_classes, generator=gen, device=device), dim=0)
    classifier = ZeroShotClassifier(clf_w)
    residual = residual_full(classifier, device, shape)
    coords = torch.randn(n, residual.n_trainable, generator=gen, device=device)
    rest = torch.randn(n, d_out, generator=gen, device=device)
    targets = torch.randint(0, n_classes, (n,), generator=gen, device=device)
    return {
        "residual": residual,
        "residual_data": TensorData((coords, rest), targets),
        "linear": LinearAdapter(classifier).to(device),
        "linear_data": TensorData((rest.clone(),), targets),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_lean(variant, data: TensorData, batch_size: int, device: torch.device,
              warmup_steps: int = 20) -> float:
    """Seconds for one full training epoch (after a short warm-up on a slice)."""
    opt = make_optimizer(variant, variant.default_lr)
    warm = TensorData(tuple(t[: warmup_steps * batch_size] for t in data.inputs),
                      data.targets[: warmup_steps * batch_size])
    train_epoch(variant, opt, TensorBatcher(warm, batch_size, shuffle=True), 0)
    batcher = TensorBatcher(data, batch_size, shuffle=True, seed=0)
    sync(device)
    start = time.perf_counter()
    loss = train_epoch(variant, opt, batcher, 1)
    sync(device)
    elapsed = time.perf_counter() - start
    assert torch.isfinite(loss), "training diverged"
    return elapsed


class _EpochTimer(L.Callback):
    def on_train_epoch_start(self, trainer, module):
        sync(module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        sync(module.device)
        self.elapsed = time.perf_counter() - self.start


def time_lightning(variant, data: TensorData, batch_size: int, device: torch.device) -> float:
    """Seconds for one training epoch through Lightning (no validation, no checkpoint)."""
    timer = _EpochTimer()
    with quiet_lightning():
        return _time_lightning(variant, data, batch_size, device, timer)


def _time_lightning(variant, data, batch_size, device, timer) -> float:
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(VariantTask(variant, variant.default_lr),
                train_dataloaders=TensorBatcher(data, batch_size, shuffle=True, seed=0))
    return timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=50_000)
    parser.add_argument("--n-classes", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lightning", action="store_true",
                        help="also time the epoch through Lightning (per-step overhead)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on GPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (use 1 on a shared machine: oversubscription is slow)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    n = args.n_samples
    problem = make_problem(n, args.n_classes, device)
    residual, residual_data = problem["residual"], problem["residual_data"]
    linear, linear_data = problem["linear"], problem["linear_data"]
    k_total, coords = residual.n_trainable, residual_data.inputs[0]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name} ({device}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, tf32 {args.tf32}")
    print(f"data: {n:,} samples, ResiDual-full λ {k_total:,} (cached coords "
          f"{coords.numel() * 4 / 2**30:.2f} GiB), linear adapter {linear.n_trainable:,} params")
    print(f"{'batch':>6} {'steps':>6} {'residual s':>11} {'linear s':>9} {'ratio':>6} "
          f"{'res ms/step':>12} {'lin ms/step':>12}" + ("  lightning s (res / lin)"
                                                        if args.lightning else ""))
    for batch_size in args.batch_sizes:
        steps = -(-n // batch_size)
        t_res = time_lean(residual, residual_data, batch_size, device)
        t_lin = time_lean(linear, linear_data, batch_size, device)
        line = (f"{batch_size:>6} {steps:>6} {t_res:>11.3f} {t_lin:>9.3f} {t_res / t_lin:>6.2f} "
                f"{1e3 * t_res / steps:>12.3f} {1e3 * t_lin / steps:>12.3f}")
        if args.lightning:
            l_res = time_lightning(residual, residual_data, batch_size, device)
            l_lin = time_lightning(linear, linear_data, batch_size, device)
            line += f"  {l_res:.3f} / {l_lin:.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
