"""Device-specific paths: autocast decomposition, stores to and from the GPU, training, zero-shot.

Every test compares the device route with the CPU route (float64 where the maths allows).
Skipped without CUDA; ``RESIDUAL_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead, which the
GPU suite's smoke run does so that they cannot rot between GPU runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os

import pandas as pd
import pytest
import torch
from conftest import residual_task_classifier, residual_task_units
from open_clip.transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset, TensorDataset

from residual_core.analysis import experiments as ex
from residual_core.analysis.specialization import chance_levels, classifier_alignment
from residual_core.core.ablation import coarse_selection, rank_heads
from residual_core.core.decompose import UnitProjector, decompose
from residual_core.core.dictionary import TextDictionary
from residual_core.core.model import LoadedModel
from residual_core.core.probes import ridge_probe
from residual_core.core.residual import VARIANTS, build_variant, cache_inputs
from residual_core.core.spectral import unit_pca
from residual_core.core.store import build_store
from residual_core.core.training import (
    TensorBatcher,
    TensorData,
    fit_variant,
    make_optimizer,
    train_epoch,
)
from residual_core.core.zeroshot import ZeroShotClassifier, build_classifier, encode_images
from residual_core.data.encodings import TaskEncodings
from residual_core.tutorial import world

pytestmark = pytest.mark.gpu

AUTOCAST = [torch.float32, torch.float16, torch.bfloat16]


@contextlib.contextmanager
def full_float32():
    """float32 arithmetic without TF32 (cuDNN convolutions default to it on CUDA).

    With TF32 the patch embedding alone is off by ~5e-5 of the embedding norm on an H200: the
    float32 case checks the decomposition's own arithmetic, not cuDNN's default precision.
    """
    matmul = torch.backends.cuda.matmul.allow_tf32
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul


def tolerance(dtype: torch.dtype) -> float:
    """Per-unit error bound relative to the embedding norm: a few roundings of ``dtype``.

    float32 measures ~2e-7 here, fp16 autocast ~0.6 eps and bf16 ~0.6 eps on this 4-layer
    tower: 4 eps leaves room for the GPU's other kernels without hiding a real error.
    """
    return 1e-5 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("RESIDUAL_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs CUDA (RESIDUAL_GPU_TESTS_ON_CPU=1 runs these tests on the CPU)")


def make_tower(seed: int = 0) -> VisionTransformer:
    """A 4-layer 32-px ViT with every weight and bias away from its init (so nothing is 0)."""
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=8, width=64, layers=4, heads=4,
                              mlp_ratio=4.0, output_dim=32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


class Images(Dataset):
    """Deterministic 32-px images with labels ``i % 3``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 3


def stacked(dataset: Dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def float64_units(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The reference: the decomposition of a float64 CPU copy."""
    with torch.inference_mode():
        return decompose(copy.deepcopy(model).cpu().double(), images.cpu().double()).data


def relative_error(units: torch.Tensor, ref: torch.Tensor) -> float:
    """Max over samples and units of ``‖u − u_ref‖ / ‖embedding_ref‖``."""
    norm = ref.sum(1).norm(dim=-1)[:, None]
    return float(((units.detach().cpu().double() - ref).norm(dim=-1) / norm).max())


@pytest.mark.parametrize("dtype", AUTOCAST, ids=lambda d: str(d).removeprefix("torch."))
def test_decompose_under_autocast_matches_float64_cpu(device, dtype):
    model = make_tower()
    x = stacked(Images(4))
    ref = float64_units(model, x)
    model = model.to(device)
    with full_float32(), torch.inference_mode(), torch.autocast(
            device.type, dtype=dtype, enabled=dtype != torch.float32):
        dec = decompose(model, x.to(device))
        plain = model(x.to(device)).float()
    assert dec.data.device.type == device.type and dec.data.dtype == torch.float32
    err = relative_error(dec.data, ref)
    assert err < tolerance(dtype), f"{dtype} on {device}: max per-unit error {err:.2e}"
    sum_err = float(((dec.sum() - plain).norm(dim=-1) / plain.norm(dim=-1)).max())
    assert sum_err < tolerance(dtype), f"{dtype}: units.sum(1) vs the forward {sum_err:.2e}"


def test_projector_built_on_the_device_matches_the_cpu_one(device):
    model = make_tower()
    cpu = UnitProjector.from_model(model).state_dict()
    on_device = UnitProjector.from_model(copy.deepcopy(model).to(device)).state_dict()
    for key, value in cpu.items():
        assert on_device[key].device.type == device.type, key
        torch.testing.assert_close(on_device[key].cpu(), value, rtol=1e-5, atol=1e-6, msg=key)


def test_store_built_on_the_device_streams_back_to_it(device, tmp_path):
    model = make_tower()
    data = Images(21)  # chunks of 8, 8, 5
    ref = float64_units(model, stacked(data))
    store = build_store(tmp_path / "s", model.to(device), data, {"model": "tower"},
                        batch_size=4, chunk_size=8, dtype="float16", device=device,
                        autocast_dtype=torch.float16, progress=False)
    chunks = list(store.iter_units(device=device))
    assert [u.n_samples for u in chunks] == [8, 8, 5]
    assert all(u.data.device.type == device.type for u in chunks)
    units = torch.cat([u.data for u in chunks])
    assert store.targets().tolist() == [i % 3 for i in range(21)]
    # fp16 autocast, then fp16 storage of the raw form: two fp16 roundings.
    err = relative_error(units, ref)
    assert err < 2 * tolerance(torch.float16), f"store on {device}: per-unit error {err:.2e}"
    picked = store.units(["L3H1", "embed"], device)
    assert picked.data.device.type == device.type
    idx = store.labels.index("L3H1"), store.labels.index("embed")
    torch.testing.assert_close(picked.data, units[:, list(idx)], rtol=1e-5, atol=1e-6)
    # The reference PCA streamed on the device is the CPU one.
    on_device, _ = unit_pca(store, device=device, output=True)
    on_cpu, _ = unit_pca(store, device="cpu", output=True)
    torch.testing.assert_close(on_device.explained_variance.cpu(), on_cpu.explained_variance,
                               rtol=1e-3, atol=1e-6)


def residual_task(dev: torch.device):
    """ResiDual-full on the synthetic task of ``test_training`` (solvable only by reweighting)."""
    splits = {name: residual_task_units(n, seed)
              for name, n, seed in [("train", 1024, 0), ("val", 512, 1), ("test", 512, 2)]}
    pca = unit_pca(splits["train"][0])
    module = build_variant("residual-full", residual_task_classifier(), reference=pca)
    module = module.to(dev)
    data = {}
    for name, (units, y) in splits.items():
        inputs, _ = cache_inputs(module, units.to(dev))
        data[name] = TensorData(inputs, y.to(dev))
    return module, data


def test_residual_trains_on_the_device_as_on_the_cpu(device, tmp_path):
    lams = {}
    for dev in (torch.device("cpu"), device):
        module, data = residual_task(dev)
        torch.manual_seed(0)
        opt = make_optimizer(module, module.default_lr)
        loss = train_epoch(module, opt, TensorBatcher(data["train"], 64, shuffle=True), 0)
        assert loss.device.type == dev.type and torch.isfinite(loss)
        lams[dev.type] = module.lam.detach().cpu()
    # One epoch (16 Schedule-Free steps at lr 0.8): float32 reductions in another order only.
    torch.testing.assert_close(lams[device.type], lams["cpu"], rtol=1e-3, atol=1e-4)
    module, data = residual_task(device)
    result = fit_variant(module, data["train"], data["val"], data["test"], seed=0,
                         max_epochs=15, device=device, ckpt_dir=tmp_path, progress=False)
    assert result.row["engine"] == "lean"
    assert result.variant.lam.device.type == device.type
    assert result.row["test_acc"] > 0.95, result.row


def test_every_variant_builds_from_a_pca_fitted_on_the_device(device):
    # Chapter 05's route: the reference PCA is fitted where the units are and the variants are
    # built from it before anything is moved (a CPU tensor among them broke ResiDual on CUDA).
    units, _ = residual_task_units(256, 0)
    pca, output_pca = unit_pca(units.to(device), output=True)
    assert pca.components.device.type == device.type
    cpu_pca, cpu_output_pca = unit_pca(units, output=True)
    for name in [v for v in VARIANTS if v != "fine-tune"]:
        module = build_variant(name, residual_task_classifier(), reference=pca,
                               output_reference=output_pca).to(device)
        inputs, _ = cache_inputs(module, units.to(device))
        logits = module(*inputs)
        assert logits.device.type == device.type, name
        cpu_module = build_variant(name, residual_task_classifier(), reference=cpu_pca,
                                   output_reference=cpu_output_pca)
        torch.testing.assert_close(logits.cpu(), cpu_module(*cache_inputs(cpu_module, units)[0]),
                                   rtol=1e-3, atol=1e-3)


def test_probes_and_head_rankings_on_the_device_match_the_cpu(device):
    units, y = residual_task_units(256, 0)
    classes = int(y.max()) + 1
    probes = {dev.type: ridge_probe(units.data[:128].to(dev), y[:128].to(dev),
                                    units.data[128:].to(dev), y[128:].to(dev))
              for dev in (torch.device("cpu"), device)}
    torch.testing.assert_close(probes[device.type].cpu(), probes["cpu"])
    classifier = torch.nn.functional.normalize(torch.randn(units.data.shape[-1], classes), dim=0)
    means = units.data.mean(0)
    orders = {dev.type: rank_heads("S", units.to(dev), means.to(dev), classifier.to(dev),
                                   y.to(dev), k_max=4)
              for dev in (torch.device("cpu"), device)}
    assert orders[device.type] == orders["cpu"]


def test_pc_texts_of_a_variant_fitted_on_the_device_match_the_cpu(device):
    units, _ = residual_task_units(256, 0)
    d_out = units.data.shape[-1]
    emb = torch.randn(12, d_out, generator=torch.Generator().manual_seed(0))
    words = TextDictionary(tuple(f"text {i}" for i in range(12)), ((),) * 12, emb)
    tables = {}
    for dev in (torch.device("cpu"), device):
        variant = build_variant("residual-full", residual_task_classifier(),
                                reference=unit_pca(units.to(dev))).to(dev)
        with torch.no_grad():  # a planted λ: every PC scaled by its own seeded factor
            variant.lam.copy_(torch.rand(len(variant.lam),
                                         generator=torch.Generator().manual_seed(1)) * 2)
        tables[dev.type] = ex.pc_texts(variant, unit_pca(units.to(dev)), words, units=3, top=1)
    assert len(tables["cpu"]) > 0
    cpu, there = tables["cpu"], tables[device.type]
    assert list(there.unit) == list(cpu.unit) and list(there.text) == list(cpu.text)


def _halves(units, y):
    first, second = units.split(128)
    return first, y[:128], second, y[128:]


def test_public_functions_take_units_on_the_device_with_everything_else_on_the_cpu(device):
    # Labels, classifiers and means come from CPU tables; the units from a store streamed to the
    # device. Every function must give the CPU answer.
    units, y = residual_task_units(256, 0)
    classes = int(y.max()) + 1
    classifier = torch.nn.functional.normalize(torch.randn(units.data.shape[-1], classes,
                                               generator=torch.Generator().manual_seed(2)), dim=0)
    means = units.data.mean(0)
    there = units.to(device)
    torch.testing.assert_close(
        ridge_probe(there.data[:128], y[:128], there.data[128:], y[128:]).cpu(),
        ridge_probe(units.data[:128], y[:128], units.data[128:], y[128:]))
    assert (rank_heads("S", there, means, classifier, y, k_max=3)
            == rank_heads("S", units, means, classifier, y, k_max=3))
    args = [(*_halves(u, y), means, classifier) for u in (there, units)]
    pd.testing.assert_frame_equal(coarse_selection(*args[0], random_seeds=1),
                                  coarse_selection(*args[1], random_seeds=1))
    adapter = build_variant("linear-adapter", ZeroShotClassifier(classifier.to(device)))
    assert {p.device.type for p in adapter.parameters()} == {device.type}
    assert chance_levels({"y": y.to(device)}) == chance_levels({"y": y})
    pd.testing.assert_series_equal(classifier_alignment(there.heads(), classifier),
                                   classifier_alignment(units.heads(), classifier))


def test_a_rerun_on_the_device_reads_variants_back_onto_the_cpu(device, loaded, tmp_path):
    # Chapter 05 fits its reference PCA on the device; a rerun reads the finished variants back
    # from their checkpoints. Like freshly fitted ones they must come back on the CPU, where the
    # chapter's flips and λ views feed them CPU units.
    from test_experiments import TASKS, config

    enc = TaskEncodings(loaded, {"train": 24, "val": 12, "test": 12}, cache_dir=tmp_path / "e")
    ref = TaskEncodings(loaded, {"train": 40}, cache_dir=tmp_path / "e")
    pcas = unit_pca(ref.units("world.reference", "train").to(device), output=True)
    cfg = config(loaded, device=str(device))
    variants = ["zero-shot", "coarse", "residual-full"]
    first = ex.run_experiments(loaded, TASKS[:1], variants, enc, pcas, cfg, tmp_path / "r")
    again = ex.run_experiments(loaded, TASKS[:1], variants, enc, pcas, cfg, tmp_path / "r")
    units = enc.units(TASKS[0], "test")
    for key, variant in again.variants.items():
        tensors = [*variant.parameters(), *variant.buffers()]
        assert {t.device.type for t in tensors} == {"cpu"}, key
        logits = variant(*cache_inputs(variant, units)[0])
        fresh = first.variants[key]
        torch.testing.assert_close(logits, fresh(*cache_inputs(fresh, units)[0]))


def test_fine_tune_runs_on_the_device_through_lightning(device, tmp_path):
    torch.manual_seed(0)
    visual = VisionTransformer(image_size=16, patch_size=8, width=32, layers=1, heads=2,
                               mlp_ratio=2.0, output_dim=8)
    weights = torch.nn.functional.normalize(torch.randn(8, 3), dim=0)
    module = build_variant("fine-tune", ZeroShotClassifier(weights), visual=visual)
    images, y = torch.randn(96, 3, 16, 16), torch.randint(0, 3, (96,))
    loaders = [DataLoader(TensorDataset(images[i::3], y[i::3]), batch_size=16) for i in range(3)]
    before = copy.deepcopy(visual.state_dict())
    result = fit_variant(module, *loaders, seed=0, max_epochs=1, device=device,
                         ckpt_dir=tmp_path, progress=False, lr=1e-3)
    assert result.row["engine"] == "lightning" and result.row["epochs"] == 1
    assert next(result.variant.parameters()).device.type == device.type
    after = {k: v.cpu() for k, v in visual.state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in after.items())


def test_zero_shot_on_the_device_matches_the_cpu(loaded: LoadedModel, device):
    on_device = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).to(device))
    classnames, templates = world.ATTRIBUTES["color"], world.TEMPLATES["color"]
    clf_cpu = build_classifier(loaded, classnames, templates)
    clf_dev = build_classifier(on_device, classnames, templates)
    assert clf_dev.weights.device.type == device.type
    torch.testing.assert_close(clf_dev.weights.cpu(), clf_cpu.weights, rtol=1e-4, atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    images = [(torch.randn(3, 64, 64, generator=gen), i % 2) for i in range(12)]
    feats_cpu, y_cpu = encode_images(loaded, images, batch_size=5, progress=False)
    feats_dev, y_dev = encode_images(on_device, images, batch_size=5, progress=False)
    assert torch.equal(y_cpu, y_dev)
    torch.testing.assert_close(feats_dev, feats_cpu, rtol=1e-4, atol=1e-5)
    assert torch.equal(clf_dev.predict(feats_dev.to(device)).cpu(), clf_cpu.predict(feats_cpu))
