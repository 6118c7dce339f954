"""Coarse selection's incremental prefix sums against re-ablating every unit for each k.

Times ``core.ablation.coarse_selection`` and a reference that builds every row the way it was
built before (``ablate`` of the dropped heads, summing every unit again for each ranking, seed
and k) on planted units of the given shape, checks that both give the same table, and prints
the ratio of their times measured in this run.

Usage:
    python benchmarks/coarse_selection.py [--heads 48] [--n 2000] [--d 192] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from residual_core.core.ablation import (
    RANKINGS,
    ablate,
    accuracy,
    coarse_selection,
    k_values,
    rank_heads,
)
from residual_core.core.units import UnitLayout, Units, is_head


def reference(val, val_t, test, test_t, means, classifier, random_seeds) -> pd.DataFrame:
    """Every row from scratch: ``ablate`` the heads a ranking drops, for each k."""
    heads = [u for u in val.labels if is_head(u)]
    ks, rows = k_values(len(heads)), []
    for ranking in RANKINGS:
        for seed in range(random_seeds) if ranking == "R" else [0]:
            order = rank_heads(ranking, val, means, classifier, val_t, k_max=max(ks), seed=seed)
            for k in ks:
                dropped = [h for h in heads if h not in order[:k]]
                rows.append({"ranking": ranking, "seed": seed, "k": k,
                             "val_acc": accuracy(ablate(val, dropped, "mean", means),
                                                 classifier, val_t),
                             "test_acc": accuracy(ablate(test, dropped, "mean", means),
                                                  classifier, test_t)})
    return pd.DataFrame(rows)


def planted(layout: UnitLayout, n: int, seed: int, classifier: torch.Tensor):
    """Units whose every head carries a little of the class direction, plus noise."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classifier.shape[1], (n,), generator=g)
    data = torch.randn(n, len(layout.labels), layout.d_out, generator=g)
    data += 0.3 * classifier.T[targets][:, None]
    return Units.full(data, layout), targets


def main() -> None:
    """Time both paths on the same planted units and print their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=int, default=6, help="heads per layer")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--n", type=int, default=2000, help="images per split")
    p.add_argument("--d", type=int, default=192, help="output width")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--random-seeds", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layout = UnitLayout(n_layers=args.layers, n_heads=args.heads, d_model=args.d,
                        d_head=args.d // args.heads, d_out=args.d)
    g = torch.Generator().manual_seed(0)
    classifier = torch.nn.functional.normalize(torch.randn(args.d, 5, generator=g), dim=0)
    (val, val_t), (test, test_t) = (planted(layout, args.n, s, classifier) for s in (1, 2))
    means = val.mean()
    started = time.perf_counter()
    fast = coarse_selection(val, val_t, test, test_t, means, classifier,
                            random_seeds=args.random_seeds)
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    slow = reference(val, val_t, test, test_t, means, classifier, args.random_seeds)
    slow_s = time.perf_counter() - started
    rows = fast[fast.ranking != "full"].reset_index(drop=True)
    same = rows[["val_acc", "test_acc"]].equals(slow[["val_acc", "test_acc"]])
    print(f"{args.layers}×{args.heads} heads, {args.n} images per split, width {args.d}, "
          f"{len(rows)} rows: coarse_selection {fast_s:.2f} s, re-ablating each row "
          f"{slow_s:.2f} s (both rank heads the same way): {slow_s / fast_s:.1f}× faster; "
          f"tables {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
