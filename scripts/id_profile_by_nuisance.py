"""Depth profile of the heads' intrinsic dimension with groups of the v2 world's nuisance off.

Usage::

    python scripts/id_profile_by_nuisance.py --checkpoint PATH [--n 3000] [--threads 2]

Renders the same scenes of the v2 world (``residual_core.tutorial.world.NUISANCE_WORLD``) five
ways, decomposes them with a tutorial checkpoint in memory and prints, per variant, the
per-layer mean over heads of the TwoNN ID and of the linear ID (PCA-99), as the diagnostic
computes them (``residual_core.runner.diagnose.id_table``):

- ``v2``: the world as the model was trained on it;
- ``no-photometric``: no pixel noise, specks, grating, colour or background jitter, fixed light;
- ``no-pixel-noise``: only the pixel noise off;
- ``no-geometric``: the object exactly on its position's centre, mid-height, unscaled, unrotated;
- ``no-nuisance``: ``WorldConfig.without_nuisance()``.

It asks which nuisance puts a layer's TwoNN ID where it is: a group whose removal lowers one
layer much more than the others is what that layer encodes and the others do not (the
hunchback of C4 needs an inner layer above the first and the last). Evaluation-time only: the
model was trained with every group on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from residual_core.core.decompose import UnitProjector, decompose
from residual_core.core.units import Units
from residual_core.runner import diagnose as D
from residual_core.tutorial import world as W


def variants() -> dict[str, W.WorldConfig]:
    """The v2 world and four versions of it with a group of nuisance switched off."""
    base = W.NUISANCE_WORLD
    return {
        "v2": base,
        "no-photometric": base.replace(noise_std=0.0, specks=0, grating_amplitude=0.0,
                                       color_jitter=0, background_jitter=0.0,
                                       light_range=(1.0, 1.0)),
        "no-pixel-noise": base.replace(noise_std=0.0),
        "no-geometric": base.replace(x_jitter=0.0, scale_jitter=0.0, rotation=0.0,
                                     y_range=(sum(base.y_range) / 2,) * 2),
        "no-nuisance": base.without_nuisance(),
    }


def head_units(loaded, config: W.WorldConfig, n: int, seed: int = 123) -> Units:
    """The heads' outputs on ``n`` scenes of ``config`` (the same scenes for every config)."""
    images = D.images_to_tensor(W.render(W.sample_scenes(n, seed, config), seed + 1))
    projector = UnitProjector.from_model(loaded.model)
    parts = [decompose(loaded.model, images[i:i + 250], projector=projector)
             for i in range(0, n, 250)]
    return Units(torch.cat([p.data for p in parts]), parts[0].labels, parts[0].layout).heads()


def main() -> None:
    """Print the profiles of every variant."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--n", type=int, default=3000, help="images per variant")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded, _ = D.load_checkpoint(args.checkpoint)
    print(f"{args.checkpoint}: per-layer mean over heads, {args.n} images per variant")
    for name, config in variants().items():
        by_layer = D.id_table(head_units(loaded, config, args.n)).groupby("layer")
        print(f"{name:>15}  TwoNN " + " ".join(f"{m:.2f}" for m in by_layer.twonn.mean())
              + "  | PCA-99 " + " ".join(f"{m:.1f}" for m in by_layer.linear_id.mean()),
              flush=True)


if __name__ == "__main__":
    main()
