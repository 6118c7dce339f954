"""Zero-shot classification with a prompt-ensemble text classifier, for any model.

For each class, every template is filled with the class name and encoded; the text embeddings
are L2-normalised, averaged and L2-normalised again, giving the columns of ``C`` (d_out × K).
Logits are ``scale · normalize(z) @ C``. The paper's reported runs used the unnormalised
``z @ C`` (the authors' released code normalises); :class:`ZeroShotClassifier` records which
one it applies in ``normalize_features``, and every result carries it.

Encoders without a text tower (ViT-L, DINOv2-L) get the class-mean classifier instead, as in
the paper: column k is the L2-normalised mean of the L2-normalised train-split image embeddings
of class k (:func:`class_mean_classifier`); :func:`build_classifier` picks it when the model has
no text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from residual_core.core.checks import check_finite
from residual_core.core.errors import InputError
from residual_core.core.model import LoadedModel, NoTextTowerError

__all__ = [
    "ZeroShotClassifier",
    "ZeroShotResult",
    "CLASS_MEAN",
    "build_classifier",
    "class_mean_classifier",
    "classifier_from_text_features",
    "encode_images",
    "evaluate",
    "evaluate_features",
]


CLASS_MEAN = "<class mean of train images>"
"""The ``templates`` entry of a class-mean classifier (no prompts were used)."""


class ZeroShotClassifier(nn.Module):
    """A frozen linear classifier on image embeddings, built from text prompts (or class means).

    ``logits = scale · normalize(z) @ C``; ``C`` is a buffer, never trained, so the same object
    is the zero-shot model and the frozen head every ResiDual variant is trained through.

    Args:
        weights: Unit-norm class columns ``C``.
        classnames: Class names, aligned with the columns (default ``'0'``, ``'1'``, ...).
        templates: The prompt templates that were averaged (``[CLASS_MEAN]`` for a class-mean
            classifier).
        scale: Multiplies the logits (the model's ``logit_scale.exp()``; argmax does not care).
        normalize_features: Whether image embeddings are L2-normalised before ``@ C`` (the
            paper's reported runs did not; the authors' released code does).
    """

    weights: Float[Tensor, "d_out k"]

    def __init__(
        self,
        weights: Float[Tensor, "d_out k"],
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = (),
        scale: float = 100.0,
        normalize_features: bool = True,
    ):
        super().__init__()
        if weights.ndim != 2:
            raise InputError(f"classifier weights must be (d_out, k), got shape "
                             f"{tuple(weights.shape)}")
        check_finite(weights, "the classifier's weights")
        self.register_buffer("weights", weights.detach().float().clone())
        k = weights.shape[1]
        self.classnames = [str(c) for c in range(k)] if classnames is None else list(classnames)
        if len(self.classnames) != k:
            raise ValueError(f"{len(self.classnames)} class names for {k} columns")
        self.templates = list(templates)
        self.scale = float(scale)
        self.normalize_features = bool(normalize_features)

    def forward(self, features: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch k"]:
        """``scale · (normalize(z) @ C)`` (or ``scale · (z @ C)`` without normalisation).

        Raises:
            InputError: For features of another width than the classifier's ``d_out``.
        """
        self.check_width(features.shape[-1], "image embeddings")
        z = features.to(self.weights)
        if self.normalize_features:
            z = F.normalize(z, dim=-1)
        return self.scale * (z @ self.weights)

    @property
    def d_out(self) -> int:
        """Width of the embeddings the classifier reads."""
        return self.weights.shape[0]

    def check_width(self, width: int, what: str) -> None:
        """Refuse ``what`` of ``width`` features unless it is the classifier's ``d_out``.

        Raises:
            InputError: Naming both widths (a classifier of another model, most likely).
        """
        if width != self.d_out:
            raise InputError(f"{what} are {width} wide but the classifier reads {self.d_out}-wide "
                             "embeddings: build the classifier with the model the embeddings "
                             "come from")

    def logits(self, features: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch k"]:
        """Same as calling the classifier."""
        return self(features)

    def predict(self, features: Float[Tensor, "batch d_out"]) -> Int[Tensor, " batch"]:
        """Predicted class indices."""
        return self(features).argmax(-1)

    def extra_repr(self) -> str:
        """Classes, templates and settings, for ``repr``."""
        return (f"{len(self.classnames)} classes, {len(self.templates)} templates, "
                f"scale={self.scale:g}, normalize_features={self.normalize_features}")


@dataclass
class ZeroShotResult:
    """Accuracy of one classifier on one dataset.

    Attributes:
        accuracy: Fraction of correct predictions.
        predictions: Predicted class per sample.
        labels: True class per sample.
        chance: Accuracy of always predicting the most frequent true class.
        normalize_features: Whether image embeddings were L2-normalised.
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
    return ZeroShotClassifier(columns.T.contiguous(), classnames, templates, scale,
                              normalize_features)


def class_mean_classifier(
    features: Float[Tensor, "n d_out"],
    labels: Int[Tensor, " n"],
    n_classes: int,
    classnames: Sequence[str] | None = None,
    *,
    scale: float = 100.0,
    normalize_features: bool = True,
) -> ZeroShotClassifier:
    """The classifier of an encoder without a text tower: normalised class means.

    Column k is the L2-normalised mean of the L2-normalised image embeddings of class k.

    Args:
        features: Image embeddings of the train split (unnormalised is fine).
        labels: Their classes, in ``[0, n_classes)``.
        n_classes: Number of classes (columns).
        classnames: Names of the classes (default ``'0'``, ``'1'``, ...).
        scale: Logit scale.
        normalize_features: Whether image embeddings are L2-normalised before ``@ C``.

    Returns:
        The classifier, on the features' device; ``templates`` is ``[CLASS_MEAN]``.

    Raises:
        ValueError: If a class has no sample, labels are out of range, or sizes disagree.
    """
    labels = torch.as_tensor(labels, device=features.device).long()
    if labels.shape != features.shape[:1]:
        raise ValueError(f"{len(features)} features but labels of shape {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {empty[:10]} have no training sample; a class mean needs one")
    z = F.normalize(features.float(), dim=-1)
    sums = torch.zeros(n_classes, z.shape[1], device=z.device).index_add_(0, labels, z)
    columns = F.normalize(sums / counts[:, None], dim=-1)
    return ZeroShotClassifier(columns.T.contiguous(), classnames, [CLASS_MEAN], scale,
                              normalize_features)


@torch.no_grad()
def build_classifier(
    loaded: LoadedModel,
    classnames: Sequence[str] | Any,
    templates: Sequence[str] | None = None,
    *,
    normalize_features: bool = True,
    scale: float | None = None,
    batch_size: int = 256,
    train_features: Float[Tensor, "n d_out"] | None = None,
    train_labels: Int[Tensor, " n"] | None = None,
) -> ZeroShotClassifier:
    """Encode every (template, class) prompt and build the prompt-ensemble classifier.

    For a model without a text tower (``loaded.has_text`` false) the class-mean classifier of
    ``train_features`` is built instead (:func:`class_mean_classifier`); models with text
    ignore the training features.

    Args:
        loaded: The model (its tokenizer and ``encode_text`` are used).
        classnames: One name per class, or a dataset carrying ``classnames`` and ``templates``
            (a :class:`~residual_core.data.base.ClassificationDataset`).
        templates: Templates with one ``{}`` for the class name (``str.format``); not with a
            dataset.
        normalize_features: Record that image embeddings get L2-normalised (default, as in
            the authors' current code) or not (as in the paper's runs).
        scale: Logit scale; default the model's ``logit_scale.exp()`` (100 if it has none).
        batch_size: Prompts encoded per forward pass.
        train_features: Train-split image embeddings (needed without a text tower).
        train_labels: Their classes.

    Returns:
        The classifier, on the model's device.

    Raises:
        NoTextTowerError: For a model without a text tower when no training features are given.
    """
    if templates is None:
        if not hasattr(classnames, "templates"):
            raise ValueError("pass the templates, or a dataset carrying classnames and templates")
        classnames, templates = classnames.classnames, classnames.templates
    if not loaded.has_text:
        if train_features is None or train_labels is None:
            raise NoTextTowerError(
                f"{loaded.name!r} has no text tower, so its zero-shot classifier is the class "
                "mean of train-split image embeddings: pass train_features= (encode_image of "
                "the train split) and train_labels="
            )
        clf = class_mean_classifier(train_features, train_labels, len(classnames), classnames,
                                    scale=100.0 if scale is None else scale,
                                    normalize_features=normalize_features)
        return clf.to(loaded.device)
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
    def collate(batch: list[tuple[Any, Any]]) -> tuple[Tensor, Tensor]:
        images = [img if isinstance(img, Tensor) else preprocess(img) for img, _ in batch]
        return torch.stack(images), torch.tensor([label for _, label in batch])

    return collate


@torch.no_grad()
def encode_images(
    loaded: LoadedModel,
    dataset: Dataset | Sequence[tuple[Any, int]],
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
