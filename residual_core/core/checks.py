"""Input checks shared by the library: devices, sizes and finite values, refused up front.

Each check raises an :class:`~residual_core.core.errors.InputError` (or
:class:`~residual_core.core.errors.DeviceError`) naming the parameter, the value it got and
what is accepted, instead of letting a bad value fail later with an unrelated torch error or,
worse, run on silently (NaN statistics, a ``True`` taken as one image).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from residual_core.core.errors import DeviceError, InputError

__all__ = ["DEVICE_FORMS", "check_device", "check_device_form", "check_finite", "check_size"]

DEVICE_FORMS = "'cpu', 'cuda', 'cuda:N' or 'mps'"
"""The device strings the library accepts, as the messages say them."""

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device_form(device: Any, name: str = "device") -> str:
    """``device`` as a string if it is one of :data:`DEVICE_FORMS`, without asking the hardware.

    Raises:
        InputError: Naming ``name``, the value and the valid forms.
    """
    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str) or not _DEVICE.match(text):
        raise InputError(f"{name}={device!r} is not a device; use {DEVICE_FORMS}")
    return text


def check_device(device: Any, name: str = "device") -> str:
    """``device`` if this machine has it: a CUDA GPU for ``cuda``/``cuda:N``, MPS for ``mps``.

    Args:
        device: A device string or :class:`torch.device`.
        name: The parameter's name, for the message.

    Returns:
        The device as a string.

    Raises:
        InputError: For a string that is no device.
        DeviceError: For a device this machine does not have (torch's own message would not
            name the parameter, and would come only once the first tensor moves).
    """
    text = check_device_form(device, name)
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{name}={text!r}, but torch finds no CUDA GPU on this machine "
                              f"(torch.cuda.is_available() is False); use {name}='cpu'")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{name}={text!r}, but this machine has "
                              f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0.."
                              f"cuda:{torch.cuda.device_count() - 1})")
    if text == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{name}='mps', but torch finds no Apple MPS device here; use "
                          f"{name}='cpu'")
    return text


def check_size(size: Any, name: str = "size", *, minimum: int = 1) -> int | None:
    """``size`` if it is ``None`` or an int of at least ``minimum`` (a bool is no size).

    Raises:
        InputError: Naming ``name``, the value and its type.
    """
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < minimum:
        raise InputError(f"{name} must be an int ≥ {minimum} or None, got "
                         f"{type(size).__name__} {size!r}")
    return size


def check_finite(x: Tensor, what: str) -> Tensor:
    """``x`` if every value is finite; NaN or inf would poison every statistic silently.

    Args:
        x: Any floating tensor.
        what: What ``x`` is, for the message (e.g. ``"units given to unit_pca"``).

    Raises:
        InputError: Counting the non-finite values.
    """
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{what} hold {bad} NaN or infinite value(s) (of {x.numel()}); they "
                         "would turn every statistic computed from them into NaN")
    return x
