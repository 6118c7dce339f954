"""Zero-shot prompt-ensemble classifier: unit-norm columns, known predictions, normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from residual_core.analysis.zeroshot import format_table
from residual_core.core.model import LoadedModel
from residual_core.core.zeroshot import (
    CLASS_MEAN,
    build_classifier,
    class_mean_classifier,
    classifier_from_text_features,
    evaluate,
    evaluate_features,
)

CLASSES = ["cat", "dog", "owl"]
TEMPLATES = ["a {}", "a photo of a {}", "{} again"]


class StubModel(nn.Module):
    """encode_text: class word k → 2·e_k plus a template-dependent offset on the last axis."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(tokens), 4)
        out[torch.arange(len(tokens)), tokens[:, 0]] = 2.0
        out[:, 3] = tokens[:, 1].float()
        return out

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def stub_tokenizer(texts: list[str]) -> torch.Tensor:
    rows = []
    for text in texts:
        cls = next(i for i, c in enumerate(CLASSES) if c in text)
        tpl = next(i for i, t in enumerate(TEMPLATES) if t.format(CLASSES[cls]) == text)
        rows.append([cls, tpl])
    return torch.tensor(rows)


@pytest.fixture
def loaded() -> LoadedModel:
    return LoadedModel(StubModel(), lambda x: x, stub_tokenizer, "stub", "stub", None, "stub-0")


def test_columns_are_unit_norm_and_ensembled(loaded):
    clf = build_classifier(loaded, CLASSES, TEMPLATES)
    assert clf.weights.shape == (4, 3)
    torch.testing.assert_close(clf.weights.norm(dim=0), torch.ones(3))
    # Each template embedding (2 e_k + t e_3) is normalised, averaged, normalised.
    t = torch.arange(3.0)
    avg = torch.stack([2 / (4 + t**2).sqrt(), t / (4 + t**2).sqrt()]).mean(1)
    expected = avg / avg.norm()
    torch.testing.assert_close(clf.weights[[0, 3], 0], expected)
    assert clf.scale == pytest.approx(torch.e**2)
    assert clf.classnames == CLASSES and clf.templates == TEMPLATES


def test_known_predictions_and_accuracy(loaded):
    clf = build_classifier(loaded, CLASSES, TEMPLATES)
    images = torch.tensor([[5.0, 0, 0, 0], [0, 0, 1, 0], [0, 3, 0, 0], [0, 0, 0.2, 0]])
    labels = torch.tensor([0, 2, 1, 0])
    res = evaluate(loaded, TensorDataset(images, labels), clf, batch_size=3, progress=False)
    assert res.predictions.tolist() == [0, 2, 1, 2]
    assert res.accuracy == pytest.approx(0.75)
    assert res.chance == pytest.approx(0.5) and res.normalize_features


def test_normalisation_is_explicit():
    text = torch.eye(2)[:, None, :]  # two classes, one template each
    z = torch.tensor([[3.0, 4.0]])
    norm = classifier_from_text_features(text, ["a", "b"], ["{}"], scale=10.0)
    raw = classifier_from_text_features(text, ["a", "b"], ["{}"], scale=10.0,
                                        normalize_features=False)
    torch.testing.assert_close(norm.logits(z), torch.tensor([[6.0, 8.0]]))
    torch.testing.assert_close(raw.logits(z), torch.tensor([[30.0, 40.0]]))


def test_format_table():
    rows = [{"distribution": d, "task": "size", "classes": 3, "accuracy": a, "chance": 0.34,
             "uniform": 1 / 3, "normalized": True} for d, a in [("world", 0.9), ("noise", 0.5)]]
    table = format_table(rows)
    assert "| size | 3 | 0.33 | 0.900 | 0.500 |" in table


def test_class_mean_classifier_separates_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(4, 16, generator=gen)
    labels = torch.arange(4).repeat_interleave(30)
    feats = centres[labels] + torch.randn(120, 16, generator=gen)
    scales = 0.1 + 10 * torch.rand(120, 1, generator=gen)  # norms must not matter
    clf = class_mean_classifier(feats[::2] * scales[::2], labels[::2], 4, list("abcd"))
    assert clf.weights.shape == (16, 4) and clf.templates == [CLASS_MEAN]
    torch.testing.assert_close(clf.weights.norm(dim=0), torch.ones(4))
    res = evaluate_features(feats[1::2], labels[1::2], clf)  # held-out half
    assert res.accuracy == 1.0


def test_class_mean_is_mean_of_normalised_features():
    feats = torch.tensor([[3.0, 0.0], [0.0, 0.5], [2.0, 2.0]])
    clf = class_mean_classifier(feats, torch.tensor([0, 0, 1]), 2)
    col0 = torch.tensor([1.0, 1.0]) / 2**0.5  # mean of e0 and e1, normalised
    torch.testing.assert_close(clf.weights[:, 0], col0)
    torch.testing.assert_close(clf.weights[:, 1], col0)
    assert clf.classnames == ["0", "1"]


def test_class_mean_needs_every_class():
    with pytest.raises(ValueError, match=r"classes \[1\] have no training sample"):
        class_mean_classifier(torch.randn(3, 4), torch.tensor([0, 2, 0]), 3)


def test_text_model_ignores_training_features(loaded):
    clf = build_classifier(loaded, CLASSES, TEMPLATES, train_features=torch.randn(3, 4),
                           train_labels=torch.tensor([0, 1, 2]))
    assert clf.templates == TEMPLATES and loaded.has_text
