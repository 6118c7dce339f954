"""On-disk store of per-unit encodings: fingerprinted, checksummed, resumable and chunked.

A store is a directory holding the raw form of :func:`residual_core.core.decompose.decompose_raw`
for every sample of one (model, dataset, split), the model's :class:`UnitProjector`, and a
``meta.json`` with the fingerprint. Samples are written in fixed-size chunks, in dataset order:

    meta.json                 fingerprint, layout, centring, chunk size, dtype, format version,
                              the projector's CRC-32 and the store id (a hash of all of these)
    projector.safetensors     folds ln_post + projection (raw form → d_out)
    c000000.heads.npy         (layer·head, n, d_head)   unit-major, so one unit is one slice
    c000000.resid.npy         (1 + layer, n, d_model)   embed, then every MLP
    c000000.sigma.npy         (n,)                      LayerNorm scale of the final stream
    c000000.mu.npy            (n,)                      mean of the final stream
    c000000.target.npy        (n,)                      dataset labels
    c000000.json              commit record: the store id, sample range, size and CRC-32 of
                              every file, and its own CRC-32

What is guaranteed:

- **Whole or absent.** Every file is written to a temporary name unique to the writer and
  renamed (atomic on POSIX); a chunk exists only once its record does, and the record is
  written last. An interrupted build (Ctrl-C, ``kill -9``) resumes at the first chunk without
  a record: chunk ``i`` always holds samples ``[i·chunk, (i+1)·chunk)``, so no sample is lost
  or duplicated. Two builders of one store (even without :func:`store_lock`) never share a
  temporary file and write the same bytes.
- **Nothing read back silently wrong.** Every file's CRC-32 is taken from its bytes as they
  are written and kept in the chunk record (the projector's in ``meta.json``). Readers check
  each file against it once per process, when it is first touched (a file whose size, inode
  and times are unchanged since it was checked is not read again), and raise
  :class:`CorruptStoreError` naming the file; ``meta.json`` and the records check themselves.
  :func:`build_store` checks everything it reuses and rebuilds a damaged chunk (with a
  warning naming the file); a damaged ``meta.json`` or projector is refused, or with
  ``overwrite=True`` the whole store is rebuilt.
- **Never another model's chunks.** Each record holds the store id of the ``meta.json`` it was
  written under, so chunks left by another fingerprint (a deleted ``meta.json``, an
  interrupted rebuild) are never read and are rebuilt; a fingerprint mismatch raises
  :class:`StaleStoreError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from residual_core.core.decompose import (
    Centering,
    RawUnits,
    UnitProjector,
    check_centering,
    check_supported,
    decompose_raw,
)
from residual_core.core.errors import ResidualError
from residual_core.core.io import (
    atomic_write,
    atomic_write_crc32,
    crc32_file,
    file_lock,
    remove_dead_temps,
)
from residual_core.core.units import UnitLayout, Units

__all__ = [
    "FORMAT_VERSION",
    "CorruptStoreError",
    "EncodingStore",
    "StaleStoreError",
    "build_store",
    "store_lock",
]

FORMAT_VERSION = 3
_FIELDS = ("heads", "resid", "sigma", "mu", "target")
_DTYPES = {"float16": np.float16, "float32": np.float32}
_PROJECTOR = "projector.safetensors"


class StaleStoreError(ResidualError, RuntimeError):
    """The store on disk was built from something else than what is asked for."""


class CorruptStoreError(ResidualError, RuntimeError):
    """A store file is truncated, corrupted, altered or missing (the message names it)."""


def _rebuild_hint(root: Path) -> str:
    return f"delete {root} and build it again (build_store(..., overwrite=True) does both)"


def _store_id(meta: dict[str, Any]) -> str:
    """Hash of everything in ``meta.json`` but the id itself: what a chunk is bound to."""
    identity = {k: v for k, v in meta.items() if k != "store_id"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _record_crc(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "record_crc32"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"


# Files checked in this process: path → (inode, size, mtime, ctime, CRC-32 they matched).
_VERIFIED: dict[str, tuple[int, int, int, int, str]] = {}


def _stat_key(st: os.stat_result, crc: str) -> tuple[int, int, int, int, str]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, crc


def _check_file(path: Path, crc: str, size: int | None, root: Path, what: str) -> None:
    """Raise :class:`CorruptStoreError` unless ``path`` has the recorded size and CRC-32."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CorruptStoreError(f"{path} is missing; {_rebuild_hint(root)}") from None
    if _VERIFIED.get(str(path)) == _stat_key(st, crc):
        return
    if size is not None and st.st_size != size:
        raise CorruptStoreError(f"{path} is truncated or altered ({st.st_size} bytes, "
                                f"{what} recorded {size}); {_rebuild_hint(root)}")
    actual = crc32_file(path)
    if actual != crc:
        raise CorruptStoreError(f"{path} is corrupted (CRC-32 {actual}, {what} recorded "
                                f"{crc}); {_rebuild_hint(root)}")
    _VERIFIED[str(path)] = _stat_key(st, crc)


def _mark_verified(path: Path, crc: str) -> None:
    """Remember a file this process just wrote (its CRC-32 came from the bytes written)."""
    _VERIFIED[str(path)] = _stat_key(path.stat(), crc)


class EncodingStore:
    """Read access to a finished (or partially built) store; every file checked before use.

    Example:
        >>> store = EncodingStore.open("cache/encodings/tutorial/world.reference/train-5000")
        >>> heads = store.units(["L3H1", "L3H2"])         # Units (n, 2, d_out), only those read
        >>> for units in store.iter_units(batch_size=4096):  # Units per batch
        ...     pca.update(units)
    """

    def __init__(self, root: Path, meta: dict[str, Any]):
        self.root = root
        self.meta = meta
        self.layout = UnitLayout(**meta["layout"])
        self.chunk_size: int = meta["chunk_size"]
        self.n_samples: int = meta["n_samples"]
        self._projector: UnitProjector | None = None
        self._records: dict[int, tuple[tuple[int, int], dict[str, Any]]] = {}

    # ----- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, fingerprint: dict[str, Any] | None = None,
             require_complete: bool = True) -> EncodingStore:
        """Open a store, checking ``meta.json``, the fingerprint and every chunk's record and size.

        The contents of the data files are checked against their CRC-32 when first read.

        Args:
            root: Store directory.
            fingerprint: If given, must equal the stored one (else :class:`StaleStoreError`).
            require_complete: Raise if some chunks are missing (an interrupted build).

        Raises:
            FileNotFoundError: No store at ``root``.
            StaleStoreError: Fingerprint or format mismatch.
            CorruptStoreError: A file is missing, truncated, altered or unreadable.
        """
        root = Path(root)
        store = cls(root, _read_meta(root, fingerprint))
        missing = [i for i in range(store.n_chunks) if not store._committed(i)]
        if missing and require_complete:
            raise CorruptStoreError(
                f"{root} is incomplete: {len(missing)} of {store.n_chunks} chunks missing "
                f"(first: {missing[0]}); resume with build_store(...) on the same arguments"
            )
        for i in range(store.n_chunks):
            if i not in missing:
                store._check_sizes(i)
        return store

    @property
    def n_chunks(self) -> int:
        """Number of chunks of the complete store."""
        return -(-self.n_samples // self.chunk_size)

    @property
    def labels(self) -> list[str]:
        """Unit labels in the fixed order."""
        return self.layout.labels

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the store was built from."""
        return self.meta["fingerprint"]

    @property
    def store_id(self) -> str:
        """Hash of ``meta.json``'s contents; every chunk record carries it."""
        return self.meta["store_id"]

    @property
    def centering(self) -> Centering:
        """How the final LayerNorm's mean is split over the units (see :mod:`decompose`)."""
        return self.meta["centering"]

    @property
    def projector(self) -> UnitProjector:
        """The model's projector, saved with the store (checked against its CRC-32)."""
        if self._projector is None:
            path = self.root / _PROJECTOR
            self._check_projector()
            try:
                tensors = load_safetensors(path.read_bytes())
            except Exception as err:  # safetensors raises several types on bad files
                raise CorruptStoreError(f"cannot read {path} ({err}); "
                                        f"{_rebuild_hint(self.root)}") from err
            projector = UnitProjector(self.layout, self.centering)
            projector.load_state_dict(tensors)
            self._projector = projector
        return self._projector

    def _check_projector(self) -> None:
        _check_file(self.root / _PROJECTOR, self.meta["projector_crc32"], None, self.root,
                    "meta.json")

    # ----- chunk files ---------------------------------------------------------------------
    def _file(self, i: int, field: str) -> Path:
        return self.root / f"c{i:06d}.{field}.npy"

    def _record_path(self, i: int) -> Path:
        return self.root / f"c{i:06d}.json"

    def _chunk_len(self, i: int) -> int:
        return min(self.chunk_size, self.n_samples - i * self.chunk_size)

    def _committed(self, i: int) -> bool:
        """Whether chunk ``i`` has a record written for this store (not another one's)."""
        if not self._record_path(i).exists():
            return False
        try:
            self._record(i)
        except StaleStoreError:
            return False  # left by another store: as good as missing
        return True

    def _record(self, i: int) -> dict[str, Any]:
        """Chunk ``i``'s commit record, checked (memoised while the file is unchanged).

        Raises:
            CorruptStoreError: The record is unreadable, altered or for another chunk.
            StaleStoreError: It was written for another store (another ``meta.json``).
        """
        path = self._record_path(i)
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns)
            cached = self._records.get(i)
            if cached is not None and cached[0] == key:
                return cached[1]
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptStoreError(f"cannot read chunk record {path} ({err}); "
                                    f"{_rebuild_hint(self.root)}") from err
        if not isinstance(record, dict) or record.get("record_crc32") != _record_crc(record):
            raise CorruptStoreError(f"{path} was altered (its CRC-32 does not match); "
                                    f"{_rebuild_hint(self.root)}")
        if record.get("store_id") != self.store_id:
            raise StaleStoreError(
                f"{path} was written for another store (store id {record.get('store_id')}, "
                f"meta.json has {self.store_id}); resume with build_store(...), which rebuilds it")
        if (record.get("chunk"), record.get("n")) != (i, self._chunk_len(i)):
            raise CorruptStoreError(f"{path} describes chunk {record.get('chunk')} of "
                                    f"{record.get('n')} samples, not chunk {i}; "
                                    f"{_rebuild_hint(self.root)}")
        self._records[i] = (key, record)
        return record

    def _check_sizes(self, i: int) -> None:
        record = self._record(i)
        for field in _FIELDS:
            path = self._file(i, field)
            if not path.exists():
                raise CorruptStoreError(f"{path} is missing; {_rebuild_hint(self.root)}")
            size = path.stat().st_size
            if size != record["bytes"][field]:
                raise CorruptStoreError(
                    f"{path} is truncated or altered ({size} bytes, expected "
                    f"{record['bytes'][field]}); {_rebuild_hint(self.root)}"
                )

    def _check_field(self, i: int, field: str) -> Path:
        """Check one chunk file against its record (once per process); returns its path."""
        record = self._record(i)
        path = self._file(i, field)
        _check_file(path, record["crc32"][field], record["bytes"][field], self.root,
                    f"its record c{i:06d}.json")
        return path

    def _load(self, i: int, field: str) -> np.ndarray:
        path = self._check_field(i, field)
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CorruptStoreError(f"cannot read {path} ({err}); "
                                    f"{_rebuild_hint(self.root)}") from err

    def _chunk_problem(self, i: int) -> str | None:
        """``None`` if chunk ``i`` is committed and intact, ``"missing"``, else what is wrong."""
        if not self._record_path(i).exists():
            return "missing"
        try:
            for field in _FIELDS:
                self._check_field(i, field)
        except (CorruptStoreError, StaleStoreError) as err:
            return str(err).split("; ")[0]
        return None

    def verify(self) -> None:
        """Check ``meta.json``, the projector and every chunk file, reading each one again.

        Readers already check each file when they first touch it; this re-reads everything
        (e.g. after copying a store to another disk).

        Raises:
            CorruptStoreError: Naming the first file whose content changed.
        """
        _read_meta(self.root)
        for path in [self.root / _PROJECTOR,
                     *(self._file(i, f) for i in range(self.n_chunks) for f in _FIELDS)]:
            _VERIFIED.pop(str(path), None)
        self._check_projector()
        for i in range(self.n_chunks):
            for field in _FIELDS:
                self._check_field(i, field)

    # ----- reading -------------------------------------------------------------------------
    def targets(self) -> np.ndarray:
        """Dataset labels of all samples, in order."""
        return np.concatenate([self._load(i, "target") for i in range(self.n_chunks)])

    def sigma(self) -> np.ndarray:
        """Per-sample LayerNorm scale of the final stream."""
        return np.concatenate([self._load(i, "sigma") for i in range(self.n_chunks)])

    def _stats(self, i: int, device: str | torch.device) -> tuple[Tensor, Tensor]:
        return tuple(torch.from_numpy(np.array(self._load(i, f))).to(device)
                     for f in ("sigma", "mu"))  # type: ignore[return-value]

    def _unit_slice(self, i: int, label: str) -> np.ndarray:
        pos = self.layout.index(label)
        n_resid = 1 + self.layout.n_layers
        if pos < n_resid:
            return self._load(i, "resid")[pos]
        return self._load(i, "heads")[pos - n_resid]

    def units(
        self, labels: str | Sequence[str] | None = None, device: str | torch.device = "cpu"
    ) -> Units:
        """Projected contributions of every sample, as labelled :class:`Units` (float32).

        Args:
            labels: The units to read (only their slices of each chunk are copied; each
                chunk file is checked once per process, on first touch); ``None``: every
                unit, chunk by chunk.
            device: Where the projection runs and the result lives.
        """
        if labels is None:
            return Units.cat(list(self.iter_units(device=device)))
        labels = [labels] if isinstance(labels, str) else list(labels)
        projector = self.projector.to(device)
        parts = []
        for i in range(self.n_chunks):
            sigma, mu = self._stats(i, device)
            cols = [
                projector.project_unit(
                    label, torch.from_numpy(np.array(self._unit_slice(i, label))).to(device),
                    sigma, mu,
                )
                for label in labels
            ]
            parts.append(torch.stack(cols, 1))
        return Units(torch.cat(parts), tuple(labels), self.layout)

    def raw(self, chunk: int) -> RawUnits:
        """Raw form of one chunk (as stored, e.g. float16)."""
        lay = self.layout
        heads = torch.from_numpy(np.array(self._load(chunk, "heads")))
        resid = torch.from_numpy(np.array(self._load(chunk, "resid")))
        n = heads.shape[1]
        return RawUnits(
            embed=resid[0],
            mlp=resid[1:].transpose(0, 1),
            heads=heads.transpose(0, 1).reshape(n, lay.n_layers, lay.n_heads, lay.d_head),
            sigma=torch.from_numpy(np.array(self._load(chunk, "sigma"))),
            mu=torch.from_numpy(np.array(self._load(chunk, "mu"))),
        )

    def iter_units(
        self, batch_size: int | None = None, *, device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> Iterator[Units]:
        """Every unit of every sample, projected (float32), as :class:`Units`, chunk by chunk.

        Args:
            batch_size: At most this many samples at a time (default: one stored chunk).
            device: Where the projection runs and the units live.
            progress: Show a progress bar over the chunks.
        """
        projector = self.projector.to(device)
        for i in tqdm(range(self.n_chunks), desc=f"read {self.root.name}", disable=not progress):
            units = projector(self.raw(i).to(device))
            if batch_size is None:
                yield units
            else:
                yield from units.split(batch_size)


def _read_meta(root: Path, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """``meta.json``, checked: readable, this format, unaltered, and (if given) this fingerprint."""
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no encoding store at {root} (no meta.json); build it with "
                                "residual_core.core.store.build_store")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptStoreError(f"{meta_path} is not valid JSON ({err}); "
                                f"{_rebuild_hint(root)}") from err
    if not isinstance(meta, dict):
        raise CorruptStoreError(f"{meta_path} is not a JSON object; {_rebuild_hint(root)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise StaleStoreError(
            f"{root} has store format {meta.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; {_rebuild_hint(root)}"
        )
    if meta.get("store_id") != _store_id(meta):
        raise CorruptStoreError(f"{meta_path} was altered (its content does not match its "
                                f"store id); {_rebuild_hint(root)}")
    if fingerprint is not None:
        _check_fingerprint(root, meta["fingerprint"], fingerprint)
    return meta


def _check_fingerprint(root: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    wanted = json.loads(json.dumps(wanted))  # the stored one went through JSON
    if stored != wanted:
        keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        diffs = "; ".join(f"{k}: stored {stored.get(k)!r} vs wanted {wanted.get(k)!r}"
                          for k in keys)
        raise StaleStoreError(f"{root} was built from something else ({diffs}); "
                              f"{_rebuild_hint(root)}")


def _reusable(root: Path, wanted: dict[str, Any], overwrite: bool) -> EncodingStore | None:
    """The store at ``root`` if it was built from ``wanted`` and its meta and projector are intact.

    ``None`` if there is none (or, with ``overwrite``, it was another store or damaged: then
    its files are removed).
    """
    if not (root / "meta.json").exists():
        return None
    try:
        store = EncodingStore(root, _read_meta(root, wanted["fingerprint"]))
        asked = {k: wanted[k] for k in ("chunk_size", "n_samples", "dtype", "centering")}
        built = {k: store.meta[k] for k in asked}
        if built != asked:
            raise StaleStoreError(
                f"{root} was built with "
                f"{', '.join(f'{k}={v}' for k, v in built.items())}; asked "
                f"{', '.join(f'{k}={v}' for k, v in asked.items())}; {_rebuild_hint(root)}"
            )
        store._check_projector()
        return store
    except (StaleStoreError, CorruptStoreError) as err:
        if not overwrite:
            raise
        warnings.warn(f"rebuilding the store: {err}", stacklevel=3)
        _remove_store(root)
        return None


def build_store(
    root: str | os.PathLike,
    model: nn.Module,
    dataset: Dataset,
    fingerprint: dict[str, Any],
    *,
    batch_size: int = 256,
    chunk_size: int = 4096,
    dtype: str = "float16",
    centering: str = "shared",
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> EncodingStore:
    """Encode a dataset through :func:`decompose_raw` into a store, resuming if interrupted.

    Every chunk already on disk is checked (record, size, CRC-32 of each file) before it is
    reused; a damaged chunk, or one written for another store, is encoded again, with a
    warning naming the file.

    Args:
        root: Store directory (created).
        model: The open_clip model (its vision tower is used), already on ``device``.
        dataset: Yields ``(image tensor, label)`` in a fixed order (no shuffling).
        fingerprint: What identifies the encodings (model name, pretrained tag, weights hash,
            dataset, split, transform, ...); stored and compared on reopening.
        batch_size: Images per forward pass.
        chunk_size: Samples per chunk file (a multiple of ``batch_size`` is most efficient).
        dtype: ``"float16"`` or ``"float32"`` storage of the raw form.
        centering: The projector's split of the final LayerNorm's mean (``"shared"``, the
            authors' form, or ``"per-unit"``); a store built with another is rebuilt/refused.
        device: Where the model runs.
        autocast_dtype: E.g. ``torch.float16`` on GPU; ``None`` runs in the model's dtype.
        num_workers: DataLoader workers.
        overwrite: Delete a store with another fingerprint, or whose ``meta.json`` or
            projector is damaged, instead of raising.
        progress: Show a progress bar.

    Returns:
        The finished store.

    Raises:
        ValueError: For an unknown ``dtype``.
        StaleStoreError: If ``root`` holds a store of another fingerprint and not ``overwrite``.
        CorruptStoreError: If its ``meta.json`` or projector is damaged and not ``overwrite``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    check_centering(centering)
    root = Path(root)
    layout = check_supported(model)
    n = len(dataset)
    wanted = {
        "format_version": FORMAT_VERSION,
        "fingerprint": json.loads(json.dumps(fingerprint)),
        "layout": asdict(layout),
        "centering": centering,
        "chunk_size": chunk_size,
        "n_samples": n,
        "dtype": dtype,
    }
    root.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(root)  # what writers killed mid-file (kill -9) left behind
    store = _reusable(root, wanted, overwrite)
    if store is None:
        store = _start_store(root, model, wanted)
    todo = _chunks_to_build(store)
    np_dtype = _DTYPES[dtype]
    dev = torch.device(device)
    amp = torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    bar = tqdm(total=n, initial=n - sum(store._chunk_len(i) for i in todo), unit="img",
               desc=f"encode {root.name}", disable=not progress)
    # One loader for every missing chunk (its workers start once), batches cut at chunk
    # boundaries; a chunk is written by a second thread while the next one is encoded.
    batches = [list(range(b, min(b + batch_size, i * chunk_size + store._chunk_len(i))))
               for i in todo
               for b in range(i * chunk_size, i * chunk_size + store._chunk_len(i), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    chunks = iter(todo)
    i, raws, targets, filled = next(chunks, None), [], [], 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as writer:
        pending = None
        try:
            for images, target in loader:
                with torch.inference_mode(), amp:
                    raw = decompose_raw(model, images.to(dev, non_blocking=True))
                raws.append(raw.to("cpu"))
                targets.append(torch.as_tensor(target))
                filled += len(target)
                bar.update(len(target))
                if filled == store._chunk_len(i):
                    if pending is not None:
                        pending.result()  # at most one chunk waits in memory; errors surface
                    pending = writer.submit(_write_chunk, store, i, RawUnits.cat(raws),
                                            torch.cat(targets), np_dtype)
                    i, raws, targets, filled = next(chunks, None), [], [], 0
        finally:
            if pending is not None:  # a chunk fully encoded is committed even on an error
                pending.result()
    bar.close()
    return EncodingStore.open(root, fingerprint)


def _start_store(root: Path, model: nn.Module, wanted: dict[str, Any]) -> EncodingStore:
    """Write the projector and ``meta.json`` of a new store (chunk files may already exist)."""
    projector = UnitProjector.from_model(model, wanted["centering"])
    tensors = {k: v.contiguous().cpu() for k, v in projector.state_dict().items()}
    crc = atomic_write_crc32(root / _PROJECTOR, save_safetensors(tensors))
    _mark_verified(root / _PROJECTOR, crc)
    meta = {**wanted, "projector_crc32": crc}
    meta["store_id"] = _store_id(meta)
    atomic_write(root / "meta.json", json.dumps(meta, indent=1))
    return EncodingStore(root, meta)


def _chunks_to_build(store: EncodingStore) -> list[int]:
    """Chunks without a record, plus the damaged ones and those of another store (warned)."""
    n_threads = max(1, min(8, os.cpu_count() or 1))  # CRC-32 and reads release the GIL
    with ThreadPoolExecutor(n_threads) as pool:
        problems = list(pool.map(store._chunk_problem, range(store.n_chunks)))
    damaged = [(i, p) for i, p in enumerate(problems) if p not in (None, "missing")]
    if damaged:
        shown = "; ".join(p for _, p in damaged[:3])
        more = f" (and {len(damaged) - 3} more)" if len(damaged) > 3 else ""
        warnings.warn(f"rebuilding {len(damaged)} of {store.n_chunks} chunks of {store.root}: "
                      f"{shown}{more}", stacklevel=3)
    return [i for i, p in enumerate(problems) if p is not None]


def _write_chunk(store: EncodingStore, i: int, raw: RawUnits, target: Tensor, np_dtype) -> None:
    lay = store.layout
    n = len(raw)
    arrays = {
        "heads": raw.heads.reshape(n, lay.n_layers * lay.n_heads, lay.d_head).transpose(0, 1),
        "resid": torch.cat([raw.embed[:, None], raw.mlp], 1).transpose(0, 1),
        "sigma": raw.sigma,
        "mu": raw.mu,
    }
    # LayerNorm statistics stay float32 whatever the storage dtype of the unit outputs.
    arrays = {k: np.ascontiguousarray(v.float().numpy().astype(
        np.float32 if k in ("sigma", "mu") else np_dtype)) for k, v in arrays.items()}
    arrays["target"] = target.numpy().astype(np.int64)
    record: dict[str, Any] = {"store_id": store.store_id, "chunk": i,
                              "start": i * store.chunk_size, "n": n, "bytes": {}, "crc32": {}}
    for field, array in arrays.items():
        path = store._file(i, field)
        # The CRC-32 is taken from the bytes on their way to disk: no second read.
        crc = atomic_write_crc32(path, lambda f, a=array: np.save(f, a))
        record["bytes"][field] = path.stat().st_size
        record["crc32"][field] = crc
        _mark_verified(path, crc)
    record["record_crc32"] = _record_crc(record)
    # The record is the commit: written last, atomically.
    atomic_write(store._record_path(i), json.dumps(record))


def _remove_store(root: Path) -> None:
    """Delete the store's own files only (never anything else in the directory).

    Temporary files are left to :func:`~residual_core.core.io.remove_dead_temps`: one may be
    another process's file being written.
    """
    pattern = re.compile(r"^(meta\.json|projector\.safetensors|c\d{6}\.(json|\w+\.npy))$")
    for path in root.iterdir():
        if pattern.match(path.name):
            path.unlink(missing_ok=True)
            _VERIFIED.pop(str(path), None)


def store_lock(root: Path, poll_s: float = 1.0, **kwargs: Any
               ) -> contextlib.AbstractContextManager[None]:
    """Hold ``{root}.lock`` while building or resuming the store at ``root``.

    Parallel jobs (``runner sweep --workers N``, several machines sharing a cache) may ask for
    the same store at once; the lock (:func:`residual_core.core.io.file_lock`) makes the second
    wait and then reuse the finished store instead of encoding the same chunks twice. It is
    an economy, not what keeps the store correct: two builders without it write the same
    bytes under unique temporary names. A crashed holder's lock is taken over, and a live one
    is waited for at most ``timeout_s`` (:class:`~residual_core.core.io.CacheLockTimeout`).

    Args:
        root: The store directory.
        poll_s: Seconds between two attempts.
        **kwargs: ``timeout_s``, ``stale_s``, ``heartbeat_s`` of
            :func:`~residual_core.core.io.file_lock`.
    """
    return file_lock(root.with_name(root.name + ".lock"), poll_s, what="store", **kwargs)
