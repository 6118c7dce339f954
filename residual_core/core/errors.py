"""The one base class of errors a user can act on from the message alone."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Something the user can fix: a bad input, a damaged cache, a busy or unusable cache folder.

    Every such error says what went wrong and what to do; the command line
    (``python -m residual_core.runner``) catches this one class, prints the message without a
    traceback and exits with status 2. Subclasses name one failure kind each (e.g.
    :class:`residual_core.core.store.CorruptStoreError`,
    :class:`residual_core.core.io.CacheLockTimeout`); they also derive from the matching
    built-in exception, so ``except RuntimeError`` and the like keep working.
    """
