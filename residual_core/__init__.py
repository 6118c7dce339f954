"""ResiDual Book: the researcher's surface of the library, ``import residual_core as rc``.

Every name here is loaded on first use, so ``import residual_core`` stays cheap::

    import residual_core as rc

    model = rc.load_model("tutorial")
    units = rc.decompose(model.model, images)          # labelled Units (batch, unit, d_out)
    units["L3H1"], units.heads(layer=3), units.grid()

The package is layered, each layer importing only those below it: ``core`` (units and the
maths), ``models`` and ``data`` (what is loaded), ``analysis`` (what the chapters compute),
``plots``, and ``runner`` (chapters, the book, sweeps).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_FACADE: dict[str, str] = {
    # units and the decomposition
    "Units": "core.units",
    "UnitLayout": "core.units",
    "unit_labels": "core.units",
    "parse_label": "core.units",
    "unit_grid": "core.units",
    "decompose": "core.decompose",
    "decompose_raw": "core.decompose",
    "check_supported": "core.decompose",
    "RawUnits": "core.decompose",
    "UnitProjector": "core.decompose",
    "UnsupportedModelError": "core.decompose",
    # models and data
    "LoadedModel": "core.model",
    "load_model": "models",
    "list_models": "models",
    "load_dataset": "data",
    "list_datasets": "data",
    "encode_dataset": "data.encodings",
    "TaskEncodings": "data.encodings",
    "EncodingStore": "core.store",
    "load_dictionary": "data.dictionaries",
    "TextDictionary": "core.dictionary",
    # what is measured on units
    "unit_pca": "core.spectral",
    "PCAResult": "core.spectral",
    "spectral_similarity": "core.spectral",
    "linear_id": "core.intrinsic_dim",
    "twonn": "core.intrinsic_dim",
    "textspan": "core.textspan",
    "somp": "core.textspan",
    "TextExplanation": "core.textspan",
    "probe_table": "core.probes",
    "ablate": "core.ablation",
    "coarse_selection": "core.ablation",
    # zero-shot and ResiDual
    "ZeroShotClassifier": "core.zeroshot",
    "build_classifier": "core.zeroshot",
    "VARIANTS": "core.residual",
    "build_variant": "core.residual",
    "train_variant": "core.training",
    "fit_variant": "core.training",
}

__all__ = sorted(_FACADE)


def __getattr__(name: str) -> Any:
    module = _FACADE.get(name)
    if module is None:
        raise AttributeError(f"module 'residual_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"residual_core.{module}"), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
