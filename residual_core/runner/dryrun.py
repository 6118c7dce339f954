"""What a chapter run (or a sweep) would download, store and need on the GPU: a dry run.

:func:`plan` reads the full parameter sets of the runs (defaults + overrides), finds the models
and datasets they name, and estimates without downloading or executing anything:

- downloads: model checkpoints (:data:`residual_core.models.specs.MODELS`) and datasets
  (:data:`residual_core.data.paper.PAPER_DATASETS`), with the ones that need a manual download
  flagged; the tutorial world and ``synthetic`` are generated, random weights need nothing;
- disk: downloads plus the encoding stores (raw form in float32: ``L·H·d_head + (L+1)·d_model``
  values per image) plus fine-tuning checkpoints;
- GPU memory: an **estimate** of the weights in float32 plus the activations of one
  decomposition batch (one block at a time) and, where ``fine-tune`` runs, Adam's state and the
  activations kept for the backward pass.

Architecture sizes come from open_clip's bundled configs (no download) and, for the Hugging Face
models, whose configs are not local, from their :class:`~residual_core.models.specs.ModelSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelNeeds", "Plan", "arch_of", "format_plan", "gb_text", "plan"]

IMAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "reference": ("reference_size", "size"),
    "tasks": ("train_size", "val_size", "test_size"),
    "datasets": ("size",),
    "images_from": ("n_images",),
}
"""Chapter parameter naming datasets → parameters holding how many images of each are encoded
(a ``None`` count means the whole split)."""

APPROX_IMAGES: dict[str, int] = {
    "cifar10": 60_000, "cifar100": 60_000, "dtd": 5_640, "eurosat": 27_000, "gtsrb": 51_839,
    "mnist": 70_000, "resisc45": 31_500, "cars": 16_185, "sun397": 108_754, "svhn": 99_289,
    "imagenet": 1_331_167, "imagenet_sketch": 50_889, "pacs": 9_991, "random": 10_000,
}
"""Images in all splits of each paper dataset (public counts), for the estimate only: a split
given as ``None`` is counted as a third of the whole set (train/val/test)."""

GIB = 2**30


@dataclass
class ModelNeeds:
    """One model's share of a plan.

    Attributes:
        key: Registry key.
        weights: ``pretrained`` or ``random``.
        download_gb: Checkpoint size (0 for random weights, ``None`` if unknown).
        params_m: Parameters in millions (``None`` if unknown).
        arch: Vision layout used for the estimates (layers, width, head_width, patch_size,
            image_size), or ``None``.
        arch_note: Where ``arch`` comes from.
        images: Images encoded with this model.
        batch_size: Decomposition batch size.
        finetune_batch: Batch size of fine-tuning, or ``None`` if it does not run.
        finetune_tasks: Fine-tuning runs (checkpoints kept).
    """

    key: str
    weights: str = "pretrained"
    download_gb: float | None = None
    params_m: float | None = None
    arch: dict[str, int] | None = None
    arch_note: str = ""
    images: int = 0
    batch_size: int = 256
    finetune_batch: int | None = None
    finetune_tasks: int = 0

    @property
    def bytes_per_image(self) -> int | None:
        """Store bytes per encoded image (raw form, float32, plus sigma and target)."""
        if self.arch is None:
            return None
        a = self.arch
        heads = a["width"] // a["head_width"]
        values = a["layers"] * heads * a["head_width"] + (a["layers"] + 1) * a["width"] + 2
        return 4 * values

    @property
    def store_gb(self) -> float | None:
        """Encoding stores written for this model."""
        per = self.bytes_per_image
        return None if per is None else self.images * per / GIB

    @property
    def checkpoint_gb(self) -> float:
        """Fine-tuning checkpoints (best and last, float32 tower)."""
        return 0.0 if self.params_m is None else self.finetune_tasks * 2 * self.params_m * 4e6 / GIB

    @property
    def gpu_gb(self) -> float | None:
        """Estimated peak GPU memory (GiB): weights + the largest working set."""
        if self.params_m is None or self.arch is None:
            return None
        a = self.arch
        tokens = (a["image_size"] // a["patch_size"]) ** 2 + 1
        heads = a["width"] // a["head_width"]
        weights = self.params_m * 1e6 * 4
        # decomposition: one block's tensors (~12 per token) and its attention scores
        block = self.batch_size * tokens * (12 * a["width"] + heads * tokens) * 4
        peak = weights + block
        if self.finetune_batch:
            # weights, grads and two Adam moments; ~16 kept tensors per token per block
            acts = self.finetune_batch * tokens * a["layers"] * (16 * a["width"] + heads * tokens)
            peak = max(peak, 4 * weights + acts * 4)
        return peak * 1.2 / GIB  # 20% for the allocator and the CUDA context


@dataclass
class Plan:
    """What a set of runs needs.

    Attributes:
        runs: ``(label, full parameters)`` per run.
        models: Per model key.
        datasets: Dataset name → ``{"images", "download_gb", "manual", "source", "known"}``.
        notes: Caveats (missing tables, assumptions).
    """

    runs: list[tuple[str, dict[str, Any]]]
    models: dict[str, ModelNeeds] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def download_gb(self) -> float:
        """Known downloads (GiB)."""
        return (sum(m.download_gb or 0 for m in self.models.values())
                + sum(d["download_gb"] or 0 for d in self.datasets.values()))

    @property
    def disk_gb(self) -> float:
        """Downloads + stores + checkpoints (GiB), known parts only."""
        return (self.download_gb + sum(m.store_gb or 0 for m in self.models.values())
                + sum(m.checkpoint_gb for m in self.models.values()))

    @property
    def gpu_gb(self) -> float | None:
        """Largest per-model GPU estimate (runs execute one at a time per GPU)."""
        known = [m.gpu_gb for m in self.models.values() if m.gpu_gb is not None]
        return max(known) if known else None


def _tables() -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    from residual_core.data.paper import PAPER_DATASETS
    from residual_core.models.specs import MODELS

    return MODELS, PAPER_DATASETS


def arch_of(key: str) -> tuple[dict[str, int] | None, str]:
    """Vision layout of a model key or open_clip name, from local configs only.

    Returns:
        ``(layout, note)``; the layout is ``None`` for an unknown name.
    """
    import open_clip

    from residual_core.models.specs import MODELS

    spec = MODELS.get(key)
    name = spec.arch if spec is not None and spec.source == "open_clip" else key
    if spec is not None and spec.hf is not None:
        v = spec.hf
        layout = {"layers": v.layers, "width": v.width, "head_width": v.width // v.heads,
                  "patch_size": v.patch_size, "image_size": spec.image_size}
        return layout, "the key's Hugging Face vision tower (residual_core.models.specs)"
    if key == "tutorial":
        from residual_core.tutorial.model import CHECKPOINT_PATH, read_record

        v = read_record(CHECKPOINT_PATH)["model_cfg"]["vision_cfg"]
        layout = {k: v[k] for k in ("layers", "width", "head_width", "patch_size", "image_size")}
        return layout, (f"tutorial model (shipped, {CHECKPOINT_PATH.stat().st_size / 2**20:.0f} "
                        "MiB; layout from its record)")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        return None, f"no local config for {name!r}"
    v = cfg["vision_cfg"]
    size = v.get("image_size", 224)
    layout = {"layers": v["layers"], "width": v["width"], "head_width": v.get("head_width", 64),
              "patch_size": v["patch_size"],
              "image_size": size if isinstance(size, int) else size[0]}
    return layout, f"open_clip config {name}"


def _dataset_names(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _dataset_names(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _dataset_names(v)


def _count(name: str, counts: Sequence[int | None]) -> int:
    full = APPROX_IMAGES.get(name)
    total = 0
    for c in counts:
        total += c if c is not None else (full // 3 if full else 0)
    return total


def plan(
    runs: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    model_info: Mapping[str, Any] | None = None,
    dataset_info: Mapping[str, Any] | None = None,
) -> Plan:
    """Collect what the runs need.

    Args:
        runs: ``(label, full parameter set)`` per run (defaults updated by overrides).
        model_info: ``key → ModelSpec`` (fields ``params_m``, ``download_mb``, ...); default:
            :data:`residual_core.models.specs.MODELS`.
        dataset_info: ``name → PaperDatasetInfo`` (``download_gb``, ``needs_manual_download``,
            ``source_url``); default: :data:`residual_core.data.paper.PAPER_DATASETS`.

    Returns:
        The plan; nothing is downloaded or executed.
    """
    models, datasets = _tables()
    model_info = models if model_info is None else model_info
    dataset_info = datasets if dataset_info is None else dataset_info
    out = Plan([(label, dict(p)) for label, p in runs])
    approximate = False
    encoded: set[tuple[str, str, tuple]] = set()
    for _, params in out.runs:
        key = params.get("model")
        if not isinstance(key, str):
            continue
        weights = params.get("weights", "pretrained")
        mkey = f"{key} ({weights})" if weights != "pretrained" else key
        if mkey not in out.models:
            arch, note = arch_of(key)
            info = (model_info or {}).get(key)
            params_m = getattr(info, "params_m", None)
            if params_m is None and arch is not None:
                params_m = 12 * arch["layers"] * arch["width"] ** 2 / 1e6  # the tower only
                note += "; parameters estimated as 12·L·d² (vision tower)"
            download = None if info is None else getattr(info, "download_mb", 0) / 1024
            if weights == "random" or key == "tutorial":
                download = 0.0
            out.models[mkey] = ModelNeeds(mkey, weights, download, params_m, arch, note,
                                          batch_size=0)
        need = out.models[mkey]
        # chapter 05's batch_size is its training batch; stores always encode in batches of 256
        variants = params.get("variants", ())
        encode_batch = 256 if "variants" in params else int(params.get("batch_size") or 256)
        need.batch_size = max(need.batch_size, encode_batch)
        if "fine-tune" in variants:
            need.finetune_batch = int(params.get("batch_size") or 64)
            need.finetune_tasks += len(params.get("tasks", ()))
        for param, count_params in IMAGE_PARAMS.items():
            present = [c for c in count_params if c in params]
            counts = [params[c] for c in (present if param == "tasks" else present[:1])]
            for name in dict.fromkeys(_dataset_names(params.get(param))):
                if name == "noise":
                    continue
                generated = name == "synthetic" or name.startswith("world")
                if not generated and (not counts or None in counts):
                    approximate = True
                images = _count(name, counts or [None])
                if (mkey, name, tuple(counts)) in encoded:
                    continue  # the same store again (e.g. the reference of every sweep pair)
                encoded.add((mkey, name, tuple(counts)))
                need.images += images
                entry = out.datasets.setdefault(name, {"images": 0, "download_gb": None,
                                                       "manual": False, "source": "",
                                                       "known": False})
                entry["images"] += images
                info = (dataset_info or {}).get(name)
                if info is not None:
                    entry.update(download_gb=float(info.download_gb),
                                 manual=bool(info.needs_manual_download),
                                 source=str(info.source_url), known=True)
                elif generated:
                    entry.update(download_gb=0.0, source="generated (tutorial world)",
                                 known=True)
    unknown = [n for n, d in out.datasets.items() if not d["known"]]
    if unknown:
        out.notes.append(f"datasets with unknown download size: {unknown}")
    if approximate:
        out.notes.append("a split of size None (the whole split) is counted as a third of the "
                         "dataset's public image count")
    return out


def gb_text(value: float | None) -> str:
    """A size in GiB for the plan's text (``unknown`` for a missing value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return f"{value:,.2f} GiB" if value < 100 else f"{value:,.0f} GiB"


def format_plan(p: Plan) -> str:
    """A human-readable report of a plan (what ``--dry-run`` prints)."""
    lines = [f"dry run: {len(p.runs)} run(s); nothing is downloaded or executed"]
    for label, params in p.runs[:20]:
        lines.append(f"  {label}: model={params.get('model')!r} device={params.get('device')!r}")
    if len(p.runs) > 20:
        lines.append(f"  ... and {len(p.runs) - 20} more")
    lines.append("models:")
    for m in p.models.values():
        size = "no download" if m.download_gb == 0 else f"download {gb_text(m.download_gb)}"
        params = "?" if m.params_m is None else f"{m.params_m:,.0f}M params"
        lines.append(f"  {m.key}: {size}, {params}, {m.images:,} images encoded → stores "
                     f"{gb_text(m.store_gb)}; GPU memory ≈ {gb_text(m.gpu_gb)} (estimate; "
                     f"{m.arch_note})")
    lines.append("datasets:")
    for name, d in p.datasets.items():
        manual = "  MANUAL DOWNLOAD" if d["manual"] else ""
        src = f" from {d['source']}" if d["source"] else ""
        lines.append(f"  {name}: {d['images']:,} images used; download "
                     f"{gb_text(d['download_gb'])}{src}{manual}")
    lines.append(f"total download ≈ {gb_text(p.download_gb)}; disk needed ≈ {gb_text(p.disk_gb)} "
                 "(downloads + encoding stores + fine-tune checkpoints)")
    lines.append(f"GPU memory ≈ {gb_text(p.gpu_gb)} per job (a run, or one pair of a sweep; an "
                 "estimate: float32 weights + one decomposition batch, or fine-tuning with Adam; "
                 "measure on the device)")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
