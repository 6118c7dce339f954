"""Tutorial CLIP: tokenizer, checkpoint hash check, exact decomposition, training plumbing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from residual_core.core.decompose import check_supported, decompose
from residual_core.tutorial.model import (
    ASSETS_DIR,
    CHECKPOINT_PATH,
    IMAGE_MEAN,
    IMAGE_STD,
    ChecksumError,
    build_tiny_clip,
    images_to_tensor,
    load_tiny_clip,
    preprocess_transform,
    save_tiny_clip,
    tiny_clip_config,
)
from residual_core.tutorial.tokenizer import UnknownWordError, WordTokenizer
from residual_core.tutorial.train import lr_at

VOCAB = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right"]


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    return WordTokenizer(VOCAB, context_length=12)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    cfg = tiny_clip_config(tokenizer.vocab_size, tokenizer.context_length)
    cfg["vision_cfg"].update(layers=2, width=64, head_width=16)
    cfg["text_cfg"].update(layers=1, width=32, heads=2)
    cfg["embed_dim"] = 32
    return build_tiny_clip(cfg).eval(), cfg


def test_tokenizer_round_trip(tokenizer):
    text = "a red circle on the left"
    ids = tokenizer([text, "A blue square."])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert tokenizer.decode(ids[0]) == text
    assert tokenizer.decode(ids[1]) == "a blue square"
    row = ids[0].tolist()
    assert row[0] == tokenizer.sot_id and row[7] == tokenizer.eot_id and row[8:] == [0] * 4
    # open_clip's 'argmax' pooling finds EOT as the largest id of every row.
    assert (ids.argmax(-1) == torch.tensor([7, 4])).all()
    assert tokenizer.eot_id == tokenizer.vocab_size - 1 == len(VOCAB) + 2


def test_tokenizer_truncates_keeping_eot(tokenizer):
    ids = tokenizer([" ".join(["a red circle on the left"] * 3)])
    assert ids[0, -1] == tokenizer.eot_id and (ids[0] != 0).all()


def test_tokenizer_unknown_words_named(tokenizer):
    with pytest.raises(UnknownWordError, match=r"\['green', 'triangle'\]"):
        tokenizer(["a green triangle on the left"])


def test_tiny_clip_decomposition_is_exact(tiny_model):
    model, _ = tiny_model
    layout = check_supported(model)
    assert (layout.n_layers, layout.n_heads, layout.d_head) == (2, 4, 16)
    torch.manual_seed(1)
    images = torch.randn(5, 3, 64, 64)
    dec = decompose(model, images)
    with torch.no_grad():
        ref = model.encode_image(images)
    err = ((dec.total() - ref).norm() / ref.norm()).item()
    assert err <= 1e-5, f"relative error {err:.2e} of units.sum(1) vs encode_image"


def test_checkpoint_round_trip_and_hash_mismatch(tiny_model, tokenizer, tmp_path):
    model, cfg = tiny_model
    path = tmp_path / "tiny.safetensors"
    digest = save_tiny_clip(model, tokenizer, cfg, path, {"note": "test"})
    loaded, tok, record = load_tiny_clip(path)
    assert record["sha256"] == digest and tok.words == tokenizer.words
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model.encode_image(images), loaded.encode_image(images)
    assert torch.allclose(a, b, atol=1e-2, rtol=1e-2), "fp16 round trip changed the outputs"

    corrupt = tmp_path / "corrupt.safetensors"
    shutil.copy(path, corrupt)
    shutil.copy(path.with_suffix(".json"), corrupt.with_suffix(".json"))
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        load_tiny_clip(corrupt)
    msg = str(info.value)
    assert str(corrupt) in msg and digest in msg
    assert "python -m residual_core.tutorial.train" in msg


def test_missing_checkpoint_says_how_to_recreate(tmp_path):
    with pytest.raises(FileNotFoundError, match="residual_core.tutorial.train"):
        load_tiny_clip(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("size", [64, 48])
def test_training_images_match_preprocess(size):
    """The training input equals the chapters' preprocessing, also when it resizes the renders.

    The reference is written from PIL directly: a bicubic resize, then scaling to [0, 1] and
    normalising with the model's mean and std.
    """
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    ours = images_to_tensor(images, size)
    ref = []
    for im in images:
        pil = Image.fromarray(im)
        if size != 64:
            pil = pil.resize((size, size), Image.BICUBIC)
        ref.append(torch.from_numpy(np.asarray(pil, np.float32) / 255.0).permute(2, 0, 1))
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    ref = (torch.stack(ref) - mean) / std
    assert ours.shape == (2, 3, size, size)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    transform = preprocess_transform(size)  # what every chapter gives the model
    chapters = torch.stack([transform(Image.fromarray(im)) for im in images])
    assert torch.equal(ours, chapters) if size != 64 else torch.allclose(ours, chapters, atol=1e-6)


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, 10) == pytest.approx(0.01, abs=1e-3)


def test_world_vocabulary_fits_the_shipped_tokenizer():
    """Every caption/class/template word of the world is known to the committed checkpoint."""
    from residual_core.tutorial import world
    from residual_core.tutorial.model import CHECKPOINT_PATH, read_record

    if not CHECKPOINT_PATH.exists():
        pytest.skip("no committed checkpoint")
    record = read_record(CHECKPOINT_PATH)
    known = set(record["tokenizer"]["vocabulary"])
    missing = sorted(set(world.vocabulary()) - known)
    assert not missing, f"world words unknown to the checkpoint's tokenizer: {missing}"
    assert world.max_caption_words() + 2 <= record["tokenizer"]["context_length"]


def test_shipped_checkpoint_decomposes_exactly():
    from residual_core.models import load_model
    from residual_core.tutorial import world
    from residual_core.tutorial.model import CHECKPOINT_PATH, checkpoint_world, read_record

    if not CHECKPOINT_PATH.exists():
        pytest.skip("no committed checkpoint")
    loaded = load_model("tutorial")
    config = world.world_config(checkpoint_world())
    images = images_to_tensor(world.render(world.sample_scenes(8, 3, config=config), 4))
    dec = decompose(loaded.model, images)
    with torch.no_grad():
        ref = loaded.model.encode_image(images)
    err = ((dec.total() - ref).norm() / ref.norm()).item()
    assert err <= 1e-5, f"relative error {err:.2e} of units.sum(1) vs encode_image"
    vision = read_record(CHECKPOINT_PATH)["model_cfg"]["vision_cfg"]
    layers, heads = vision["layers"], vision["width"] // vision["head_width"]
    assert len(dec.labels) == 1 + layers + layers * heads  # embedding, MLPs, heads


@pytest.mark.parametrize("options", [[], ["--drop-path", "0.3"]], ids=["plain", "drop-path"])
def test_resumed_training_matches_uninterrupted(tmp_path, monkeypatch, options):
    """A run that crashes after a periodic save and is resumed ends with the same weights
    (with stochastic depth too: its masks are drawn from the step, not from a running RNG)."""
    from safetensors.torch import load_file

    from residual_core.tutorial import train as train_mod

    def run(name: str, extra: list[str]) -> Path:
        out = tmp_path / name / "m.safetensors"
        args = train_mod.parse_args(["--steps", "4", "--warmup", "1", "--batch-size", "4",
                                     "--threads", "1", "--ckpt-every", "2", "--out", str(out),
                                     "--work-dir", str(tmp_path / name / "work"), *options,
                                     *extra])
        train_mod.train(args)
        return out

    straight = load_file(str(run("a", [])))

    real_training_batch = train_mod.training_batch

    def crash_at_3(step, *a, **k):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_training_batch(step, *a, **k)

    monkeypatch.setattr(train_mod, "training_batch", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run("b", [])
    monkeypatch.setattr(train_mod, "training_batch", real_training_batch)
    resumed = load_file(str(run("b", ["--resume"])))
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, msg=f"{key} differs after resume")


def test_drop_path_drops_whole_branches_per_sample(tiny_model):
    """Stochastic depth: in training each sample keeps a block's branch with probability 1 − p
    (scaled by 1 / (1 − p)) or loses it; in eval mode, and once removed, the tower is unchanged."""
    from residual_core.tutorial.train import DropPath

    model, _ = tiny_model
    x = torch.randn(2000, 5, 64)
    block = model.visual.transformer.resblocks[1]  # the last of 2 blocks: p = rate
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model.visual(images)
    drop = DropPath(model.visual, 0.25, seed=0)
    assert drop.rates == [0.0, 0.25] and len(drop.handles) == 2  # block 0 never dropped
    try:
        block.ls_1.train()
        drop.at(7)
        out = block.ls_1(x)
        kept = torch.isclose(out, x / 0.75).all(dim=(1, 2))
        dropped = (out == 0).all(dim=(1, 2))
        assert bool((kept | dropped).all())  # whole samples, nothing in between
        assert abs(dropped.float().mean().item() - 0.25) < 0.03  # Bernoulli(0.25), n = 2000
        drop.at(7)
        assert torch.equal(block.ls_1(x), out)  # the same step draws the same masks
        block.ls_1.eval()
        assert torch.equal(block.ls_1(x), x)
    finally:
        block.ls_1.eval()
        drop.remove()
    model.train()  # no hook left: training mode computes what eval mode did
    try:
        with torch.no_grad():
            torch.testing.assert_close(model.visual(images), ref)  # eval: fused attention
    finally:
        model.eval()
    with pytest.raises(ValueError, match="drop-path"):
        DropPath(model.visual, 1.0, seed=0)


@pytest.mark.parametrize("rate", ["1", "-0.2"])
def test_drop_path_flag_refuses_rates_outside_0_1(rate, capsys):
    from residual_core.tutorial.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--drop-path", rate])
    assert f"--drop-path must be in [0, 1) (a drop probability), got {float(rate):g}" in (
        capsys.readouterr().err)


def test_training_at_another_input_size_records_and_loads_it(tmp_path, monkeypatch):
    """--image-size: the tower is built for it, trained on resized renders, loaded with it."""
    from residual_core.models.loading import load_tutorial_checkpoint
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial.model import read_record

    seen = []
    real = train_mod.images_to_tensor
    monkeypatch.setattr(train_mod, "images_to_tensor",
                        lambda images, size=None: seen.append(real(images, size).shape) or
                        real(images, size))
    out = tmp_path / "m.safetensors"
    args = train_mod.parse_args(["--steps", "2", "--warmup", "1", "--batch-size", "4",
                                 "--threads", "1", "--layers", "1", "--width", "32",
                                 "--head-width", "16", "--embed-dim", "16", "--image-size", "48",
                                 "--out", str(out), "--work-dir", str(tmp_path / "w"),
                                 "--no-card"])
    train_mod.train(args)
    assert seen and all(shape[1:] == (3, 48, 48) for shape in seen)
    vision = read_record(out)["model_cfg"]["vision_cfg"]
    assert (vision["image_size"], vision["patch_size"]) == (48, 16)
    loaded, _ = load_tutorial_checkpoint(out)
    assert loaded.model.visual.positional_embedding.shape[0] == (48 // 16) ** 2 + 1
    assert loaded.preprocess(Image.new("RGB", (64, 64))).shape == (3, 48, 48)
    # an input the patches do not tile is refused before any step
    args.image_size, args.out = 40, tmp_path / "never.safetensors"
    with pytest.raises(ValueError, match="image_size 40 is not a multiple of patch_size 16"):
        train_mod.train(args)
    assert not args.out.exists()


def test_hard_negative_batches_pair_colours(monkeypatch):
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial import world

    seen = {}
    real_render = world.render

    def spy(scenes, seed, *a, **k):
        seen["scenes"] = scenes
        return real_render(scenes, seed, *a, **k)

    monkeypatch.setattr(world, "render", spy)
    images, captions = train_mod.make_batch(0, 64, 0, hard_negatives=1.0)
    hard = seen["scenes"]
    plain_images, _ = train_mod.make_batch(0, 64, 0)
    plain = seen["scenes"]
    for attr in ("color", "background"):
        assert (getattr(hard, attr)[1:] == getattr(plain, attr)[:-1]).all(), attr
        assert getattr(hard, attr)[0] == getattr(plain, attr)[0]
    assert (hard.shape == plain.shape).all()
    assert len(captions) == len(images) == 64 and plain_images.shape == images.shape


def test_swapped_captions_differ_in_one_mentioned_value():
    """Text negatives: same wording as the positive, exactly one mentioned value replaced."""
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial import world

    k = 3
    _, positives = train_mod.make_batch(5, 48, 1)
    negatives, valid = train_mod.batch_negatives(5, 48, 1, k)
    assert len(negatives) == 48 * k and valid.shape == (48, k)
    value_words = {w for values in world.ATTRIBUTES.values() for v in values for w in v.split()}
    value_words |= {"star", "stars"}
    for i, pos in enumerate(positives):
        for j in range(k):
            neg = negatives[i * k + j]
            if not valid[i, j]:
                assert neg == pos
                continue
            a, b = pos.split(), neg.split()
            assert len(a) == len(b), (pos, neg)
            diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
            # one value word swapped ("one star" -> "two stars" also changes the noun)
            assert 1 <= len(diff) <= 2 and all(x in value_words for x, _ in diff), (pos, neg)


def test_text_negatives_enter_the_image_side_softmax_only():
    """Valid negatives raise the loss of a fixed model; masked ones leave it unchanged."""
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial.model import build_tiny_clip, tiny_clip_config
    from residual_core.tutorial.tokenizer import WordTokenizer

    torch.manual_seed(0)
    tok = WordTokenizer(train_mod.world.vocabulary(), train_mod.CONTEXT_LENGTH)
    model = build_tiny_clip(tiny_clip_config(tok.vocab_size, tok.context_length)).eval()
    images, texts = train_mod.make_batch(0, 8, 0)
    negatives, valid = train_mod.batch_negatives(0, 8, 0, 2)
    x, t, n = train_mod.images_to_tensor(images), tok(texts), tok(negatives)
    with torch.no_grad():
        plain = train_mod.clip_loss(model, x, t)
        masked = train_mod.clip_loss(model, x, t, n, torch.zeros(8, 2, dtype=torch.bool))
        hard = train_mod.clip_loss(model, x, t, n, torch.from_numpy(valid))
    torch.testing.assert_close(masked, plain)
    assert hard > plain


def test_trimmed_text_encoder_matches_encode_text():
    """Dropping the padding after the longest caption leaves the causal tower's features equal."""
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial.model import build_tiny_clip, tiny_clip_config
    from residual_core.tutorial.tokenizer import WordTokenizer

    torch.manual_seed(1)
    tok = WordTokenizer(train_mod.world.vocabulary(), train_mod.CONTEXT_LENGTH)
    model = build_tiny_clip(tiny_clip_config(tok.vocab_size, tok.context_length)).eval()
    _, texts = train_mod.make_batch(2, 16, 0)
    ids = tok(texts)
    assert int((ids != 0).sum(1).max()) < ids.shape[1]  # something is actually trimmed
    with torch.no_grad():
        full = model.encode_text(ids, normalize=True)
        trimmed = train_mod.encode_text_trimmed(model, ids)
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-5)


def test_attribute_captions_state_true_values_at_the_mention_rates():
    """Short captions: one phrase per mentioned family, true value, frequency = mention rate."""
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial import world

    scenes = world.sample_scenes(4000, 3)
    phrases = train_mod.attribute_captions(scenes, 7)
    rates = world.mention_rates()
    assert set(phrases) == set(world.ATTRIBUTES)
    for family, (rows, texts) in phrases.items():
        assert abs(len(rows) / len(scenes) - rates[family]) < 0.03, family
        words = world.ATTRIBUTES[family]
        for i, text in zip(rows[:50], texts[:50], strict=True):
            value = words[getattr(scenes, family)[i]]
            assert value in text.split(), (family, text, value)


def test_attribute_loss_prefers_the_true_phrases():
    """A model whose image features are the true phrases' text features scores a lower loss."""
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial import world
    from residual_core.tutorial.model import build_tiny_clip, tiny_clip_config
    from residual_core.tutorial.tokenizer import WordTokenizer

    torch.manual_seed(0)
    tok = WordTokenizer(world.vocabulary(), train_mod.CONTEXT_LENGTH)
    model = build_tiny_clip(tiny_clip_config(tok.vocab_size, tok.context_length)).eval()
    scenes = world.sample_scenes(16, 1)
    phrases = {"count": train_mod.attribute_captions(scenes, 2)["count"]}
    rows, texts = phrases["count"]
    with torch.no_grad():
        true = torch.zeros(16, model.text_projection.shape[1])
        true[torch.as_tensor(rows)] = train_mod.encode_text_trimmed(model, tok(texts))
        shuffled = true[torch.randperm(16)]
        good = train_mod.attribute_loss(model, torch.nn.functional.normalize(true + 1e-6, dim=-1),
                                        phrases, tok)
        bad = train_mod.attribute_loss(model,
                                       torch.nn.functional.normalize(shuffled + 1e-6, dim=-1),
                                       phrases, tok)
    assert good < bad


def test_training_batch_is_make_batch_plus_negatives_and_phrases():
    """One draw of scenes per step gives what the public per-part helpers give."""
    from residual_core.tutorial import train as train_mod

    args = train_mod.parse_args(["--batch-size", "16", "--seed", "3", "--text-negatives", "2"])
    images, texts, negatives, valid, phrases = train_mod.training_batch(4, args)
    ref_images, ref_texts = train_mod.make_batch(4, 16, 3)
    ref_negatives, ref_valid = train_mod.batch_negatives(4, 16, 3, 2)
    np.testing.assert_array_equal(images, ref_images)
    assert texts == ref_texts and negatives == ref_negatives
    np.testing.assert_array_equal(valid, ref_valid)
    assert phrases is not None and set(phrases) == set(train_mod.world.ATTRIBUTES)


def test_position_embeddings_start_scaled(tmp_path, monkeypatch):
    """--pos-embed-scale multiplies the image position embeddings of the seeded initial model."""
    from residual_core.tutorial import train as train_mod

    seen = {}

    def stop(step, args, *a, **k):
        raise KeyboardInterrupt  # the model is built and scaled before the first batch

    monkeypatch.setattr(train_mod, "training_batch", stop)
    for scale in (1.0, 3.0):
        args = train_mod.parse_args(["--steps", "1", "--threads", "1", "--pos-embed-scale",
                                     str(scale), "--work-dir", str(tmp_path / str(scale)),
                                     "--out", str(tmp_path / str(scale) / "m.safetensors")])
        real_build = train_mod.build_tiny_clip

        def spy(cfg, _real=real_build):
            seen["model"] = _real(cfg)
            return seen["model"]

        monkeypatch.setattr(train_mod, "build_tiny_clip", spy)
        with pytest.raises(KeyboardInterrupt):
            train_mod.train(args)
        seen[scale] = seen["model"].visual.positional_embedding.detach().clone()
    torch.testing.assert_close(seen[3.0], 3.0 * seen[1.0])
    assert train_mod._pos_embed_scale({"command": "x"}) == 1.0  # records before the flag
    assert train_mod._pos_embed_scale({"pos_embed_scale": 2.0, "command": ""}) == 2.0


def test_text_tower_frozen_for_the_first_steps(tmp_path, monkeypatch):
    """--freeze-text-steps: the text tower keeps its initial weights, the image tower learns."""
    from residual_core.tutorial import train as train_mod

    seen = {}
    real_build = train_mod.build_tiny_clip

    def spy(cfg):
        model = real_build(cfg)
        seen["model"] = model
        seen["init"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    monkeypatch.setattr(train_mod, "build_tiny_clip", spy)
    args = train_mod.parse_args(["--steps", "2", "--warmup", "1", "--batch-size", "4",
                                 "--threads", "1", "--freeze-text-steps", "2",
                                 "--work-dir", str(tmp_path / "work"),
                                 "--out", str(tmp_path / "m.safetensors")])
    train_mod.train(args)
    after = dict(seen["model"].named_parameters())
    text = [n for n in after if not n.startswith("visual.") and n != "logit_scale"]
    assert text and all(torch.equal(after[n].cpu(), seen["init"][n]) for n in text)
    assert not torch.equal(after["visual.conv1.weight"].cpu(), seen["init"]["visual.conv1.weight"])


def test_card_command_drops_output_locations():
    from residual_core.tutorial.train import in_place_command

    cmd = ("python -m residual_core.tutorial.train --steps 6000 --ckpt-every 250 --no-card "
           "--work-dir /tmp/w --out /tmp/m.safetensors --seed 0")
    assert in_place_command(cmd) == "python -m residual_core.tutorial.train --steps 6000 --seed 0"


def test_world_flag_selects_world_and_architecture_defaults():
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial.model import (
        ARCHITECTURES,
        CHECKPOINT_PATH,
        TINY_CLIP_CONFIG,
        read_record,
    )

    shipped = train_mod.parse_args([])
    assert shipped.world == "v2" and shipped.out == CHECKPOINT_PATH and shipped.steps == 1500
    assert train_mod.architecture(shipped) == ARCHITECTURES["v2"] == {
        "layers": 8, "width": 192, "head_width": 32, "mlp_ratio": 2.0, "embed_dim": 192,
        "image_size": 64, "patch_size": 16}
    # v2 is the shipped checkpoint's architecture
    record = read_record(CHECKPOINT_PATH)
    vision = record["model_cfg"]["vision_cfg"]
    assert ARCHITECTURES["v2"] == {k: vision[k] for k in ("layers", "width", "head_width",
                                                          "mlp_ratio", "image_size",
                                                          "patch_size")} | {
        "embed_dim": record["model_cfg"]["embed_dim"]}
    # v1 is the earlier 4-layer model's
    vision = TINY_CLIP_CONFIG["vision_cfg"]
    v1 = train_mod.parse_args(["--world", "v1"])
    assert train_mod.architecture(v1) == ARCHITECTURES["v1"] == {
        k: vision[k] for k in ("layers", "width", "head_width", "mlp_ratio", "image_size",
                               "patch_size")} | {"embed_dim": TINY_CLIP_CONFIG["embed_dim"]}
    assert v1.steps == 6000 and train_mod.parse_args(["--steps", "7"]).steps == 7
    small = train_mod.parse_args(["--image-size", "48"])
    assert train_mod.architecture(small)["image_size"] == 48
    fine = train_mod.parse_args(["--patch-size", "8"])
    assert train_mod.architecture(fine)["patch_size"] == 8
    assert v1.out != CHECKPOINT_PATH and v1.work_dir != shipped.work_dir  # never over the shipped
    assert train_mod.parse_args(["--world", "v2", "--layers", "6"]).layers == 6
    assert train_mod.parse_args(["--world", "v1", "--layers", "6"]).width == 128
    cmd = "python -m residual_core.tutorial.train --world v2 --out x --snapshot-every 50"
    assert train_mod.in_place_command(cmd) == "python -m residual_core.tutorial.train --world v2"


def test_v2_training_batch_draws_the_nuisance_world(monkeypatch):
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial import world as W

    seen = []
    real = W.sample_scenes
    monkeypatch.setattr(W, "sample_scenes", lambda *a, **k: seen.append(a[2]) or real(*a, **k))
    args = train_mod.parse_args(["--world", "v2", "--batch-size", "8"])
    images, captions, *_ = train_mod.training_batch(0, args, W.world_config(args.world))
    assert images.shape == (8, 64, 64, 3) and len(captions) == 8
    assert seen and all(c is W.NUISANCE_WORLD for c in seen)


@pytest.mark.slow
def test_model_card_reproduces_from_the_checkpoint(tmp_path):
    from residual_core.analysis.experiments import torch_threads
    from residual_core.tutorial.train import write_model_card

    for f in ASSETS_DIR.glob(f"{CHECKPOINT_PATH.stem}*"):
        shutil.copy(f, tmp_path / f.name)
    with torch_threads(2):  # what `train --card-only` uses (--threads 2)
        card = write_model_card(tmp_path / CHECKPOINT_PATH.name)
    assert card.read_text() == (ASSETS_DIR / "MODEL_CARD.md").read_text()


def test_snapshots_name_their_world(tmp_path):
    """A snapshot is measured on the world it was trained on (the diagnostic reads it)."""
    from residual_core.tutorial import train as train_mod
    from residual_core.tutorial.model import checkpoint_world

    work = tmp_path / "work"
    args = train_mod.parse_args(["--world", "v2", "--steps", "2", "--warmup", "1",
                                 "--batch-size", "4", "--threads", "1", "--snapshot-every", "1",
                                 "--no-card", "--work-dir", str(work),
                                 "--out", str(tmp_path / "m.safetensors")])
    train_mod.train(args)
    assert checkpoint_world(work / "snapshot_1.safetensors") == "v2"
