"""Files that are whole or absent: the cache root, the one atomic write, checksums, the one lock."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from residual_core.core.errors import InputError, ResidualError

__all__ = [
    "CACHE_ENV",
    "LOCK_TIMEOUT_ENV",
    "CacheLockTimeout",
    "CacheRootError",
    "atomic_write",
    "atomic_write_crc32",
    "alive",
    "cache_root",
    "crc32_file",
    "file_lock",
    "lock_holder",
    "remove_dead_temps",
    "temp_name",
]

CACHE_ENV = "RESIDUAL_CACHE"
"""Environment variable naming the cache root (see :func:`cache_root`)."""

LOCK_TIMEOUT_ENV = "RESIDUAL_LOCK_TIMEOUT"
"""Environment variable: seconds :func:`file_lock` waits for a live holder (default 6 h)."""

DEFAULT_LOCK_TIMEOUT_S = 6 * 3600.0
LOCK_STALE_S = 120.0
"""A lock whose heartbeat has not moved for this long is taken over (its holder is gone)."""
EMPTY_LOCK_GRACE_S = 30.0
"""An empty or unreadable lock file unchanged for this long is taken over."""


class CacheRootError(ResidualError, OSError):
    """``$RESIDUAL_CACHE`` (or the default cache folder) cannot hold the cache."""


class CacheLockTimeout(ResidualError, TimeoutError):
    """A cache lock was held by a live process for longer than the allowed wait."""


# ----- the cache root ----------------------------------------------------------------------

def _default_cache() -> Path:
    return Path(__file__).resolve().parents[2] / ".cache"


def cache_root(create: bool = True) -> Path:
    """Root of cached encodings, text embeddings, datasets and trained variants, read when asked.

    ``$RESIDUAL_CACHE``, else ``.cache/`` in the repository. Every reader of the cache (the
    encoding stores, the text cache, the paper datasets' default root, the runner and its dry
    run) goes through this function, so a bad value is refused in one place, up front.

    Args:
        create: Create the folder if it is missing (``False``, e.g. for a dry run: only check
            that it could be created).

    Returns:
        The cache folder.

    Raises:
        CacheRootError: ``$RESIDUAL_CACHE`` is set but empty, names a file (or a path under a
            file), or the folder cannot be created or written.
    """
    env = os.environ.get(CACHE_ENV)
    if env is None:
        root, origin = _default_cache(), "the default cache folder"
    elif not env.strip():
        # An empty value would silently mean the working directory.
        raise CacheRootError(f"{CACHE_ENV} is set but empty; unset it (the cache is then "
                             f"{_default_cache()}) or set it to a folder")
    else:
        root, origin = Path(env).expanduser(), f"{CACHE_ENV}={env}"
    if root.exists():
        if not root.is_dir():
            raise CacheRootError(f"{origin} is a file, not a folder; point {CACHE_ENV} at a "
                                 "folder (it is created if missing)")
        if not os.access(root, os.W_OK | os.X_OK):
            raise CacheRootError(f"{origin} is not writable; point {CACHE_ENV} at a folder "
                                 "you can write")
        return root
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheRootError(f"cannot create {origin} ({err.strerror or err}); point "
                                 f"{CACHE_ENV} at a folder you can write") from err
        return root
    parent = next(p for p in root.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "a file" if not parent.is_dir() else "not writable"
        raise CacheRootError(f"cannot create {origin}: {parent} is {what}; point {CACHE_ENV} "
                             "at a folder you can write")
    return root


# ----- atomic writes and checksums ---------------------------------------------------------

def temp_name(path: Path) -> Path:
    """Where :func:`atomic_write` writes ``path`` before renaming it: hidden, unique per call.

    The name holds the host, the process id and a random token, so two writers of the same
    file (threads, processes, machines sharing a folder) never share a temporary file, and
    :func:`remove_dead_temps` can tell whose it is.
    """
    return path.with_name(
        f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


class _Crc32Writer:
    """A binary file that also keeps the CRC-32 of what went through it."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.crc = 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _atomic(path: Path, content: bytes | str | Callable[[BinaryIO], object],
            checksum: bool) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    crc = 0
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                if checksum:
                    writer = _Crc32Writer(f)
                    content(writer)  # type: ignore[arg-type]
                    crc = writer.crc
                else:
                    content(f)
            else:
                data = content.encode() if isinstance(content, str) else content
                f.write(data)
                crc = zlib.crc32(data) if checksum else 0
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return crc


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
    _atomic(path, content, checksum=False)
    return path


def atomic_write_crc32(path: str | os.PathLike,
                       content: bytes | str | Callable[[BinaryIO], object]) -> str:
    """:func:`atomic_write`, returning the CRC-32 of the bytes written (8 hex digits).

    The checksum is taken from the bytes on their way to the file, so recording it costs no
    second read. A callable ``content`` gets a file-like object with ``write`` and ``flush``
    only (enough for ``np.save``).
    """
    return f"{_atomic(Path(path), content, checksum=True):08x}"


def crc32_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """CRC-32 of a file's bytes (8 hex digits), read in blocks of ``block`` bytes.

    CRC-32 catches every burst of up to 32 flipped bits and any other corruption with
    probability 1 − 2⁻³²: what an integrity check needs, at about twice SHA-256's speed.
    """
    crc = 0
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def remove_dead_temps(folder: Path) -> int:
    """Delete the temporary files that processes of this host left behind when they died.

    A killed writer (``kill -9``) leaves its :func:`temp_name` file; one whose process still
    runs, or that belongs to another host, is left alone.

    Returns:
        How many files were removed.
    """
    pattern = re.compile(rf"^\..+\.{re.escape(socket.gethostname())}\.(\d+)\.[0-9a-f]{{8}}\.tmp$")
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            m = pattern.match(path.name)
            if m and not alive(int(m.group(1))):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def alive(pid: int) -> bool:
    """Whether a process of this host with this id is running (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# ----- the lock file -----------------------------------------------------------------------

def _lock_timeout() -> float:
    env = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not env:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        return float(env)
    except ValueError:
        raise InputError(f"{LOCK_TIMEOUT_ENV}={env!r} is not a number of seconds") from None


def _read_holder(lock: Path) -> dict[str, Any] | None:
    """The holder written in a lock file; ``None`` if the file is empty or unreadable."""
    try:
        text = lock.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError, OSError):
        return None
    if not text:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        host, _, pid = text.partition(" ")  # the older "host pid" form
        return {"host": host, "pid": int(pid)} if pid.isdigit() else None
    return holder if isinstance(holder, dict) else None


def lock_holder(lock: Path) -> str:
    """Who holds a lock, in words (empty if there is no lock file)."""
    if not lock.exists():
        return ""
    holder = _read_holder(lock)
    if holder is None:
        return "an empty or unreadable lock file"
    since = holder.get("since")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"process {holder.get('pid')} on host {holder.get('host')}{when}"


def _observe(lock: Path) -> tuple | None:
    """What a waiter watches for change: inode, size, mtime and content (None if gone)."""
    try:
        st = lock.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns, lock.read_bytes()
    except FileNotFoundError:
        return None


def _stale_reason(lock: Path, unchanged_s: float, stale_s: float) -> str | None:
    """Why the lock's holder is gone, or ``None`` while it may still be alive."""
    holder = _read_holder(lock)
    if holder is None:
        grace = min(stale_s, EMPTY_LOCK_GRACE_S)
        return (f"the lock file is empty or unreadable and unchanged for {unchanged_s:.0f} s"
                if unchanged_s >= grace else None)
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not alive(pid):
        return f"its holder, process {pid} of this host, is gone"
    if unchanged_s >= stale_s:
        # Holders touch the file every few seconds (on any host): a still file is a dead holder.
        return f"its holder ({lock_holder(lock)}) has not renewed it for {unchanged_s:.0f} s"
    return None


def _break(lock: Path, seen: tuple, reason: str, what: str) -> None:
    """Remove a stale lock, unless it changed since it was judged stale.

    Only one waiter breaks a lock at a time (``{lock}.break``, created exclusively), and it
    removes the lock only if it is still the file it judged; so two waiters that both found
    the lock stale never remove the fresh lock the first of them then took.
    """
    breaker = lock.with_name(lock.name + ".break")
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):  # a breaker that died while breaking
            if time.time() - breaker.stat().st_mtime > EMPTY_LOCK_GRACE_S:
                breaker.unlink(missing_ok=True)
        return
    try:
        if _observe(lock) == seen:
            lock.unlink(missing_ok=True)
            print(f"[{what}] took over {lock}: {reason}", file=sys.stderr, flush=True)
    finally:
        os.close(fd)
        breaker.unlink(missing_ok=True)


def _heartbeat(lock: Path, token: str, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        holder = _read_holder(lock)
        if holder is None or holder.get("token") != token:
            return  # taken over (we were presumed dead): nothing of ours to renew
        with contextlib.suppress(OSError):
            os.utime(lock)


@contextlib.contextmanager
def file_lock(
    lock: str | os.PathLike,
    poll_s: float = 1.0,
    what: str = "lock",
    *,
    timeout_s: float | None = None,
    stale_s: float = LOCK_STALE_S,
    heartbeat_s: float | None = None,
) -> Iterator[None]:
    """Hold the lock file ``lock`` for the duration of the block; never wait forever.

    The file is created atomically (``O_CREAT | O_EXCL``) and names its holder (host, pid,
    start time, a random token); while the block runs a background thread renews the file's
    modification time every ``heartbeat_s``. A waiter polls every ``poll_s`` and takes the
    lock over when its holder is gone: a dead process of this host, a holder (of any host)
    whose heartbeat has not moved for ``stale_s`` (a crashed machine), or an empty/unreadable
    file unchanged for 30 s. A holder that lives past ``timeout_s`` makes the waiter raise.

    Args:
        lock: The lock file (its folder is created).
        poll_s: Seconds between two attempts.
        what: Prefix of the lines printed to stderr while waiting or taking over.
        timeout_s: Longest wait for a live holder (default ``$RESIDUAL_LOCK_TIMEOUT``, else
            6 hours).
        stale_s: Seconds without a heartbeat after which a holder counts as gone (the
            change is watched on the waiter's own clock, so hosts' clocks need not agree).
        heartbeat_s: Seconds between two renewals (default ``stale_s / 8``).

    Raises:
        CacheLockTimeout: Naming the lock and its holder, after ``timeout_s``.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = _lock_timeout() if timeout_s is None else timeout_s
    heartbeat_s = stale_s / 8 if heartbeat_s is None else heartbeat_s
    token = secrets.token_hex(8)
    me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                     "token": token})
    start = time.monotonic()
    seen, seen_at, waited = None, start, False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            now = time.monotonic()
            state = _observe(lock)
            if state is None:
                continue  # released meanwhile
            if state != seen:
                seen, seen_at = state, now
            reason = _stale_reason(lock, now - seen_at, stale_s)
            if reason is not None:
                _break(lock, seen, reason, what)
                continue
            if now - start >= timeout_s:
                raise CacheLockTimeout(
                    f"gave up waiting for {lock} after {now - start:.0f} s: held by "
                    f"{lock_holder(lock)}, which is still alive (its heartbeat moves). Wait for "
                    f"it, or stop it; set {LOCK_TIMEOUT_ENV} (seconds) to wait longer"
                ) from None
            if not waited:
                print(f"[{what}] waiting for {lock} ({lock_holder(lock)})", file=sys.stderr,
                      flush=True)
                waited = True
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, token, heartbeat_s, stop),
                            name=f"heartbeat {lock.name}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        holder = _read_holder(lock)
        if holder is not None and holder.get("token") == token:
            lock.unlink(missing_ok=True)
