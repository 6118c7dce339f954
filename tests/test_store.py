"""The encoding store: exact round trip, resume after a kill or Ctrl-C, stale and corrupt data,
two builders at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
import torch
from conftest import run_in_threads
from open_clip.transformer import VisionTransformer
from torch.utils.data import Dataset

from residual_core.core import store as store_module
from residual_core.core.decompose import decompose
from residual_core.core.store import CorruptStoreError, EncodingStore, StaleStoreError, build_store

N = 21  # uneven: chunks of 8, 8, 5


def make_model() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=8, width=32, layers=2, heads=2,
                              mlp_ratio=2.0, output_dim=12)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


class Images(Dataset):
    """Deterministic images; can die (SIGKILL) or be interrupted at a given index."""

    def __init__(self, n: int = N, die_at: int | None = None, interrupt_at: int | None = None):
        self.n, self.die_at, self.interrupt_at = n, die_at, interrupt_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if i == self.interrupt_at:
            raise KeyboardInterrupt
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 16, 16, generator=g), i % 3


FP = {"model": "tiny", "weights": "abc", "dataset": "images", "split": "train"}


def build(root, dataset=None, fingerprint=FP, **kw):
    kw = {"batch_size": 4, "chunk_size": 8, "dtype": "float32", "progress": False, **kw}
    return build_store(root, make_model(), dataset or Images(), fingerprint, **kw)


def reference(centering="shared"):
    images = torch.stack([Images()[i][0] for i in range(N)])
    return decompose(make_model(), images, centering=centering)


def test_round_trip_matches_decompose(tmp_path):
    store = build(tmp_path / "s")
    ref = reference()
    assert store.n_samples == N and store.n_chunks == 3
    got = store.units(["L1H0", "embed", "L0.mlp"])
    assert got.labels == ("L1H0", "embed", "L0.mlp") and got.layout == store.layout
    torch.testing.assert_close(got.data, ref.select(["L1H0", "embed", "L0.mlp"]).data)
    all_units = store.units()
    assert all_units.labels == ref.labels
    torch.testing.assert_close(all_units.data, ref.data)
    # batches never cross a stored chunk (8, 8, then the rest)
    sizes = [u.n_samples for u in store.iter_units(batch_size=3)]
    assert sizes == [3, 3, 2] * (N // 8) + [3] * ((N % 8) // 3) + [N % 8 % 3] * (N % 8 % 3 > 0)
    torch.testing.assert_close(
        torch.cat([u.data for u in store.iter_units(batch_size=3)]), ref.data)
    assert store.targets().tolist() == [i % 3 for i in range(N)]
    assert tuple(store.labels) == ref.labels
    store.verify()


def test_worker_processes_and_batches_that_do_not_divide_a_chunk(tmp_path):
    # One loader serves every chunk; batches are cut at chunk boundaries (8 = 3 + 3 + 2).
    store = build(tmp_path / "s", batch_size=3, num_workers=2)
    assert store.n_chunks == 3
    torch.testing.assert_close(store.units().data, reference().data)
    assert store.targets().tolist() == [i % 3 for i in range(N)]
    store.verify()


def test_centering_is_kept_and_checked(tmp_path):
    store = build(tmp_path / "s", centering="per-unit")
    assert store.centering == "per-unit"
    ref = reference("per-unit")
    torch.testing.assert_close(store.units("L1H1")["L1H1"], ref["L1H1"])
    torch.testing.assert_close(store.units().data, ref.data)
    assert not torch.allclose(ref["L1H1"], reference("shared")["L1H1"], atol=1e-4)
    with pytest.raises(StaleStoreError, match="centering=per-unit.*centering=shared"):
        build(tmp_path / "s", centering="shared")
    rebuilt = build(tmp_path / "s", centering="shared", overwrite=True)
    torch.testing.assert_close(rebuilt.units("L1H1")["L1H1"], reference("shared")["L1H1"])
    with pytest.raises(ValueError, match="centering='both'"):
        build(tmp_path / "t", centering="both")


def test_float16_storage_is_close(tmp_path):
    store = build(tmp_path / "s", dtype="float16")
    ref = reference()
    got = store.units().data
    rel = ((got - ref.data).norm(dim=-1) / ref.data.norm(dim=-1).clamp_min(1e-6)).max()
    assert rel < 5e-3
    assert (tmp_path / "s" / "c000000.heads.npy").stat().st_size < (
        build(tmp_path / "s32").root / "c000000.heads.npy").stat().st_size


def _chunk_mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in root.glob("c*.npy")}


def test_resume_after_kill_minus_9(tmp_path):
    root = tmp_path / "s"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_store import Images, build
        import pathlib
        build(pathlib.Path({str(root)!r}), Images(die_at=17))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # Killed loading the first image of chunk 2: chunk 0 was committed before chunk 1 was
    # handed to the writer thread; chunk 1 is committed or absent, never half there.
    with pytest.raises(CorruptStoreError, match="incomplete: [12] of 3 chunks missing"):
        EncodingStore.open(root)
    committed = {p.name.split(".")[0] for p in root.glob("c*.json")}
    assert committed in ({"c000000"}, {"c000000", "c000001"})
    done = {name: t for name, t in _chunk_mtimes(root).items()
            if name.split(".")[0] in committed}
    assert {name.split(".")[0] for name in done} == committed
    store = build(root)  # resume
    assert all(_chunk_mtimes(root)[name] == t for name, t in done.items()), "a chunk rewritten"
    torch.testing.assert_close(store.units().data, reference().data)
    assert store.targets().tolist() == [i % 3 for i in range(N)]


def test_resume_after_ctrl_c(tmp_path):
    root = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        build(root, Images(interrupt_at=17))
    assert len(list(root.glob("c*.json"))) == 2
    store = build(root)
    torch.testing.assert_close(store.units().data, reference().data)


def test_fingerprint_mismatch_is_never_reused(tmp_path):
    root = tmp_path / "s"
    build(root)
    other = {**FP, "weights": "def"}
    with pytest.raises(StaleStoreError, match="weights: stored 'abc' vs wanted 'def'"):
        EncodingStore.open(root, other)
    with pytest.raises(StaleStoreError, match="weights"):
        build(root, fingerprint=other)
    with pytest.raises(StaleStoreError, match="chunk_size=8"):
        build(root, chunk_size=4)
    with pytest.warns(UserWarning, match="rebuilding the store"):
        rebuilt = build(root, fingerprint=other, overwrite=True)
    assert rebuilt.fingerprint["weights"] == "def"
    EncodingStore.open(root, other)


def flip(path, offset=-3):
    """Same-size corruption: invert one byte (by default in the data, past any header)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def as_new_process():
    """Forget which files this process already checked, as a rerun in a new process would."""
    store_module._VERIFIED.clear()


def test_truncation_and_bad_meta_are_detected(tmp_path):
    root = tmp_path / "s"
    build(root)
    heads = root / "c000001.heads.npy"
    heads.write_bytes(heads.read_bytes()[:-10])
    with pytest.raises(CorruptStoreError, match="c000001.heads.npy is truncated"):
        EncodingStore.open(root)
    (root / "meta.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="meta.json is not valid JSON"):
        EncodingStore.open(root)
    with pytest.warns(UserWarning, match="rebuilding the store"):
        build(root, overwrite=True).verify()


@pytest.mark.parametrize("field", ["heads", "resid", "sigma", "mu", "target"])
def test_same_size_corruption_of_a_chunk_is_never_read_back(tmp_path, field):
    """Flipped bytes in a chunk file: readers refuse it by name; build_store rebuilds it."""
    root = tmp_path / "s"
    build(root)
    path = root / f"c000001.{field}.npy"
    flip(path)
    as_new_process()
    store = EncodingStore.open(root)  # same size: only the checksum can tell
    read = {"target": store.targets, "sigma": store.sigma}.get(field, store.units)
    with pytest.raises(CorruptStoreError, match=rf"c000001\.{field}\.npy is corrupted"):
        read()
    with pytest.raises(CorruptStoreError, match=rf"c000001\.{field}\.npy is corrupted"):
        store.verify()
    # Resuming (what encode_dataset does on every call) rebuilds that chunk only.
    others = {n: t for n, t in _chunk_mtimes(root).items() if not n.startswith("c000001")}
    as_new_process()
    with pytest.warns(UserWarning, match=rf"rebuilding 1 of 3 chunks.*c000001\.{field}\.npy"):
        store = build(root)
    assert all(_chunk_mtimes(root)[n] == t for n, t in others.items()), "intact chunks rewritten"
    torch.testing.assert_close(store.units().data, reference().data)
    assert store.targets().tolist() == [i % 3 for i in range(N)]
    as_new_process()
    store.verify()


def test_corrupt_projector_and_records_are_refused_or_rebuilt(tmp_path):
    root = tmp_path / "s"
    build(root)
    flip(root / "projector.safetensors")
    as_new_process()
    store = EncodingStore.open(root)
    with pytest.raises(CorruptStoreError, match="projector.safetensors is corrupted"):
        store.units("L0H0")
    with pytest.raises(CorruptStoreError, match="projector.safetensors is corrupted"):
        build(root)
    with pytest.warns(UserWarning, match="rebuilding the store.*projector.safetensors"):
        store = build(root, overwrite=True)
    torch.testing.assert_close(store.units().data, reference().data)
    # A truncated projector, likewise.
    proj = root / "projector.safetensors"
    proj.write_bytes(proj.read_bytes()[:-7])
    as_new_process()
    with pytest.warns(UserWarning, match="rebuilding the store.*projector.safetensors"):
        build(root, overwrite=True).verify()
    # A chunk record whose numbers were altered: named, and rebuilt by build_store.
    record = root / "c000002.json"
    record.write_text(record.read_text().replace('"n": 5', '"n": 4'))
    with pytest.raises(CorruptStoreError, match="c000002.json was altered"):
        EncodingStore.open(root)
    with pytest.warns(UserWarning, match="rebuilding 1 of 3 chunks.*c000002.json was altered"):
        build(root)
    # meta.json whose values were altered but still parse.
    meta = root / "meta.json"
    meta.write_text(meta.read_text().replace('"n_samples": 21', '"n_samples": 16'))
    with pytest.raises(CorruptStoreError, match="meta.json was altered"):
        EncodingStore.open(root)


def test_deleted_meta_never_reuses_another_models_chunks(tmp_path):
    """meta.json deleted, then a build with other weights: every chunk is encoded again."""
    root = tmp_path / "s"
    build(root)
    (root / "meta.json").unlink()
    other = make_model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    images = torch.stack([Images()[i][0] for i in range(N)])
    want = decompose(other, images)
    fp = {**FP, "weights": "other"}
    with pytest.warns(UserWarning, match="rebuilding 3 of 3 chunks.*written for another store"):
        store = build_store(root, other, Images(), fp, batch_size=4, chunk_size=8,
                            dtype="float32", progress=False)
    torch.testing.assert_close(store.units().data, want.data)
    # Interrupted while replacing another store's chunks: the old ones count as missing.
    (root / "meta.json").unlink()
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="another store"):
        build(root, Images(interrupt_at=9))
    with pytest.raises(CorruptStoreError, match="incomplete: 2 of 3 chunks missing"):
        EncodingStore.open(root)
    with pytest.warns(UserWarning, match="rebuilding 2 of 3 chunks.*another store"):
        torch.testing.assert_close(build(root).units().data, reference().data)


def test_deleted_meta_of_the_same_store_reuses_its_chunks(tmp_path):
    root = tmp_path / "s"
    build(root)
    before = _chunk_mtimes(root)
    (root / "meta.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = build(root)
    assert _chunk_mtimes(root) == before
    torch.testing.assert_close(store.units().data, reference().data)


RACE = textwrap.dedent("""
    import sys, time, pathlib
    sys.path.insert(0, {tests!r})
    from test_store import build
    go = pathlib.Path({go!r})
    while not go.exists():
        time.sleep(0.01)
    store = build(pathlib.Path({root!r}), chunk_size=4)
    assert store.n_samples == 21
""")


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_two_unlocked_builders_of_one_store_both_finish(tmp_path, how):
    """No lock: two builders encode the same store at once; both finish, the store is right.

    Before temporary names were unique per writer, two threads of one process wrote the same
    temporary file and one crashed (FileNotFoundError) on nearly every try.
    """
    root, go = tmp_path / "s", tmp_path / "go"
    if how == "threads":
        models = [make_model() for _ in range(2)]  # seeded: build them one after the other
        start = threading.Barrier(2)

        def run(k):
            start.wait()
            build_store(root, models[k], Images(), FP, batch_size=4, chunk_size=4,
                        dtype="float32", progress=False)

        errors = run_in_threads(run, timeout=240)
        assert not errors, errors
    else:
        script = RACE.format(tests=os.path.dirname(__file__), go=str(go), root=str(root))
        procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
                 for _ in range(2)]
        time.sleep(3)  # both are importing torch, then wait for the start
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err.decode()[-3000:]
    as_new_process()
    store = EncodingStore.open(root)
    store.verify()
    torch.testing.assert_close(store.units().data, reference().data)
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        build(tmp_path / "s", dtype="int8")
    with pytest.raises(FileNotFoundError, match="no encoding store"):
        EncodingStore.open(tmp_path / "nothing")


def test_store_lock_serialises_builders_and_takes_over_dead_holders(tmp_path):
    """Two processes asking for the same store: one builds, the other waits, then reuses it."""
    from residual_core.core.store import store_lock

    root = tmp_path / "shared"
    script = textwrap.dedent(f"""
        import sys, time, pathlib
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from residual_core.core.store import store_lock
        log = pathlib.Path({str(tmp_path / "log")!r})
        with store_lock(pathlib.Path({str(root)!r}), poll_s=0.05):
            with open(log, "a") as f:
                f.write(f"in {{sys.argv[1]}}\\n")
            time.sleep(0.5)
            with open(log, "a") as f:
                f.write(f"out {{sys.argv[1]}}\\n")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)]) for k in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = (tmp_path / "log").read_text().split()
    # never two holders at once: every "in" is followed by its own "out"
    pairs = list(zip(lines[0::4], lines[1::4], lines[2::4], lines[3::4], strict=True))
    assert len(pairs) == 2 and {p[1] for p in pairs} == {"0", "1"}
    assert all(p[0] == "in" and p[2] == "out" and p[1] == p[3] for p in pairs), lines
    assert not root.with_name("shared.lock").exists()
    # a lock left by a dead process of this host is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    root.with_name("shared.lock").write_text(f"{socket.gethostname()} {dead.pid}")
    with store_lock(root, poll_s=0.01):
        assert json.loads(root.with_name("shared.lock").read_text())["pid"] == os.getpid()
