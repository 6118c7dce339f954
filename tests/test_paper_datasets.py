"""Tests of the paper's datasets on tiny fixtures written in each dataset's real on-disk format."""

import gzip
import importlib.util
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch.utils.data import DataLoader

from residual_core import data as D
from residual_core.data import paper as P

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
NEEDS_SCIPY = {"svhn", "cars"}
WNIDS = [f"n{i:08d}" for i in range(1000)]  # sorted order is the class index, as for real wnids


# --- fixture writers: each returns {sample key: class name} ---------------------------------------


def _pixels(rng, n, shape=(8, 8, 3)):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def _save(path: Path, rng, fmt=None, size=6):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(rng, 1, (size, size, 3))[0], "RGB").save(path, fmt)
    return str(path)


def _labels_with_uneven_classes(n_classes, base, rng):
    labels = np.repeat(np.arange(n_classes), base + np.arange(n_classes) % 3)
    return rng.permutation(labels)


def _write_cifar(root: Path, rng, hundred: bool):
    k = 100 if hundred else 10
    names = P.classnames("cifar100" if hundred else "cifar10")
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    truth = {}
    label_key = "fine_labels" if hundred else "labels"

    def batch(file, labels):
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / file, "wb") as f:
            pickle.dump({"data": data, label_key: [int(y) for y in labels]}, f)
        for row, y in zip(data, labels, strict=True):
            truth[row.reshape(3, 32, 32).transpose(1, 2, 0).tobytes()] = names[y]

    train = _labels_with_uneven_classes(k, 2 if hundred else 4, rng)
    if hundred:
        batch("train", train)
        batch("test", np.arange(k))
        meta = {"fine_label_names": [c.replace(" ", "_") for c in names],
                "coarse_label_names": [f"c{i}" for i in range(20)]}
        with open(folder / "meta", "wb") as f:
            pickle.dump(meta, f)
    else:
        for i, part in enumerate(np.array_split(train, 5)):
            batch(f"data_batch_{i + 1}", part)
        batch("test_batch", np.repeat(np.arange(k), 2))
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": names}, f)
    return truth


def _write_mnist(root: Path, rng):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    truth = {}
    for prefix, labels in [("train", _labels_with_uneven_classes(10, 4, rng)),
                           ("t10k", np.repeat(np.arange(10), 2))]:
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        header = struct.pack(">IIII", 0x0803, len(labels), 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes())
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:  # as downloaded
            f.write((raw / f"{prefix}-labels-idx1-ubyte").read_bytes())
        for img, y in zip(images, labels, strict=True):
            truth[np.repeat(img[..., None], 3, -1).tobytes()] = str(y)
    return truth


def _write_svhn(root: Path, rng):
    from scipy.io import savemat

    (root / "svhn").mkdir(parents=True)
    truth = {}
    for part, labels in [("train", _labels_with_uneven_classes(10, 4, rng)),
                         ("test", np.repeat(np.arange(10), 2))]:
        x = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
        y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]  # SVHN writes 0 as 10
        savemat(root / "svhn" / f"{part}_32x32.mat", {"X": x, "y": y})
        for i, label in enumerate(labels):
            truth[np.ascontiguousarray(x[..., i]).tobytes()] = str(label)
    return truth


def _write_gtsrb(root: Path, rng):
    base = root / "gtsrb"
    truth = {}
    for cls in (0, 1, 14, 42):  # folder ids, not positions, are the labels
        for i in range(4 + cls % 3):
            p = _save(base / "GTSRB" / "Training" / f"{cls:05d}" / f"00000_{i:05d}.ppm", rng)
            truth[p] = P.classnames("gtsrb")[cls]
        (base / "GTSRB" / "Training" / f"{cls:05d}" / f"GT-{cls:05d}.csv").write_text("x\n")
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate([0, 1, 14, 42, 42, 7]):
        p = _save(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", rng)
        rows.append(f"{i:05d}.ppm;6;6;0;0;5;5;{cls}")
        truth[p] = P.classnames("gtsrb")[cls]
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return truth


def _write_dtd(root: Path, rng):
    data = root / "dtd" / "dtd"
    truth = {}
    (data / "labels").mkdir(parents=True)
    classes = ["banded", "polka-dotted", "woven", "zigzagged"]
    for split in ("train", "val", "test"):
        lines = []
        for cls in classes:
            for i in range(3):
                name = f"{cls}_{split}{i:04d}.jpg"
                truth[_save(data / "images" / cls / name, rng)] = cls
                lines.append(f"{cls}/{name}")
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    (data / "labels" / "train2.txt").write_text("")  # other partitions exist but are unused
    return truth


def _write_folders(base: Path, folders: dict[str, str], rng, per_class, ext=".jpg"):
    truth = {}
    for j, (folder, cls) in enumerate(folders.items()):
        for i in range(per_class + j % 4):
            truth[_save(base / folder / f"{folder}_{i}{ext}", rng)] = cls
    return truth


def _write_cars(root: Path, rng):
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = P.classnames("cars")
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    truth = {}
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
              ("class", "O"), ("fname", "O")]
    for part, annos_path, labels in [
        ("train", base / "devkit" / "cars_train_annos.mat", [1, 1, 1, 2, 2, 2, 2, 196, 196, 196]),
        ("test", base / "cars_test_annos_withlabels.mat", [1, 2, 196]),
    ]:
        rows = []
        for i, cls in enumerate(labels):
            fname = f"{i:05d}.jpg"
            truth[_save(base / f"cars_{part}" / fname, rng)] = names[cls - 1]  # 1-based in .mat
            rows.append((0, 0, 5, 5, cls, fname))
        savemat(annos_path, {"annotations": np.array([rows], dtype=fields)})
    return truth


SUN_CLASSES = {"/a/abbey": "abbey", "/b/bakery/shop": "bakery shop",
               "/t/temple/east_asia": "temple east asia", "/y/youth_hostel": "youth hostel"}


def _write_sun397(root: Path, rng, partitions: bool):
    base = root / "SUN397"
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("\n".join(SUN_CLASSES) + "\n")
    truth, train, test = {}, [], []
    for j, (path, cls) in enumerate(SUN_CLASSES.items()):
        for i in range(10):
            rel = f"{path}/sun_{j}{i:03d}abc.jpg"
            truth[_save(base / rel.lstrip("/"), rng)] = cls
            (train if i < 5 else test).append(rel)
    _save(base / "a" / "abbey" / "not_a_sun_image.jpg", rng)  # ignored by torchvision's glob
    if partitions:
        (base / "Training_01.txt").write_text("\n".join(train[:-1]) + "\n")  # one left out
        (base / "Testing_01.txt").write_text("\n".join(test) + "\n")
    return truth, set(train[:-1]), set(test)


def _write_imagenet(root: Path, rng):
    truth = {}
    for wnid, cls in zip(WNIDS, IMAGENET_CLASSNAMES, strict=True):
        files = [root / "imagenet" / "train" / wnid / f"{wnid}_{i}.JPEG" for i in range(3)]
        files.append(root / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
        files.append(root / "imagenet_sketch" / "sketch" / wnid / "sketch_0.JPEG")
        for path in files:
            truth[_save(path, rng, "JPEG", 4)] = cls
    return truth


def _write_pacs(root: Path, rng):
    truth, domain_of = {}, {}
    for d, domain in enumerate(P.PACS_DOMAINS):
        for c, cls in enumerate(P.classnames("pacs")):
            for i in range(2 + (c + d) % 3):
                ext = ".png" if domain == "sketch" else ".jpg"
                p = _save(root / "pacs" / "kfold" / domain / cls / f"pic_{i:03d}{ext}", rng)
                truth[p] = cls
                domain_of[p] = domain
    return truth, domain_of


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Every dataset in its real layout under one root, made the data root for these tests."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("paper_data")
    truth = {
        "cifar10": _write_cifar(root, rng, hundred=False),
        "cifar100": _write_cifar(root, rng, hundred=True),
        "mnist": _write_mnist(root, rng),
        "gtsrb": _write_gtsrb(root, rng),
        "dtd": _write_dtd(root, rng),
        "eurosat": _write_folders(root / "eurosat" / "2750", P._EUROSAT_FOLDERS, rng, 6),
        "resisc45": _write_folders(
            root / "resisc45" / "NWPU-RESISC45",
            {f: f.replace("_", " ") for f in ["airplane", "sea_ice", "thermal_power_station",
                                              "wetland", "railway", "railway_station"]},
            rng, 7),
    }
    truth["sun397"], sun_train, sun_test = _write_sun397(root, rng, partitions=True)
    truth["imagenet"] = truth["imagenet_sketch"] = _write_imagenet(root, rng)
    truth["pacs"], pacs_domain = _write_pacs(root, rng)
    for domain in P.PACS_DOMAINS:
        truth[f"pacs.{domain}"] = truth["pacs"]
    if HAS_SCIPY:
        truth["svhn"] = _write_svhn(root, rng)
        truth["cars"] = _write_cars(root, rng)
    nopart = tmp_path_factory.mktemp("paper_data_nopart")
    _write_sun397(nopart, rng, partitions=False)
    with pytest.MonkeyPatch.context() as mp:
        # fixtures are not the real files: skip torchvision's md5 checks, keep its parsing
        import torchvision.datasets.cifar as tv_cifar
        import torchvision.datasets.svhn as tv_svhn

        for module in (tv_cifar, tv_svhn):
            mp.setattr(module, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
        mp.delenv(P.DOWNLOAD_ENV, raising=False)
        P.set_data_root(root)
        yield {"root": root, "truth": truth, "sun_train": sun_train, "sun_test": sun_test,
               "pacs_domain": pacs_domain, "nopart": nopart}
        P.set_data_root(None)
    D.clear_cache()


def _keys(ds):
    if isinstance(ds.images, P._Files):
        return list(ds.images.paths)
    return [np.asarray(ds.image(i)).tobytes() for i in range(len(ds))]


def _splits(name):
    return {s: D.load_dataset(name, s) for s in D.SPLITS}


EXPECTED_SIZES = {  # (train, val, test) of the fixtures, from the split rules
    "cifar10": (44, 5, 20), "cifar100": (269, 30, 100), "mnist": (44, 5, 20),
    "svhn": (44, 5, 20), "gtsrb": (17, 2, 6), "cars": (9, 1, 3), "dtd": (12, 12, 12),
    "sun397": (17, 2, 20), "eurosat": (52, 6, 15), "resisc45": (35, 4, 10),
    "imagenet": (2400, 600, 1000), "imagenet_sketch": (720, 80, 200), "pacs": (59, 7, 17),
    "pacs.photo": (14, 2, 4), "pacs.art_painting": (15, 2, 4), "pacs.cartoon": (16, 2, 4),
    "pacs.sketch": (14, 2, 4),
}
FILE_DATASETS = [n for n in P.paper_names() if n != "random"]


# --- metadata, class names, templates -------------------------------------------------------------


def test_paper_dataset_metadata_and_prompt_counts():
    assert set(P.PAPER_DATASETS) == {
        "cifar10", "cifar100", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "cars", "sun397",
        "svhn", "imagenet", "imagenet_sketch", "pacs", "random"}
    fields = list(P.PaperDatasetInfo.__dataclass_fields__)
    assert fields == ["name", "description", "source_url", "download_gb", "n_classes",
                      "n_templates", "needs_manual_download"]
    classes = {"cifar10": 10, "cifar100": 100, "dtd": 47, "eurosat": 10, "gtsrb": 43,
               "mnist": 10, "resisc45": 45, "cars": 196, "sun397": 397, "svhn": 10,
               "imagenet": 1000, "imagenet_sketch": 1000, "pacs": 7, "random": 1}
    prompts = {"cifar10": 18, "cifar100": 18, "dtd": 8, "eurosat": 3, "gtsrb": 3, "mnist": 1,
               "resisc45": 18, "cars": 8, "sun397": 2, "svhn": 1, "imagenet": 80}
    for name, info in P.PAPER_DATASETS.items():
        assert info.name == name and info.description and info.source_url
        assert info.n_classes == classes[name] == len(P.classnames(name))
        assert info.n_templates == len(P.templates(name))
        assert info.n_templates == prompts.get(name, info.n_templates)
        assert info.download_gb >= 0
        # distinct names (ImageNet's CLIP list repeats two: 'missile', 'sunglasses')
        assert len(set(P.classnames(name))) == info.n_classes - 2 * (info.n_classes == 1000)
        for t in P.templates(name):
            assert t.count("{}") == 1 and t.format("x")
    manual = {n for n, i in P.PAPER_DATASETS.items() if i.needs_manual_download}
    assert manual == {"imagenet", "imagenet_sketch", "pacs", "resisc45", "cars"}
    assert P.templates("mnist") == P.templates("svhn") == ['a photo of the number: "{}".']
    assert P.classnames("imagenet") == list(IMAGENET_CLASSNAMES)
    assert P.templates("imagenet_sketch") == P.templates("imagenet")
    assert P.classnames("eurosat")[0] == "annual crop land"  # torchvision folder order
    assert P.classnames("eurosat")[-1] == "lake or sea"
    assert P.classnames("cars")[0] == "AM General Hummer SUV 2000"
    assert P.classnames("cars")[-1] == "smart fortwo Convertible 2012"
    assert P.classnames("sun397") == sorted(P.classnames("sun397"))
    assert P.classnames("cifar100")[:2] == ["apple", "aquarium fish"]
    assert P.PROMPTS_PATH.name == "paper_prompts.json" and P.PROMPTS_PATH.exists()


def test_paper_names_are_in_the_registry():
    names = D.list_datasets()
    assert set(P.paper_names()) <= set(names) and "world.reference" in names
    assert {"pacs.photo", "pacs.art_painting", "pacs.cartoon", "pacs.sketch"} <= set(names)
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'") as err:
        D.load_dataset("cifar11", "train")
    assert "cifar10" in str(err.value) and "imagenet_sketch" in str(err.value)


# --- splits ---------------------------------------------------------------------------------------


def test_stratified_order_prefixes_are_stratified():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(7), [3, 50, 120, 7, 400, 19, 1]))
    order = P.stratified_order(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))
    np.testing.assert_array_equal(order, P.stratified_order(labels))  # deterministic
    assert not np.array_equal(order, P.stratified_order(labels, seed=0))
    total = np.bincount(labels)
    for m in (1, 10, 57, 100, 301, 555, len(labels)):
        counts = np.bincount(labels[order[:m]], minlength=7)
        assert np.all(np.abs(counts - m * total / len(labels)) < 2), (m, counts)
        window = np.bincount(labels[order[m // 2:m]], minlength=7)  # chunks too
        assert np.all(np.abs(window - (m - m // 2) * total / len(labels)) <= 2), (m, window)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_dataset_loads_with_disjoint_deterministic_stratified_splits(data, name):
    if name in NEEDS_SCIPY and not HAS_SCIPY:
        pytest.skip("scipy is not installed: SVHN and Stanford Cars store .mat files")
    truth = data["truth"][name]
    splits = _splits(name)
    assert tuple(len(splits[s]) for s in D.SPLITS) == EXPECTED_SIZES[name]
    keys = {s: _keys(ds) for s, ds in splits.items()}
    for s, ds in splits.items():
        assert (ds.name, ds.split) == (name, s) and ds.attributes is None
        assert ds.classnames == P.classnames(name) and ds.templates == P.templates(name)
        img, label = ds[len(ds) - 1]
        assert isinstance(img, Image.Image) and img.mode == "RGB" and isinstance(label, int)
        assert ds.labels.min() >= 0 and ds.labels.max() < len(ds.classnames)
        # every label is the class the fixture wrote (folder, csv, .mat or pickle)
        assert [ds.classnames[y] for y in ds.labels] == [truth[k] for k in keys[s]]
        assert len(set(keys[s])) == len(ds)
    for a in D.SPLITS:
        for b in D.SPLITS:
            if a < b:
                assert not set(keys[a]) & set(keys[b]), (name, a, b)
    # deterministic: rebuilt from disk after forgetting everything
    D.clear_cache()
    again = _splits(name)
    for s in D.SPLITS:
        assert _keys(again[s]) == keys[s]
        np.testing.assert_array_equal(again[s].labels, splits[s].labels)
    # size: a (stratified) prefix, at most the whole split
    small = D.load_dataset(name, "train", size=3)
    assert _keys(small) == keys["train"][:3]
    assert len(D.load_dataset(name, "test", size=10**6)) == len(splits["test"])
    # carved splits hold each class (PACS: each domain × class) in proportion to their source
    carved = {"dtd": []}.get(name, ["train", "val"])
    if name in ("eurosat", "resisc45", "imagenet_sketch") or name.startswith("pacs"):
        carved.append("test")
    strata = {s: splits[s].labels for s in carved}
    if name == "pacs":
        order = {d: i for i, d in enumerate(P.PACS_DOMAINS)}
        strata = {s: np.array([order[data["pacs_domain"][p]] * 7 + y for p, y in
                               zip(keys[s], splits[s].labels, strict=True)]) for s in carved}
    pool = np.concatenate(list(strata.values())) if carved else np.zeros(1, int)
    for s in carved:
        expected = len(strata[s]) * np.bincount(pool) / len(pool)
        counts = np.bincount(strata[s], minlength=len(expected))
        assert np.all(np.abs(counts - expected) <= 2), (name, s, counts, expected)


def test_official_test_splits_are_the_official_files(data):
    root = data["root"]
    gtsrb = D.load_dataset("gtsrb", "test")
    assert all("Final_Test" in p for p in gtsrb.images.paths)
    assert sorted(Counter(gtsrb.labels).items()) == [(0, 1), (1, 1), (7, 1), (14, 1), (42, 2)]
    imagenet = {s: D.load_dataset("imagenet", s) for s in D.SPLITS}
    assert all(f"{root}/imagenet/val/" in p for p in imagenet["test"].images.paths)
    for s in ("train", "val"):
        assert all(f"{root}/imagenet/train/" in p for p in imagenet[s].images.paths)
    assert np.bincount(imagenet["test"].labels).tolist() == [1] * 1000
    assert P.IMAGENET_SUBSET == {"train": 80_000, "val": 20_000}
    dtd = {s: D.load_dataset("dtd", s) for s in D.SPLITS}
    for s, ds in dtd.items():
        assert all(f"_{s}0" in Path(p).name for p in ds.images.paths)
    sun = {s: D.load_dataset("sun397", s) for s in D.SPLITS}
    rel = {s: {"/" + str(Path(p).relative_to(root / "SUN397")) for p in ds.images.paths}
           for s, ds in sun.items()}
    assert rel["test"] == data["sun_test"]
    assert rel["train"] | rel["val"] == data["sun_train"]


def test_sun397_without_partition_files_falls_back_with_a_warning(data):
    P.set_data_root(data["nopart"])
    try:
        with pytest.warns(UserWarning, match="Training_01.txt"):
            sun = {s: D.load_dataset("sun397", s) for s in D.SPLITS}
        assert [len(sun[s]) for s in D.SPLITS] == [29, 3, 8]
        assert sorted(Counter(sun["test"].labels.tolist()).values()) == [2, 2, 2, 2]
    finally:
        P.set_data_root(data["root"])


def test_pacs_domains(data):
    domain_of = data["pacs_domain"]
    whole = _splits("pacs")
    seen = set()
    for s, ds in whole.items():
        domains = Counter(domain_of[p] for p in ds.images.paths)
        assert set(domains) == set(P.PACS_DOMAINS), s  # every split mixes all four domains
        seen |= set(ds.images.paths)
    assert seen == set(domain_of)
    for domain in P.PACS_DOMAINS:
        part = _splits(f"pacs.{domain}")
        paths = [p for ds in part.values() for p in ds.images.paths]
        assert {domain_of[p] for p in paths} == {domain}
        assert len(paths) == sum(d == domain for d in domain_of.values())


def test_imagenet_needs_the_1000_wnid_folders(tmp_path, data):
    (tmp_path / "imagenet" / "train" / "n01440764").mkdir(parents=True)
    _save(tmp_path / "imagenet" / "train" / "n01440764" / "a.JPEG", np.random.default_rng(0))
    P.set_data_root(tmp_path)
    try:
        with pytest.raises(P.DatasetNotFoundError, match="1000 ImageNet wnid folders"):
            D.load_dataset("imagenet", "train")
    finally:
        P.set_data_root(data["root"])


# --- random images --------------------------------------------------------------------------------


def test_random_images_are_uniform_seeded_tensors_in_model_space():
    ds = D.load_dataset("random", "train", size=6)
    assert len(ds) == 6 and len(D.load_dataset("random", "val")) == P.RANDOM_SIZE
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0
    assert -1 <= x.min() < -0.99 and 0.99 < x.max() <= 1 and abs(float(x.mean())) < 0.01
    assert abs(float(x.std()) - 1 / 3**0.5) < 0.01  # the std of U(-1, 1)
    assert torch.equal(ds[0][0], x) and not torch.equal(ds[1][0], x)
    big = D.load_dataset("random", "train", size=20)
    assert torch.equal(big[5][0], ds[5][0])  # a prefix
    assert not torch.equal(D.load_dataset("random", "test", size=6)[0][0], x)
    assert isinstance(ds.image(0), Image.Image) and ds.image(0).size == (224, 224)
    assert ds.classnames == ["noise"] and len(ds.templates) == 1
    with pytest.raises(IndexError):
        ds[6]

    def preprocess(img):  # stands in for a model's preprocess: only its output size is used
        return torch.zeros(3, 32, 48) + 5

    seen = D.load_dataset("random", "train", preprocess, size=6)
    batch, labels = next(iter(DataLoader(seen, batch_size=4)))
    assert batch.shape == (4, 3, 32, 48) and labels.tolist() == [0] * 4
    assert batch.abs().max() <= 1  # the values are not passed through the transform
    with pytest.raises(TypeError, match="3, H, W"):
        D.load_dataset("random", "train", lambda img: img, size=2)[0]


# --- missing data, root, scipy --------------------------------------------------------------------


def test_missing_data_names_dataset_layout_and_source(tmp_path, data, monkeypatch):
    monkeypatch.delenv(P.DOWNLOAD_ENV, raising=False)
    P.set_data_root(tmp_path)
    try:
        for name in FILE_DATASETS:
            base = P._base_name(name)
            with pytest.raises(P.DatasetNotFoundError) as err:
                D.load_dataset(name, "test")
            msg = str(err.value)
            assert isinstance(err.value, FileNotFoundError)
            assert f"dataset {name!r} not found" in msg and str(tmp_path) in msg
            assert P.PAPER_DATASETS[base].source_url.split()[0] in msg
            assert P.DATASET_LAYOUTS[base].split("/")[0] in msg
            assert ("RESIDUAL_DOWNLOAD=1" in msg) == (
                not P.PAPER_DATASETS[base].needs_manual_download)
    finally:
        P.set_data_root(data["root"])


def test_data_root_resolution(tmp_path, monkeypatch):
    saved = P._ROOT_OVERRIDE
    try:
        P.set_data_root(None)
        monkeypatch.delenv(P.DATA_ENV, raising=False)
        monkeypatch.delenv("RESIDUAL_CACHE", raising=False)
        assert P.data_root() == Path(P.__file__).resolve().parents[2] / ".cache" / "data"
        monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "c"))
        assert P.data_root() == tmp_path / "c" / "data"
        monkeypatch.setenv(P.DATA_ENV, str(tmp_path / "d"))
        assert P.data_root() == tmp_path / "d"
        P.set_data_root(tmp_path / "e")
        assert P.data_root() == tmp_path / "e" and P.data_root(tmp_path) == tmp_path
        monkeypatch.setenv(P.DOWNLOAD_ENV, "1")
        assert P.download_enabled()
        monkeypatch.setenv(P.DOWNLOAD_ENV, "0")
        assert not P.download_enabled()
    finally:
        P.set_data_root(saved)


@pytest.mark.skipif(HAS_SCIPY, reason="checks the message shown when scipy is missing")
def test_svhn_and_cars_without_scipy_say_so(tmp_path, data):
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"")
    for p in ["devkit/cars_meta.mat", "cars_test_annos_withlabels.mat"]:
        (tmp_path / "stanford_cars" / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "stanford_cars" / p).write_bytes(b"")
    (tmp_path / "stanford_cars" / "cars_test").mkdir()
    P.set_data_root(tmp_path)
    try:
        for name in ("svhn", "cars"):
            with pytest.raises(ModuleNotFoundError, match="pip install scipy"):
                D.load_dataset(name, "test")
    finally:
        P.set_data_root(data["root"])


def test_available_and_the_listing(data, tmp_path, capsys):
    for name in FILE_DATASETS:
        present = name not in NEEDS_SCIPY or HAS_SCIPY  # no .mat fixtures without scipy
        assert P.available(name) == present, name
        assert not P.available(name, tmp_path), name
    assert P.available("random", tmp_path)
    P.main(["--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"data root: {tmp_path}" in out
    assert out.count("[missing") == 13 and "random:" in out and "[present]" in out
    assert "imagenet/train/<wnid>/*.JPEG" in out
