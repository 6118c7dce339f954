"""The library refuses bad inputs up front, naming what it got and what it accepts.

Each case is a probe of issue #14 that failed later with an unrelated torch error, or ran on
silently wrong (NaN statistics, components paired with the wrong units).
"""

from __future__ import annotations

import pytest
import torch
from test_decompose import images, tiny_vit
from test_residual import LAYOUT, classifier, make_pca, make_units

from residual_core.core.checks import check_device
from residual_core.core.decompose import UnitProjector, decompose
from residual_core.core.errors import DeviceError, InputError, ResidualError
from residual_core.core.residual import build_variant
from residual_core.core.spectral import PCAResult, unit_pca
from residual_core.core.textspan import somp, textspan
from residual_core.core.training import TensorData
from residual_core.core.units import UnitLayout, Units
from residual_core.core.zeroshot import ZeroShotClassifier
from residual_core.data.registry import load_dataset

# What the user reads is the library's own message, not the tests' annotation check.
pytestmark = pytest.mark.usefixtures("without_annotation_checks")

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def test_user_errors_are_the_builtin_kind_too():
    assert issubclass(InputError, ValueError) and issubclass(InputError, ResidualError)
    assert issubclass(DeviceError, RuntimeError) and DeviceError.exit_code == 2


# ----------------------------------------------------------------------------- decompose


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()  # takes 32 × 32 images


@pytest.mark.parametrize(("bad", "says"), [
    (images(2, 48), "images are 48×48 but this model takes 32×32"),
    (images(1, 32)[0], "must be (batch, 3, 32, 32)"),
    (images(2, 32)[:, :1], "got shape (2, 1, 32, 32)"),
    ((images(2, 32) * 50 + 128).clamp(0, 255).to(torch.uint8), "must be floating point, got "
                                                                "torch.uint8"),
    (images(2, 32)[:0], "empty batch"),
    ([[0.0]], "must be a tensor"),
])
def test_decompose_refuses_images_the_model_cannot_take(vit, bad, says):
    with pytest.raises(InputError) as info:
        decompose(vit, bad)
    assert says in str(info.value)


def test_decompose_casts_other_floating_dtypes_to_the_model(vit):
    x = images(3, 32)
    expected = decompose(vit, x).data
    torch.testing.assert_close(decompose(vit, x.double()).data, expected)


def test_decompose_refuses_another_models_projector(vit):
    other = UnitProjector.from_model(tiny_vit(layers=3))
    with pytest.raises(InputError, match="the projector is another model's"):
        decompose(vit, images(2, 32), projector=other)


# --------------------------------------------------------------------------------- data


@pytest.mark.parametrize("size", ["10", 2.5, True, 0, -3])
def test_load_dataset_refuses_a_size_that_is_no_count(size):
    with pytest.raises(InputError, match=f"size must be an int ≥ 1 or None, got "
                                         f"{type(size).__name__}"):
        load_dataset("world.shape", "test", size=size)


def test_load_dataset_suggests_the_name_meant():
    with pytest.raises(InputError, match="did you mean 'world.shape'"):
        load_dataset("world.shap", "test")


def test_a_file_as_data_root_is_refused(tmp_path, monkeypatch):
    from residual_core.data import paper

    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        paper.data_root(tmp_path / "f")
    monkeypatch.setenv(paper.DATA_ENV, str(tmp_path / "f"))
    with pytest.raises(InputError, match=r"from \$RESIDUAL_DATA"):
        paper.available("cifar10")


# ---------------------------------------------------------------------- NaN and widths


def nan_units() -> Units:
    units = make_units(50)
    data = units.data.clone()
    data[7, 3, 2] = float("nan")
    return units.with_data(data)


def test_nan_units_are_refused_by_the_pca():
    with pytest.raises(InputError, match="the units given to the PCA hold 1 NaN"):
        unit_pca(nan_units())


def test_nan_units_are_refused_by_textspan_and_somp():
    words = torch.nn.functional.normalize(torch.randn(20, LAYOUT.d_out), dim=-1)
    texts = [f"t{i}" for i in range(20)]
    with pytest.raises(InputError, match="NaN"):
        textspan(nan_units(), words, texts, n_iters=2, rank=4)
    with pytest.raises(InputError, match="NaN"):
        somp(nan_units().select(["L0H0"]).data[:, 0].clone().fill_(float("nan")), words, texts)


def test_nan_training_inputs_are_refused():
    coords = torch.randn(10, 4)
    coords[3, 1] = float("inf")
    with pytest.raises(InputError, match="the training inputs hold 1 NaN or infinite"):
        TensorData((coords,), torch.zeros(10, dtype=torch.long))


def test_a_dictionary_of_another_width_is_refused():
    units = make_units(50)
    wide = torch.nn.functional.normalize(torch.randn(20, LAYOUT.d_out + 4), dim=-1)
    texts = [f"t{i}" for i in range(20)]
    for call in (lambda: textspan(units, wide, texts, n_iters=2, rank=4),
                 lambda: textspan(unit_pca(units), wide, texts, n_iters=2, rank=4),
                 lambda: somp(units.select(["L0H0"]), wide, texts, n_iters=2)):
        with pytest.raises(InputError, match="the dictionary's embeddings are 12 wide but the "
                                             "units are 8 wide"):
            call()


def test_a_classifier_of_another_width_is_refused():
    clf = classifier(d_out=LAYOUT.d_out + 1)
    with pytest.raises(InputError, match="image embeddings are 8 wide but the classifier reads "
                                         "9-wide"):
        clf(torch.randn(3, LAYOUT.d_out))
    with pytest.raises(InputError, match="the classifier 9"):
        build_variant("residual-full", clf, reference=make_pca(make_units()))
    with pytest.raises(InputError, match="must be .d_out, k."):
        ZeroShotClassifier(torch.randn(8))


# ------------------------------------------------------------- ResiDual's reference PCA


def relabelled(pca: PCAResult, labels, layout: UnitLayout | None = None) -> PCAResult:
    return PCAResult(pca.mean, pca.components, pca.explained_variance, pca.n_samples,
                     tuple(labels), layout or pca.layout)


@pytest.mark.parametrize("name", ["coarse", "residual-fine", "residual-full"])
def test_builders_refuse_reversed_labels(name):
    """Rows are found by label: reversed labels would pair PCs with the wrong units."""
    pca = make_pca(make_units())
    with pytest.raises(InputError, match="not in the model's unit order"):
        build_variant(name, classifier(), reference=relabelled(pca, reversed(pca.labels)))


@pytest.mark.parametrize("name", ["coarse", "residual-fine", "residual-full"])
def test_builders_refuse_another_models_labels(name):
    """Labels of a model with as many units (9 = 1 + 2 + 2·3 = 1 + 4 + 4·1) are not these."""
    other = UnitLayout(n_layers=4, n_heads=1, d_model=6, d_head=6, d_out=8)
    assert other.n_units == LAYOUT.n_units
    pca = make_pca(make_units())
    with pytest.raises(InputError, match="are not units of its model"):
        build_variant(name, classifier(), reference=relabelled(pca, other.labels))


def test_a_variant_refuses_units_of_another_model():
    variant = build_variant("residual-full", classifier(), reference=make_pca(make_units()))
    units = make_units()
    foreign = Units(units.data, units.labels, UnitLayout(2, 3, 12, 4, 8))  # same labels
    with pytest.raises(InputError, match="another model's"):
        variant.encode(foreign)


# ------------------------------------------------------------------------------ devices


def test_a_device_string_of_no_known_form_is_refused():
    with pytest.raises(InputError, match="device='gpu' is not a device; use 'cpu', 'cuda'"):
        check_device("gpu")


@NO_CUDA
def test_cuda_without_a_gpu_is_refused_naming_the_parameter():
    from residual_core.models import load_model

    with pytest.raises(DeviceError, match="device='cuda', but torch finds no CUDA GPU"):
        load_model("tutorial", device="cuda")
    with pytest.raises(DeviceError, match="device='cuda:0'"):
        check_device(torch.device("cuda", 0))
