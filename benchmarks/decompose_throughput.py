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
import copy
import time
from collections.abc import Callable

import open_clip
import torch
from torch import Tensor

from residual_core.core.decompose import UnitProjector, decompose, get_visual


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Seconds per call, after warm-up, with the device synchronised around the timing."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
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


def build(name: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """An open_clip architecture with random weights (seeded), or ``tiny`` (a 4-layer ViT)."""
    torch.manual_seed(seed)
    if name == "tiny":
        from open_clip.transformer import VisionTransformer

        model = VisionTransformer(image_size=32, patch_size=8, width=64, layers=4, heads=4,
                                  mlp_ratio=4.0, output_dim=32)
    else:
        model = open_clip.create_model(name)
    return model.eval().to(device)


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")


def _images(model: torch.nn.Module, batch: int, device: torch.device, seed: int = 0) -> Tensor:
    size = get_visual(model).image_size
    size = size if isinstance(size, tuple) else (size, size)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
    return x.to(device)


def bench_model(model: torch.nn.Module, name: str, batch: int, iters: int, warmup: int,
                device: torch.device, dtype: str) -> dict:
    """Measure one built model under one autocast dtype; returns a row of the results table."""
    visual = get_visual(model)
    x = _images(model, batch, device)
    amp = _autocast(device, dtype)
    projector = UnitProjector.from_model(model)

    def plain():
        with torch.inference_mode(), amp:
            return visual(x)

    def decomp():
        with torch.inference_mode(), amp:
            return decompose(model, x, projector=projector).data

    # Interleave the two measurements so clock drift hits both alike.
    t_plain = _timed(plain, iters, warmup, device)
    t_dec = _timed(decomp, iters, warmup, device)
    t_plain = min(t_plain, _timed(plain, iters, 0, device))
    t_dec = min(t_dec, _timed(decomp, iters, 0, device))
    mem_plain, mem_dec = _peak_bytes(plain, device), _peak_bytes(decomp, device)
    y = plain().float()
    err = float(((decomp().float().sum(1) - y).norm(dim=-1) / y.norm(dim=-1)).max())
    return {
        "model": name,
        "dtype": dtype,
        "batch": batch,
        "plain_img_s": batch / t_plain,
        "decompose_img_s": batch / t_dec,
        "ratio": t_plain / t_dec,
        "plain_peak_gib": None if mem_plain is None else mem_plain / 2**30,
        "decompose_peak_gib": None if mem_dec is None else mem_dec / 2**30,
        "mem_ratio": None if mem_plain is None else mem_dec / mem_plain,
        "max_rel_err": err,
    }


def bench(name: str, batch: int, iters: int, warmup: int, device: torch.device, dtype: str):
    """Measure one model (built here); returns a dict row of the results table."""
    return bench_model(build(name, device), name, batch, iters, warmup, device, dtype)


def agreement(model: torch.nn.Module, dtypes: list[str], device: torch.device,
              n_images: int = 4) -> list[dict]:
    """Per-unit agreement of ``decompose`` on ``device`` with a float64 CPU decomposition.

    The same ``n_images`` images go through the model under each autocast dtype on ``device``
    and through a float64 copy of its vision tower on the CPU. The error of a unit is the norm
    of its difference, relative to the norm of the (float64) image embedding.

    Returns:
        One row per dtype: the max and median error over images and units.
    """
    x = _images(model, n_images, torch.device("cpu"), seed=1)
    reference = copy.deepcopy(get_visual(model)).to("cpu", torch.float64)
    with torch.inference_mode():
        ref = decompose(reference, x.double()).data
    del reference
    norm = ref.sum(1).norm(dim=-1)[:, None]
    rows = []
    for dtype in dtypes:
        with torch.inference_mode(), _autocast(device, dtype):
            got = decompose(model, x.to(device)).data.double().cpu()
        err = (got - ref).norm(dim=-1) / norm
        rows.append({"dtype": dtype, "n_images": n_images, "n_units": ref.shape[1],
                     "max_rel_err": float(err.max()), "median_rel_err": float(err.median())})
    return rows


def profile_tables(model: torch.nn.Module, batch: int, device: torch.device, dtype: str,
                   rows: int = 15) -> dict[str, str]:
    """torch.profiler's top operators of one plain forward and one ``decompose`` call."""
    from torch.profiler import ProfilerActivity, profile

    visual = get_visual(model)
    x = _images(model, batch, device)
    projector = UnitProjector.from_model(model)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    calls = {"plain": lambda: visual(x),
             "decompose": lambda: decompose(model, x, projector=projector).data}
    tables = {}
    for name, fn in calls.items():
        with torch.inference_mode(), _autocast(device, dtype):
            fn()  # warm-up outside the profile
            _sync(device)
            with profile(activities=activities) as prof:
                fn()
                _sync(device)
        tables[name] = prof.key_averages().table(sort_by=sort, row_limit=rows)
    return tables


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
