"""Hugging Face encoders: the units sum to the ORIGINAL HF model's own output, per unit too."""

from __future__ import annotations

import dataclasses

import numpy as np
import open_clip
import pytest
import torch
import transformers
from PIL import Image
from transformers import (
    BlipConfig,
    BlipForImageTextRetrieval,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTModel,
)

from residual_core.core.decompose import (
    UnsupportedModelError,
    check_supported,
    decompose,
    decompose_raw,
)
from residual_core.core.model import NoTextTowerError
from residual_core.core.zeroshot import CLASS_MEAN, build_classifier, class_mean_classifier
from residual_core.models import MODELS, ModelLoadError, list_models, load_model
from residual_core.models import hf as hf_models

REL_TOL = 1e-5
HF_KEYS = ["vit_l", "dinov2_l", "blip_l_flickr"]
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
# Text ids inside the tiny vocabulary (the defaults point into BERT's 30k vocabulary).
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 encoder_hidden_size=64, vocab_size=100, bos_token_id=98, sep_token_id=99,
                 eos_token_id=99)


def randomize_(model: torch.nn.Module, seed: int = 0, only_1d: bool = False) -> torch.nn.Module:
    """Perturb parameters: zero biases, unit LN gains and LayerScale 1 would hide mapping bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not only_1d or p.ndim == 1 or p.shape[0] == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def small_hf(key: str, image_size: int | None = None, seed: int = 0) -> torch.nn.Module:
    """A 2-layer, 4-head, width-64 random model of the key's HF class."""
    if key == "vit_l":
        cfg = ViTConfig(**SMALL, image_size=image_size or 32, patch_size=8)
        model = ViTModel(cfg, add_pooling_layer=False)
    elif key == "dinov2_l":
        # Configured at 56 px like the real one at 518: used at another size (interpolation).
        cfg = Dinov2Config(**{k: v for k, v in SMALL.items() if k != "intermediate_size"},
                           mlp_ratio=2, image_size=56, patch_size=14, layerscale_value=0.5)
        model = Dinov2Model(cfg)
    else:
        cfg = BlipConfig(vision_config=dict(**SMALL, image_size=image_size or 32, patch_size=8),
                         text_config=TINY_TEXT, image_text_hidden_size=24)
        model = BlipForImageTextRetrieval(cfg)
    return randomize_(model, seed)


@torch.no_grad()
def hf_embedding(key: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The paper's representation of each encoder, computed by the HF model itself."""
    if key == "vit_l":
        return model(pixel_values=x).last_hidden_state[:, 0]  # final LN of CLS, not the pooler
    if key == "dinov2_l":
        return model(pixel_values=x).pooler_output
    return model.vision_proj(model.vision_model(pixel_values=x).last_hidden_state[:, 0])


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


INPUT = {"vit_l": 32, "dinov2_l": 42, "blip_l_flickr": 32}


@pytest.mark.parametrize("key", HF_KEYS)
def test_small_units_sum_to_the_hf_output(key):
    model = small_hf(key)
    x = images(3, INPUT[key])
    tower = hf_models.tower_from_hf(model, INPUT[key])
    y = hf_embedding(key, model, x)
    dec = decompose(tower, x)
    layout = check_supported(tower)
    assert dec.shape == (3, 1 + 2 + 2 * 4, y.shape[-1]) and list(dec.labels) == layout.labels
    err = max_rel_err(dec.total(), y)
    assert err <= REL_TOL, f"{key}: sum of units vs HF output, max rel err {err:.2e}"
    with torch.no_grad():
        fwd = max_rel_err(tower(x), y)
    assert fwd <= REL_TOL, f"{key}: converted tower vs HF output, max rel err {fwd:.2e}"


def _hf_unit_hooks(key: str, model: torch.nn.Module):
    """Modules whose outputs (or inputs) are the embed, per-head and MLP writes in HF's model."""
    if key == "vit_l":
        layers = model.layers
        return (model.embeddings, [layer.attention.o_proj for layer in layers],
                [layer.mlp for layer in layers])
    if key == "dinov2_l":
        layers = model.encoder.layer
        return (model.embeddings, [layer.attention.o_proj for layer in layers],
                [layer.layer_scale2 for layer in layers])  # the MLP write after LayerScale
    layers = model.vision_model.encoder.layers
    return (model.vision_model.embeddings, [layer.self_attn.projection for layer in layers],
            [layer.mlp for layer in layers])


@pytest.mark.parametrize("key", HF_KEYS)
def test_small_raw_units_match_hf_activations(key):
    """Per unit: embed, every head's CLS output and every MLP write, read from HF's modules."""
    model = small_hf(key, seed=4)
    x = images(2, INPUT[key], seed=5)
    emb_mod, out_projs, mlps = _hf_unit_hooks(key, model)
    seen: dict[str, list[torch.Tensor]] = {"embed": [], "heads": [], "mlp": []}
    hooks = [emb_mod.register_forward_hook(lambda m, a, o: seen["embed"].append(o[:, 0]))]
    hooks += [p.register_forward_pre_hook(lambda m, a: seen["heads"].append(a[0][:, 0]))
              for p in out_projs]
    hooks += [m.register_forward_hook(lambda m, a, o: seen["mlp"].append(o[:, 0])) for m in mlps]
    try:
        hf_embedding(key, model, x)
    finally:
        for h in hooks:
            h.remove()
    raw = decompose_raw(hf_models.tower_from_hf(model, INPUT[key]), x)
    torch.testing.assert_close(raw.embed, seen["embed"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(raw.heads, torch.stack(seen["heads"], 1).view(2, 2, 4, 16),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(raw.mlp, torch.stack(seen["mlp"], 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", HF_KEYS)
def test_real_size_units_sum_to_the_hf_output(key):
    """24 layers × 16 heads × 1024 at the key's input size, random weights, batch 1."""
    if key == "blip_l_flickr":  # the real vision tower; the text tower plays no part here
        vision = hf_models.real_config(key).vision_config.to_dict()
        model = BlipForImageTextRetrieval(BlipConfig(vision_config=vision, text_config=TINY_TEXT))
    else:
        model = hf_models.build_hf_model(key)
    randomize_(model, seed=2, only_1d=True)
    size = MODELS[key].image_size
    x = images(1, size, seed=3)
    tower = hf_models.tower_from_hf(model, size)
    layout = check_supported(tower)
    assert (layout.n_layers, layout.n_heads, layout.d_model) == (24, 16, 1024)
    assert layout.d_out == MODELS[key].d_out
    err = max_rel_err(decompose(tower, x).total(), hf_embedding(key, model, x))
    assert err <= REL_TOL, f"{key} real size: max rel err {err:.2e}"


def test_real_size_open_clip_vit_l14_tower_exact():
    """The L/14 geometry of openclip_l / clip_l (test_decompose covers B/16-quickgelu)."""
    cfg = open_clip.get_model_config("ViT-L-14")
    visual = open_clip.model._build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]).eval()
    randomize_(visual, seed=6, only_1d=True)
    x = images(1, 224, seed=7)
    with torch.no_grad():
        y = visual(x)
    err = max_rel_err(decompose(visual, x).total(), y)
    assert err <= REL_TOL, f"ViT-L-14 real size: max rel err {err:.2e}"


def test_tower_layernorm_eps_and_layerscale_come_from_the_hf_model():
    for key, eps in [("vit_l", 1e-12), ("dinov2_l", 1e-6), ("blip_l_flickr", 1e-5)]:
        model = small_hf(key)
        tower = hf_models.tower_from_hf(model, INPUT[key])
        eps_seen = {m.eps for m in tower.modules() if isinstance(m, torch.nn.LayerNorm)}
        assert eps_seen == {eps}, key
        has_ls = hasattr(tower.transformer.resblocks[0].ls_1, "gamma")
        assert has_ls == (key == "dinov2_l"), key
        assert (tower.proj is None) == (key != "blip_l_flickr"), key
        assert (tower.proj_bias is not None) == (key == "blip_l_flickr"), key


def test_unsupported_variants_are_named():
    with pytest.raises(UnsupportedModelError, match="SwiGLU"):
        hf_models.tower_from_hf(Dinov2Model(Dinov2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, use_swiglu_ffn=True,
            image_size=28, patch_size=14)))
    with pytest.raises(UnsupportedModelError, match="gelu_new"):
        hf_models.tower_from_hf(ViTModel(ViTConfig(**SMALL, image_size=32, patch_size=8,
                                                   hidden_act="gelu_new")))
    with pytest.raises(UnsupportedModelError, match="ViTForImageClassification is not supp"):
        hf_models.tower_from_hf(transformers.ViTForImageClassification(
            ViTConfig(**SMALL, image_size=32, patch_size=8)))
    with pytest.raises(UnsupportedModelError, match="multiple of the patch size"):
        hf_models.tower_from_hf(small_hf("vit_l"), 36)


def test_blip_text_side_matches_hf_itc_scores():
    model = small_hf("blip_l_flickr", seed=8)
    encoder = hf_models.encoder_from_hf(model, "blip_l_flickr", image_size=32)
    ids = torch.randint(1, 98, (3, 6), generator=torch.Generator().manual_seed(9))
    ids[1, 4:] = 0  # padding, masked out in both routes
    x = images(2, 32, seed=10)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=x, attention_mask=(ids != 0).long(),
                    use_itm_head=False).itm_score
        ours = encoder.encode_image(x, normalize=True) @ encoder.encode_text(ids, True).T
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.fixture
def small_real_configs(monkeypatch):
    """Make load_model(key, pretrained=None) build tiny models (same code path, fast)."""
    small = {
        "vit_l": ViTConfig(**SMALL, image_size=224, patch_size=32),
        "dinov2_l": Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 mlp_ratio=2, image_size=56, patch_size=14),
        "blip_l_flickr": BlipConfig(vision_config=dict(**SMALL, image_size=384, patch_size=32),
                                    text_config=TINY_TEXT, image_text_hidden_size=24),
    }
    monkeypatch.setattr(hf_models, "real_config", lambda key: small[key])


@pytest.mark.parametrize("key", HF_KEYS)
def test_random_load_gives_a_complete_loaded_model(key, small_real_configs):
    loaded = load_model(key, pretrained=None)
    assert loaded.name == key and loaded.pretrained is None and not loaded.model.training
    assert loaded.fingerprint.startswith(f"{key}-random-")
    assert loaded.has_text == MODELS[key].has_text
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70), np.uint8))  # grey
    x = loaded.preprocess(img)[None]
    assert x.shape == (1, 3, MODELS[key].image_size, MODELS[key].image_size)
    with torch.no_grad():
        y = loaded.model.encode_image(x)
    assert max_rel_err(decompose(loaded.model, x).total(), y) <= REL_TOL
    if loaded.has_text:
        text = loaded.model.encode_text(torch.tensor([[5, 6, 7, 0]]))
        assert text.shape == y.shape
    else:
        with pytest.raises(NoTextTowerError, match="no text tower"):
            loaded.tokenizer(["a photo of a cat"])
        with pytest.raises(NoTextTowerError, match="no text tower"):
            loaded.model.encode_text(torch.zeros(1, 4, dtype=torch.long))


def test_text_less_model_gets_the_class_mean_classifier(small_real_configs):
    loaded = load_model("dinov2_l", pretrained=None)
    with pytest.raises(NoTextTowerError, match="train_features"):
        build_classifier(loaded, ["a", "b"], ["a photo of a {}."])
    with torch.no_grad():
        feats = loaded.model.encode_image(images(6, 224, seed=11))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    clf = build_classifier(loaded, ["a", "b"], ["a photo of a {}."], train_features=feats,
                           train_labels=labels)
    assert clf.templates == [CLASS_MEAN] and clf.classnames == ["a", "b"]
    torch.testing.assert_close(clf.weights, class_mean_classifier(feats, labels, 2).weights)


def test_blip_tokenizer_offline_error_names_the_repo(monkeypatch, small_real_configs):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    loaded = load_model("blip_l_flickr", pretrained=None)
    with pytest.raises(ModelLoadError, match="Salesforce/blip-itm-large-flickr"):
        loaded.tokenizer(["a photo of a dog"])


@pytest.mark.parametrize("key", HF_KEYS)
def test_offline_pretrained_names_repo_and_how_to_fetch_it(key, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    cls = hf_models._model_class(key)
    monkeypatch.setattr(cls, "from_pretrained", offline)
    with pytest.raises(ModelLoadError) as info:
        load_model(key)
    msg = str(info.value)
    repo = MODELS[key].arch
    assert repo in msg and f"hf download {repo}" in msg and "HF_HOME" in msg and "OSError" in msg


def _save_checkpoint(key: str, root) -> torch.nn.Module:
    """A tiny checkpoint in the hub layout (plus BLIP's BERT tokenizer) in a local directory."""
    model = small_hf(key, image_size={"vit_l": 224, "blip_l_flickr": 384}.get(key), seed=13)
    model.save_pretrained(root)
    if key == "blip_l_flickr":
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "dog"]
        transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(root)
    return model


@pytest.mark.parametrize("key", HF_KEYS)
def test_pretrained_path_loads_a_local_checkpoint(key, tmp_path, monkeypatch):
    """load_model(key) through from_pretrained, offline: a local directory stands in for the hub."""
    model = _save_checkpoint(key, tmp_path)
    monkeypatch.setitem(MODELS, key, dataclasses.replace(MODELS[key], arch=str(tmp_path)))
    loaded = load_model(key)
    assert loaded.pretrained == str(tmp_path) and not loaded.model.training
    size = MODELS[key].image_size
    x = images(2, size, seed=14)
    with torch.no_grad():
        y = loaded.model.encode_image(x)
    assert max_rel_err(y, hf_embedding(key, model, x)) <= REL_TOL
    assert max_rel_err(decompose(loaded.model, x).total(), y) <= REL_TOL
    if key == "blip_l_flickr":
        tokens = loaded.tokenizer(["a photo of a dog", "a dog"])
        assert tokens[0].tolist() == [2, 5, 6, 7, 5, 8, 3] and tokens[1, -1] == 0  # padded


def test_checkpoint_missing_weights_is_an_error(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    _save_checkpoint("vit_l", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in state if "layernorm" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    monkeypatch.setitem(MODELS, "vit_l", dataclasses.replace(MODELS["vit_l"], arch=str(tmp_path)))
    with pytest.raises(ModelLoadError, match="would stay random"):
        load_model("vit_l")


def test_hf_key_rejects_another_repo():
    with pytest.raises(ModelLoadError, match="google/vit-large-patch16-224"):
        load_model("vit_l", pretrained="google/vit-base-patch16-224")


def test_unknown_key_lists_every_paper_key():
    with pytest.raises(ModelLoadError) as info:
        load_model("vit_xxl")
    assert all(key in str(info.value) for key in list_models())


def test_model_specs_match_the_architectures():
    assert list(MODELS) == list_models() and list_models()[0] == "tutorial"
    for key, spec in MODELS.items():
        assert spec.key == key
        if spec.source == "tutorial":
            continue
        if spec.source == "open_clip":
            with torch.device("meta"):  # sizes only: no weights are materialised
                model = open_clip.create_model(spec.arch, device="meta")
            d_out, size = model.visual.output_dim, model.visual.image_size[0]
            assert spec.description == f"open_clip {spec.arch} {spec.pretrained}"
            assert spec.has_text and spec.quick_gelu == (spec.pretrained == "openai")
        else:
            with torch.device("meta"):
                model = hf_models.build_hf_model(key)
            size = spec.image_size
            d_out = model.vision_proj.out_features if key == "blip_l_flickr" else 1024
            assert spec.description == f"hf {spec.arch}"
            assert spec.has_text == hasattr(model, "text_encoder")
            cfg = getattr(model.config, "vision_config", model.config)
            assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size,
                    cfg.patch_size) == (spec.hf.layers, spec.hf.heads, spec.hf.width,
                                        spec.hf.patch_size), key
        n = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(spec.params_m - n) < 0.05, f"{key}: {spec.params_m} vs {n:.2f}M"
        assert (spec.d_out, spec.image_size) == (d_out, size), key
        assert 3.9 * n < spec.download_mb < 4.1 * n, key  # fp32 checkpoints


# preprocessor_config.json of each repository (values as published on the hub).
HF_PROCESSORS = {
    "vit_l": ("ViTImageProcessorPil", dict(size={"height": 224, "width": 224}, resample=2,
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)),
    "dinov2_l": ("BitImageProcessorPil", dict(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])),
    "blip_l_flickr": ("BlipImageProcessorPil", dict(
        size={"height": 384, "width": 384}, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711])),
}


@pytest.mark.parametrize("key", HF_KEYS)
def test_preprocess_matches_the_hf_image_processor(key):
    name, kwargs = HF_PROCESSORS[key]
    processor = getattr(transformers, name)(**kwargs)
    rng = np.random.default_rng(12)
    img = Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8))
    ref = processor(images=img, return_tensors="pt")["pixel_values"][0]
    ours = hf_models.hf_preprocess(key)(img)
    assert ours.shape == ref.shape
    diff = float((ours - ref).abs().max())
    assert diff < 1e-4, f"{key}: max abs diff {diff:.2e}"


def test_task_classifier_of_a_text_less_model_is_the_train_class_mean(small_real_configs,
                                                                       tmp_path):
    """Chapters 04/05 get their classifier from TaskEncodings: class means for vit_l/dinov2_l."""
    from residual_core.data.encodings import TaskEncodings

    loaded = load_model("vit_l", pretrained=None)
    enc = TaskEncodings(loaded, {"train": 12, "test": 6}, cache_dir=tmp_path)
    clf = enc.classifier("world.texture")
    train = enc.embeddings("world.texture", "train")
    assert train.shape[0] == 12 and train.shape[1] == loaded.model.visual.output_dim
    ds = enc.dataset("world.texture", "train")
    with torch.no_grad():
        direct = loaded.model.encode_image(torch.stack([loaded.preprocess(ds[i][0])
                                                        for i in range(len(ds))]))
    torch.testing.assert_close(train, direct, atol=1e-4, rtol=1e-3)  # units sum, float16 store
    want = class_mean_classifier(train, enc.targets("world.texture", "train"), 4)
    torch.testing.assert_close(clf.weights, want.weights)
    assert enc.classifier("world.texture") is clf  # memoised
