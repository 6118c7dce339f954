"""The encoding store: exact round trip, resume after a kill or Ctrl-C, stale and corrupt data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch.utils.data import Dataset

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
        build(pathlib.Path({str(root)!r}), Images(die_at=13))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    with pytest.raises(CorruptStoreError, match="incomplete: 2 of 3 chunks missing"):
        EncodingStore.open(root)
    done = _chunk_mtimes(root)
    assert {n.split(".")[0] for n in done} == {"c000000"}
    store = build(root)  # resume
    assert all(_chunk_mtimes(root)[name] == t for name, t in done.items()), "chunk 0 rewritten"
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


def test_truncation_and_corruption_are_detected(tmp_path):
    root = tmp_path / "s"
    build(root)
    heads = root / "c000001.heads.npy"
    data = heads.read_bytes()
    heads.write_bytes(data[:-10])
    with pytest.raises(CorruptStoreError, match="c000001.heads.npy is truncated"):
        EncodingStore.open(root)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    heads.write_bytes(bytes(flipped))
    store = EncodingStore.open(root)  # same size: only the hash can tell
    with pytest.raises(CorruptStoreError, match="c000001.heads.npy is corrupted"):
        store.verify()
    (root / "meta.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="meta.json is not valid JSON"):
        EncodingStore.open(root)
    with pytest.warns(UserWarning, match="rebuilding the store"):
        build(root, overwrite=True).verify()


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
        assert root.with_name("shared.lock").read_text().endswith(str(os.getpid()))
