"""Files that are whole or absent: the one atomic write, the one lock file and the cache root."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "cache_root", "file_lock", "lock_holder", "temp_name"]


def cache_root() -> Path:
    """Root of cached encodings, text embeddings and trained variants, read when asked.

    ``$RESIDUAL_CACHE``, else ``.cache/`` in the repository.
    """
    env = os.environ.get("RESIDUAL_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache"


def temp_name(path: Path) -> Path:
    """Where :func:`atomic_write` writes ``path`` before renaming it: hidden, per host and process.

    Two writers of the same file (on one machine or two sharing a folder) never share it.
    """
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], object]
                 ) -> Path:
    """Write a file so that readers see nothing, the old file or the whole new one.

    The content goes to :func:`temp_name`, is flushed and fsynced, then renamed over ``path``
    (atomic on POSIX); a failure removes the temporary file and leaves ``path`` as it was.

    Args:
        path: The file (its folder is created).
        content: Bytes, text (UTF-8), or a callable writing to the open binary file (e.g.
            ``lambda f: np.save(f, array)`` or ``lambda f: torch.save(obj, f)``).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def file_lock(lock: str | os.PathLike, poll_s: float = 1.0, what: str = "lock") -> Iterator[None]:
    """Hold the lock file ``lock`` for the duration of the block.

    The file is created atomically (``O_CREAT | O_EXCL``) and names its holder (``host pid``);
    a second process waits (polling every ``poll_s`` seconds) until it is gone. A lock whose
    holder is a dead process on this host is taken over; another host's lock is waited for.

    Args:
        lock: The lock file (its folder is created).
        poll_s: Seconds between two attempts.
        what: Prefix of the one line printed to stderr while waiting.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    waited = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _stale(lock):
                lock.unlink(missing_ok=True)
                continue
            if not waited:
                print(f"[{what}] waiting for {lock} ({lock_holder(lock)})", file=sys.stderr)
                waited = True
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        if lock_holder(lock) == me:
            lock.unlink(missing_ok=True)


def lock_holder(lock: Path) -> str:
    """``host pid`` of a lock's holder (empty if there is no lock)."""
    try:
        return lock.read_text().strip()
    except FileNotFoundError:
        return ""


def _stale(lock: Path) -> bool:
    """True if the lock's holder is a process of this host that no longer runs."""
    host, _, pid = lock_holder(lock).partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's lock (or one being written): wait for it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
