"""Throughput of the tutorial world: scenes, rendering and captions, on one CPU core."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import time  # noqa: E402

from residual_core.tutorial.world import SHIFTS, captions, render, sample_scenes  # noqa: E402


def rate(fn, n: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(n: int = 2048) -> None:
    scenes = sample_scenes(n, seed=0)
    print(f"sample_scenes: {rate(lambda: sample_scenes(n, seed=0), n):10,.0f} scenes/s")
    print(f"render:        {rate(lambda: render(scenes, seed=0), n):10,.0f} images/s")
    print(f"captions:      {rate(lambda: captions(scenes, seed=0), n):10,.0f} captions/s")
    for shift in SHIFTS:
        s = sample_scenes(n, seed=0, shift=shift)
        r = rate(lambda s=s: render(s, seed=0), n, 1)
        print(f"{'render[' + shift + ']:':15}{r:10,.0f} images/s")


if __name__ == "__main__":
    main()
