"""What the book runner's malloc setting (``runner.build.KERNEL_MALLOC``) saves a chapter kernel.

Runs the same work twice in fresh child processes, once with glibc's default allocator
settings and once with ``GLIBC_TUNABLES`` set to ``KERNEL_MALLOC``, and prints each one's
user and system CPU seconds, page faults and wall time, and the ratios, measured in this run.
The work is what the chapters repeat: encoding ``--images`` images of a tutorial dataset into
a fresh store, three per-unit PCAs of that store, and ``--steps`` fine-tuning steps (batch 64)
of the shipped tutorial CLIP's image tower, all on one CPU thread.

Usage:
    python benchmarks/kernel_malloc.py [--images 500] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORK = r"""
import json, resource, sys, tempfile, time
import torch
import residual_core as rc

torch.set_num_threads(1)
images, steps = int(sys.argv[1]), int(sys.argv[2])
loaded = rc.load_model("tutorial")
out = {}

def timed(name, fn):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out[name] = {"wall": time.perf_counter() - t0, "user": r1.ru_utime - r0.ru_utime,
                 "sys": r1.ru_stime - r0.ru_stime, "faults": r1.ru_minflt - r0.ru_minflt}
    return result

with tempfile.TemporaryDirectory() as cache:
    store = timed("encode", lambda: rc.encode_dataset(loaded, "world_noise.shape", "test",
                                                      size=images, cache_dir=cache,
                                                      progress=False))
    timed("pca x3", lambda: [rc.unit_pca(store) for _ in range(3)])
visual = loaded.model.visual.train()
size = visual.image_size[0]
x = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(0))
opt = torch.optim.AdamW(visual.parameters(), 1e-4)

def step():
    opt.zero_grad()
    visual(x).square().mean().backward()
    opt.step()

step()  # warm-up: first-call allocations are not what repeats
timed("fine-tune steps", lambda: [step() for _ in range(steps)])
print(json.dumps(out))
"""


def measure(tunables: str | None, images: int, steps: int) -> dict[str, dict[str, float]]:
    """Run the work in a child process with ``GLIBC_TUNABLES`` set to ``tunables`` (or unset)."""
    from residual_core.runner.build import THREAD_VARIABLES

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({name: "1" for name in THREAD_VARIABLES})  # as the book's one-thread kernels
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-c", WORK, str(images), str(steps)], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    from residual_core.runner.build import KERNEL_MALLOC

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    default = measure(None, args.images, args.steps)
    tuned = measure(KERNEL_MALLOC, args.images, args.steps)
    print(f"GLIBC_TUNABLES={KERNEL_MALLOC}")
    print(f"{'work':<16} {'setting':<8} {'user s':>7} {'sys s':>7} {'faults':>9} {'wall s':>7}")
    for name in default:
        for label, row in (("default", default[name]), ("runner", tuned[name])):
            print(f"{name:<16} {label:<8} {row['user']:7.2f} {row['sys']:7.2f} "
                  f"{row['faults']:9.0f} {row['wall']:7.2f}")
        cpu = (default[name]["user"] + default[name]["sys"]) / (
            tuned[name]["user"] + tuned[name]["sys"])
        print(f"{'':<16} CPU time default / runner: {cpu:.2f}x, system time "
              f"{default[name]['sys']:.2f} s → {tuned[name]['sys']:.2f} s")


if __name__ == "__main__":
    main()
