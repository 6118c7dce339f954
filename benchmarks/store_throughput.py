"""Encoding-store throughput vs the plain forward, and peak host memory vs dataset size.

Three measurements, each in one run:

1. images/s of ``build_store`` (decompose + float16 writes, each file's CRC-32 taken on its way
   to disk) ÷ images/s of plain ``encode_image`` on the same model, batch and synthetic images
   (target ≥ 0.8 on a GPU);
2. images/s of reading the finished store back (every unit, projected): first as a new process
   would (every file checked against its CRC-32 once), then again (checked files are not read
   twice), and of reusing it (``build_store`` on the finished store, what ``encode_dataset``
   does on every call: every file checked);
3. peak resident memory (RSS) of a fresh process that encodes N, 4N and 16N samples: it must
   not grow with the dataset size, since chunks go to disk as they are filled and nothing
   holds the whole dataset. The largest run's encodings are then far larger than what the
   process ever holds; by the same token a dataset 4× larger than RAM encodes in that memory.

Usage:
    python benchmarks/store_throughput.py                          # GPU: ViT-B-16, batch 256
    python benchmarks/store_throughput.py --device cpu --model tiny --batch-size 64 --n 2048
    python benchmarks/store_throughput.py ... --no-rss          # measurements 1 and 2 only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from torch.utils.data import Dataset

from residual_core.core import store as store_module
from residual_core.core.io import crc32_file
from residual_core.core.store import EncodingStore, build_store


class NoiseImages(Dataset):
    """Deterministic uniform-noise images in [-1, 1], generated on the fly (no RAM held)."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, self.size, self.size, generator=g) * 2 - 1, 0


def make_model(name: str, device: str) -> torch.nn.Module:
    """An open_clip architecture with random weights, or ``tiny`` (a 4-layer 64-px ViT)."""
    torch.manual_seed(0)
    if name == "tiny":
        from open_clip.transformer import VisionTransformer

        model = VisionTransformer(image_size=64, patch_size=8, width=192, layers=4, heads=6,
                                  mlp_ratio=4.0, output_dim=128)
    else:
        model = open_clip.create_model(name)
    return model.eval().to(device)


def throughput(args) -> dict:
    """Plain forward vs store building, same model, batch and data."""
    model = make_model(args.model, args.device)
    visual = getattr(model, "visual", model)
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    data = NoiseImages(args.n, size)
    amp_dtype = torch.float16 if args.device.startswith("cuda") else None
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size,
                                         num_workers=args.workers)
    # Plain forward over the same loader (data loading included in both).
    for images, _ in loader:  # warm-up pass
        with torch.inference_mode(), torch.autocast(args.device.split(":")[0], amp_dtype,
                                                    enabled=amp_dtype is not None):
            visual(images.to(args.device))
        break
    sync()
    start = time.perf_counter()
    for images, _ in loader:
        with torch.inference_mode(), torch.autocast(args.device.split(":")[0], amp_dtype,
                                                    enabled=amp_dtype is not None):
            visual(images.to(args.device))
    sync()
    plain = args.n / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        root, fingerprint = Path(tmp) / "s", {"bench": True}
        kw = {"batch_size": args.batch_size, "chunk_size": args.batch_size * 16,
              "device": args.device, "autocast_dtype": amp_dtype, "num_workers": args.workers,
              "progress": False}
        start = time.perf_counter()
        build_store(root, model, data, fingerprint, **kw)
        sync()
        build_s = time.perf_counter() - start
        store = args.n / build_s
        # The checksums' share of building: CRC-32 of every byte the store wrote, timed alone
        # (from the page cache, as the writer takes it from memory on the way to disk).
        files = [f for f in root.rglob("*") if f.is_file()]
        start = time.perf_counter()
        for f in files:
            crc32_file(f)
        crc_s = time.perf_counter() - start
        written = sum(f.stat().st_size for f in files)
        reads = []
        for fresh in (True, False):
            if fresh:  # as a new process: nothing checked yet (older code has no such memo)
                getattr(store_module, "_VERIFIED", {}).clear()
            start = time.perf_counter()
            for _ in EncodingStore.open(root).iter_units(device=args.device):
                pass
            sync()
            reads.append(args.n / (time.perf_counter() - start))
        getattr(store_module, "_VERIFIED", {}).clear()
        start = time.perf_counter()
        build_store(root, model, data, fingerprint, **kw)
        reuse = args.n / (time.perf_counter() - start)
    return {"plain_img_s": plain, "store_img_s": store, "ratio": store / plain,
            "read_first_img_s": reads[0], "read_again_img_s": reads[1], "reuse_img_s": reuse,
            "written_mib": written / 2**20, "crc_share": crc_s / build_s}


def peak_rss_child(n: int, args) -> dict:
    """Encode ``n`` samples in a fresh process and report its peak RSS."""
    code = (
        "import sys, json, resource, tempfile, pathlib;"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r});"
        "from store_throughput import NoiseImages, make_model;"
        "from residual_core.core.store import build_store;"
        f"m = make_model({args.model!r}, {args.device!r});"
        "v = getattr(m, 'visual', m);"
        "s = v.image_size[0] if isinstance(v.image_size, tuple) else v.image_size;"
        "d = tempfile.mkdtemp();"
        f"st = build_store(pathlib.Path(d) / 's', m, NoiseImages({n}, s), {{}}, "
        f"batch_size={args.batch_size}, chunk_size={args.batch_size * 8}, device={args.device!r},"
        " progress=False);"
        "size = sum(p.stat().st_size for p in (pathlib.Path(d) / 's').iterdir());"
        "print(json.dumps({'n': st.n_samples, 'store_mib': size / 2**20,"
        " 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run both measurements and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip name, or 'tiny'")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n", type=int, default=8192, help="samples for the throughput run")
    parser.add_argument("--rss-n", type=int, default=None,
                        help="smallest size of the memory runs (default: --n / 4)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-rss", action="store_true", help="skip the memory runs")
    args = parser.parse_args()
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {dev}, model {args.model} (random weights), torch {torch.__version__}")
    t = throughput(args)
    print("\n| plain img/s | store img/s (decompose + fp16 writes) | ratio |\n|---|---|---|")
    print(f"| {t['plain_img_s']:,.0f} | {t['store_img_s']:,.0f} | {t['ratio']:.2f} |")
    print("\n| read img/s, first (files checked) | read img/s, again | reuse img/s (build_store "
          "on the finished store) |\n|---|---|---|")
    print(f"| {t['read_first_img_s']:,.0f} | {t['read_again_img_s']:,.0f} | "
          f"{t['reuse_img_s']:,.0f} |")
    print(f"\nchecksums' share of building: {t['crc_share']:.2%} (CRC-32 of the "
          f"{t['written_mib']:,.1f} MiB written, timed alone, ÷ the build's time)")
    if args.no_rss:
        return
    base = args.rss_n or max(args.batch_size, args.n // 4)
    rows = [peak_rss_child(base * m, args) for m in (1, 4, 16)]
    print("\n| samples | store on disk MiB | peak RSS MiB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['store_mib']:,.1f} | {r['peak_rss_mib']:,.0f} |")
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"\npeak RSS at 16x the samples / at 1x: {growth:.2f} "
          f"(store grew {rows[-1]['store_mib'] / rows[0]['store_mib']:.1f}x)")


if __name__ == "__main__":
    main()
