"""The paper's datasets in the dataset registry: ``load_dataset("cifar10", "test")``.

The registry adds them on first use (:func:`specs`):

- the ten evaluation datasets ``cifar10``, ``cifar100``, ``dtd``, ``eurosat``, ``gtsrb``,
  ``mnist``, ``resisc45``, ``cars`` (Stanford Cars), ``sun397``, ``svhn``;
- ``imagenet``, the reference set for PCA bases: an ImageNet-train subset of 80k train / 20k
  val images (stratified, seed 42); its test split is the official ImageNet validation set;
- the §3.2 sets ``imagenet_sketch``, ``pacs`` (all four domains; ``pacs.photo``,
  ``pacs.art_painting``, ``pacs.cartoon``, ``pacs.sketch`` for one domain) and ``random``
  (10k images uniform in [-1, 1] in the model's normalised input space, see
  :class:`RandomImages`).

Class names and templates are the standard CLIP ones, kept in
``residual_core/data/paper_prompts.json`` (see :func:`classnames`, :func:`templates`).

**Where the data lives.** One data root: ``residual_core.data.paper.set_data_root(path)``, else
``$RESIDUAL_DATA``, else ``$RESIDUAL_CACHE/data``, else ``<repo>/.cache/data`` (next to the
encoding cache). Under it every dataset has torchvision's own layout, so an existing torchvision
download can be pointed at directly (``DATASET_LAYOUTS`` lists them; a missing one raises
:class:`DatasetNotFoundError` naming the path, the layout and where to get the files).
Datasets torchvision can download (CIFAR, MNIST, SVHN, GTSRB, DTD, EuroSAT, SUN397) are
downloaded there when ``RESIDUAL_DOWNLOAD=1``; off by default. ImageNet, ImageNet-Sketch, PACS,
RESISC45 and Stanford Cars are downloaded by hand. SVHN and Stanford Cars need ``scipy`` (their
annotations are ``.mat`` files).

**Splits** (all deterministic, seed 42; :data:`SPLIT_RULES`): the official test split where
there is one; DTD's official train1/val1/test1; SUN397's official partition 01 when its
``Training_01.txt``/``Testing_01.txt`` are present (otherwise a stratified split, with a
warning); else a stratified 20% test split. The validation split is a stratified 10% of the
training data (``VAL_FRACTION``) where no official one exists. Every split is ordered so that
each of its prefixes is stratified too (:func:`stratified_order`): ``size`` takes the first
``size`` samples (at most the whole split), so a smaller split is a prefix of a larger one, as
for the tutorial datasets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from residual_core.core.errors import InputError, ResidualError, cli_main
from residual_core.data.base import SPLITS, ClassificationDataset, DatasetSpec

__all__ = [
    "DATASET_LAYOUTS",
    "DATA_ENV",
    "DOWNLOAD_ENV",
    "IMAGENET_SUBSET",
    "PACS_DOMAINS",
    "PAPER_DATASETS",
    "PROMPTS_PATH",
    "RANDOM_SIZE",
    "SEED",
    "SPLIT_RULES",
    "TEST_FRACTION",
    "VAL_FRACTION",
    "DatasetNotFoundError",
    "PaperDatasetInfo",
    "RandomImages",
    "available",
    "build",
    "classnames",
    "clear_sources",
    "data_root",
    "download_enabled",
    "main",
    "paper_names",
    "set_data_root",
    "stratified_order",
    "templates",
]

DATA_ENV = "RESIDUAL_DATA"
"""Environment variable naming the data root."""
DOWNLOAD_ENV = "RESIDUAL_DOWNLOAD"
"""Set to ``1`` to let torchvision download the datasets it can download."""
SEED = 42
VAL_FRACTION = 0.1
"""Validation split carved from the training data where no official one exists."""
TEST_FRACTION = 0.2
"""Test split of a dataset with no official split."""
IMAGENET_SUBSET = {"train": 80_000, "val": 20_000}
"""The paper's reference subset of ImageNet-train; fewer images: the same 80/20 proportions."""
RANDOM_SIZE = 10_000
"""Default number of images per split of ``random``."""
PACS_DOMAINS = ("photo", "art_painting", "cartoon", "sketch")
PROMPTS_PATH = Path(__file__).parent / "paper_prompts.json"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
_WNID = re.compile(r"^n\d{8}$")


class DatasetNotFoundError(ResidualError, FileNotFoundError):
    """A paper dataset is not where it is expected; the message says what to put where."""


@dataclass(frozen=True)
class PaperDatasetInfo:
    """What a dry run needs to know about one paper dataset, without touching the data.

    Attributes:
        name: Registry name.
        description: One line.
        source_url: Where the files come from.
        download_gb: Approximate size of the download (the archives), in GB (10⁹ bytes).
        n_classes: Number of classes (length of the class-name list).
        n_templates: Number of prompt templates.
        needs_manual_download: ``True`` where ``RESIDUAL_DOWNLOAD=1`` cannot fetch it.
    """

    name: str
    description: str
    source_url: str
    download_gb: float
    n_classes: int
    n_templates: int
    needs_manual_download: bool


@dataclass(frozen=True)
class _Meta:
    description: str
    source_url: str
    download_gb: float
    prompts: tuple[str, str]  # (class-name list, template list) in paper_prompts.json
    layout: str  # relative to the data root
    torchvision_download: bool


_META: dict[str, _Meta] = {
    "cifar10": _Meta(
        "CIFAR-10 (official train/test)", "https://www.cs.toronto.edu/~kriz/cifar.html", 0.17,
        ("cifar10", "cifar"),
        "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python version, "
        "cifar-10-python.tar.gz extracted)", True),
    "cifar100": _Meta(
        "CIFAR-100 (official train/test, 100 fine classes)",
        "https://www.cs.toronto.edu/~kriz/cifar.html", 0.17, ("cifar100", "cifar"),
        "cifar-100-python/{train, test, meta} (cifar-100-python.tar.gz extracted)", True),
    "dtd": _Meta(
        "Describable Textures (official partition 1: train1/val1/test1)",
        "https://www.robots.ox.ac.uk/~vgg/data/dtd/", 0.63, ("dtd", "dtd"),
        "dtd/dtd/images/<class>/*.jpg and dtd/dtd/labels/{train1,val1,test1}.txt "
        "(dtd-r1.0.1.tar.gz extracted into <root>/dtd/)", True),
    "eurosat": _Meta(
        "EuroSAT RGB (stratified 20% test split)", "https://github.com/phelber/EuroSAT", 0.09,
        ("eurosat", "eurosat"),
        "eurosat/2750/<AnnualCrop|Forest|...|SeaLake>/*.jpg (EuroSAT.zip extracted into "
        "<root>/eurosat/)", True),
    "gtsrb": _Meta(
        "German Traffic Sign Recognition Benchmark (official train/test)",
        "https://benchmark.ini.rub.de/gtsrb_dataset.html "
        "(files: https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/)", 0.35,
        ("gtsrb", "gtsrb"),
        "gtsrb/GTSRB/Training/<00000..00042>/*.ppm, gtsrb/GTSRB/Final_Test/Images/*.ppm and "
        "gtsrb/GT-final_test.csv (GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip, "
        "GTSRB_Final_Test_GT.zip extracted into <root>/gtsrb/)", True),
    "mnist": _Meta(
        "MNIST (official train/test)", "https://ossci-datasets.s3.amazonaws.com/mnist/ "
        "(mirror of http://yann.lecun.com/exdb/mnist/)", 0.01, ("mnist", "number"),
        "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (the four .gz files "
        "decompressed)", True),
    "resisc45": _Meta(
        "NWPU-RESISC45 remote sensing scenes (stratified 20% test split)",
        "https://gcheng-nwpu.github.io/#Datasets (mirror: "
        "https://huggingface.co/datasets/torchgeo/resisc45)", 0.43, ("resisc45", "resisc45"),
        "resisc45/NWPU-RESISC45/<airplane|airport|...|wetland>/*.jpg (NWPU-RESISC45.rar "
        "extracted into <root>/resisc45/)", False),
    "cars": _Meta(
        "Stanford Cars (official train/test)",
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (offline; mirrors: "
        "https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset and the devkit "
        "https://github.com/pytorch/vision/issues/7545)", 1.9, ("cars", "cars"),
        "stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
        "cars_test_annos_withlabels.mat, cars_train/*.jpg, cars_test/*.jpg} (torchvision's "
        "StanfordCars layout; needs scipy)", False),
    "sun397": _Meta(
        "SUN397 scenes (official partition 01 when present)",
        "https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz; Partitions.zip)", 37.0,
        ("sun397", "sun397"),
        "SUN397/ClassName.txt, SUN397/<letter>/<class>[/<subclass>]/sun_*.jpg and, for the "
        "official split, SUN397/Training_01.txt + SUN397/Testing_01.txt (from Partitions.zip)",
        True),
    "svhn": _Meta(
        "Street View House Numbers, cropped digits (official train/test)",
        "http://ufldl.stanford.edu/housenumbers/", 0.25, ("svhn", "number"),
        "svhn/{train_32x32.mat, test_32x32.mat} (format 2; needs scipy)", True),
    "imagenet": _Meta(
        "ImageNet-1k: reference subset of train (80k train / 20k val), official val as test",
        "https://image-net.org/download-images.php (ILSVRC2012)", 155.0,
        ("imagenet", "imagenet"),
        "imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG, 1000 wnid folders each "
        "(the layout torchvision.datasets.ImageNet(<root>/imagenet, split=...) leaves after "
        "extracting ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
        "ILSVRC2012_devkit_t12.tar.gz placed in <root>/imagenet/)", False),
    "imagenet_sketch": _Meta(
        "ImageNet-Sketch, 1000 ImageNet classes (stratified 20% test split)",
        "https://github.com/HaohanWang/ImageNet-Sketch (also "
        "https://huggingface.co/datasets/songweig/imagenet_sketch, data/ImageNet-Sketch.zip)",
        8.4, ("imagenet", "imagenet"),
        "imagenet_sketch/sketch/<wnid>/*.JPEG, 1000 wnid folders (ImageNet-Sketch.zip extracted "
        "into <root>/imagenet_sketch/; <root>/imagenet_sketch/<wnid>/ works too)", False),
    "pacs": _Meta(
        "PACS: photo, art painting, cartoon, sketch; 7 classes (stratified 20% test split)",
        "https://domaingeneralization.github.io/ (the 'kfold' images)", 0.2,
        ("pacs", "imagenet"),
        "pacs/<art_painting|cartoon|photo|sketch>/<dog|elephant|giraffe|guitar|horse|house|"
        "person>/*.(jpg|png) (<root>/pacs/kfold/<domain>/... works too)", False),
    "random": _Meta(
        "10k images uniform in [-1, 1] in the model's normalised input space (seeded)",
        "generated (no download)", 0.0, ("random", "random"), "nothing (generated)", False),
}

SPLIT_RULES: dict[str, str] = {
    **dict.fromkeys(["cifar10", "cifar100", "gtsrb", "mnist", "cars", "svhn"],
                    "test: official; val: stratified 10% of official train; train: the rest"),
    "dtd": "official partition 1: train1 / val1 / test1",
    "sun397": "official partition 01 (Training_01/Testing_01), val 10% of Training_01; without "
              "the partition files: stratified 20% test, 10% of the rest val (with a warning)",
    **dict.fromkeys(["eurosat", "resisc45", "imagenet_sketch", "pacs"],
                    "no official split: stratified 20% test, 10% of the rest val, rest train"),
    "imagenet": "train/val: stratified 80k/20k subset of official train; test: official val",
    "random": "one seed stream per split (10k images each by default)",
}
"""How each dataset's train/val/test splits are made (all deterministic, seed 42)."""

DATASET_LAYOUTS: dict[str, str] = {name: meta.layout for name, meta in _META.items()}
"""Expected files of each dataset, relative to the data root."""


@cache
def _prompts() -> dict[str, Any]:
    return json.loads(PROMPTS_PATH.read_text())


def _base_name(name: str) -> str:
    return name.split(".", 1)[0]  # pacs.photo -> pacs


def classnames(name: str) -> list[str]:
    """The CLIP class names of a paper dataset, in label order."""
    return list(_prompts()["classnames"][_META[_base_name(name)].prompts[0]])


def templates(name: str) -> list[str]:
    """The CLIP prompt templates of a paper dataset (one ``{}`` for the class name)."""
    return list(_prompts()["templates"][_META[_base_name(name)].prompts[1]])


PAPER_DATASETS: dict[str, PaperDatasetInfo] = {
    name: PaperDatasetInfo(
        name=name,
        description=meta.description,
        source_url=meta.source_url,
        download_gb=meta.download_gb,
        n_classes=len(classnames(name)),
        n_templates=len(templates(name)),
        needs_manual_download=name != "random" and not meta.torchvision_download,
    )
    for name, meta in _META.items()
}
"""Metadata of the 14 paper datasets (the per-domain ``pacs.<domain>`` names are not repeated)."""


def paper_names() -> list[str]:
    """Every registry name this module adds (the 14 datasets and the PACS domains)."""
    return [*_META, *(f"pacs.{d}" for d in PACS_DOMAINS)]


# --- data root and download switch ----------------------------------------------------------------

_ROOT_OVERRIDE: Path | None = None


def _default_root() -> Path:
    from residual_core.core.io import cache_root

    return cache_root(create=False) / "data"  # the one reading of $RESIDUAL_CACHE


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else :func:`set_data_root`'s, else ``$RESIDUAL_DATA``, else default.

    The default is ``$RESIDUAL_CACHE/data`` or ``<repo>/.cache/data``.

    Raises:
        InputError: If the root given (argument, :func:`set_data_root` or ``$RESIDUAL_DATA``)
            is a file: every dataset would then read as missing, with no word on why.
    """
    if root is not None:
        return _check_root(Path(root).expanduser(), "root")
    if _ROOT_OVERRIDE is not None:
        return _check_root(_ROOT_OVERRIDE, "set_data_root")
    env = os.environ.get(DATA_ENV)
    return _check_root(Path(env).expanduser(), f"${DATA_ENV}") if env else _default_root()


def _check_root(root: Path, given_by: str) -> Path:
    if root.exists() and not root.is_dir():
        raise InputError(f"the data root {root} (from {given_by}) is a file, not a folder")
    return root


def set_data_root(root: str | os.PathLike | None) -> None:
    """Use ``root`` for every paper dataset (``None``: back to the environment/default).

    Datasets built from another root are not reused: the registry keys what it keeps in memory
    by the data root (each spec's ``cache_token``).
    """
    global _ROOT_OVERRIDE
    _ROOT_OVERRIDE = None if root is None else Path(root).expanduser()
    clear_sources()


def download_enabled() -> bool:
    """Whether ``$RESIDUAL_DOWNLOAD`` allows torchvision to download missing datasets."""
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


_KEY_PATHS: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"),
    "cifar100": ("cifar-100-python/train", "cifar-100-python/test"),
    "mnist": ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-images-idx3-ubyte"),
    "svhn": ("svhn/train_32x32.mat", "svhn/test_32x32.mat"),
    "gtsrb": ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
    "dtd": ("dtd/dtd/images", "dtd/dtd/labels/test1.txt"),
    "eurosat": ("eurosat/2750",),
    "resisc45": ("resisc45/NWPU-RESISC45",),
    "cars": ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/cars_test_annos_withlabels.mat"),
    "sun397": ("SUN397/ClassName.txt",),
    "imagenet": ("imagenet/train", "imagenet/val"),
    "imagenet_sketch": ("imagenet_sketch",),
    "pacs": ("pacs",),
    "random": (),
}


def available(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether a dataset's main files are under the data root (a quick check; parses nothing)."""
    base = data_root(root)
    return all((base / rel).exists() for rel in _KEY_PATHS[_base_name(name)])


def _not_found(name: str, root: Path, detail: str = "") -> DatasetNotFoundError:
    meta = _META[_base_name(name)]
    how = (f"set {DOWNLOAD_ENV}=1 to let torchvision download it (~{meta.download_gb:g} GB), or "
           "download it by hand" if meta.torchvision_download else "download it by hand")
    return DatasetNotFoundError(
        f"dataset {name!r} not found{': ' + detail if detail else ''}. Expected under the data "
        f"root {root}: {meta.layout}. Source: {meta.source_url}; {how}. The data root is "
        f"residual_core.data.paper.set_data_root(path), else ${DATA_ENV}, else {_default_root()}."
    )


def _require(name: str, root: Path, *paths: Path) -> None:
    """Raise the dataset's not-found error unless every path exists."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _not_found(name, root, f"{missing[0]} does not exist")


def _require_scipy(name: str) -> None:
    if importlib.util.find_spec("scipy") is None:
        raise ModuleNotFoundError(
            f"dataset {name!r} stores its labels in MATLAB .mat files, which torchvision reads "
            "with scipy: pip install scipy"
        )


# --- stratified, deterministic splits -------------------------------------------------------------


def stratified_order(labels: Int[np.ndarray, " n"], seed: int = SEED) -> Int[np.ndarray, " n"]:
    """A permutation of ``range(n)`` whose every prefix is stratified by label.

    Each class's samples are shuffled; the j-th of a class of size n_c gets the key
    ``(j + u_c) / n_c`` (``u_c`` a random offset per class) and all samples are sorted by key,
    so any prefix of length m holds within 1–2 of ``m · n_c / n`` samples of each class.
    Consecutive chunks of the order are therefore disjoint stratified splits.

    Args:
        labels: Class (or stratum) of every sample.
        seed: Seed of the shuffles.

    Returns:
        The order, as int64 indices.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keys[rng.permutation(idx)] = (np.arange(len(idx)) + rng.random()) / len(idx)
    return np.argsort(keys, kind="stable").astype(np.int64)


def _chunks(order: np.ndarray, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for part, n in sizes.items():
        out[part] = order[start:start + n]
        start += n
    return out


def _carve_val(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified val (``VAL_FRACTION``) and train parts of an official training set."""
    n_val = round(VAL_FRACTION * len(labels))
    return _chunks(stratified_order(labels), {"val": n_val, "train": len(labels) - n_val})


def _three_way(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified test (``TEST_FRACTION``), val (``VAL_FRACTION`` of the rest) and train."""
    n = len(labels)
    n_test = round(TEST_FRACTION * n)
    n_val = round(VAL_FRACTION * (n - n_test))
    return _chunks(stratified_order(labels),
                   {"test": n_test, "val": n_val, "train": n - n_test - n_val})


# --- image containers (indexables of PIL images, cheap to pickle for DataLoader workers) ----------


class _Files:
    """Image files opened on access, as RGB."""

    def __init__(self, paths: Sequence[str] | np.ndarray) -> None:
        self.paths = np.asarray(paths, dtype=object)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as img:
            return img.convert("RGB")

    def take(self, indices: np.ndarray) -> _Files:
        return _Files(self.paths[indices])


class _Gray:
    """Grayscale uint8 images (n, H, W) shown as RGB."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index], "L").convert("RGB")

    def take(self, indices: np.ndarray) -> _Gray:
        return _Gray(self.pixels[indices])


@dataclass
class _Pool:
    """One official part of a dataset: images (uint8 NHWC array or a container) and labels."""

    images: Any
    labels: np.ndarray
    strata: np.ndarray | None = None  # what to stratify by, if not the labels (PACS: domain·class)

    def take(self, indices: np.ndarray) -> tuple[Any, np.ndarray]:
        images = self.images[indices] if isinstance(self.images, np.ndarray) else \
            self.images.take(indices)
        return images, self.labels[indices]


_POOLS: OrderedDict[tuple[str, str, str], _Pool] = OrderedDict()
_POOLS_KEPT = 4  # train + test of two datasets; a pool can be the whole of ImageNet-train's paths


def clear_sources() -> None:
    """Forget the parsed official parts (called by ``datasets.clear_cache``)."""
    _POOLS.clear()


def _pool(name: str, part: str, root: Path) -> _Pool:
    key = (name, part, str(root))
    if key in _POOLS:
        _POOLS.move_to_end(key)
        return _POOLS[key]
    pool = _READERS[_base_name(name)](name, part, root)
    pool.labels = np.asarray(pool.labels, dtype=np.int64)
    if len(pool.labels):
        n = len(classnames(name))
        if pool.labels.min() < 0 or pool.labels.max() >= n:
            raise ValueError(f"{name} {part}: labels outside [0, {n})")
    _POOLS[key] = pool
    while len(_POOLS) > _POOLS_KEPT:
        _POOLS.popitem(last=False)
    return pool


def _check_names(name: str, found: Sequence[str]) -> None:
    if list(found) != classnames(name):
        raise ValueError(f"{name}: the class names on disk {list(found)[:5]}... do not match "
                         f"{PROMPTS_PATH.name} ({len(found)} vs {len(classnames(name))})")


def _index_of(name: str, keys: Sequence[str], normalise: Callable[[str], str]) -> np.ndarray:
    """Labels of samples from their folder/class keys, via the CLIP class-name list."""
    lookup = {c: i for i, c in enumerate(classnames(name))}
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        clean = normalise(key)
        if clean not in lookup:
            raise ValueError(f"{name}: class folder {key!r} ({clean!r}) is not one of the "
                             f"{len(lookup)} known classes")
        out[i] = lookup[clean]
    return out


def _scan(folder: Path) -> tuple[list[str], list[str]]:
    """``(class folder of every image, image path)`` of ``folder/<class>/*``, sorted."""
    keys, paths = [], []
    for cls in sorted(e.name for e in os.scandir(folder) if e.is_dir()
                      and not e.name.startswith(".")):
        files = sorted(e.path for e in os.scandir(folder / cls)
                       if e.is_file() and e.name.lower().endswith(_IMAGE_EXTENSIONS))
        keys += [cls] * len(files)
        paths += files
    return keys, paths


# --- readers: (name, part, root) -> _Pool ---------------------------------------------------------


def _read_cifar(name: str, part: str, root: Path) -> _Pool:
    from torchvision.datasets import CIFAR10, CIFAR100

    tv_cls, folder = (CIFAR10, "cifar-10-batches-py") if name == "cifar10" else \
        (CIFAR100, "cifar-100-python")
    download = download_enabled()
    if not download:
        _require(name, root, root / folder)
    try:
        tv = tv_cls(str(root), train=part == "train", download=download)
    except RuntimeError as err:  # torchvision: missing or failed md5 check
        raise _not_found(name, root, f"torchvision says {err}") from err
    _check_names(name, [c.replace("_", " ") for c in tv.classes])
    return _Pool(np.asarray(tv.data), np.asarray(tv.targets))


def _read_mnist(name: str, part: str, root: Path) -> _Pool:
    from torchvision.datasets import MNIST

    download = download_enabled()
    prefix = "train" if part == "train" else "t10k"
    if not download:
        raw = root / "MNIST" / "raw"
        _require(name, root, raw / f"{prefix}-images-idx3-ubyte",
                 raw / f"{prefix}-labels-idx1-ubyte")
    try:
        tv = MNIST(str(root), train=part == "train", download=download)
    except RuntimeError as err:
        raise _not_found(name, root, f"torchvision says {err}") from err
    return _Pool(_Gray(tv.data.numpy()), tv.targets.numpy())


def _read_svhn(name: str, part: str, root: Path) -> _Pool:
    from torchvision.datasets import SVHN

    download = download_enabled()
    if not download:
        _require(name, root, root / "svhn" / f"{part}_32x32.mat")
    _require_scipy(name)
    try:
        tv = SVHN(str(root / "svhn"), split=part, download=download)
    except RuntimeError as err:
        raise _not_found(name, root, f"torchvision says {err}") from err
    # torchvision keeps (n, 3, 32, 32) and has already mapped the label 10 to the digit 0
    return _Pool(np.ascontiguousarray(tv.data.transpose(0, 2, 3, 1)), np.asarray(tv.labels))


def _read_gtsrb(name: str, part: str, root: Path) -> _Pool:
    from torchvision.datasets import GTSRB

    base = root / "gtsrb"
    download = download_enabled()
    if not download:
        _require(name, root, *((base / "GTSRB" / "Training",) if part == "train" else
                               (base / "GTSRB" / "Final_Test" / "Images",
                                base / "GT-final_test.csv")))
    try:
        tv = GTSRB(str(root), split=part, download=download)
    except RuntimeError as err:
        raise _not_found(name, root, f"torchvision says {err}") from err
    paths = [p for p, _ in tv._samples]
    if part == "train":  # the folder name is the class id (torchvision counts folders instead)
        labels = [int(Path(p).parent.name) for p in paths]
    else:
        labels = [y for _, y in tv._samples]
    return _Pool(_Files(paths), np.asarray(labels))


def _read_dtd(name: str, part: str, root: Path) -> _Pool:
    from torchvision.datasets import DTD

    download = download_enabled()
    if not download:
        labels_dir = root / "dtd" / "dtd" / "labels"
        _require(name, root, root / "dtd" / "dtd" / "images", labels_dir / f"{part}1.txt")
    try:
        tv = DTD(str(root), split=part, partition=1, download=download)
    except RuntimeError as err:
        raise _not_found(name, root, f"torchvision says {err}") from err
    paths = [str(p) for p in tv._image_files]
    # torchvision numbers the classes present in the split file; the folder name is robust
    return _Pool(_Files(paths), _index_of(name, [Path(p).parent.name for p in paths], str))


_EUROSAT_FOLDERS = {
    "AnnualCrop": "annual crop land", "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland", "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings", "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments", "River": "river",
    "SeaLake": "lake or sea",
}


def _read_eurosat(name: str, part: str, root: Path) -> _Pool:
    from torchvision.datasets import EuroSAT

    download = download_enabled()
    if not download:
        _require(name, root, root / "eurosat" / "2750")
    try:
        tv = EuroSAT(str(root), download=download)
    except RuntimeError as err:
        raise _not_found(name, root, f"torchvision says {err}") from err
    paths = [p for p, _ in tv.samples]
    keys = [Path(p).parent.name for p in paths]
    return _Pool(_Files(paths), _index_of(name, keys, lambda k: _EUROSAT_FOLDERS.get(k, k)))


def _read_resisc45(name: str, part: str, root: Path) -> _Pool:
    folder = root / "resisc45" / "NWPU-RESISC45"
    _require(name, root, folder)
    keys, paths = _scan(folder)
    return _Pool(_Files(paths), _index_of(name, keys, lambda k: k.replace("_", " ")))


def _read_cars(name: str, part: str, root: Path) -> _Pool:
    from torchvision.datasets import StanfordCars

    base = root / "stanford_cars"
    annotations = (base / "devkit" / "cars_train_annos.mat" if part == "train"
                   else base / "cars_test_annos_withlabels.mat")
    _require(name, root, base / "devkit" / "cars_meta.mat", annotations,
             base / ("cars_train" if part == "train" else "cars_test"))
    _require_scipy(name)
    tv = StanfordCars(str(root), split=part)
    if len(tv.classes) != len(classnames(name)):
        raise ValueError(f"{name}: cars_meta.mat lists {len(tv.classes)} classes, expected 196")
    return _Pool(_Files([p for p, _ in tv._samples]), np.asarray([y for _, y in tv._samples]))


def _sun_clean(class_path: str) -> str:
    """``/b/bakery/shop`` or ``bakery/shop`` → the CLIP name ``bakery shop``."""
    parts = [p for p in class_path.strip().split("/") if p]
    if len(parts) > 1 and len(parts[0]) == 1:  # drop the leading letter folder
        parts = parts[1:]
    return " ".join(parts).replace("_", " ")


def _sun_partition(base: Path) -> dict[str, Path] | None:
    for folder in (base, base / "Partitions"):
        files = {"train": folder / "Training_01.txt", "test": folder / "Testing_01.txt"}
        if all(f.exists() for f in files.values()):
            return files
    return None


def _ensure_sun397(root: Path) -> None:
    """Download SUN397 and its official partitions (``RESIDUAL_DOWNLOAD=1`` only)."""
    from torchvision.datasets import SUN397
    from torchvision.datasets.utils import download_and_extract_archive

    base = root / "SUN397"
    if not (base / "ClassName.txt").exists():
        SUN397(str(root), download=True)
    if _sun_partition(base) is None:
        url = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"
        try:  # top-level files or a Partitions/ folder: _sun_partition finds either
            download_and_extract_archive(url, str(base), extract_root=str(base))
        except Exception as err:  # the split falls back to a stratified one, with a warning
            warnings.warn(f"could not download the SUN397 partitions from {url}: {err}",
                          stacklevel=3)


def _read_sun397(name: str, part: str, root: Path) -> _Pool:
    base = root / "SUN397"
    _require(name, root, base / "ClassName.txt")
    files = _sun_partition(base)
    if part == "all":
        from torchvision.datasets import SUN397

        tv = SUN397(str(root))
        paths = [str(p) for p in tv._image_files]
        keys = [tv.classes[y] for y in tv._labels]
    else:
        if files is None:
            raise _not_found(name, root, f"no Training_01.txt/Testing_01.txt under {base}")
        rel = [line.strip() for line in files[part].read_text().splitlines() if line.strip()]
        paths = [str(base / r.lstrip("/")) for r in rel]
        keys = [r.rsplit("/", 1)[0] for r in rel]
    return _Pool(_Files(paths), _index_of(name, keys, _sun_clean))


def _read_wnid_folders(name: str, folder: Path, root: Path) -> _Pool:
    keys, paths = _scan(folder)
    wnids = sorted(set(keys))
    bad = [w for w in wnids if not _WNID.match(w)]
    if len(wnids) != 1000 or bad:
        raise _not_found(name, root, f"{folder} has {len(wnids)} class folders"
                         f"{f' (not wnids: {bad[:3]})' if bad else ''}; expected the 1000 "
                         "ImageNet wnid folders (sorted wnids are the class indices)")
    index = {w: i for i, w in enumerate(wnids)}
    return _Pool(_Files(paths), np.asarray([index[k] for k in keys]))


def _read_imagenet(name: str, part: str, root: Path) -> _Pool:
    folder = root / "imagenet" / ("train" if part == "train" else "val")
    _require(name, root, folder)
    return _read_wnid_folders(name, folder, root)


def _read_imagenet_sketch(name: str, part: str, root: Path) -> _Pool:
    base = root / "imagenet_sketch"
    _require(name, root, base)
    return _read_wnid_folders(name, base / "sketch" if (base / "sketch").is_dir() else base, root)


def _read_pacs(name: str, part: str, root: Path) -> _Pool:
    base = root / "pacs"
    _require(name, root, base)
    if (base / "kfold").is_dir():
        base = base / "kfold"
    domains = [name.split(".", 1)[1]] if "." in name else list(PACS_DOMAINS)
    paths, labels, strata = [], [], []
    for d, domain in enumerate(domains):
        _require(name, root, base / domain)
        keys, files = _scan(base / domain)
        y = _index_of(name, keys, str)
        paths += files
        labels.append(y)
        strata.append(d * len(classnames(name)) + y)  # every split gets the same domain mix
    return _Pool(_Files(paths), np.concatenate(labels), np.concatenate(strata))


_READERS: dict[str, Callable[[str, str, Path], _Pool]] = {
    "cifar10": _read_cifar, "cifar100": _read_cifar, "mnist": _read_mnist, "svhn": _read_svhn,
    "gtsrb": _read_gtsrb, "dtd": _read_dtd, "eurosat": _read_eurosat,
    "resisc45": _read_resisc45, "cars": _read_cars, "sun397": _read_sun397,
    "imagenet": _read_imagenet, "imagenet_sketch": _read_imagenet_sketch, "pacs": _read_pacs,
}


# --- splits → datasets ----------------------------------------------------------------------------


def _split_of(name: str, split: str, root: Path) -> tuple[_Pool, np.ndarray]:
    """The pool a split is drawn from and the split's indices into it, in stratified order."""
    base = _base_name(name)
    three_way = base in ("eurosat", "resisc45", "imagenet_sketch", "pacs")  # no official split
    if base == "dtd":
        pool = _pool(name, split, root)
        return pool, stratified_order(pool.labels)
    if base == "sun397" and _sun_partition(root / "SUN397") is None:
        if download_enabled():
            _ensure_sun397(root)
        _require(name, root, root / "SUN397" / "ClassName.txt")  # missing beats unpartitioned
        if _sun_partition(root / "SUN397") is None:
            warnings.warn("SUN397: Training_01.txt/Testing_01.txt not found under "
                          f"{root / 'SUN397'}; using a stratified 20% test split instead of "
                          "the official partition 01 (results differ from the paper's split)",
                          stacklevel=4)
            three_way = True
    if three_way:
        pool = _pool(name, "all", root)
        strata = pool.labels if pool.strata is None else pool.strata
        return pool, _three_way(strata)[split]
    if split == "test":
        pool = _pool(name, "val" if base == "imagenet" else "test", root)
        return pool, stratified_order(pool.labels)
    pool = _pool(name, "train", root)
    if base == "imagenet":
        total = min(sum(IMAGENET_SUBSET.values()), len(pool.labels))
        n_val = round(total * IMAGENET_SUBSET["val"] / sum(IMAGENET_SUBSET.values()))
        parts = _chunks(stratified_order(pool.labels), {"val": n_val, "train": total - n_val})
        return pool, parts[split]
    return pool, _carve_val(pool.labels)[split]


def build(
    name: str, split: str, size: int | None = None, root: str | os.PathLike | None = None
) -> ClassificationDataset:
    """Build one split of a paper dataset (``load_dataset`` calls this through the registry).

    Args:
        name: A name from :func:`paper_names`.
        split: ``train``, ``val`` or ``test``.
        size: At most this many samples, a stratified prefix of the split (``None``: all;
            ``random``: exactly ``size``, default ``RANDOM_SIZE``).
        root: Data root (default :func:`data_root`).

    Returns:
        The untransformed dataset, yielding ``(PIL RGB image, label)`` (``random``: tensors).

    Raises:
        DatasetNotFoundError: The files are not under the data root.
        ModuleNotFoundError: SVHN or Stanford Cars without scipy.
    """
    if name not in paper_names():
        raise ValueError(f"unknown paper dataset {name!r}; valid names: {', '.join(paper_names())}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if name == "random":
        return RandomImages(split, size or RANDOM_SIZE)
    pool, indices = _split_of(name, split, data_root(root))
    if size is not None:
        indices = indices[:size]
    images, labels = pool.take(indices)
    return ClassificationDataset(name, split, images, labels, classnames(name), templates(name))


# --- random images --------------------------------------------------------------------------------


class _Noise:
    """Seeded uniform [-1, 1] tensors, one seed per (split, index); previews as PIL images."""

    def __init__(self, n: int, split: str, seed: int = SEED, resolution: int = 224) -> None:
        self.n, self.split, self.seed, self.resolution = n, split, seed, resolution

    def __len__(self) -> int:
        return self.n

    def tensor(self, index: int, height: int, width: int) -> Float[Tensor, "3 height width"]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} random images")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        return torch.from_numpy(rng.uniform(-1.0, 1.0, (3, height, width)).astype(np.float32))

    def __getitem__(self, index: int) -> Image.Image:
        x = self.tensor(index, self.resolution, self.resolution)
        pixels = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        return Image.fromarray(pixels, "RGB")


class RandomImages(ClassificationDataset):
    """``random``: images uniform in [-1, 1] in the model's *normalised* input space (§3.2).

    ``dataset[i]`` is ``(tensor (3, H, W), 0)``: the values are already what the model sees, so
    the transform (the model's ``preprocess``, as passed to ``load_dataset``) is not applied to
    them; it is called once on a blank image only to learn the input size ``(H, W)``
    (224 × 224 without a transform). Code that encodes datasets (``zeroshot.encode_images``,
    ``store.build_store``) uses tensors as they are. Image ``i`` depends only on (seed, split,
    i, size), so a smaller split is a prefix of a larger one. ``image(i)`` and ``images[i]`` are
    a 224-pixel preview mapped to [0, 255], for plots only. One placeholder class ``noise``.
    """

    def __init__(self, split: str, n: int = RANDOM_SIZE, seed: int = SEED) -> None:
        super().__init__("random", split, _Noise(n, split, seed), np.zeros(n, dtype=np.int64),
                         classnames("random"), templates("random"))
        self._probed: tuple[Any, tuple[int, int]] | None = None

    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the tensors: the transform's output size, or 224 × 224 without one."""
        if self.transform is None:
            return self.images.resolution, self.images.resolution
        if self._probed is None or self._probed[0] is not self.transform:
            out = self.transform(Image.new("RGB", (self.images.resolution,) * 2))
            if not isinstance(out, Tensor) or out.ndim != 3 or out.shape[0] != 3:
                raise TypeError("random images need a transform returning a (3, H, W) tensor "
                                f"(the model's preprocess); got {type(out).__name__}")
            self._probed = (self.transform, (int(out.shape[1]), int(out.shape[2])))
        return self._probed[1]

    def __getitem__(self, index: int) -> tuple[Float[Tensor, "3 height width"], int]:
        return self.images.tensor(index, *self.input_size()), 0


# --- registration ---------------------------------------------------------------------------------


def _builder(name: str) -> Callable[[str, int | None], ClassificationDataset]:
    def build_split(split: str, size: int | None) -> ClassificationDataset:
        return build(name, split, size)

    return build_split


def _root_token() -> str:
    return str(data_root())


def specs() -> list[DatasetSpec]:
    """Every paper dataset (and the single PACS domains) for the registry."""
    out = []
    for name in paper_names():
        base = _META[_base_name(name)]
        what = base.description if "." not in name else \
            f"PACS, {name.split('.', 1)[1].replace('_', ' ')} domain only"
        out.append(DatasetSpec(name, _builder(name), description=f"paper: {what}",
                               cache_token=_root_token))
    return out


def clear() -> None:
    """Forget the file lists read so far (see :func:`clear_sources`)."""
    clear_sources()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m residual_core.data.paper``: where each dataset goes.

    Returns:
        The exit status: 0, or 2 for a user error (a data root that is a file) with its message.
    """
    import argparse

    p = argparse.ArgumentParser(description="The paper's datasets: what is where, what is missing.")
    p.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or the cache)")
    args = p.parse_args(argv)
    return cli_main(lambda: _report(args.root), "residual_core.data.paper: error:")


def _report(given: str | None) -> None:
    root = data_root(given)
    print(f"data root: {root}  (download by torchvision: {DOWNLOAD_ENV}="
          f"{'1, on' if download_enabled() else 'unset, off'})")
    for name, info in PAPER_DATASETS.items():
        state = "present" if available(name, root) else (
            "missing, manual download" if info.needs_manual_download else "missing")
        print(f"\n{name}: {info.description} [{state}]\n  {info.n_classes} classes, "
              f"{info.n_templates} templates, ~{info.download_gb:g} GB from {info.source_url}\n"
              f"  layout: {DATASET_LAYOUTS[name]}\n  splits: {SPLIT_RULES[name]}")


if __name__ == "__main__":
    raise SystemExit(main())
