"""Zero-shot classification with a prompt-ensemble text classifier (SPEC §2), for any model.

For each class, every template is filled with the class name and encoded; the text embeddings
are L2-normalised, averaged and L2-normalised again, giving the columns of ``C`` (d_out × K).
Logits are ``scale · normalize(z) @ C``. The paper's runs used the unnormalised ``z @ C``
(SPEC §2 note); :class:`ZeroShotClassifier` records which one it applies in
``normalize_features``, and every result carries it.

Run ``python -m residual_core.zeroshot --model tutorial`` for the tutorial world's table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from residual_core.models import LoadedModel

__all__ = [
    "ZeroShotClassifier",
    "ZeroShotResult",
    "build_classifier",
    "classifier_from_text_features",
    "encode_images",
    "evaluate",
    "evaluate_features",
    "main",
]


@dataclass
class ZeroShotClassifier:
    """A frozen linear classifier on image embeddings, built from text prompts.

    Attributes:
        weights: Unit-norm class columns ``C``.
        classnames: Class names, aligned with the columns.
        templates: The prompt templates that were averaged.
        scale: Multiplies the logits (the model's ``logit_scale.exp()``; argmax does not care).
        normalize_features: Whether image embeddings are L2-normalised before ``@ C``.
    """

    weights: Float[Tensor, "d_out k"]
    classnames: list[str]
    templates: list[str]
    scale: float = 100.0
    normalize_features: bool = True

    def logits(self, features: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch k"]:
        """``scale · normalize(z) @ C`` (or ``scale · z @ C`` without normalisation)."""
        z = features.to(self.weights)
        if self.normalize_features:
            z = F.normalize(z, dim=-1)
        return self.scale * z @ self.weights

    def predict(self, features: Float[Tensor, "batch d_out"]) -> Int[Tensor, " batch"]:
        """Predicted class indices."""
        return self.logits(features).argmax(-1)

    def to(self, device: str | torch.device) -> ZeroShotClassifier:
        """A copy with the weights on ``device``."""
        return ZeroShotClassifier(self.weights.to(device), self.classnames, self.templates,
                                  self.scale, self.normalize_features)


@dataclass
class ZeroShotResult:
    """Accuracy of one classifier on one dataset.

    Attributes:
        accuracy: Fraction of correct predictions.
        predictions: Predicted class per sample.
        labels: True class per sample.
        chance: Accuracy of always predicting the most frequent true class.
        normalize_features: Whether image embeddings were L2-normalised (SPEC §2 note).
    """

    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray
    chance: float
    normalize_features: bool


def classifier_from_text_features(
    text_features: Float[Tensor, "k template d_out"],
    classnames: Sequence[str],
    templates: Sequence[str],
    scale: float = 100.0,
    normalize_features: bool = True,
) -> ZeroShotClassifier:
    """Prompt ensemble: normalise each template's embedding, average, normalise again."""
    columns = F.normalize(F.normalize(text_features.float(), dim=-1).mean(1), dim=-1)
    return ZeroShotClassifier(columns.T.contiguous(), list(classnames), list(templates),
                              float(scale), normalize_features)


@torch.no_grad()
def build_classifier(
    loaded: LoadedModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    normalize_features: bool = True,
    scale: float | None = None,
    batch_size: int = 256,
) -> ZeroShotClassifier:
    """Encode every (template, class) prompt and build the prompt-ensemble classifier.

    Args:
        loaded: The model (its tokenizer and ``encode_text`` are used).
        classnames: One name per class.
        templates: Templates with one ``{}`` for the class name (``str.format``).
        normalize_features: Record that image embeddings get L2-normalised (default, as in
            the authors' current code) or not (as in the paper's runs).
        scale: Logit scale; default the model's ``logit_scale.exp()`` (100 if it has none).
        batch_size: Prompts encoded per forward pass.

    Returns:
        The classifier, on the model's device.
    """
    prompts = [t.format(c) for c in classnames for t in templates]
    model, device = loaded.model, loaded.device
    feats = []
    for start in range(0, len(prompts), batch_size):
        tokens = loaded.tokenizer(prompts[start:start + batch_size]).to(device)
        feats.append(model.encode_text(tokens).float())
    text = torch.cat(feats).view(len(classnames), len(templates), -1)
    if scale is None:
        logit_scale = getattr(model, "logit_scale", None)
        scale = float(logit_scale.exp()) if logit_scale is not None else 100.0
    return classifier_from_text_features(text, classnames, templates, scale, normalize_features)


def _collate_with(preprocess: Callable[[Any], Tensor]):
    def collate(batch: list[tuple[Any, int]]) -> tuple[Tensor, Tensor]:
        images = [img if isinstance(img, Tensor) else preprocess(img) for img, _ in batch]
        return torch.stack(images), torch.tensor([label for _, label in batch])

    return collate


@torch.no_grad()
def encode_images(
    loaded: LoadedModel,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Float[Tensor, "n d_out"], Int[Tensor, " n"]]:
    """Unnormalised image embeddings and labels of a dataset of ``(image, label)`` pairs.

    PIL images are preprocessed with ``loaded.preprocess``; tensors are used as they are.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_with(loaded.preprocess))
    feats, labels = [], []
    name = getattr(dataset, "name", type(dataset).__name__)
    for images, y in tqdm(loader, desc=f"encode {name}", disable=not progress, leave=False):
        feats.append(loaded.model.encode_image(images.to(loaded.device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def evaluate_features(
    features: Float[Tensor, "n d_out"], labels: Int[Tensor, " n"], classifier: ZeroShotClassifier
) -> ZeroShotResult:
    """Accuracy of a classifier on precomputed image embeddings."""
    predictions = classifier.to(features.device).predict(features).cpu().numpy()
    y = np.asarray(labels.cpu())
    chance = float(np.bincount(y).max() / len(y)) if len(y) else float("nan")
    return ZeroShotResult(float((predictions == y).mean()), predictions, y, chance,
                          classifier.normalize_features)


def evaluate(
    loaded: LoadedModel,
    dataset: Dataset,
    classifier: ZeroShotClassifier,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> ZeroShotResult:
    """Zero-shot accuracy and predictions of ``classifier`` on ``dataset``.

    Args:
        loaded: The model; moved to ``device`` if one is given.
        dataset: Yields ``(PIL image or preprocessed tensor, label)``.
        classifier: From :func:`build_classifier`.
        batch_size: Images per forward pass.
        device: Where to run (default: where the model is).
        num_workers: DataLoader workers.
        progress: Show a tqdm progress bar.

    Returns:
        Accuracy, predictions, labels and the majority-class chance level.
    """
    if device is not None:
        loaded.model.to(device)
    features, labels = encode_images(loaded, dataset, batch_size=batch_size,
                                     num_workers=num_workers, progress=progress)
    return evaluate_features(features, labels, classifier)


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

    Returns:
        One row per (distribution, task): ``distribution``, ``task``, ``classes``,
        ``accuracy``, ``chance`` (majority class), ``uniform`` (1/K), ``normalized``.
    """
    from residual_core import datasets
    from residual_core.tutorial.world import ATTRIBUTES

    distributions = list(distributions or datasets.DISTRIBUTIONS)
    rows = []
    classifiers = {}
    for dist in distributions:
        first = datasets.load_dataset(f"{dist}.{next(iter(ATTRIBUTES))}", split)
        features, _ = encode_images(loaded, first, batch_size=batch_size, progress=progress)
        for task in ATTRIBUTES:
            ds = datasets.load_dataset(f"{dist}.{task}", split)
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m residual_core.zeroshot``."""
    p = argparse.ArgumentParser(description="Zero-shot accuracy of every tutorial-world task.")
    p.add_argument("--model", default="tutorial", help="registry key (see models.list_models)")
    p.add_argument("--pretrained", default=None, help="pretrained tag for an open_clip name")
    p.add_argument("--distributions", nargs="*", default=None,
                   help="tutorial distributions (default: world and every shifted variant)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--unnormalized", action="store_true",
                   help="use z @ C (the paper's runs) instead of normalize(z) @ C")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from residual_core.models import load_model

    kwargs = {} if args.pretrained is None else {"pretrained": args.pretrained}
    loaded = load_model(args.model, device=args.device, **kwargs)
    rows = tutorial_table(loaded, args.distributions, args.split, batch_size=args.batch_size,
                          normalize_features=not args.unnormalized)
    norm = "z @ C (unnormalised)" if args.unnormalized else "normalize(z) @ C"
    print(f"zero-shot accuracy, model {loaded.name} ({loaded.fingerprint}), split {args.split}, "
          f"logits {norm}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
