"""Data, above the core: the one dataset registry and its providers, dictionaries, encodings."""

from residual_core.data.base import SPLITS, ClassificationDataset, DatasetSpec
from residual_core.data.registry import clear_cache, list_datasets, load_dataset, register_dataset

__all__ = ["SPLITS", "ClassificationDataset", "DatasetSpec", "clear_cache", "list_datasets",
           "load_dataset", "register_dataset"]
