"""The one dataset registry: ``load_dataset(name, split)`` for the tutorial world and the paper.

Providers register on first use, not at import: the first call of :func:`list_datasets`,
:func:`load_dataset` or :func:`register_dataset` adds the tutorial world's datasets
(:mod:`residual_core.data.world`), the ``synthetic`` stand-in (:mod:`residual_core.data.synthetic`)
and the paper's datasets (:mod:`residual_core.data.paper`: ``cifar10``, ..., ``imagenet``,
``pacs``, ``random``), each a :class:`~residual_core.data.base.DatasetSpec`.

Extension point: ``register_dataset(DatasetSpec(name, build, ...))``, where ``build(split,
size)`` returns a :class:`~residual_core.data.base.ClassificationDataset` whose ``images`` is any
indexable of PIL images (for example a thin view over a torchvision dataset) and ``attributes``
is ``None``. Built splits are kept in memory (see :func:`clear_cache`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from PIL import Image

from residual_core.core.checks import check_size
from residual_core.core.errors import InputError
from residual_core.data.base import ClassificationDataset, DatasetSpec

__all__ = ["clear_cache", "list_datasets", "load_dataset", "register_dataset"]

_REGISTRY: dict[str, DatasetSpec] = {}
_CACHE: dict[tuple[Any, ...], ClassificationDataset] = {}
_PROVIDERS_LOADED = False


def _providers() -> list[Any]:
    # The provider modules import only the base, so importing them here closes no circle.
    from residual_core.data import paper, synthetic, world

    return [world, synthetic, paper]


def _ensure_providers() -> None:
    global _PROVIDERS_LOADED
    if _PROVIDERS_LOADED:
        return
    _PROVIDERS_LOADED = True
    for provider in _providers():
        for spec in provider.specs():
            _REGISTRY.setdefault(spec.name, spec)


def register_dataset(spec: DatasetSpec, overwrite: bool = False) -> None:
    """Add a dataset to the registry.

    Args:
        spec: The dataset's name, builder and splits.
        overwrite: Replace an existing entry of the same name instead of raising.

    Raises:
        ValueError: If the name is taken and not ``overwrite``.
    """
    _ensure_providers()
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    for key in [k for k in _CACHE if k[0] == spec.name]:
        del _CACHE[key]


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    _ensure_providers()
    return sorted(_REGISTRY)


def load_dataset(
    name: str,
    split: str,
    transform: Callable[[Image.Image], Any] | None = None,
    *,
    size: int | None = None,
) -> ClassificationDataset:
    """Load a registered dataset split (built on first use, then cached in memory).

    Args:
        name: A name from ``list_datasets()``.
        split: One of the dataset's splits (``train``, ``val``, ``test``).
        transform: Optional callable applied to each PIL image by ``__getitem__``.
        size: Number of samples (``None``: the dataset's default for that split).

    Returns:
        The dataset; its arrays are shared with the cache, so treat them as read-only.

    Raises:
        InputError: Unknown name or split (the message lists the valid ones), or a size that
            is not ``None`` or an int ≥ 1 (``"10"``, ``2.5``, ``True``).
    """
    _ensure_providers()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown dataset {name!r}{mean}; valid names: "
                         f"{', '.join(list_datasets())}")
    spec = _REGISTRY[name]
    if split not in spec.splits:
        raise InputError(
            f"unknown split {split!r} for dataset {name!r}; valid splits: {', '.join(spec.splits)}"
        )
    check_size(size, "size")
    token = None if spec.cache_token is None else spec.cache_token()
    key = (name, split, size, token)
    if key not in _CACHE:
        _CACHE[key] = spec.build(split, size)
    return _CACHE[key].with_transform(transform)


def clear_cache() -> None:
    """Forget every built dataset and what the providers keep (rendered world splits, files)."""
    _CACHE.clear()
    for provider in _providers():
        getattr(provider, "clear", lambda: None)()
