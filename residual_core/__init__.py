"""ResiDual Book core: unit decomposition, spectral tools and ResiDual for open_clip ViTs."""

from residual_core.core.decompose import (
    Decomposition,
    RawUnits,
    UnitProjector,
    UnsupportedModelError,
    decompose,
    decompose_raw,
)
from residual_core.core.units import UnitLayout, unit_labels

__version__ = "0.1.0"

__all__ = [
    "Decomposition",
    "RawUnits",
    "UnitLayout",
    "UnitProjector",
    "UnsupportedModelError",
    "decompose",
    "decompose_raw",
    "unit_labels",
]
