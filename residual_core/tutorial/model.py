"""The tutorial CLIP: a tiny open_clip ``CLIP``, a word-level tokenizer and a checked checkpoint.

The model is a plain ``open_clip.CLIP`` built from a custom config (a pre-LN ViT on 64×64 images
with CLS pooling, and a small causal text transformer with ``'argmax'`` EOT pooling), so the
decomposition and zero-shot code run on it exactly as on the paper's CLIPs. The trained weights
ship as fp16 safetensors in ``assets/`` with a json next to them (the open_clip model config, the
tokenizer vocabulary, the file's sha256 and how it was trained); loading checks the hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from jaxtyping import Float, UInt8
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from residual_core.tutorial.tokenizer import WordTokenizer

__all__ = [
    "ARCHITECTURES",
    "ASSETS_DIR",
    "CHECKPOINT_PATH",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "ChecksumError",
    "TINY_CLIP_CONFIG",
    "build_tiny_clip",
    "checkpoint_world",
    "images_to_tensor",
    "load_tiny_clip",
    "preprocess_transform",
    "read_record",
    "record_fingerprint",
    "record_world",
    "retrain_command",
    "save_tiny_clip",
    "sha256_file",
    "tiny_clip_config",
    "with_architecture",
]

ASSETS_DIR = Path(__file__).parent / "assets"
CHECKPOINT_PATH = ASSETS_DIR / "tiny_clip.safetensors"

# Images enter as [0, 1] RGB, normalised per channel to [-1, 1].
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

# An open_clip model config (same keys as open_clip/model_configs/*.json). ``vocab_size`` and
# ``context_length`` are filled in from the tokenizer by :func:`tiny_clip_config`.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {
        "image_size": 64,
        "patch_size": 8,
        "layers": 4,
        "width": 128,
        "head_width": 32,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": None,
        "width": 128,
        "heads": 4,
        "layers": 3,
        "mlp_ratio": 4.0,
        "pool_type": "argmax",
    },
}


ARCHITECTURES: dict[str, dict[str, Any]] = {
    "v1": {"layers": 4, "width": 128, "head_width": 32, "mlp_ratio": 4.0, "embed_dim": 128,
           "image_size": 64, "patch_size": 8},
    "v2": {"layers": 8, "width": 192, "head_width": 32, "mlp_ratio": 2.0, "embed_dim": 192,
           "image_size": 64, "patch_size": 16},
}
ARCHITECTURES["v3"] = dict(ARCHITECTURES["v2"])  # the pattern-background world: v2's model
"""Image tower and embedding of the tutorial CLIP per world version (the training script's
defaults for ``--world``). ``v1`` is :data:`TINY_CLIP_CONFIG`'s, the 4-layer model of the
patch-grid world; ``v2`` is the shipped checkpoint's, 8 layers for the nuisance world (6 heads
of 32, MLP ×2, ``embed_dim`` 192: ResiDual-full's parameters, 48 heads × 32 + 8 MLPs × d_out,
are 8.3% of a d_out × d_out linear adapter's at 192 but 15.5% at 128, over C13's 10%) on
16-pixel patches (16 image tokens and the class token: patches of 8 pixels, 65 tokens, made
every step and forward pass ~2–4× dearer and left layer 0 with the highest TwoNN ID). Both see
the world's 64-pixel renders as they are; ``--image-size`` resizes them (a 48-pixel v2
candidate with 8-pixel patches did not learn shape in 3,000 steps)."""


def with_architecture(config: dict[str, Any], layers: int, width: int, head_width: int,
                      mlp_ratio: float, embed_dim: int, image_size: int = 64,
                      patch_size: int = 8) -> dict[str, Any]:
    """A copy of a model config with another image tower, input, patch and embedding width."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    out = copy.deepcopy(config)
    out["vision_cfg"].update(layers=layers, width=width, head_width=head_width,
                             mlp_ratio=mlp_ratio, image_size=image_size, patch_size=patch_size)
    out["embed_dim"] = embed_dim
    return out


class ChecksumError(RuntimeError):
    """A checkpoint file's sha256 differs from the one recorded next to it."""


def retrain_command(out: Path | str = CHECKPOINT_PATH) -> str:
    """The shell command that re-creates a tutorial checkpoint."""
    return f"python -m residual_core.tutorial.train --out {out}"


def tiny_clip_config(
    vocab_size: int, context_length: int, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A complete open_clip model config for the tutorial CLIP.

    Args:
        vocab_size: Ids of the tokenizer, specials included.
        context_length: Length of the tokenizer's id rows.
        base: Config to start from (default :data:`TINY_CLIP_CONFIG`).

    Returns:
        A deep copy of ``base`` with the text tower's vocabulary and context filled in; pass it
        to :func:`build_tiny_clip`.
    """
    cfg = copy.deepcopy(TINY_CLIP_CONFIG if base is None else base)
    cfg["text_cfg"]["vocab_size"] = vocab_size
    cfg["text_cfg"]["context_length"] = context_length
    return cfg


def build_tiny_clip(model_cfg: dict[str, Any]) -> open_clip.CLIP:
    """Build an (untrained) ``open_clip.CLIP`` from a model config; float32, train mode."""
    cfg = copy.deepcopy(model_cfg)
    return open_clip.CLIP(
        embed_dim=cfg.pop("embed_dim"),
        vision_cfg=cfg.pop("vision_cfg"),
        text_cfg=cfg.pop("text_cfg"),
        **cfg,
    )


def preprocess_transform(image_size: int = 64):
    """PIL image → normalised float tensor ``(3, image_size, image_size)``, as at training."""
    return open_clip.image_transform(image_size, is_train=False, mean=IMAGE_MEAN, std=IMAGE_STD)


def images_to_tensor(
    images: UInt8[np.ndarray, "batch height width 3"], image_size: int | None = None
) -> Float[Tensor, "batch 3 size size"]:
    """uint8 HWC images → normalised float CHW tensor, identical to ``preprocess_transform``.

    Images already ``image_size`` wide (or any size with ``image_size=None``) are converted
    in one vectorised step; others go through ``preprocess_transform(image_size)`` one by one,
    so a model trained on resized renders sees the very pixels the chapters will give it.
    """
    images = np.ascontiguousarray(images)
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        transform = preprocess_transform(image_size)
        return torch.stack([transform(Image.fromarray(im)) for im in images])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _config_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def save_tiny_clip(
    model: nn.Module,
    tokenizer: WordTokenizer,
    model_cfg: dict[str, Any],
    path: Path | str = CHECKPOINT_PATH,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Save weights as fp16 safetensors and a json (config, vocabulary, sha256, metadata).

    Args:
        model: The tutorial CLIP.
        tokenizer: Its tokenizer (the vocabulary is stored so loading does not need the world).
        model_cfg: The open_clip model config the model was built from.
        path: The ``.safetensors`` file; the json goes next to it with suffix ``.json``.
        metadata: Anything else worth recording (training run, data, ...).

    Returns:
        The sha256 of the written weights file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path))
    digest = sha256_file(path)
    record = {
        "weights": path.name,
        "sha256": digest,
        "dtype": "float16",
        "model_cfg": model_cfg,
        "tokenizer": {"vocabulary": tokenizer.words, "context_length": tokenizer.context_length},
        "metadata": metadata or {},
    }
    _config_path(path).write_text(json.dumps(record, indent=1) + "\n")
    return digest


def read_record(path: Path | str = CHECKPOINT_PATH) -> dict[str, Any]:
    """The json record next to a checkpoint (config, vocabulary, sha256, metadata)."""
    config = _config_path(Path(path))
    if not config.exists():
        raise FileNotFoundError(
            f"no config {config} next to the checkpoint; re-create both with "
            f"`{retrain_command(path)}`"
        )
    return json.loads(config.read_text())


def record_world(record: dict[str, Any]) -> str:
    """The world a checkpoint's record says it was trained on (``v1`` before ``--world``)."""
    return str(record.get("metadata", {}).get("world_name", "v1"))


def record_fingerprint(record: dict[str, Any]) -> str:
    """The ``LoadedModel`` fingerprint of the checkpoint a record describes (caches key on it)."""
    return f"tutorial-{record['sha256'][:16]}"


def checkpoint_world(path: Path | str = CHECKPOINT_PATH) -> str:
    """The world a checkpoint was trained on, from its record next to it."""
    return record_world(read_record(path))


def load_tiny_clip(
    path: Path | str = CHECKPOINT_PATH, device: str | torch.device = "cpu", *, check: bool = True
) -> tuple[open_clip.CLIP, WordTokenizer, dict[str, Any]]:
    """Load the tutorial CLIP (float32, eval mode), its tokenizer and its json record.

    Args:
        path: The ``.safetensors`` checkpoint (its ``.json`` must sit next to it).
        device: Where to put the model.
        check: Verify the file's sha256 against the recorded one.

    Returns:
        ``(model, tokenizer, record)``.

    Raises:
        FileNotFoundError: If the checkpoint or its json is missing (says how to re-create it).
        ChecksumError: If the weights file's sha256 is not the recorded one; names the file, the
            expected and actual hashes and the command that re-creates it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"tutorial checkpoint {path} not found; re-create it with `{retrain_command(path)}`"
        )
    record = read_record(path)
    if check:
        actual = sha256_file(path)
        if actual != record["sha256"]:
            raise ChecksumError(
                f"checkpoint {path} is corrupt or was replaced: sha256 {actual} does not match "
                f"the expected {record['sha256']} recorded in {_config_path(path)}. Restore it "
                f"(git checkout -- {path}) or re-create it with `{retrain_command(path)}`."
            )
    tok_cfg = record["tokenizer"]
    tokenizer = WordTokenizer(tok_cfg["vocabulary"], tok_cfg["context_length"])
    model = build_tiny_clip(record["model_cfg"])
    state = load_file(str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval(), tokenizer, record


def count_parameters(model: nn.Module, prefixes: Sequence[str] = ()) -> int:
    """Number of parameters, optionally only of names starting with one of ``prefixes``."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not prefixes or n.startswith(tuple(prefixes)))
