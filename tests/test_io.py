"""The cache's files: its root, atomic writes by concurrent writers, checksums, and the lock
(crashed holders on this or another host, empty lock files, live holders that never let go)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from conftest import run_in_threads

from residual_core.core.errors import ResidualError
from residual_core.core.io import (
    CacheLockTimeout,
    CacheRootError,
    atomic_write,
    atomic_write_crc32,
    cache_root,
    crc32_file,
    file_lock,
    remove_dead_temps,
    temp_name,
)

# ----- the cache root ----------------------------------------------------------------------


def test_cache_root_refuses_an_empty_value(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESIDUAL_CACHE", "")
    with pytest.raises(CacheRootError, match="RESIDUAL_CACHE is set but empty"):
        cache_root()
    assert list(tmp_path.iterdir()) == []  # not silently the working directory


def test_cache_root_refuses_a_file(monkeypatch, tmp_path):
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv("RESIDUAL_CACHE", str(a_file))
    for create in (True, False):
        with pytest.raises(CacheRootError, match=r"cache.txt is a file, not a folder"):
            cache_root(create=create)
    monkeypatch.setenv("RESIDUAL_CACHE", str(a_file / "below"))
    with pytest.raises(CacheRootError, match="cannot create RESIDUAL_CACHE=.*below"):
        cache_root()
    with pytest.raises(CacheRootError, match="cache.txt is a file"):
        cache_root(create=False)


def test_cache_root_is_created_when_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "a" / "b"))
    assert cache_root(create=False) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # a dry run creates nothing
    assert cache_root() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("RESIDUAL_CACHE")
    assert cache_root().name == ".cache"


def test_every_cache_user_refuses_a_bad_root(monkeypatch, tmp_path, loaded, capsys):
    """The encodings, the text cache, the paper datasets' root and the runner's dry run."""
    from residual_core.core.dictionary import embed_texts
    from residual_core.data import paper
    from residual_core.data.encodings import encode_dataset
    from residual_core.runner import cli

    a_file = tmp_path / "cache.txt"
    a_file.write_text("")
    monkeypatch.setenv("RESIDUAL_CACHE", str(a_file))
    monkeypatch.delenv(paper.DATA_ENV, raising=False)
    for call in (lambda: encode_dataset(loaded, "world.color", "test", size=4, progress=False),
                 lambda: embed_texts(loaded, ["a red circle"]),
                 lambda: paper.data_root()):
        with pytest.raises(CacheRootError, match="is a file"):
            call()
    # The dry run no longer reports enough disk at a cache that cannot exist: the error
    # reaches the CLI boundary, which turns a ResidualError into its message and status 2.
    try:
        status = cli.main(["run", "01", "--dry-run"])
    except CacheRootError as err:
        status, message = 2, str(err)
    else:
        message = capsys.readouterr().err
    assert status == 2 and "cache.txt is a file" in message and "enough" not in message
    assert issubclass(CacheRootError, ResidualError)


# ----- atomic writes -----------------------------------------------------------------------


def test_temp_names_are_unique_per_writer(tmp_path):
    names = {temp_name(tmp_path / "f") for _ in range(100)}
    assert len(names) == 100
    assert all(n.name.startswith(f".f.{socket.gethostname()}.{os.getpid()}.") for n in names)


def test_two_writers_of_one_file_in_one_process(tmp_path):
    """Both write at once (same pid): neither crashes, the file is one of the two, whole."""
    path = tmp_path / "f.npy"
    both_inside = threading.Barrier(2)

    def write(k):
        def content(f):
            both_inside.wait(timeout=10)
            np.save(f, np.full(1000, k))
        atomic_write(path, content)

    errors = run_in_threads(write)
    assert not errors, errors
    got = np.load(path)
    assert len(set(got.tolist())) == 1 and got[0] in (0, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["f.npy"]


def test_checksum_of_what_was_written(tmp_path):
    array = np.arange(100_000, dtype=np.float32)
    crc = atomic_write_crc32(tmp_path / "a.npy", lambda f: np.save(f, array))
    expected = f"{zlib.crc32((tmp_path / 'a.npy').read_bytes()):08x}"
    assert crc == crc32_file(tmp_path / "a.npy") == expected
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    assert atomic_write_crc32(tmp_path / "b", "text") == f"{zlib.crc32(b'text'):08x}"


def test_dead_writers_temporary_files_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    mine = tmp_path / f".a.npy.{host}.{os.getpid()}.0123abcd.tmp"
    gone = tmp_path / f".a.npy.{host}.{dead.pid}.0123abcd.tmp"
    other_host = tmp_path / f".a.npy.elsewhere.{dead.pid}.0123abcd.tmp"
    for p in (mine, gone, other_host):
        p.write_text("partial")
    assert remove_dead_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other_host.name])


# ----- the lock ----------------------------------------------------------------------------


def foreign_lock(lock, host="crashed-node"):
    lock.write_text(json.dumps({"host": host, "pid": 4242, "since": time.time(),
                                "token": "theirs"}))


def acquire_within(lock, seconds, **kwargs):
    """Take the lock in a thread; the time it took, or fail after ``seconds`` (never hang)."""
    took = []

    def take():
        start = time.monotonic()
        with file_lock(lock, poll_s=0.02, **kwargs):
            took.append(time.monotonic() - start)
            assert json.loads(lock.read_text())["pid"] == os.getpid()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    t.join(seconds)
    assert took, f"still waiting for {lock} after {seconds} s"
    return took[0]


def test_lock_of_a_crashed_machine_is_taken_over(tmp_path, capfd):
    """Another host's lock that nobody renews: taken over once it has not moved for stale_s."""
    lock = tmp_path / "s.lock"
    foreign_lock(lock)
    took = acquire_within(lock, 20, stale_s=0.5, timeout_s=60)
    assert took >= 0.5
    assert "took over" in capfd.readouterr().err and not lock.exists()


def test_empty_lock_file_is_taken_over(tmp_path, capfd):
    lock = tmp_path / "s.lock"
    lock.touch()
    acquire_within(lock, 20, stale_s=0.5, timeout_s=60)
    assert "empty or unreadable" in capfd.readouterr().err


def test_live_holder_on_another_host_times_out_naming_it(tmp_path, monkeypatch):
    """A holder whose heartbeat moves is waited for, but not forever."""
    lock = tmp_path / "s.lock"
    foreign_lock(lock, host="busy-node")
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(0.05):
            os.utime(lock)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    monkeypatch.setenv("RESIDUAL_LOCK_TIMEOUT", "1.5")
    outcome = []

    def wait():
        start = time.monotonic()
        try:
            with file_lock(lock, poll_s=0.05, stale_s=0.5):
                outcome.append("taken")
        except CacheLockTimeout as err:
            outcome.append((err, time.monotonic() - start))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(20)  # never hang the suite, whatever the lock does
    stop.set()
    beat.join()
    assert outcome, "still waiting after 20 s"
    assert outcome[0] != "taken", "a live holder's lock was taken over"
    err, waited = outcome[0]
    assert 1.5 <= waited < 10
    assert re.search(r"s\.lock after 2 s: held by process 4242 on host busy-node.*"
                     r"RESIDUAL_LOCK_TIMEOUT", str(err)), err
    assert issubclass(CacheLockTimeout, ResidualError)


def test_heartbeat_keeps_a_slow_holder_and_one_waiter_breaks_a_stale_lock(tmp_path):
    """A holder that outlives stale_s keeps its lock; of several waiters, one takes over."""
    lock = tmp_path / "s.lock"
    log, guard = [], threading.Lock()

    def hold(k, seconds):
        with file_lock(lock, poll_s=0.02, stale_s=0.4, heartbeat_s=0.05, timeout_s=60):
            with guard:
                log.append(("in", k))
            time.sleep(seconds)
            with guard:
                log.append(("out", k))

    first = threading.Thread(target=hold, args=(0, 1.5))
    first.start()
    time.sleep(0.2)
    others = [threading.Thread(target=hold, args=(k, 0.1)) for k in range(1, 4)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(60)
    # never two holders at once: each "in" is directly followed by its own "out"
    assert len(log) == 8 and all(log[i][0] == "in" and log[i + 1] == ("out", log[i][1])
                                 for i in range(0, 8, 2)), log
    assert log[0] == ("in", 0)

    # a stale foreign lock and three waiters judging it stale at once: still one at a time
    foreign_lock(lock)
    log.clear()
    waiters = [threading.Thread(target=hold, args=(k, 0.2)) for k in range(3)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join(60)
    assert len(log) == 6 and all(log[i][0] == "in" and log[i + 1] == ("out", log[i][1])
                                 for i in range(0, 6, 2)), log
