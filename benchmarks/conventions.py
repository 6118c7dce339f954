"""What each of the book's convention choices changes: the numbers of the README's Conventions.

1. Centring of the final LayerNorm's mean (``shared``, the authors', vs ``per-unit``): the
   per-unit difference on a random ViT-B-16 (LayerNorm and biases perturbed) and on the
   tutorial CLIP, with the moves in linear/TwoNN ID and in the first TextSpan texts.
2. TextSpan's span (``uncentred``, the authors', vs ``centred``): the first pick at which the
   two disagree, for the heads of the random ViT-B-16's last layer (rank 80 < d_out 512) with a
   random dictionary.
3. TwoNN with duplicated rows: a 5-d Gaussian in 20-d (2,000 points) plus 300 duplicated
   rows, with duplicates removed before the neighbour search (this library) and with only the
   ``r1 = 0`` points dropped after it (the earlier behaviour).

Usage:
    python benchmarks/conventions.py [--images 256] [--seed 0]
"""

from __future__ import annotations

import argparse

import open_clip
import torch

from residual_core.analysis.conventions import compare_centerings
from residual_core.core.decompose import decompose
from residual_core.core.dictionary import TextDictionary
from residual_core.core.intrinsic_dim import two_nearest_neighbours, twonn
from residual_core.core.textspan import textspan
from residual_core.core.units import Units
from residual_core.data.dictionaries import load_dictionary
from residual_core.data.registry import load_dataset
from residual_core.data.world import reference_name
from residual_core.models import load_model
from residual_core.tutorial.model import checkpoint_world


def random_vit_b16(seed: int) -> torch.nn.Module:
    """ViT-B-16 with every parameter perturbed (unit LN gains and zero biases would hide bugs)."""
    model = open_clip.create_model("ViT-B-16").eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def centring(images: int, seed: int) -> None:
    """Section 1: the per-unit difference between the two centrings."""
    model = random_vit_b16(seed)
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(seed + 1))
    texts = tuple(f"t{i}" for i in range(1000))
    emb = torch.nn.functional.normalize(
        torch.randn(1000, 512, generator=torch.Generator().manual_seed(seed + 2)), dim=-1)
    random_words = TextDictionary(texts, ((),) * len(texts), emb)
    cmp = compare_centerings(model.visual, x.split(32), random_words, seed=seed)
    print(f"## 1a. Centring, random ViT-B-16, {images} Gaussian images")
    print(cmp.summary().to_string(float_format=lambda v: f"{v:.4f}"))

    loaded = load_model("tutorial")
    words = load_dictionary("tutorial")
    reference = reference_name(checkpoint_world())  # the shipped checkpoint's world
    data = load_dataset(reference, "train", loaded.preprocess, size=2000)
    batches = (b for b, _ in torch.utils.data.DataLoader(data, batch_size=256))
    cmp = compare_centerings(loaded.model, batches, words.embed(loaded), seed=seed)
    print(f"\n## 1b. Centring, tutorial CLIP, 2,000 {reference} train images")
    print(cmp.summary().to_string(float_format=lambda v: f"{v:.4f}"))
    common = cmp.texts.common
    print(f"last layer's heads: first 3 TextSpan texts shared by both centrings: "
          f"{common.tolist()} (of 3 each)")


def span(images: int, seed: int) -> None:
    """Section 2: where the two TextSpan spans first disagree, on real-shaped heads."""
    model = random_vit_b16(seed)
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(seed + 1))
    units = Units.cat([decompose(model.visual, b) for b in x.split(32)])
    last = units.layout.heads(-1)
    heads = units.select(last).data
    m = 2000
    emb = torch.nn.functional.normalize(
        torch.randn(m, 512, generator=torch.Generator().manual_seed(seed + 2)), dim=-1)
    texts = [f"t{i}" for i in range(m)]
    a = textspan(heads, emb, texts, n_iters=10, rank=80, unit_names=last)
    b = textspan(heads, emb, texts, n_iters=10, rank=80, unit_names=last, span="centred")
    first = [next((i for i, (p, q) in enumerate(zip(ea.indices, eb.indices, strict=True))
                   if p != q), 10) for ea, eb in zip(a, b, strict=True)]
    offset = (heads.mean(0).norm(dim=-1) / heads.std(0).norm(dim=-1)).median()
    print(f"\n## 2. TextSpan span, random ViT-B-16 last-layer heads, {images} images, random "
          f"dictionary of {m}, rank 80, 10 picks")
    print(f"median mean offset / spread of a head: {offset:.2f}")
    print(f"first pick where uncentred and centred spans differ (10 = never), per head: {first}")


def duplicates(seed: int) -> None:
    """Section 3: TwoNN on a planted 5-d set with duplicated rows."""
    g = torch.Generator().manual_seed(seed)
    print("\n## 3. TwoNN, 5-d Gaussian in 20-d (2,000 points) + 300 duplicated rows")
    for s in range(3):
        q = torch.linalg.qr(torch.randn(20, 5, generator=g, dtype=torch.float64))[0]
        pts = torch.randn(2000, 5, generator=g, dtype=torch.float64) @ q.T
        dup = torch.cat([pts, pts[:300]])
        r1, r2 = two_nearest_neighbours(dup)
        keep = r1 > 0  # the earlier behaviour: drop r1 = 0 after the search
        mu = (r2[keep] / r1[keep]).sort().values
        n = mu.shape[0]
        f = torch.arange(1, n + 1, dtype=torch.float64) / n
        xs, ys = mu[: int(0.9 * n)].log(), -torch.log1p(-f[: int(0.9 * n)])
        after = float((xs * ys).sum() / (xs * xs).sum())
        print(f"draw {s}: no duplicates {twonn(pts):.2f}; duplicates removed first "
              f"{twonn(dup):.2f}; r1 = 0 dropped after the search {after:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    centring(args.images, args.seed)
    span(args.images, args.seed)
    duplicates(args.seed)


if __name__ == "__main__":
    main()
