"""Throughput and peak memory of ``decompose`` relative to the plain ``encode_image`` forward.

Both are measured in the same run, on the same random-initialised model and batch, so the
ratio is meaningful on any machine. The issue's target: decompose ≥ 0.9 × plain for ViT-L-14
on a GPU under fp16 autocast, peak memory within 1.2 × of the plain forward's.

Usage:
    python benchmarks/decompose_throughput.py                       # GPU defaults (B-16, L-14, 256)
    python benchmarks/decompose_throughput.py --device cpu --models ViT-B-32 --batch-size 8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import open_clip
import torch

from residual_core.decompose import UnitProjector, decompose


def _timed(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Seconds per call, after warm-up, with the device synchronised around the timing."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def _peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def bench(name: str, batch: int, iters: int, warmup: int, device: torch.device, dtype: str):
    """Measure one model; returns a dict row of the results table."""
    model = open_clip.create_model(name).eval().to(device)
    size = model.visual.image_size
    x = torch.randn(batch, 3, *size, device=device)
    amp = torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    projector = UnitProjector.from_model(model)

    def plain():
        with torch.inference_mode(), amp:
            return model.encode_image(x)

    def decomp():
        with torch.inference_mode(), amp:
            return decompose(model, x, projector=projector).units

    # Interleave the two measurements so clock drift hits both alike.
    t_plain = _timed(plain, iters, warmup, device)
    t_dec = _timed(decomp, iters, warmup, device)
    t_plain = min(t_plain, _timed(plain, iters, 0, device))
    t_dec = min(t_dec, _timed(decomp, iters, 0, device))
    mem_plain, mem_dec = _peak_bytes(plain, device), _peak_bytes(decomp, device)
    with torch.inference_mode(), amp:
        y = model.encode_image(x).float()
    err = float(((decomp().float().sum(1) - y).norm(dim=-1) / y.norm(dim=-1)).max())
    return {
        "model": name,
        "batch": batch,
        "plain_img_s": batch / t_plain,
        "decompose_img_s": batch / t_dec,
        "ratio": t_plain / t_dec,
        "plain_peak_gib": None if mem_plain is None else mem_plain / 2**30,
        "decompose_peak_gib": None if mem_dec is None else mem_dec / 2**30,
        "mem_ratio": None if mem_plain is None else mem_dec / mem_plain,
        "max_rel_err": err,
    }


def main() -> None:
    """Parse arguments, run every model, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B-16", "ViT-L-14"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"open_clip {open_clip.__version__}, autocast {args.dtype}")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}")
    rows = [bench(m, args.batch_size, args.iters, args.warmup, device, args.dtype)
            for m in args.models]
    print("\n| model | batch | plain img/s | decompose img/s | ratio | plain peak GiB "
          "| decompose peak GiB | memory ratio | max rel err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gib = [("-" if r[k] is None else f"{r[k]:.2f}")
               for k in ("plain_peak_gib", "decompose_peak_gib", "mem_ratio")]
        print(f"| {r['model']} | {r['batch']} | {r['plain_img_s']:,.0f} | "
              f"{r['decompose_img_s']:,.0f} | {r['ratio']:.2f} | {gib[0]} | {gib[1]} | "
              f"{gib[2]} | {r['max_rel_err']:.1e} |")


if __name__ == "__main__":
    main()
