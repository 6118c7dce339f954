"""Peak memory of ``decompose`` ÷ the plain forward, on the CPU (the GPU suite measures it there).

Each side runs in its own child process: the model is built and warmed up, then the peak
resident memory added by one batch is read from ``ru_maxrss``. glibc is told to map every
block over 64 KiB on its own and to return freed memory at once, so the resident size follows
what is live rather than what the allocator keeps::

    python benchmarks/decompose_memory.py --model ViT-B-16 --batch 32

Random weights (no download); float32, one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MALLOC = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0"


def child(model_name: str, batch: int, side: str) -> None:
    """Print the peak MiB one batch adds over the warmed-up baseline (in this process)."""
    import gc
    import resource

    import open_clip
    import torch

    from residual_core.core.decompose import UnitProjector, decompose, get_visual

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = open_clip.create_model(model_name).eval()
    visual = get_visual(model)
    projector = UnitProjector.from_model(model)
    x = torch.randn(batch, 3, *visual.image_size)

    def run(images):
        with torch.inference_mode():
            if side == "plain":
                return visual(images)
            return decompose(model, images, projector=projector).data

    run(x[:2])  # warm-up: lazy allocations and kernels of both paths
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"side": side, "peak_mib": (peak - base) / 1024}))


def measure(model_name: str, batch: int) -> dict:
    """Both sides, each in a fresh process; returns their peaks and the ratio."""
    env = {**os.environ, "GLIBC_TUNABLES": MALLOC,
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    peaks = {}
    for side in ("plain", "decompose"):
        out = subprocess.run([sys.executable, __file__, "--child", side, "--model", model_name,
                              "--batch", str(batch)], env=env, text=True, capture_output=True,
                             check=True)
        peaks[side] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    return {"model": model_name, "batch": batch, "plain_mib": peaks["plain"],
            "decompose_mib": peaks["decompose"], "ratio": peaks["decompose"] / peaks["plain"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", choices=["plain", "decompose"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.batch, args.child)
        return
    row = measure(args.model, args.batch)
    print(f"{row['model']}, batch {row['batch']}, float32, CPU: peak memory one batch adds, "
          f"decompose {row['decompose_mib']:.0f} MiB vs plain forward {row['plain_mib']:.0f} "
          f"MiB: {row['ratio']:.2f}×")


if __name__ == "__main__":
    main()
