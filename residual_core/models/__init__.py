"""Models: the one table of model keys, and one ``load_model`` for all of them (above the core)."""

from residual_core.models.loading import WEIGHTS, load_model
from residual_core.models.specs import MODELS, ModelLoadError, ModelSpec, get_spec, list_models

__all__ = ["MODELS", "WEIGHTS", "ModelLoadError", "ModelSpec", "get_spec", "list_models",
           "load_model"]
