"""The library's user errors: one base class, one subclass per kind, caught once at each CLI.

A :class:`ResidualError` is a mistake of the caller (a bad value, a missing device, an unknown
name), not a bug: every command line of the package (``python -m residual_core.runner``, the
module CLIs) catches it in :func:`cli_main`, prints its message and exits with its
:attr:`~ResidualError.exit_code` (2), never a traceback. Any other exception is a programming
error and keeps its traceback. The subclasses also derive from the built-in error a caller
would expect (``ValueError``, ``RuntimeError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["DeviceError", "InputError", "ResidualError", "cli_main"]


class ResidualError(Exception):
    """A user error: the CLI prints its message and exits 2.

    Attributes:
        exit_code: What a command line exits with when this error ends it.
    """

    exit_code: int = 2


class InputError(ResidualError, ValueError):
    """A value given to the library is refused: wrong shape, width, dtype, range, or NaN."""


class DeviceError(ResidualError, RuntimeError):
    """The device asked for (``device="cuda"``, ...) is not available on this machine."""


def cli_main(body: Callable[[], int | None], prefix: str) -> int:
    """Run a command line's body; a :class:`ResidualError` becomes a message and its exit code.

    Args:
        body: The command itself; returns its exit status (``None``: 0).
        prefix: What starts the error line on stderr (e.g. ``"[runner] FAILED:"``).

    Returns:
        The body's status, or the error's :attr:`~ResidualError.exit_code`.
    """
    try:
        return body() or 0
    except ResidualError as err:
        print(f"{prefix} {err}", file=sys.stderr, flush=True)
        return err.exit_code
