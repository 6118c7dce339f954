"""What a smaller input costs the tutorial CLIP's image tower: forward and training throughput.

Builds the tower of ``--world``'s architecture (``tutorial.model.ARCHITECTURES``) at each
``--sizes`` input (random weights: the cost does not depend on them), and times a forward pass
of ``--eval-batch`` images (inference mode) and a training step of ``--train-batch`` images
(forward, backward, AdamW) on ``--threads`` CPU threads, after one warm-up call each. Prints
images per second per size and the ratio of every size to the first, measured in this run.

Usage:
    python benchmarks/input_size.py [--world v2] [--sizes 64 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from residual_core.tutorial.model import (
    ARCHITECTURES,
    build_tiny_clip,
    tiny_clip_config,
    with_architecture,
)


def throughput(size: int, world: str, train_batch: int, eval_batch: int,
               repeats: int) -> tuple[float, float]:
    """(training, forward) images per second of the tower at ``size`` pixels."""
    torch.manual_seed(0)
    arch = {**ARCHITECTURES[world], "image_size": size}
    visual = build_tiny_clip(with_architecture(tiny_clip_config(100, 32), **arch)).visual
    optimizer = torch.optim.AdamW(visual.parameters(), 1e-4)
    x = torch.randn(train_batch, 3, size, size)

    def step() -> None:
        optimizer.zero_grad()
        visual(x).square().mean().backward()
        optimizer.step()

    visual.train()
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    train = train_batch * repeats / (time.perf_counter() - start)
    visual.eval()
    xb = torch.randn(eval_batch, 3, size, size)
    with torch.inference_mode():
        visual(xb)
        start = time.perf_counter()
        for _ in range(repeats):
            visual(xb)
        forward = eval_batch * repeats / (time.perf_counter() - start)
    return train, forward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="v2", choices=list(ARCHITECTURES))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 48])
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    arch = ARCHITECTURES[args.world]
    print(f"{args.world} tower: {arch['layers']} layers, width {arch['width']}, heads of "
          f"{arch['head_width']}, MLP x{arch['mlp_ratio']:g}, patch 8; {args.threads} thread(s)")
    results = {s: throughput(s, args.world, args.train_batch, args.eval_batch, args.repeats)
               for s in args.sizes}
    base_train, base_forward = results[args.sizes[0]]
    for size, (train, forward) in results.items():
        tokens = (size // 8) ** 2 + 1
        print(f"{size:3d} px ({tokens:2d} tokens): training {train:6.1f} img/s "
              f"({train / base_train:.2f}x), forward {forward:6.1f} img/s "
              f"({forward / base_forward:.2f}x)")


if __name__ == "__main__":
    main()
