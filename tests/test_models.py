"""Model registry: one LoadedModel for every source, clear errors listing valid names."""

from __future__ import annotations

import open_clip
import pytest
import torch

from residual_core.core.model import LoadedModel, weights_fingerprint
from residual_core.models import MODELS, ModelLoadError, list_models, load_model
from residual_core.tutorial.model import CHECKPOINT_PATH


def test_list_models_has_tutorial_and_paper_keys():
    assert list_models() == ["tutorial", "openclip_b", "openclip_l", "clip_b", "clip_l",
                             "vit_l", "dinov2_l", "blip_l_flickr"]
    assert (MODELS["clip_l"].arch, MODELS["clip_l"].pretrained) == ("ViT-L-14", "openai")


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet-9000")
    msg = str(info.value)
    assert "resnet-9000" in msg
    assert all(key in msg for key in list_models())


def test_open_clip_name_needs_explicit_pretrained():
    with pytest.raises(ModelLoadError, match="laion2b_s34b_b88k"):
        load_model("ViT-B-16")


def test_paper_key_rejects_other_tag():
    with pytest.raises(ModelLoadError, match="openai"):
        load_model("clip_b", pretrained="laion2b_s34b_b88k")


def test_paper_key_with_none_builds_random_weights(monkeypatch):
    seen = {}

    def record(arch, pretrained, device):
        seen.update(arch=arch, pretrained=pretrained)
        raise RuntimeError("stop here")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", record)
    with pytest.raises(RuntimeError, match="stop here"):
        load_model("openclip_l", pretrained=None)
    assert seen == {"arch": "ViT-L-14", "pretrained": None}


def test_offline_pretrained_gives_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(ModelLoadError) as info:
        load_model("clip_b")
    msg = str(info.value)
    assert "internet" in msg and "ViT-B-16" in msg and "openai" in msg and "OSError" in msg


def test_random_open_clip_model_loads_like_the_others():
    loaded = load_model("ViT-B-32", pretrained=None)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training and loaded.pretrained is None
    assert loaded.fingerprint.startswith("ViT-B-32-random-")
    assert loaded.fingerprint.endswith(weights_fingerprint(loaded.model))
    tokens = loaded.tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 77)


def test_weights_fingerprint_tracks_weights():
    a = torch.nn.Linear(3, 2)
    before = weights_fingerprint(a)
    assert weights_fingerprint(a) == before
    with torch.no_grad():
        a.weight[0, 0] += 1
    assert weights_fingerprint(a) != before


@pytest.mark.skipif(not CHECKPOINT_PATH.exists(), reason="no committed tutorial checkpoint")
def test_tutorial_model_loads():
    loaded = load_model("tutorial")
    assert loaded.fingerprint.startswith("tutorial-") and not loaded.model.training
    tokens = loaded.tokenizer(["a red circle on the left"])
    with torch.no_grad():
        text = loaded.model.encode_text(tokens)
        image = loaded.model.encode_image(torch.zeros(1, 3, 64, 64))
    assert text.shape == image.shape == (1, loaded.model.text_projection.shape[1])
