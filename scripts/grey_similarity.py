"""Is C6 lost because the tutorial model's heads read colour? Greyscale copies vs random images.

Usage::

    python scripts/grey_similarity.py [--checkpoint PATH] [--size 1000] [--threads 2]

C6 asks random images to have the lowest median head similarity to the reference subspaces of
all datasets (chapter 02). On the tutorial model the outline sketches are lower still. This
script measures, with chapter 02's similarity (each head's principal basis at 90% explained
variance, weighted by the squared singular values), the median head similarity to the reference
(``reference-size`` training images) of ``size`` images of the world's training distribution,
of the *same* images turned to greyscale (ITU-R 601 luma in all three channels) and inverted
greyscale, of the sketch shift and of random images. If greyscale copies of the training images
are about as far from the reference as uniform noise, the heads' principal directions are mostly
colour directions: any image without the world's colours moves them, however natural it is.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from residual_core.analysis.geometry import subspace_similarity
from residual_core.core.spectral import unit_pca
from residual_core.data import world as WD
from residual_core.data.registry import load_dataset
from residual_core.models.loading import load_tutorial_checkpoint
from residual_core.runner.diagnose import encode, encode_images
from residual_core.tutorial.model import CHECKPOINT_PATH, record_world
from residual_core.tutorial.world import ATTRIBUTES

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R 601 luma weights (R, G, B)."""


def grey(images: np.ndarray) -> np.ndarray:
    """Greyscale copies: the luma of every pixel in all three channels."""
    luma = np.rint(images.astype(np.float32) @ LUMA).clip(0, 255).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def main(argv: list[str] | None = None) -> None:
    """Print the median head similarity of each image set to the reference subspaces."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(CHECKPOINT_PATH))
    p.add_argument("--size", type=int, default=1000, help="images per compared set")
    p.add_argument("--reference-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded, record = load_tutorial_checkpoint(args.checkpoint)
    world = record_world(record)
    dists = WD.distributions(world)
    base = next(d for d, s in dists.items() if s is None)

    def images(dist: str) -> np.ndarray:
        task = f"{dist}.{next(iter(ATTRIBUTES))}"  # any task of a distribution: same images
        return np.asarray(load_dataset(task, "train", size=args.size).images[:args.size])

    ref = encode(loaded, WD.reference_name(world), "train", args.reference_size).units
    ref_pca = unit_pca(ref)
    heads = ref.layout.heads()
    plain = images(base)
    sets = {"training distribution": plain, "greyscale copies": grey(plain),
            "inverted greyscale copies": 255 - grey(plain)}
    for dist, shift in dists.items():
        if shift in ("sketch", "random"):
            sets[f"{shift} shift"] = images(dist)
    rows = []
    for name, imgs in sets.items():
        sim = pd.Series(subspace_similarity(ref_pca, unit_pca(encode_images(loaded, imgs))).numpy(),
                        index=list(ref_pca.labels))
        rows.append({"images": name,
                     "median_head_similarity": round(float(sim[heads].median()), 3)})
    print(f"{args.checkpoint} (world {world}); reference: {args.reference_size} training images")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
