"""Chapter §5 orchestration: every ResiDual variant on every task, resumable, as tidy rows.

For one model, the reference PCA (:func:`~residual_core.core.spectral.unit_pca` with
``output=True``) is computed once; then for every task
:func:`run_task` builds each variant of :data:`residual_core.core.residual.VARIANTS`, caches its
inputs for train/val/test (:func:`residual_core.core.residual.cache_inputs`: PCA coordinates, the
embedding, or the images for fine-tuning), trains it with
:func:`residual_core.core.training.fit_variant` and appends the result row to a :class:`ResultLog`.

Nothing is lost on a crash: every finished (model, task, variant) is one JSON line in the log,
written and fsynced before the next variant starts; a rerun with the same settings skips the
finished ones (reloading the trained λ from the best checkpoint when the chapter needs it), and
a variant interrupted mid-training resumes from its ``last`` checkpoint. Results are keyed by
:meth:`ExperimentConfig.key` (a hash of the settings a variant depends on and the model's
weights), so changed settings never reuse stale rows, and changing one variant's settings
reruns only that variant.

:func:`gain_table`, :func:`variant_summary`, :func:`lambda_overview`, :func:`pc_text_table` and
:func:`paper_comparison` turn the results and the trained λ into what the chapter shows.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from residual_core.core.decompose import Centering
from residual_core.core.dictionary import TextDictionary
from residual_core.core.residual import (
    VARIANTS,
    Variant,
    build_variant,
    cache_inputs,
    lambda_summary,
)
from residual_core.core.spectral import PCAResult
from residual_core.core.training import FitResult, TensorData, fit_variant, results_table
from residual_core.core.units import UnitLayout, Units, unit_grid
from residual_core.core.zeroshot import ZeroShotClassifier

__all__ = [
    "SPLITS",
    "ExperimentConfig",
    "ExperimentResults",
    "LambdaOverview",
    "ResultLog",
    "TaskInputs",
    "gain_summary",
    "gain_table",
    "head_grid",
    "headroom_summary",
    "headroom_table",
    "histories",
    "image_tensor",
    "lambda_overview",
    "load_trained",
    "paper_comparison",
    "results_view",
    "pc_text_findings",
    "pc_text_table",
    "pc_texts",
    "run_experiments",
    "run_task",
    "settings_table",
    "torch_threads",
    "variant_summary",
]

SPLITS = ("train", "val", "test")
CACHED = tuple(v for v in VARIANTS if v != "fine-tune")
"""Variants trained on cached inputs (the lean engine); fine-tuning trains on images."""


_CACHED_ONLY = ("max_epochs", "evr", "add_mean", "init", "centering")
_FINETUNE_ONLY = ("finetune_epochs", "finetune_train_size")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting that changes a result (hashed into :meth:`key`).

    Attributes:
        max_epochs: Upper bound on epochs of the cached variants (paper: 30).
        patience: Early-stopping patience on validation accuracy (paper: 5).
        batch_size: Training batch size (paper: 64).
        seed: Seeds batch order and any random init.
        evr: Explained-variance ratio of ``residual-fine``'s PCs (0.9).
        add_mean: Add the reference means back in the ResiDual variants.
        init: λ init, ``"ones"`` or ``"normal"``.
        centering: The unit decomposition's centring (``"shared"`` or ``"per-unit"``); it must
            match the encodings' (fine-tuning, on images, does not depend on it).
        lrs: Learning rate per variant where it differs from the variant's default.
        finetune_epochs: Epoch cap of ``fine-tune`` (the expensive one; patience still applies).
        finetune_train_size: Train on the first this many training images (``None``: all).
        device: Where to train.
        weights: The model's weights fingerprint (so another model never reuses results).
        data: What the data are (split sizes, reference set and size...): hashed only.
    """

    max_epochs: int = 30
    patience: int = 5
    batch_size: int = 64
    seed: int = 0
    evr: float = 0.9
    add_mean: bool = True
    init: Literal["ones", "normal"] = "ones"
    centering: Centering = "shared"
    lrs: Mapping[str, float] = field(default_factory=dict)
    finetune_epochs: int = 30
    finetune_train_size: int | None = None
    device: str = "cpu"
    weights: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def key(self, variant: str | None = None) -> str:
        """Short hash of the settings that change a variant's result (all, without ``variant``).

        The device is left out; a cached variant ignores the fine-tuning settings and
        fine-tuning ignores those of the cached variants, and each sees only its own learning
        rate, so changing one variant's settings reruns only that variant.
        """
        settings = {k: v for k, v in asdict(self).items() if k != "device"}
        settings["lrs"] = dict(sorted(dict(self.lrs).items()))
        settings["data"] = dict(sorted(dict(self.data).items()))
        if variant is not None:
            drop = (_CACHED_ONLY if variant == "fine-tune" else _FINETUNE_ONLY) + ("lrs",)
            settings = {k: v for k, v in settings.items() if k not in drop}
            settings["lr"] = self.lr(variant)
            settings["variant"] = variant
        blob = json.dumps(settings, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def lr(self, variant: str) -> float | None:
        """Learning rate of a variant (``None``: the variant's default)."""
        return self.lrs.get(variant)

    def authors(self) -> ExperimentConfig:
        """The same settings the authors' way: λ ~ N(1, 1) (seeded), reference means not added."""
        return replace(self, add_mean=False, init="normal")


class ResultLog:
    """Append-only JSON-lines file of result rows, one line per finished (task, variant).

    A line is written in one call, flushed and fsynced; a truncated last line (a crash while
    writing) is ignored on reading. When a key appears twice the last line wins.

    Args:
        path: The ``.jsonl`` file (created with its folder on the first append).
    """

    KEY = ("model", "config", "dataset", "variant")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row, deduplicated by key (last wins), in file order."""
        if not self.path.exists():
            return []
        out: dict[tuple, dict[str, Any]] = {}
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            key = tuple(row.get(k) for k in self.KEY)
            out.pop(key, None)
            out[key] = row
        return list(out.values())

    def find(self, **key: Any) -> dict[str, Any] | None:
        """The row with this key (``model``, ``config``, ``dataset``, ``variant``), if any."""
        wanted = tuple(key[k] for k in self.KEY)
        for row in reversed(self.rows()):
            if tuple(row.get(k) for k in self.KEY) == wanted:
                return row
        return None

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(row), default=_jsonable) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def table(self) -> pd.DataFrame:
        """The rows as :func:`residual_core.core.training.results_table` (``accuracy`` = test)."""
        return results_table(self.rows())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    return str(value)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``: as is), then restore them."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def image_tensor(dataset, preprocess, size: int | None = None) -> Float[Tensor, "n 3 h w"]:
    """The preprocessed images of a dataset, stacked once (fine-tuning trains on them)."""
    ds = dataset.with_transform(preprocess)
    n = len(ds) if size is None else min(size, len(ds))
    return torch.stack([ds[i][0] for i in range(n)])


@dataclass
class TaskInputs:
    """What every variant of one task needs.

    Attributes:
        task: Dataset name (e.g. ``world.color``).
        classifier: The frozen zero-shot classifier of the task.
        units: Unit outputs per split, or a callable returning an iterable of batches of them
            (read again for every variant).
        targets: Class indices per split.
        images: Per split, a dataset of ``(preprocessed image, class index)`` (only needed for
            ``fine-tune``): a ``TensorDataset`` of preloaded images, or the transformed dataset
            itself when the images do not fit in memory.
    """

    task: str
    classifier: ZeroShotClassifier
    units: dict[str, Units | Callable[[], Iterable[Units]]]
    targets: dict[str, Int[Tensor, " n"]]
    images: dict[str, Dataset] | None = None


def _reader(store, device: str) -> Callable[[], Iterable[Units]]:
    def read() -> Iterable[Units]:
        return store.iter_units(device=device)

    return read


def _build(name: str, inputs: TaskInputs, pca: PCAResult, output_pca: PCAResult,
           config: ExperimentConfig, visual: nn.Module | None) -> Variant:
    if visual is not None:
        visual = copy.deepcopy(visual).train()  # the loaded model is in eval mode
    return build_variant(
        name, copy.deepcopy(inputs.classifier), reference=pca, output_reference=output_pca,
        visual=visual, evr=config.evr, add_mean=config.add_mean, init=config.init,
        seed=config.seed,
    )


def load_trained(variant: Variant, ckpt_dir: str | os.PathLike) -> Variant:
    """Load the best (averaged) trainable parameters a lean fit saved in ``ckpt_dir``.

    Raises:
        FileNotFoundError: If there is no ``best.pt``.
        RuntimeError: If the checkpoint does not hold exactly the trainable parameters.
    """
    path = Path(ckpt_dir) / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"no best checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    wanted = {n for n, p in variant.named_parameters() if p.requires_grad}
    if set(state) != wanted:
        raise RuntimeError(f"{path} holds {sorted(state)}, the variant trains {sorted(wanted)}")
    variant.load_state_dict(state, strict=False)
    return variant.eval()


def _fit(name: str, variant: Variant, inputs: TaskInputs, config: ExperimentConfig,
         ckpt_dir: Path, tags: dict[str, Any], progress: bool, num_workers: int) -> FitResult:
    if name == "fine-tune":
        if inputs.images is None:
            raise ValueError("fine-tune needs the images of every split (TaskInputs.images)")
        n = config.finetune_train_size
        loaders = []
        for split in SPLITS:
            ds = inputs.images[split]
            if split == "train" and n is not None and n < len(ds):
                ds = Subset(ds, range(n))
            gen = torch.Generator().manual_seed(config.seed)
            # Evaluation batches of 128: on a CPU, ~1.5x faster than 512 (cache-friendly).
            loaders.append(DataLoader(ds, shuffle=split == "train", generator=gen,
                                      batch_size=config.batch_size if split == "train" else 128,
                                      num_workers=num_workers))
        return fit_variant(variant, *loaders, seed=config.seed,
                           max_epochs=config.finetune_epochs, patience=config.patience,
                           lr=config.lr(name), batch_size=config.batch_size,
                           device=config.device, engine="lightning", ckpt_dir=ckpt_dir,
                           resume=True, progress=progress, tags=tags)
    data = []
    for split in SPLITS:
        source = inputs.units[split]
        cached, _ = cache_inputs(variant, source() if callable(source) else source,
                                 device=config.device)
        data.append(TensorData(cached, inputs.targets[split].to(config.device)))
    return fit_variant(variant, *data, seed=config.seed, max_epochs=config.max_epochs,
                       patience=config.patience, lr=config.lr(name),
                       batch_size=config.batch_size, device=config.device, engine="lean",
                       ckpt_dir=ckpt_dir, resume=True, progress=progress, tags=tags)


def run_task(
    inputs: TaskInputs,
    variants: Sequence[str],
    pca: PCAResult,
    output_pca: PCAResult,
    config: ExperimentConfig,
    *,
    model: str,
    log: ResultLog,
    ckpt_root: str | os.PathLike,
    visual: nn.Module | None = None,
    progress: bool = False,
    num_workers: int = 0,
) -> dict[str, Variant | None]:
    """Fit every variant on one task, skipping those already in the log.

    Args:
        inputs: The task's units, targets, classifier (and images for fine-tuning).
        variants: Names from :data:`residual_core.core.residual.VARIANTS`.
        pca: Labelled per-unit reference PCA.
        output_pca: Reference PCA of the summed output.
        config: Training settings.
        model: Model name recorded in the rows.
        log: Where finished rows are appended (and looked up).
        ckpt_root: Checkpoints go to ``{ckpt_root}/{task}/{variant}/{config.key(variant)}``.
        visual: The vision tower (copied, never modified) for ``fine-tune``.
        progress: Show progress bars.
        num_workers: DataLoader workers of ``fine-tune``.

    Returns:
        Variant name → trained module (best weights, CPU, eval mode); ``None`` for a fine-tune
        found in the log (its tower is not reloaded).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {VARIANTS}")
    trained: dict[str, Variant | None] = {}
    for name in variants:
        key = config.key(name)
        ckpt_dir = Path(ckpt_root) / inputs.task / name / key
        done = log.find(model=model, config=key, dataset=inputs.task, variant=name)
        if done is not None:
            if name == "fine-tune":
                trained[name] = None
                continue
            # On the CPU, as a fresh fit returns it (the PCA it is built from may be on a GPU).
            variant = _build(name, inputs, pca, output_pca, config, None).cpu()
            if variant.n_trainable == 0:
                trained[name] = variant.eval()
                continue
            try:
                trained[name] = load_trained(variant, ckpt_dir)
                continue
            except (FileNotFoundError, RuntimeError):
                pass  # the checkpoint is gone: fit again, the new row replaces the old one
        variant = _build(name, inputs, pca, output_pca, config,
                         visual if name == "fine-tune" else None)
        start = time.perf_counter()
        tags = {"model": model, "config": key, "dataset": inputs.task}
        result = _fit(name, variant, inputs, config, ckpt_dir, tags, progress, num_workers)
        row = {**result.row, "total_time_s": time.perf_counter() - start,
               "history": result.history}
        log.append(row)
        trained[name] = None if name == "fine-tune" else result.variant.cpu().eval()
    return trained


@dataclass
class ExperimentResults:
    """What :func:`run_experiments` returns.

    Attributes:
        table: One row per task × variant (:func:`residual_core.core.training.results_table`).
        variants: ``(task, variant)`` → trained module (``None`` for fine-tune).
        pca: Labelled per-unit reference PCA (its ``layout`` is the model's).
        output_pca: Reference PCA of the summed output.
    """

    table: pd.DataFrame
    variants: dict[tuple[str, str], Variant | None]
    pca: PCAResult
    output_pca: PCAResult

    @property
    def layout(self) -> UnitLayout:
        """The model's unit layout."""
        return self.pca.layout

    def trained(self, variant: str) -> dict[str, Variant]:
        """Task → the trained ``variant`` (tasks where it was not reloaded are left out)."""
        return {task: module for (task, name), module in self.variants.items()
                if name == variant and module is not None}


def _finetune_worker(inputs: TaskInputs, pca: PCAResult, output_pca: PCAResult,
                     config: ExperimentConfig, model: str, log_path: Path, ckpt_root: Path,
                     visual: nn.Module, threads: int | None) -> None:
    """One task's fine-tune in a background process (see ``run_experiments``)."""
    with torch_threads(threads):
        run_task(inputs, ["fine-tune"], pca, output_pca, config, model=model,
                 log=ResultLog(log_path), ckpt_root=ckpt_root, visual=visual)


def run_experiments(
    loaded,
    tasks: Sequence[str],
    variants: Sequence[str],
    enc,
    pcas: tuple[PCAResult, PCAResult],
    config: ExperimentConfig,
    results_dir: str | os.PathLike,
    *,
    stream_units: bool = False,
    preload_images: bool = True,
    num_workers: int = 0,
    progress: bool = False,
    threads: int | None = None,
    finetune_processes: int = 0,
    also_train: Sequence[tuple[Sequence[str], ExperimentConfig]] = (),
) -> ExperimentResults:
    """Every variant on every task, resumable (see the module docstring).

    Args:
        loaded: A :class:`residual_core.models.LoadedModel`.
        tasks: Dataset names with ``train``/``val``/``test`` splits.
        variants: Names from :data:`residual_core.core.residual.VARIANTS`.
        enc: A :class:`residual_core.data.encodings.TaskEncodings` for the task splits.
        pcas: ``(per_unit, output)`` reference PCAs (``unit_pca(reference, output=True)``).
        config: Training settings; its ``weights`` should be ``loaded.fingerprint`` and its
            ``data`` should describe the splits and the reference set.
        results_dir: Holds ``results.jsonl`` and the checkpoints ``ckpt/{model}/...``.
        preload_images: For ``fine-tune``, preprocess every image once into memory (shared by
            the tasks showing the same images); else stream them through the transform.
        stream_units: Read each split's units from its store batch by batch whenever a
            variant caches its inputs (memory: the cached inputs only) instead of holding every
            unit of a split in memory (faster when they fit).
        num_workers: DataLoader workers of ``fine-tune``.
        progress: Show progress bars.
        threads: Torch CPU threads while training (``None``: unchanged). Encoding keeps the
            caller's setting, so the stores (shared with other chapters) hold the same bits
            whatever this is.
        finetune_processes: Fine-tune the tasks in this many background processes (each with
            ``threads`` threads) while this one trains the cached variants; ``0`` fine-tunes
            here, task by task. The rows are the same either way (every fit is seeded and
            runs with the same threads); on a machine with a core to spare the chapter
            finishes sooner.
        also_train: More ``(variants, config)`` runs of cached variants on the same tasks
            (e.g. ``config.authors()``), trained here task by task after this run's own, so
            that they fill the time the background fine-tunes would leave this process
            waiting. Their rows go to the same log: a later call with that config and those
            variants reads them back instead of training again. Not in the returned results.

    Returns:
        The results of this configuration, for the requested tasks and variants.

    Raises:
        ValueError: If ``finetune_processes`` is negative, or ``also_train`` asks for
            ``fine-tune``, an unknown variant or another centering than ``config``'s (before
            any work).
        Exception: Whatever a background fine-tune raised, once the other variants are done.
    """
    if finetune_processes < 0:
        raise ValueError(f"finetune_processes must be ≥ 0, got {finetune_processes}")
    for more, more_config in also_train:
        wrong = [v for v in more if v not in CACHED]
        if wrong:
            raise ValueError(f"also_train trains cached variants only, got {wrong}; "
                             f"choose from {list(CACHED)}")
        if more_config.centering != config.centering:
            raise ValueError(f"also_train's config has centering={more_config.centering!r}, "
                             f"this run's {config.centering!r}")
    pca, output_pca = pcas
    log = ResultLog(Path(results_dir) / "results.jsonl")
    ckpt_root = Path(results_dir) / "ckpt" / loaded.name
    images: dict[tuple[str, str], Tensor] = {}
    trained: dict[tuple[str, str], Variant | None] = {}
    pool, pending = None, []  # pending: the background fine-tunes' futures
    if finetune_processes and "fine-tune" in variants:
        # spawn: a forked child would inherit the parent's OpenMP state and threads
        import torch.multiprocessing  # noqa: F401  (shares tensors with the workers)

        pool = ProcessPoolExecutor(finetune_processes,
                                   mp_context=multiprocessing.get_context("spawn"))
    here = [v for v in variants if pool is None or v != "fine-tune"]
    try:
        for task in tasks:
            store = enc.store(task, "test")
            if store.centering != config.centering:
                raise ValueError(f"the encodings of {task!r} use centering={store.centering!r} but "
                                 f"config.centering={config.centering!r}; make them agree")
            zs = enc.classifier(task)
            targets = [enc.targets(task, s) for s in SPLITS]
            if stream_units:
                units = [_reader(enc.store(task, s), config.device) for s in SPLITS]
            else:
                units = [enc.units(task, s) for s in SPLITS]
            task_images = None
            if "fine-tune" in variants:
                task_images = {}
                for s, y in zip(SPLITS, targets, strict=True):
                    ds, src = enc.dataset(task, s), (enc.source(task, s), s)
                    if not preload_images:
                        task_images[s] = ds.with_transform(loaded.preprocess)
                        continue
                    if src not in images:
                        size = config.finetune_train_size if s == "train" else None
                        images[src] = image_tensor(ds, loaded.preprocess, size)
                    task_images[s] = TensorDataset(images[src], y[: len(images[src])])
            inputs = TaskInputs(task, copy.deepcopy(zs).cpu(),
                                dict(zip(SPLITS, units, strict=True)),
                                dict(zip(SPLITS, targets, strict=True)), task_images)
            out: dict[str, Variant | None] = {}
            if pool is not None:  # made only when fine-tune is asked for
                images_only = replace(inputs, units={})
                pending.append(pool.submit(_finetune_worker, images_only, pca, output_pca, config,
                                           loaded.name, log.path, ckpt_root, loaded.model.visual,
                                           threads))
                out["fine-tune"] = None
            with torch_threads(threads):
                out |= run_task(inputs, here, pca, output_pca, config, model=loaded.name,
                                log=log, ckpt_root=ckpt_root, visual=loaded.model.visual,
                                progress=progress, num_workers=num_workers)
                for more, more_config in also_train:
                    run_task(inputs, more, pca, output_pca, more_config, model=loaded.name,
                             log=log, ckpt_root=ckpt_root, progress=progress)
            trained.update({(task, v): out[v] for v in variants})
        for future in pending:
            future.result()  # a worker's exception is raised here
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    table = log.table()
    keep = (table.config == table.variant.map(config.key)) & (table.model == loaded.name)
    table = table[keep & table.dataset.isin(tasks) & table.variant.isin(variants)]
    order = {t: i for i, t in enumerate(tasks)} | {v: i for i, v in enumerate(variants)}
    table = table.sort_values(["dataset", "variant"], key=lambda s: s.map(order),
                              ignore_index=True)
    return ExperimentResults(table, trained, pca, output_pca)


def gain_table(
    table: pd.DataFrame, base: str = "zero-shot", variants: Sequence[str] | None = None
) -> pd.DataFrame:
    """Test accuracy gain of each variant over ``base``, per task, with a ``mean`` row.

    Args:
        table: Results with columns ``dataset``, ``variant``, ``accuracy``.
        base: The variant subtracted.
        variants: Columns to keep, in order (default: all but ``base``).

    Returns:
        Tasks (plus ``mean``) × variants.
    """
    acc = table.pivot(index="dataset", columns="variant", values="accuracy")
    acc = acc.loc[list(dict.fromkeys(table.dataset))]
    if variants is None:
        variants = [v for v in dict.fromkeys(table.variant) if v != base]
    gains = acc[list(variants)].sub(acc[base], axis=0)
    gains.loc["mean"] = gains.mean()
    gains.columns.name = f"gain over {base}"
    return gains


def settings_table(
    default: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str] = ("book", "authors"),
) -> pd.DataFrame:
    """The same variants on the same tasks under two settings, side by side.

    Args:
        default: Results (``dataset``, ``variant``, ``accuracy``, ``epochs``) of the default
            settings.
        other: Results of the other settings; only variants and tasks in both are compared.
        names: Column prefixes of the two settings.

    Returns:
        One row per variant: mean test accuracy and mean epochs under each setting, the mean
        accuracy difference (default − other) and on how many tasks each setting is ahead by
        more than half a point.
    """
    a, b = names
    both = default.merge(other, on=["dataset", "variant"], suffixes=(f"_{a}", f"_{b}"))
    diff = both[f"accuracy_{a}"] - both[f"accuracy_{b}"]
    both = both.assign(diff=diff, a_ahead=diff > 0.005, b_ahead=diff < -0.005)
    out = both.groupby("variant", sort=False).agg(**{
        f"accuracy_{a}": (f"accuracy_{a}", "mean"), f"accuracy_{b}": (f"accuracy_{b}", "mean"),
        f"epochs_{a}": (f"epochs_{a}", "mean"), f"epochs_{b}": (f"epochs_{b}", "mean"),
        "difference": ("diff", "mean"), f"{a}_ahead": ("a_ahead", "sum"),
        f"{b}_ahead": ("b_ahead", "sum"), "tasks": ("dataset", "size"),
    })
    return out


def headroom_table(
    table: pd.DataFrame, ceiling: pd.Series, variants: Sequence[str], base: str = "zero-shot",
    min_gap: float = 0.01,
) -> pd.DataFrame:
    """How much of the gap between zero-shot and a probe ceiling each variant closes, per task.

    Args:
        table: Results with ``dataset``, ``variant``, ``accuracy``.
        ceiling: Task → accuracy of a reference reader (e.g. a linear probe on the embedding).
        variants: Variants whose share is reported.
        base: The starting point (zero-shot).
        min_gap: Below this headroom the share is undefined (NaN): nothing to close.

    Returns:
        Tasks (plus ``mean``) × ``[base, "ceiling", "headroom", *variants]``; variant columns are
        ``(accuracy − base) / (ceiling − base)``: 0 = no gain, 1 = the ceiling reached.
    """
    acc = table.pivot(index="dataset", columns="variant", values="accuracy")
    acc = acc.loc[list(dict.fromkeys(table.dataset))]
    out = pd.DataFrame({base: acc[base], "ceiling": ceiling.reindex(acc.index).astype(float)})
    out["headroom"] = out.ceiling - out[base]
    gap = out.headroom.where(out.headroom >= min_gap)
    for v in variants:
        out[v] = (acc[v] - out[base]) / gap
    out.loc["mean"] = out.mean()
    return out


def head_grid(variant: Variant, layout: UnitLayout, value: str = "mean_abs_dev") -> pd.DataFrame:
    """Layer × (heads, MLP) grid of a λ statistic of a trained ResiDual / coarse variant.

    Args:
        variant: Trained variant with per-unit λ.
        layout: The model's unit layout.
        value: A column of :func:`residual_core.core.residual.lambda_summary`.

    Returns:
        Rows ``L0..``; columns ``H0..`` and ``MLP`` (when the variant trains MLPs); NaN for units
        the variant does not train.
    """
    return unit_grid(lambda_summary(variant).set_index("unit")[value], layout)


def pc_texts(
    variant: Variant,
    pca: PCAResult,
    dictionary: TextDictionary,
    *,
    units: int = 4,
    top: int = 2,
    min_evr: float = 0.01,
) -> pd.DataFrame:
    """The most amplified and suppressed PCs of the most changed units, with their nearest texts.

    Only PCs carrying at least ``min_evr`` of their unit's reference variance are considered: a
    λ on a direction the data barely use can drift far without changing the output. Units are
    ranked by the variance-weighted change ``Σ_k evr_k |λ_k − 1|`` over those PCs.

    A PC direction lives in the joint image–text space (units are projected to ``d_out``), so
    its cosine with a text embedding says which description it points along (sign ignored: a
    PC's sign is arbitrary).

    Args:
        variant: Trained ResiDual variant (per-PC λ).
        pca: The labelled per-unit reference PCA the variant was built from.
        dictionary: An embedded dictionary (its texts, families and embeddings).
        units: How many of the most changed units.
        top: Amplified and suppressed PCs listed per unit.
        min_evr: Smallest explained-variance ratio of a PC to be considered.

    Returns:
        One row per (unit, PC): ``unit``, ``pc``, ``lambda``, ``evr`` (the PC's share of the
        unit's reference variance), ``effect`` (amplified / suppressed), ``text``, ``cosine``
        and ``families`` (of the text).
    """
    texts, families = dictionary.texts, dictionary.families
    emb = F.normalize(dictionary.require_embeddings().float(), dim=-1)
    ratio = pca.explained_variance_ratio.float().cpu()  # λ is read on the CPU below
    candidates = []
    for unit, sl in variant.basis.slices().items():
        lam = variant.lam.detach().cpu()[sl]
        evr = ratio[pca.index(unit)[0], : len(lam)]
        keep = torch.nonzero(evr >= min_evr).flatten()
        if len(keep):
            score = float((evr[keep] * (lam[keep] - 1).abs()).sum())
            candidates.append((score, unit, sl, lam, evr, keep))
    candidates.sort(key=lambda c: -c[0])
    rows = []
    for _, unit, sl, lam, evr, keep in candidates[:units]:
        order = keep[torch.argsort(lam[keep], descending=True)].tolist()
        picks = [(p, "amplified") for p in order[:top]]
        picks += [(p, "suppressed") for p in order[::-1][:top] if p not in order[:top]]
        comps = variant.components[sl].cpu()
        for p, effect in picks:
            cos = emb @ F.normalize(comps[p], dim=0)
            best = int(cos.abs().argmax())
            row = {"unit": unit, "pc": p, "lambda": float(lam[p]), "evr": float(evr[p]),
                   "effect": effect, "text": texts[best], "cosine": float(cos[best])}
            row["families"] = tuple(families[best])
            rows.append(row)
    return pd.DataFrame.from_records(rows)


def results_view(table: pd.DataFrame, rename: Callable[[str], str] = str) -> pd.DataFrame:
    """The results shown to a reader: one row per task × variant, the run's columns.

    Args:
        table: Results of :func:`run_experiments`.
        rename: Applied to the task names (e.g. a shorter label).

    Returns:
        ``dataset``, ``variant``, ``accuracy``, ``val_acc``, ``params``, ``epochs``, ``best``
        (best epoch) and ``time_s``.
    """
    columns = ["dataset", "variant", "accuracy", "val_acc", "params", "epochs", "best_epoch",
               "wall_time_s"]
    return (table[columns].assign(dataset=table.dataset.map(rename))
            .rename(columns={"wall_time_s": "time_s", "best_epoch": "best"}))


def variant_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant, over the tasks: parameters, test accuracy (mean, min, max), epochs, time.

    Args:
        table: Results with ``variant``, ``params``, ``accuracy``, ``epochs``, ``wall_time_s``.

    Returns:
        Indexed by variant (in order of appearance): ``params``, ``mean_accuracy``,
        ``min_accuracy``, ``max_accuracy``, ``mean_epochs``, ``total_time_s``.
    """
    return table.groupby("variant", sort=False).agg(
        params=("params", "first"), mean_accuracy=("accuracy", "mean"),
        min_accuracy=("accuracy", "min"), max_accuracy=("accuracy", "max"),
        mean_epochs=("epochs", "mean"), total_time_s=("wall_time_s", "sum"),
    )


def gain_summary(gains: pd.DataFrame, margin: float = 0.005) -> pd.DataFrame:
    """Per variant: mean gain over zero-shot and on how many tasks it is better or worse.

    Args:
        gains: :func:`gain_table` (tasks plus a ``mean`` row × variants).
        margin: A task counts as better (worse) when the gain exceeds ``+margin`` (``-margin``).

    Returns:
        Indexed by variant: ``mean_gain``, ``better``, ``worse``, ``tasks``.
    """
    per_task = gains.drop(index="mean", errors="ignore")
    return pd.DataFrame({
        "mean_gain": per_task.mean(),
        "better": (per_task > margin).sum(),
        "worse": (per_task < -margin).sum(),
        "tasks": per_task.notna().sum(),
    })


def headroom_summary(room: pd.DataFrame, min_room: float = 0.05) -> pd.Series:
    """The headlines of a :func:`headroom_table`.

    Returns:
        ``zero_shot``, ``ceiling`` and ``headroom`` (means over tasks), ``tasks_with_room``
        (tasks with at least ``min_room`` of headroom), ``tasks``, and per variant
        ``closed_<variant>``: the median over tasks of the share of headroom closed.
    """
    tasks = room.drop(index="mean", errors="ignore")
    out = {"zero_shot": float(tasks.iloc[:, 0].mean()), "ceiling": float(tasks.ceiling.mean()),
           "headroom": float(tasks.headroom.mean()),
           "tasks_with_room": int((tasks.headroom >= min_room).sum()), "tasks": len(tasks)}
    for variant in room.columns[3:]:
        out[f"closed_{variant}"] = float(tasks[variant].median())
    return pd.Series(out)


@dataclass
class LambdaOverview:
    """What one ResiDual variant changed, over the tasks it was trained on.

    Attributes:
        grids: Task → layer × (heads, MLP) grid of mean ``|λ − 1|`` (:func:`head_grid`).
        mean_grid: The grids averaged over tasks.
        changes: Units × tasks, mean ``|λ − 1|`` of each unit.
        by_layer: Per layer, the mean of ``mean_grid`` over its heads (and MLP).
    """

    grids: dict[str, pd.DataFrame]
    mean_grid: pd.DataFrame
    changes: pd.DataFrame
    by_layer: pd.Series

    @property
    def ranked_units(self) -> pd.Series:
        """Mean ``|λ − 1|`` over tasks per unit, most changed first."""
        return self.changes.mean(axis=1).sort_values(ascending=False)

    @property
    def most_changed_layer(self) -> str:
        """The layer (``L{l}``) with the largest mean change."""
        return str(self.by_layer.idxmax())

    def describe(self, most: int = 5, least: int = 3) -> str:
        """The most and least changed units and the change per layer, in three lines."""
        ranked = self.ranked_units
        return "\n".join([
            "most changed units (mean |λ − 1| over tasks): "
            + ", ".join(f"{u} {x:.2f}" for u, x in ranked.head(most).items()),
            "least changed: " + ", ".join(f"{u} {x:.2f}" for u, x in ranked.tail(least).items()),
            "mean |λ − 1| per layer: "
            + ", ".join(f"{k} {x:.2f}" for k, x in self.by_layer.items())
            + f"; the most changed layer is {self.most_changed_layer} of {len(self.by_layer)}",
        ])


def lambda_overview(trained: Mapping[str, Variant], layout: UnitLayout) -> LambdaOverview | None:
    """Mean ``|λ − 1|`` per unit of one variant trained on several tasks (``None`` if none).

    Args:
        trained: Task → trained ResiDual / coarse variant.
        layout: The model's unit layout.
    """
    if not trained:
        return None
    grids = {t: head_grid(v, layout) for t, v in trained.items()}
    mean_grid = sum(grids.values()) / len(grids)
    changes = pd.DataFrame({t: lambda_summary(v).set_index("unit").mean_abs_dev
                            for t, v in trained.items()})
    return LambdaOverview(grids, mean_grid, changes, mean_grid.mean(axis=1))


def pc_text_table(trained: Mapping[str, Variant], pca: PCAResult, dictionary: TextDictionary,
                  *, units: int = 3, top: int = 1, min_evr: float = 0.01) -> pd.DataFrame:
    """:func:`pc_texts` of every task's variant in one table, with the task's own family.

    Returns:
        :func:`pc_texts` rows with ``task``, ``task_family`` (the dictionary family the task's
        name gives, see :func:`~residual_core.analysis.specialization.task_family`) and
        ``names_task_family`` (whether the nearest text names it).
    """
    from residual_core.analysis.specialization import task_family

    parts = [pc_texts(v, pca, dictionary, units=units, top=top, min_evr=min_evr).assign(task=t)
             for t, v in trained.items()]
    if not parts:
        return pd.DataFrame()
    pcs = pd.concat(parts, ignore_index=True)
    families = dictionary.family_names()
    pcs["task_family"] = [task_family(t, families) for t in pcs.task]
    pcs["names_task_family"] = [f in fams for f, fams in zip(pcs.task_family, pcs.families,
                                                            strict=True)]
    return pcs


def pc_text_findings(pcs: pd.DataFrame) -> pd.DataFrame:
    """Per effect (amplified, suppressed): PCs, median λ and evr, and naming the task's family.

    Args:
        pcs: :func:`pc_text_table`.

    Returns:
        Indexed by effect: ``pcs``, ``median_lambda``, ``median_evr`` and ``name_task_family``
        (PCs whose nearest text names the task's own family).
    """
    return pcs.groupby("effect").agg(
        pcs=("pc", "size"), median_lambda=("lambda", "median"), median_evr=("evr", "median"),
        name_task_family=("names_task_family", "sum"),
    ).reindex(["amplified", "suppressed"])


def histories(table: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    """Task → variant → validation accuracy after every epoch (the ``history`` column)."""
    return {t: dict(zip(g.variant, g.history, strict=True))
            for t, g in table.groupby("dataset", sort=False)}


def paper_comparison(table: pd.DataFrame, layout: UnitLayout, *, finetune_epochs: int,
                     finetune_train_size: int | None) -> list[str]:
    """This run's numbers next to the paper's claims on parameters and accuracy, one line each.

    The paper: ResiDual* trains 8.3k–14k parameters (about 3e-5 of a ViT-L) and reaches 0.90–0.92
    mean accuracy over ten datasets, "matching full fine-tuning"; the linear adapter needs
    ~0.6M parameters.

    Args:
        table: Results (``dataset``, ``variant``, ``accuracy``, ``params``, ``epochs``,
            ``wall_time_s``).
        layout: The model's unit layout (its scale next to the paper's towers).
        finetune_epochs: The epoch cap of ``fine-tune`` in this run.
        finetune_train_size: Its training images (``None``: all).
    """
    summary = variant_summary(table)
    acc, params = summary.mean_accuracy, summary.params
    lay = layout
    lines = [f"scale: {lay.n_layers} layers × {lay.n_heads} heads of width {lay.d_head}, d_out "
             f"{lay.d_out} (paper: ViT-B/16 12×12 heads of 64, d_out 512; ViT-L/14 24×16, 768)"]
    if {"residual-fine", "fine-tune"} <= set(acc.index):
        accuracy = table.pivot(index="dataset", columns="variant", values="accuracy")
        gap = acc["fine-tune"] - acc["residual-fine"]
        ratio = params["residual-fine"] / params["fine-tune"]
        per_task = accuracy["fine-tune"] - accuracy["residual-fine"]
        lines.append(
            f"residual-fine: {params['residual-fine']:,} parameters ({ratio:.1e} of "
            f"fine-tuning's {params['fine-tune']:,}); mean accuracy {acc['residual-fine']:.3f} "
            f"vs fine-tuning {acc['fine-tune']:.3f} (gap {gap:+.3f}); within 1 point of "
            f"fine-tuning or better on {int((per_task <= 0.01).sum())} of {len(per_task)} tasks")
    for v in ["residual-full", "coarse", "spectral-adapter", "linear-adapter"]:
        if v in acc.index and "zero-shot" in acc.index:
            lines.append(f"{v}: {params[v]:,} parameters, mean accuracy {acc[v]:.3f} "
                         f"({acc[v] - acc['zero-shot']:+.3f} over zero-shot "
                         f"{acc['zero-shot']:.3f})")
    if {"residual-full", "linear-adapter"} <= set(acc.index):
        lines.append(f"residual-full vs linear-adapter: "
                     f"{acc['residual-full'] - acc['linear-adapter']:+.3f} accuracy with "
                     f"{params['residual-full'] / params['linear-adapter']:.2f}× the parameters")
    if "fine-tune" in acc.index:
        ft = table[table.variant == "fine-tune"]
        lines.append(f"fine-tune: capped at {finetune_epochs} epochs on "
                     f"{finetune_train_size or 'all'} training images (ran "
                     f"{ft.epochs.mean():.1f} on average, {ft.wall_time_s.sum():.0f} s in all) "
                     f"vs {table[table.variant != 'fine-tune'].wall_time_s.sum():.0f} s for "
                     "every other variant on every task together")
    return lines
