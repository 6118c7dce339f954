"""Zero-shot accuracy of every tutorial-world task on each distribution: the model card's table.

Run ``python -m residual_core.analysis.zeroshot --model tutorial`` for the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from residual_core.core.errors import cli_main
from residual_core.core.model import LoadedModel
from residual_core.core.zeroshot import build_classifier, encode_images, evaluate_features

__all__ = ["format_table", "main", "tutorial_table"]


def tutorial_table(
    loaded: LoadedModel,
    distributions: Sequence[str] | None = None,
    split: str = "test",
    *,
    batch_size: int = 256,
    normalize_features: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Zero-shot accuracy of every tutorial-world task on each distribution.

    Images of one distribution are shared by all its tasks, so each is encoded once.
    ``distributions`` defaults to every distribution of the shipped checkpoint's world.

    Returns:
        One row per (distribution, task): ``distribution``, ``task``, ``classes``,
        ``accuracy``, ``chance`` (majority class), ``uniform`` (1/K), ``normalized``.
    """
    from residual_core.data import world as DW
    from residual_core.data.registry import load_dataset
    from residual_core.tutorial.model import checkpoint_world
    from residual_core.tutorial.world import ATTRIBUTES

    distributions = list(distributions or DW.distributions(checkpoint_world()))
    rows = []
    classifiers = {}
    for dist in distributions:
        first = load_dataset(f"{dist}.{next(iter(ATTRIBUTES))}", split)
        features, _ = encode_images(loaded, first, batch_size=batch_size, progress=progress)
        for task in ATTRIBUTES:
            ds = load_dataset(f"{dist}.{task}", split)
            if task not in classifiers:
                classifiers[task] = build_classifier(
                    loaded, ds.classnames, ds.templates, normalize_features=normalize_features
                )
            res = evaluate_features(features, torch.as_tensor(ds.labels), classifiers[task])
            rows.append({"distribution": dist, "task": task, "classes": len(ds.classnames),
                         "accuracy": res.accuracy, "chance": res.chance,
                         "uniform": 1.0 / len(ds.classnames), "normalized": normalize_features})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per task, one accuracy column per distribution (+ chance)."""
    dists = list(dict.fromkeys(r["distribution"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    acc = {(r["distribution"], r["task"]): r["accuracy"] for r in rows}
    info = {r["task"]: r for r in rows}
    head = ["task", "K", "chance (1/K)", *dists]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        cells = [task, str(info[task]["classes"]), f"{info[task]['uniform']:.2f}"]
        cells += [f"{acc[(d, task)]:.3f}" if (d, task) in acc else "" for d in dists]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m residual_core.analysis.zeroshot``; returns the exit status.

    An unknown model, distribution or device is refused up front with its message and exit
    status 2 (no traceback).
    """
    from residual_core.data.world import DISTRIBUTIONS, NUISANCE_DISTRIBUTIONS

    p = argparse.ArgumentParser(description="Zero-shot accuracy of every tutorial-world task.")
    p.add_argument("--model", default="tutorial",
                   help="registry key (see residual_core.models.list_models)")
    p.add_argument("--pretrained", default=None, help="pretrained tag for an open_clip name")
    names = [*DISTRIBUTIONS, *NUISANCE_DISTRIBUTIONS]
    p.add_argument("--distributions", nargs="*", default=None, choices=names,
                   metavar="DIST", help="tutorial distributions (default: every distribution of "
                   f"the shipped checkpoint's world; choose from {', '.join(names)})")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--unnormalized", action="store_true",
                   help="use z @ C (the paper's runs) instead of normalize(z) @ C")
    args = p.parse_args(argv)
    for flag in ("batch_size", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return cli_main(lambda: _print_table(args), "residual_core.analysis.zeroshot: error:")


def _print_table(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from residual_core.models.loading import load_model

    kwargs = {} if args.pretrained is None else {"pretrained": args.pretrained}
    loaded = load_model(args.model, device=args.device, **kwargs)
    rows = tutorial_table(loaded, args.distributions, args.split, batch_size=args.batch_size,
                          normalize_features=not args.unnormalized)
    norm = "z @ C (unnormalised)" if args.unnormalized else "normalize(z) @ C"
    print(f"zero-shot accuracy, model {loaded.name} ({loaded.fingerprint}), split {args.split}, "
          f"logits {norm}")
    print(format_table(rows))


if __name__ == "__main__":
    raise SystemExit(main())
