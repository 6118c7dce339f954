"""Train the tutorial CLIP on captioned world images: ``python -m residual_core.tutorial.train``.

CLIP's symmetric contrastive loss on (image, caption) batches drawn from the procedural world,
AdamW with linear warmup and cosine decay, with four additions that make a 4-layer ViT learn
every attribute of the world in an hour of CPU:

- **text negatives** (``--text-negatives k``, NegCLIP-style): each image also competes against
  ``k`` copies of its caption with one mentioned value swapped (``swapped_captions``);
- **attribute captions** (``--attribute-captions``, on by default): each image is also paired
  with short one-attribute phrases from the caption grammar, one per family it happens to
  mention at that family's caption rate (``attribute_captions``), in a contrastive loss where
  identical phrases of a batch are one text (``attribute_loss``);
- **stronger position embeddings** (``--pos-embed-scale``, default 3): the image tower's
  initial position embeddings are multiplied by 3. open_clip draws them about 4× smaller than
  the patch embeddings of world images (mean norm 1.0 vs 3.7 per patch at init), and a readout
  that averages patches cancels them to first order: a supervised probe of the tower stays at
  chance on position after 150 steps, and reaches 0.92 with the embeddings ×3 (×10 slowed
  shapes down);
- **a frozen text tower at first** (``--freeze-text-steps``, default 500): for the first steps
  only the image tower (and the logit scale) learn, towards the random but distinct text
  embeddings of the captions. Without it the text tower learns within a few hundred steps to
  ignore the words of any attribute the image tower cannot yet see, and never unlearns it: the
  three position words had identical text embeddings (cosine 1.000) with the position
  embeddings ×1 (after 6,000 steps), ×3 (3,500) and ×8 (1,250), although with ×8 a probe read
  position from the image embedding (0.78); zero-shot position stayed at chance. With the
  frozen start, position is at 0.82 zero-shot after 250 steps and 0.97 after 750.

Without the first two the loss plateaus once colours and backgrounds are matched: a caption
that differs from another only in a shape or a count word moves the text embedding so little
that the image tower gets almost no gradient for shapes or counts (measured on an earlier
two-object world with text negatives alone: zero-shot still at chance on everything but colour
and background after 2,400 steps of batch 64). Short captions make each attribute word dominate
its text's embedding.

Batch ``i`` is a deterministic function of
``(seed, i)`` and the initial weights of ``seed``, so a run is reproducible and a resumed run
sees exactly the batches it would have seen. The full training state is saved every
``--ckpt-every`` steps to ``--work-dir`` (``--resume`` continues from it); at the end the weights
go to ``--out`` as fp16 safetensors with their json record, the loss curve next to them, and the
model card is rewritten.

**World version** (``--world``): ``v2`` (default) is the world with caption-free continuous
nuisance (``residual_core.tutorial.world.NUISANCE_WORLD``) of the shipped checkpoint; ``v1`` is
the earlier patch-grid world. The image tower defaults to the world's entry of
``model.ARCHITECTURES`` (v2: 8 layers of width 192, 6 heads of 32, MLP ×2, 16-pixel patches,
embedding 192; v1: 4 layers of width 128, 4 heads, MLP ×4, 8-pixel patches, embedding 128) and
``--steps`` to the world's schedule (``WORLD_STEPS``: v2 1,500, v1 6,000); ``--layers``,
``--width``, ``--head-width``, ``--mlp-ratio``, ``--patch-size`` and ``--embed-dim`` override
it. Only a run on the shipped world writes over the shipped checkpoint by default; a v1 run
goes to ``.cache/tutorial_v1/`` unless ``--out``/``--work-dir`` say otherwise.
``--snapshot-every`` also saves the weights of a long run every so many steps, for watching it
with the diagnostic (``python -m residual_core.runner.diagnose``). ``--drop-path p`` adds
stochastic depth to the image tower (``DropPath``; off by default: with 0.1 on the shipped
recipe the early attention layers' direct effect grew and shape was not learnt, candidate
``P11 + drop path 0.1`` of the model card).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, UInt8
from torch import Tensor, nn
from tqdm.auto import tqdm

from residual_core.tutorial import world
from residual_core.tutorial.model import (
    ARCHITECTURES,
    CHECKPOINT_PATH,
    build_tiny_clip,
    count_parameters,
    images_to_tensor,
    save_tiny_clip,
    tiny_clip_config,
    with_architecture,
)
from residual_core.tutorial.tokenizer import WordTokenizer

__all__ = [
    "attribute_captions",
    "attribute_loss",
    "batch_negatives",
    "encode_text_trimmed",
    "images_to_tensor",
    "in_place_command",
    "lr_at",
    "main",
    "make_batch",
    "parse_args",
    "swapped_captions",
    "train",
    "training_batch",
]

CONTEXT_LENGTH = 32
_MAX_LOGIT_SCALE = math.log(100.0)


def attribute_captions(
    scenes: world.Scenes, seed: int, config: world.WorldConfig = world.DEFAULT_WORLD
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Short extra captions: per scene, one phrase per attribute family it happens to mention.

    Each family is mentioned with its per-caption rate (``world.mention_rates``), so the caption
    frequency stays the lever of zero-shot alignment; the phrases come from the caption grammar
    (``a cross``, ``a striped object``, ``a object at the left``, ``a object on a navy
    background``, ``a object with four stars``).

    Returns:
        Family → ``(scene indices, phrases)`` of the scenes that mention it.
    """
    rng = np.random.default_rng([seed, 0x5407])
    rates = world.mention_rates(config)
    vocab = config.attributes
    out = {}
    for family, rate in rates.items():
        rows = np.flatnonzero(rng.random(len(scenes)) < rate)
        words = [vocab[family][v] for v in getattr(scenes, family)[rows]]
        if family == "shape":
            phrases = [f"a {w}" for w in words]
        elif family == "position":
            phrases = [f"a object at the {w}" for w in words]
        elif family == "background":
            phrases = [f"a object on a {w} background" for w in words]
        elif family == "count":
            phrases = [f"a object with {w} {'star' if w == vocab['count'][0] else 'stars'}"
                       for w in words]
        else:
            phrases = [f"a {w} object" for w in words]
        out[family] = (rows, phrases)
    return out


def attribute_loss(
    model: nn.Module,
    image_features: Float[Tensor, "batch d"],
    phrases: dict[str, tuple[np.ndarray, list[str]]],
    tokenizer: Any,
) -> Tensor:
    """Symmetric contrastive loss of the images with their short attribute captions.

    Per family, identical phrases in the batch are merged into one text (they describe the same
    value, so they must not be each other's negatives): image → text is a softmax over the
    family's distinct phrases, text → image a softmax over the batch's images with every image
    of that phrase as a positive (multi-positive InfoNCE).
    """
    device = image_features.device
    scale = model.logit_scale.exp()
    losses = []
    for rows, texts in phrases.values():
        if len(texts) == 0:
            continue
        unique, target = np.unique(np.asarray(texts), return_inverse=True)
        if len(unique) < 2:
            continue
        text = encode_text_trimmed(model, tokenizer(list(unique)).to(device))
        rows_t = torch.as_tensor(rows, device=device)
        target_t = torch.as_tensor(target, device=device)
        i2t = scale * image_features[rows_t] @ text.T
        t2i = scale * text @ image_features.T  # (unique, batch)
        positive = torch.zeros_like(t2i, dtype=torch.bool)
        positive[target_t, rows_t] = True
        t2i_loss = (torch.logsumexp(t2i, 1)
                    - torch.logsumexp(t2i.masked_fill(~positive, float("-inf")), 1)).mean()
        losses.append((F.cross_entropy(i2t, target_t) + t2i_loss) / 2)
    return torch.stack(losses).mean()


def make_batch(
    step: int,
    batch_size: int,
    seed: int,
    config: world.WorldConfig = world.DEFAULT_WORLD,
    hard_negatives: float = 0.0,
) -> tuple[UInt8[np.ndarray, "batch 64 64 3"], list[str]]:
    """Training batch ``step`` of the run with ``seed``: images and captions of fresh scenes.

    With ``hard_negatives = p``, each scene but the first takes, with probability ``p``, the
    object colours and the background that the scene before it was sampled with (one vectorised
    copy, no chains: a scene and its predecessor match when the predecessor kept its own, about
    ``p(1 - p)`` of the batch). Such pairs differ only in shape, size, texture, stars and
    position: colour alone no longer separates them, which pushes the contrastive loss towards
    the other attributes.
    """
    scenes, render_seed, caption_seed = _batch_scenes(step, batch_size, seed, config,
                                                      hard_negatives)
    return world.render(scenes, render_seed), world.captions(scenes, caption_seed, config)


def _batch_scenes(
    step: int, batch_size: int, seed: int, config: world.WorldConfig, hard_negatives: float
) -> tuple[world.Scenes, int, int]:
    """The scenes of batch ``step`` and its render and caption seeds (see ``make_batch``)."""
    scene_seed, render_seed, caption_seed = (
        int(s) for s in np.random.SeedSequence([seed, step, 0x7A11]).generate_state(3)
    )
    scenes = world.sample_scenes(batch_size, scene_seed, config)
    if hard_negatives > 0:
        rng = np.random.default_rng([scene_seed, 0x4A2D])
        twins = np.flatnonzero(rng.random(batch_size) < hard_negatives)
        twins = twins[twins > 0]
        for attr in ("color", "background"):
            values = getattr(scenes, attr)
            values[twins] = values[twins - 1]
    return scenes, render_seed, caption_seed


def training_batch(
    step: int, args: argparse.Namespace, config: world.WorldConfig = world.DEFAULT_WORLD
) -> tuple[np.ndarray, list[str], list[str] | None, np.ndarray | None,
           dict[str, tuple[np.ndarray, list[str]]] | None]:
    """Everything training step ``step`` needs, from one draw of its scenes.

    Returns:
        ``(images, captions, negatives, valid, phrases)`` as ``make_batch``, ``batch_negatives``
        and ``attribute_captions`` give them (``None`` where the run does not use them).
    """
    scenes, render_seed, caption_seed = _batch_scenes(step, args.batch_size, args.seed, config,
                                                      args.hard_negatives)
    negatives = valid = phrases = None
    if args.text_negatives:
        negatives, valid = swapped_captions(scenes, caption_seed, args.text_negatives,
                                            caption_seed ^ step, config)
    if args.attribute_captions:
        phrases = attribute_captions(scenes, caption_seed, config)
    return (world.render(scenes, render_seed), world.captions(scenes, caption_seed, config),
            negatives, valid, phrases)


def batch_negatives(
    step: int,
    batch_size: int,
    seed: int,
    k: int,
    config: world.WorldConfig = world.DEFAULT_WORLD,
    hard_negatives: float = 0.0,
) -> tuple[list[str], np.ndarray]:
    """The ``swapped_captions`` of training batch ``step`` (same scenes as ``make_batch``)."""
    scenes, _, caption_seed = _batch_scenes(step, batch_size, seed, config, hard_negatives)
    return swapped_captions(scenes, caption_seed, k, caption_seed ^ step, config)


def swapped_captions(
    scenes: world.Scenes,
    caption_seed: int,
    k: int,
    seed: int,
    config: world.WorldConfig = world.DEFAULT_WORLD,
) -> tuple[list[str], np.ndarray]:
    """``k`` hard negative captions per scene: its caption with one mentioned value swapped.

    Each negative re-generates the scene's caption with the same caption seed (so the same
    attributes are said, in the same form) after replacing the value of one attribute the caption
    mentions, chosen uniformly among them, by another value. The negative then differs from the
    true caption in exactly one word, which only that attribute can
    tell apart (NegCLIP-style text negatives; Yuksekgonul et al. 2023).

    Returns:
        ``(captions, valid)``: ``n·k`` captions ordered scene-major (scene ``i``'s negatives are
        ``captions[i·k:(i+1)·k]``), and an ``(n, k)`` bool array, False where the caption
        mentions no attribute (that "negative" equals the positive and must be masked out).
    """
    n = len(scenes)
    _, mentions = world.captions(scenes, caption_seed, config, return_mentions=True)
    families = list(config.attributes)
    said = np.stack([mentions[a] for a in families], axis=1)  # (n, families)
    rng = np.random.default_rng([seed, 0x5EA9])
    valid = np.repeat(said.any(axis=1)[:, None], k, axis=1)
    out = np.empty((n, k), dtype=object)
    for j in range(k):
        # pick one mentioned family per scene (argmax of masked random scores)
        pick = np.argmax(np.where(said, rng.random(said.shape), -1.0), axis=1)
        changed = scenes.subset(slice(None))
        for f, family in enumerate(families):
            rows = np.flatnonzero(pick == f)
            if rows.size == 0:
                continue
            values = getattr(changed, family).copy()
            n_values = len(config.attributes[family])
            values[rows] = (values[rows] + rng.integers(1, n_values, rows.size)) % n_values
            object.__setattr__(changed, family, values)
        out[:, j] = world.captions(changed, caption_seed, config)
    return [str(c) for c in out.reshape(-1)], valid


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.01) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to ``floor · peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def encode_text_trimmed(model: nn.Module, text: Int[Tensor, "batch context"]) -> Tensor:
    """``model.encode_text(text, normalize=True)`` on the shortest context that holds the batch.

    The text tower is causal and pools at the end-of-text token (the largest id, by argmax), so
    the padding after the longest caption never reaches the pooled position: cutting it off gives
    the same features (test) at a fraction of the cost, captions being mostly short.
    """
    length = int((text != 0).sum(dim=1).max())
    text = text[:, :length]
    x = model.token_embedding(text) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(len(text), device=text.device), text.argmax(dim=-1)]
    return F.normalize(x @ model.text_projection, dim=-1)


def clip_loss(
    model: nn.Module,
    images: Tensor,
    texts: Tensor,
    negatives: Tensor | None = None,
    valid: Tensor | None = None,
    attribute_phrases: dict[str, tuple[np.ndarray, list[str]]] | None = None,
    tokenizer: Any = None,
) -> Tensor:
    """Symmetric InfoNCE of CLIP on matching (image, text) pairs, with optional text negatives.

    ``negatives`` (``batch·k`` token rows, scene-major) are extra wrong captions for their own
    image only: they join that image's image→text softmax (masked where ``valid`` is False);
    the text→image direction is CLIP's. ``attribute_phrases`` (with the ``tokenizer``) adds
    :func:`attribute_loss` of the short per-attribute captions.
    """
    image_features = model.encode_image(images, normalize=True)
    text_features = encode_text_trimmed(model, texts)
    scale = model.logit_scale.exp()
    logits = scale * image_features @ text_features.T
    labels = torch.arange(len(images), device=logits.device)
    image_logits = logits
    if negatives is not None:
        neg = encode_text_trimmed(model, negatives)
        neg = neg.view(len(images), -1, text_features.shape[1])
        neg_logits = scale * torch.einsum("bd,bkd->bk", image_features, neg)
        if valid is not None:
            neg_logits = neg_logits.masked_fill(~valid, float("-inf"))
        image_logits = torch.cat([logits, neg_logits], dim=1)
    loss = (F.cross_entropy(image_logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if attribute_phrases is not None:
        loss = loss + attribute_loss(model, image_features, attribute_phrases, tokenizer)
    return loss


class DropPath:
    """Stochastic depth on the image tower with DeiT's linear schedule, as forward hooks.

    In training mode the attention and the MLP branch of block ``i`` of ``L`` are each dropped
    for a sample with probability ``rate · i / (L − 1)`` (block 0 never) and scaled by
    ``1 / (1 − p)`` otherwise. The hooks sit on the blocks' ``ls_1``/``ls_2`` (the branch
    outputs), so the weights saved and the model in eval mode are plain open_clip. Masks come
    from a generator reseeded from ``(seed, step)`` before each step (:meth:`at`), so a resumed
    run draws the same masks.
    """

    def __init__(self, visual: nn.Module, rate: float, seed: int) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"--drop-path must be in [0, 1), got {rate}")
        blocks = visual.transformer.resblocks
        self.seed = seed
        self.generator = torch.Generator()
        self.rates = [rate * i / max(len(blocks) - 1, 1) for i in range(len(blocks))]
        self.handles = [branch.register_forward_hook(self._hook(p))
                        for block, p in zip(blocks, self.rates, strict=True) if p > 0
                        for branch in (block.ls_1, block.ls_2)]

    def at(self, step: int) -> None:
        """Reseed the masks for training step ``step``."""
        state = np.random.SeedSequence([self.seed, step, 0xD209]).generate_state(1)
        self.generator.manual_seed(int(state[0]))

    def _hook(self, p: float) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not module.training:
                return None
            keep = torch.rand(output.shape[0], generator=self.generator) >= p
            scale = keep.to(output.dtype).to(output.device) / (1.0 - p)
            return output * scale.view(-1, *([1] * (output.ndim - 1)))
        return hook

    def remove(self) -> None:
        """Take the hooks off (the model is plain open_clip again)."""
        for handle in self.handles:
            handle.remove()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not gains, biases, embeddings or the logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name or "token" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _device_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {threads} threads of {os.cpu_count()} cores)"


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write keeps the previous state


def write_loss_curve(history: list[dict[str, float]], out: Path) -> tuple[Path, Path | None]:
    """Save the loss curve as ``<out>_loss.csv`` and a small ``<out>_loss.png``."""
    csv_path = out.with_name(out.stem + "_loss.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "logit_scale"])
        writer.writeheader()
        for row in history:
            writer.writerow({k: f"{v:.5g}" if isinstance(v, float) else v for k, v in row.items()})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the environment
        return csv_path, None
    steps = np.array([r["step"] for r in history])
    loss = np.array([r["loss"] for r in history])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(4.5, 2.6), dpi=100)
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="batch")
    ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="contrastive loss", yscale="log")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    png_path = out.with_name(out.stem + "_loss.png")
    fig.savefig(png_path)
    plt.close(fig)
    return csv_path, png_path


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) a training run and save the checkpoint; returns the checkpoint path."""
    torch.set_num_threads(args.threads)
    device = _device(args.device)
    config = world.world_config(args.world)
    tokenizer = WordTokenizer(world.vocabulary(config), CONTEXT_LENGTH)
    too_long = world.max_caption_words() + 2 - CONTEXT_LENGTH
    if too_long > 0:
        raise ValueError(f"captions can exceed the context by {too_long} tokens")
    model_cfg = tiny_clip_config(tokenizer.vocab_size, tokenizer.context_length)
    arch = architecture(args)
    if arch != ARCHITECTURES["v1"]:  # the v1 config is built exactly as before
        model_cfg = with_architecture(model_cfg, **arch)
    torch.manual_seed(args.seed)
    model = build_tiny_clip(model_cfg).to(device)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(args.init_logit_scale))
        # Position embeddings start ~4x smaller than world patch embeddings; see the module
        # docstring ("stronger position embeddings").
        model.visual.positional_embedding.mul_(args.pos_embed_scale)
    drop_path = DropPath(model.visual, args.drop_path, args.seed) if args.drop_path else None
    optimizer = torch.optim.AdamW(
        _param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6
    )
    text_params = [p for n, p in model.named_parameters()
                   if not n.startswith("visual.") and n != "logit_scale"]
    state_path = Path(args.work_dir) / "state.pt"
    start, history, elapsed = 0, [], 0.0
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        keys = ("steps", "batch_size", "seed", "lr", "warmup", "weight_decay", "hard_negatives",
                "text_negatives", "init_logit_scale", "attribute_captions", "pos_embed_scale",
                "freeze_text_steps", "drop_path")
        changed = {k: (state["args"].get(k, 0.0), getattr(args, k)) for k in keys
                   if state["args"].get(k, 0.0) != getattr(args, k)}
        # States of runs from before --world were v1 runs of the v1 architecture.
        before = {"world": "v1", **ARCHITECTURES["v1"]}
        changed |= {k: (state["args"].get(k, v), getattr(args, k)) for k, v in before.items()
                    if state["args"].get(k, v) != getattr(args, k)}
        if changed:
            raise ValueError(f"cannot resume {state_path}: arguments changed {changed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history, elapsed = state["step"], state["history"], state["elapsed"]
        print(f"resumed from {state_path} at step {start}", file=sys.stderr)
    elif args.resume:
        print(f"--resume: no state at {state_path}, starting from scratch", file=sys.stderr)

    def snapshot(step: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "history": history, "elapsed": elapsed + time.perf_counter() - t0,
                "args": vars(args)}

    model.train()
    t0 = time.perf_counter()
    step = start
    stopped_early = False
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train tiny CLIP",
               mininterval=5.0)
    for step in bar:
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, texts, neg_texts, neg_valid, phrases = training_batch(step, args, config)
        if drop_path is not None:
            drop_path.at(step)
        negatives = valid = None
        if neg_texts is not None:
            negatives = tokenizer(neg_texts).to(device)
            valid = torch.from_numpy(neg_valid).to(device)
        pixels = images_to_tensor(images, arch["image_size"]).to(device)
        loss = clip_loss(model, pixels, tokenizer(texts).to(device), negatives, valid, phrases,
                         tokenizer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step < args.freeze_text_steps:
            for p in text_params:
                p.grad = None  # AdamW skips parameters without a gradient
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
        history.append({"step": step, "loss": loss.item(), "lr": lr,
                        "logit_scale": model.logit_scale.exp().item()})
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        done = step + 1
        if done % args.ckpt_every == 0 and done < args.steps:
            _save_state(state_path, snapshot(done))
        if args.snapshot_every and done % args.snapshot_every == 0 and done < args.steps:
            # weights only, for watching a long run with the diagnostic (not resumable)
            save_tiny_clip(model, tokenizer, model_cfg,
                           Path(args.work_dir) / f"snapshot_{done}.safetensors",
                           {"step": done, "world_name": args.world})
        if args.max_minutes and (elapsed + time.perf_counter() - t0) / 60 > args.max_minutes:
            stopped_early = done < args.steps
            break
    bar.close()
    done = step + 1 if history and history[-1]["step"] == step else start
    total_s = elapsed + time.perf_counter() - t0
    _save_state(state_path, snapshot(done))

    if drop_path is not None:
        drop_path.remove()
    out = Path(args.out)
    tail = [r["loss"] for r in history[-50:]]
    metadata = {
        "command": "python -m residual_core.tutorial.train " + shlex.join(sys.argv[1:]),
        "steps_planned": args.steps,
        "steps_done": done,
        "stopped_early_by_max_minutes": stopped_early,
        "batch_size": args.batch_size,
        "hard_negatives": args.hard_negatives,
        "text_negatives": args.text_negatives,
        "init_logit_scale": args.init_logit_scale,
        "attribute_captions": args.attribute_captions,
        "pos_embed_scale": args.pos_embed_scale,
        "freeze_text_steps": args.freeze_text_steps,
        "drop_path": args.drop_path,
        "seed": args.seed,
        "optimizer": f"AdamW(betas=(0.9, 0.98), eps=1e-6, weight_decay={args.weight_decay})",
        "lr": args.lr,
        "schedule": f"linear warmup {args.warmup} steps, cosine to 1% of peak",
        "final_loss_mean_last_50": float(np.mean(tail)) if tail else None,
        "logit_scale": model.logit_scale.exp().item(),
        "wall_time_s": round(total_s, 1),
        "device": _device_description(device, args.threads),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "world": ("residual_core.tutorial.world.DEFAULT_WORLD" if args.world == "v1"
                  else f"residual_core.tutorial.world.WORLDS['{args.world}']"),
        "world_name": args.world,
        "mention_rates": {k: round(v, 4) for k, v in world.mention_rates(config).items()},
        "parameters": count_parameters(model),
        "parameters_visual": count_parameters(model, ["visual"]),
    }
    digest = save_tiny_clip(model.cpu(), tokenizer, model_cfg, out, metadata)
    write_loss_curve(history, out)
    final = metadata["final_loss_mean_last_50"]
    print(f"saved {out} (sha256 {digest[:12]}…, {out.stat().st_size / 1e6:.2f} MB) after "
          f"{done} steps in {total_s / 60:.1f} min; final loss {final}")
    return out


@torch.no_grad()
def unit_probes(loaded: Any, n_train: int = 2000, n_test: int = 2000,
                base: str = "world") -> list[dict[str, Any]]:
    """Best linear probe per attribute over single units, and on the whole embedding.

    Probes are ridge least-squares classifiers fitted on the ``base`` distribution's train split
    (``world``, or ``world2`` for the v2 world) and scored on its test split (the per-unit
    outputs of :func:`residual_core.core.decompose.decompose`).
    """
    from residual_core.core.decompose import check_supported, decompose
    from residual_core.core.probes import ridge_probe
    from residual_core.data.registry import load_dataset

    labels = check_supported(loaded.model).labels
    feats = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ds = load_dataset(f"{base}.shape", split, loaded.preprocess, size=n)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        units = torch.cat([decompose(loaded.model, images[i:i + 256]).data
                           for i in range(0, len(images), 256)])
        feats[split] = (units, {k: torch.as_tensor(v) for k, v in ds.attributes.items()})
    (u_tr, y_tr), (u_te, y_te) = feats["train"], feats["test"]
    rows = []
    for attr, values in world.ATTRIBUTES.items():
        k = len(values)
        per_unit = ridge_probe(u_tr, y_tr[attr], u_te, y_te[attr], k).tolist()
        best = int(np.argmax(per_unit))
        full = float(ridge_probe(u_tr.sum(1)[:, None], y_tr[attr], u_te.sum(1)[:, None],
                                 y_te[attr], k)[0])
        rows.append({"task": attr, "best_unit": labels[best], "best_unit_acc": per_unit[best],
                     "embedding_probe_acc": full,
                     "per_unit": dict(zip(labels, per_unit, strict=True))})
    return rows


def in_place_command(command: str) -> str:
    """The recorded training command without its output locations.

    ``--out``, ``--work-dir``, ``--no-card``, ``--resume``, ``--ckpt-every`` and
    ``--snapshot-every`` change where
    things go, not the weights; without them the command re-creates the shipped checkpoint and
    its card in place.
    """
    words, out = shlex.split(command), []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w in ("--out", "--work-dir", "--ckpt-every", "--snapshot-every"):
            skip = True
        elif w not in ("--no-card", "--resume"):
            out.append(w)
    return shlex.join(out)


def _pos_embed_scale(meta: dict[str, Any]) -> float:
    """The run's ``--pos-embed-scale``; records from before the flag were trained with ×1."""
    return float(meta.get("pos_embed_scale", 1.0))


def history_section(path: Path | None = None) -> list[str]:
    """The card's record of which world and training choices moved which claims.

    One column per prototype of ``prototypes.json`` (``runner.diagnose --record``) and per book
    built on it (``--record NAME --book DIR``): the diagnostic decides C1–C11 on its own data
    sizes, the book all fourteen claims on the chapters' (C12–C14 only there).
    """
    from residual_core.analysis.claims import CLAIMS
    from residual_core.runner.diagnose import HISTORY_PATH

    path = HISTORY_PATH if path is None else path
    if not path.exists():
        return []
    columns = []  # (header, claims)
    entries = json.loads(path.read_text())
    for e in entries:
        if e.get("claims"):
            columns.append((f"{e['name']} diagnostic", e["claims"]))
        if e.get("book"):
            columns.append((f"{e['name']} book", e["book"]))
    if not columns:
        return []
    lines = [
        "## Which choices moved which claims",
        "",
        "The models this one was chosen from (`residual_core/tutorial/assets/prototypes.json`, "
        "written by `python -m residual_core.runner.diagnose --record NAME`, and by "
        "`--record NAME --book _build/executed` for the scoreboard of a `make book` run on it):",
        "",
    ]
    lines += [f"- **{e['name']}** ({e.get('model', '?')}; "
              + (f"world {e['world']}, " if "world" in e else "")
              + f"{e.get('steps', '?')} steps, commit {e.get('commit', '?')}): {e.get('note', '')}"
              for e in entries]
    lines += ["", "| claim | " + " | ".join(h for h, _ in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for cid, claim in CLAIMS.items():
        cells = [("yes" if c[cid]["holds"] else "no") if cid in c else "–" for _, c in columns]
        lines.append(f"| {cid} {claim.claim} | " + " | ".join(cells) + " |")
    held = [sum(c[cid]["holds"] for cid in c) for _, c in columns]
    lines.append("| **holding** | " + " | ".join(
        f"{h} of {len(c)}" for h, (_, c) in zip(held, columns, strict=True)) + " |")
    lines.append("")
    return lines


def write_model_card(path: Path = CHECKPOINT_PATH, probes: bool = True) -> Path:
    """Write ``MODEL_CARD.md`` next to a checkpoint from its json record and fresh evaluations.

    Evaluates zero-shot accuracy on every tutorial task and distribution (test split) and, with
    ``probes``, the best single-unit and whole-embedding linear probes per task.
    """
    from residual_core.analysis.zeroshot import format_table, tutorial_table
    from residual_core.data import world as DW
    from residual_core.models.loading import load_tutorial_checkpoint
    from residual_core.tutorial.model import record_world

    path = Path(path)
    loaded, record = load_tutorial_checkpoint(path)
    meta, cfg = record["metadata"], record["model_cfg"]
    command = in_place_command(str(meta.get("command", "")))
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    world_name = record_world(record)
    shifts = DW.distributions(world_name)
    distributions = list(shifts)
    # The training distribution, the one without a shift: "world" (v1), "world2" (v2).
    base = next(name for name, shift in shifts.items() if shift is None)
    rows = tutorial_table(loaded, distributions)
    zs = {r["task"]: r["accuracy"] for r in rows if r["distribution"] == base}
    lines = [
        "# Tutorial CLIP (tiny open_clip `CLIP`)",
        "",
        "The model every chapter of the `tutorial` profile runs on: a plain `open_clip.CLIP` built "
        "from the custom config below (so decomposition and zero-shot code paths are the same as "
        "for the paper's CLIPs), trained from scratch with CLIP's contrastive loss on the "
        "procedural world of `residual_core.tutorial.world` (world "
        f"`{world_name}`, `{meta.get('world', 'DEFAULT_WORLD').rpartition('.')[2]}`; datasets "
        f"`{base}.*` and `{base}_<shift>.*`). Generated by "
        "`residual_core.tutorial.train.write_model_card`.",
        "",
        "## Files",
        "",
        f"- `{path.name}`: fp16 safetensors, {path.stat().st_size / 1e6:.2f} MB, "
        f"sha256 `{record['sha256']}` (checked at load time).",
        f"- `{path.with_suffix('.json').name}`: open_clip model config, tokenizer vocabulary "
        "(word-level, ids: pad 0, SOT 1, words, EOT last) and the training record.",
        f"- `{path.stem}_loss.csv`, `{path.stem}_loss.png`: loss curve.",
        "",
        "## Model",
        "",
        "| part | config |",
        "|---|---|",
        f"| vision | ViT, {v['image_size']}×{v['image_size']} input, patch {v['patch_size']}, "
        f"{v['layers']} layers, width {v['width']}, {v['width'] // v['head_width']} heads of "
        f"{v['head_width']}, MLP ×{v['mlp_ratio']:g}, CLS pooling, pre-LN |",
        f"| text | causal transformer, {t['layers']} layers, width {t['width']}, {t['heads']} "
        f"heads, context {t['context_length']}, vocabulary {t['vocab_size']} ids, argmax (EOT) "
        "pooling |",
        f"| embedding | d_out = {cfg['embed_dim']}, GELU, learnt logit scale (clamped at 100), "
        f"final {meta.get('logit_scale', float('nan')):.1f} |",
        f"| parameters | {meta.get('parameters', 0):,} ({meta.get('parameters_visual', 0):,} "
        "in the vision tower) |",
        "",
        "## Data",
        "",
        "Fresh scenes every step (`world.sample_scenes` → `render` → `captions`; batch `i` is "
        "seeded by `(seed, i)`). Per-caption mention rate of each attribute, the lever that "
        "makes a task easy or hard zero-shot:",
        "",
        "| attribute | " + " | ".join(meta.get("mention_rates", {})) + " |",
        "|---|" + "---|" * len(meta.get("mention_rates", {})),
        "| mention rate | " + " | ".join(f"{x:.3f}" for x in meta.get("mention_rates", {}).values())
        + " |",
        "",
        "## Training run",
        "",
        f"- Command: `{command}`",
        f"- Steps: {meta.get('steps_done')} of {meta.get('steps_planned')} planned"
        + (" (stopped early by --max-minutes)" if meta.get("stopped_early_by_max_minutes") else "")
        + f", batch {meta.get('batch_size')}, seed {meta.get('seed')}",
        f"- Optimiser: {meta.get('optimizer')}, peak lr {meta.get('lr')}, {meta.get('schedule')}",
        f"- Wall time: {meta.get('wall_time_s', 0) / 60:.1f} min on {meta.get('device')} "
        f"(torch {meta.get('torch')}, open_clip {meta.get('open_clip')}); the machine was shared "
        "with other jobs, so the time is an upper bound",
        f"- Objective: CLIP loss, text negatives per image {meta.get('text_negatives', 0)}, "
        f"attribute captions {'on' if meta.get('attribute_captions') else 'off'}, initial "
        f"logit scale {meta.get('init_logit_scale', 1 / 0.07):.1f}, image position embeddings "
        f"×{_pos_embed_scale(meta):g} at init, text tower frozen for the first "
        f"{meta.get('freeze_text_steps', 0)} steps"
        + (f", image-tower stochastic depth {meta['drop_path']:g} at the last block"
           if meta.get("drop_path") else "")
        + " (see the module docstring of `residual_core.tutorial.train`)",
        f"- Final loss (mean of the last 50 steps): {meta.get('final_loss_mean_last_50', 0):.3f} "
        + (f"(chance level of the plain CLIP loss ln({meta.get('batch_size')}) = "
           f"{math.log(meta.get('batch_size') or 1):.3f})"
           if not (meta.get("text_negatives") or meta.get("attribute_captions")) else
           "(the sum of the CLIP loss with its text negatives and the attribute-caption loss)"),
        "",
        f"![loss curve]({path.stem}_loss.png)",
        "",
    ]
    loss_csv = path.with_name(path.stem + "_loss.csv")
    if loss_csv.exists():
        with open(loss_csv) as f:
            hist = list(csv.DictReader(f))
        marks = sorted({int(i * (len(hist) - 1) / 10) for i in range(11)})
        lines += ["| step | loss | lr |", "|---|---|---|"]
        lines += [f"| {hist[i]['step']} | {float(hist[i]['loss']):.3f} | "
                  f"{float(hist[i]['lr']):.2g} |" for i in marks]
        lines.append("")
    lines += [
        "## Zero-shot accuracy (test split, 2,000 images per distribution)",
        "",
        "Prompt-ensemble classifier (the book's Method and conventions page), logits "
        f"`scale · normalize(z) @ C`; `{base}` is the training distribution, the other columns "
        "its shifted variants. Reproduce with "
        "`python -m residual_core.analysis.zeroshot --model tutorial`.",
        "",
        format_table(rows),
        "",
    ]
    low = [f"{r['task']} ({r['accuracy']:.2f} < {2 * r['uniform']:.2f})" for r in rows
           if r["distribution"] == base and r["accuracy"] < 2 * r["uniform"]]
    lines += [
        f"**Every attribute task at least 2× chance on `{base}`: "
        + ("yes.**" if not low else "no.** Below 2× chance: " + ", ".join(low) + "."),
        "",
    ]
    if probes:
        probe_rows = unit_probes(loaded, base=base)
        lines += [
            f"## Linear probes on the units ({base}, 2,000 train / 2,000 test images)",
            "",
            "Ridge least-squares probe on a single unit's direct contribution (best unit shown) "
            "and on the whole image embedding, against zero-shot. The gap between zero-shot and "
            "the probes is the headroom that coarse selection and ResiDual can close; where "
            "zero-shot is at ceiling here, the headroom lies on the shifted variants (chapters "
            "04–05).",
            "",
            "| task | chance | zero-shot | best unit | its probe | embedding probe |",
            "|---|---|---|---|---|---|",
        ]
        for r in probe_rows:
            lines.append(f"| {r['task']} | {1 / len(world.ATTRIBUTES[r['task']]):.2f} | "
                         f"{zs[r['task']]:.3f} | {r['best_unit']} | {r['best_unit_acc']:.3f} | "
                         f"{r['embedding_probe_acc']:.3f} |")
        lines.append("")
        top = sorted(
            {label for r in probe_rows for label, _ in
             sorted(r["per_unit"].items(), key=lambda kv: -kv[1])[:3]}
        )
        lines += [
            "Probe accuracy of the units that are among the top 3 for some task:",
            "",
            "| unit | " + " | ".join(r["task"] for r in probe_rows) + " |",
            "|---|" + "---|" * len(probe_rows),
        ]
        for label in top:
            lines.append(f"| {label} | "
                         + " | ".join(f"{r['per_unit'][label]:.2f}" for r in probe_rows) + " |")
        lines.append("")
    lines += history_section()
    lines += [
        "## Reproduce",
        "",
        "```bash",
        f"{command}   # re-creates the checkpoint, its json, loss curve and this card",
        "python -m residual_core.analysis.zeroshot --model tutorial",
        "```",
        "",
        "CPU training is deterministic for a fixed thread count; on CUDA results differ in the "
        "last digits.",
        "",
    ]
    card = path.parent / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    return card


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of the training run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: the world's, "
                   + ", ".join(f"{w} {n}" for w, n in WORLD_STEPS.items()) + ")")
    p.add_argument("--batch-size", type=int, default=64, help="image-caption pairs per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--hard-negatives", type=float, default=0.0,
                   help="probability that a scene copies the colours/background of the previous "
                   "one (see make_batch)")
    p.add_argument("--text-negatives", type=int, default=2,
                   help="hard negative captions per image: its caption with one mentioned value "
                   "swapped (see swapped_captions)")
    p.add_argument("--attribute-captions", action=argparse.BooleanOptionalAction, default=True,
                   help="also pair each image with short one-attribute captions "
                   "(see attribute_loss)")
    p.add_argument("--init-logit-scale", type=float, default=1 / 0.07,
                   help="initial softmax scale (CLIP: 1/0.07; learnt, clamped at 100)")
    p.add_argument("--drop-path", type=float, default=0.0,
                   help="stochastic depth of the image tower's last block (DeiT's linear "
                   "schedule from 0 at block 0; 0: off)")
    p.add_argument("--pos-embed-scale", type=float, default=3.0,
                   help="multiplies the initial image position embeddings (see train)")
    p.add_argument("--freeze-text-steps", type=int, default=500,
                   help="the text tower stays at its random init for this many first steps "
                   "(see train)")
    p.add_argument("--world", choices=list(world.WORLDS), default=SHIPPED_WORLD,
                   help="world: v2 (caption-free continuous nuisance, "
                   "world.NUISANCE_WORLD; the shipped checkpoint's), v3 (v2 with pattern "
                   "backgrounds, world.PATTERN_WORLD) or v1 (the patch-grid "
                   "world); it also sets the defaults of --steps and of the architecture "
                   "flags below (model.ARCHITECTURES)")
    p.add_argument("--layers", type=int, default=None,
                   help="image tower depth (default: the world's; v1 4, v2 8)")
    p.add_argument("--width", type=int, default=None,
                   help="image tower width (default: the world's; v1 128, v2 192)")
    p.add_argument("--head-width", type=int, default=None,
                   help="width of each attention head, heads = width / head width (default 32)")
    p.add_argument("--mlp-ratio", type=float, default=None,
                   help="image tower MLP hidden width / width (default: v1 4, v2 2)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input pixels per side; the 64-pixel renders are resized to it "
                   "(default 64)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="pixels per side of an image patch (default: the world's; v1 8, v2 16)")
    p.add_argument("--embed-dim", type=int, default=None,
                   help="joint embedding width (default: v1 128, v2 192)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the data stream")
    p.add_argument("--out", type=Path, default=None,
                   help="fp16 .safetensors output (default: the shipped checkpoint for "
                   f"{SHIPPED_WORLD}, {side_out('v1')} for v1)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda'")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where the periodic training state goes (default: "
                   f".cache/tutorial_train for {SHIPPED_WORLD}, .cache/tutorial_v1 for v1)")
    p.add_argument("--ckpt-every", type=int, default=100, help="steps between state saves")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also save the weights every this many steps to --work-dir (0: never)")
    p.add_argument("--resume", action="store_true", help="continue from --work-dir/state.pt")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop (and save) after this wall time; 0 = no limit")
    p.add_argument("--no-card", action="store_true", help="do not rewrite MODEL_CARD.md")
    p.add_argument("--card-only", action="store_true",
                   help="only rewrite MODEL_CARD.md from the checkpoint at --out")
    args = p.parse_args(argv)
    if not 0.0 <= args.drop_path < 1.0:  # refused before the model is built
        p.error(f"--drop-path must be in [0, 1) (a drop probability), got {args.drop_path:g}")
    for key, value in ARCHITECTURES[args.world].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps is None:
        args.steps = WORLD_STEPS[args.world]
    if args.out is None:
        args.out = CHECKPOINT_PATH if args.world == SHIPPED_WORLD else side_out(args.world)
    if args.work_dir is None:
        args.work_dir = (Path(".cache/tutorial_train") if args.world == SHIPPED_WORLD
                         else side_out(args.world).parent)
    return args


SHIPPED_WORLD = "v2"
"""The world of the shipped checkpoint: ``--world``'s default, the only one whose run writes
over ``model.CHECKPOINT_PATH`` (and its model card) unless ``--out`` says otherwise."""
WORLD_STEPS = {"v1": 6000, "v2": 1500, "v3": 3000}
"""``--steps`` per world: the schedules of the checkpoints trained on them (v2: 1,500 steps kept
more of the paper's phenomena than 2,000 or 4,000; ``MODEL_CARD.md``, last table)."""


def side_out(world_name: str) -> Path:
    """Where a run on a world other than the shipped one saves its checkpoint by default."""
    return Path(f".cache/tutorial_{world_name}/tiny_clip_{world_name}.safetensors")


def architecture(args: argparse.Namespace) -> dict[str, Any]:
    """The image tower and embedding width of a run (keys of ``model.ARCHITECTURES``)."""
    return {k: getattr(args, k) for k in ARCHITECTURES["v1"]}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m residual_core.tutorial.train``."""
    args = parse_args(argv)
    if args.card_only:
        torch.set_num_threads(args.threads)
        print(write_model_card(args.out))
        return
    out = train(args)
    if not args.no_card and out.resolve() == CHECKPOINT_PATH.resolve():
        write_model_card(out)


if __name__ == "__main__":
    main()
