"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from residual_core.core.model import LoadedModel, weights_fingerprint
from residual_core.tutorial import world
from residual_core.tutorial.model import build_tiny_clip, preprocess_transform, tiny_clip_config
from residual_core.tutorial.tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    """A random-initialised, smaller tutorial CLIP (a module may override it with a stub)."""
    torch.manual_seed(0)
    tok = WordTokenizer(world.vocabulary(), 32)
    cfg = tiny_clip_config(tok.vocab_size, 32)
    cfg["vision_cfg"].update(layers=2, width=32, head_width=16)  # small and fast
    cfg["text_cfg"].update(layers=1, width=32, heads=2)
    cfg["embed_dim"] = 16
    model = build_tiny_clip(cfg).eval()
    return LoadedModel(model, preprocess_transform(64), tok, "random-tiny", "tutorial-tiny-clip",
                       None, f"random-{weights_fingerprint(model)}")
