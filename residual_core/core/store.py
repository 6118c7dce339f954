"""On-disk store of per-unit encodings: fingerprinted, resumable, chunked and memory-mappable.

A store is a directory holding the raw form of :func:`residual_core.core.decompose.decompose_raw`
for every sample of one (model, dataset, split), the model's :class:`UnitProjector`, and a
``meta.json`` with the fingerprint. Samples are written in fixed-size chunks, in dataset order:

    meta.json                 fingerprint, layout, centring, chunk size, dtype, format version
    projector.safetensors     folds ln_post + projection (raw form → d_out)
    c000000.heads.npy         (layer·head, n, d_head)   unit-major, so one unit is one slice
    c000000.resid.npy         (1 + layer, n, d_model)   embed, then every MLP
    c000000.sigma.npy         (n,)                      LayerNorm scale of the final stream
    c000000.mu.npy            (n,)                      mean of the final stream
    c000000.target.npy        (n,)                      dataset labels
    c000000.json              commit record: sample range, shapes, sha256 of every file

A chunk exists only once its commit record does; data files are written to temporary names
and renamed (atomic on POSIX), the record last. An interrupted build (Ctrl-C, ``kill -9``)
resumes at the first chunk without a record: no sample is lost or duplicated, since chunk
``i`` always holds samples ``[i·chunk, (i+1)·chunk)``. A fingerprint mismatch never reuses
stale data; truncated or corrupted files raise :class:`CorruptStoreError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from residual_core.core.decompose import (
    Centering,
    RawUnits,
    UnitProjector,
    check_centering,
    check_supported,
    decompose_raw,
)
from residual_core.core.io import atomic_write, file_lock
from residual_core.core.units import UnitLayout, Units

__all__ = [
    "FORMAT_VERSION",
    "CorruptStoreError",
    "EncodingStore",
    "StaleStoreError",
    "build_store",
    "store_lock",
]

FORMAT_VERSION = 2
_FIELDS = ("heads", "resid", "sigma", "mu", "target")
_DTYPES = {"float16": np.float16, "float32": np.float32}


class StaleStoreError(RuntimeError):
    """The store on disk was built from something else than what is asked for."""


class CorruptStoreError(RuntimeError):
    """A store file is truncated, corrupted or missing."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rebuild_hint(root: Path) -> str:
    return f"delete {root} and build it again (build_store(..., overwrite=True) does both)"


class EncodingStore:
    """Read access to a finished (or partially built) store.

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

    # ----- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, fingerprint: dict[str, Any] | None = None,
             require_complete: bool = True) -> EncodingStore:
        """Open a store, checking its fingerprint and its chunks' sizes.

        Args:
            root: Store directory.
            fingerprint: If given, must equal the stored one (else :class:`StaleStoreError`).
            require_complete: Raise if some chunks are missing (an interrupted build).

        Raises:
            FileNotFoundError: No store at ``root``.
            StaleStoreError: Fingerprint or format mismatch.
            CorruptStoreError: A file is missing, truncated or unreadable.
        """
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no encoding store at {root} (no meta.json); build it with "
                                    "residual_core.core.store.build_store")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise CorruptStoreError(f"{meta_path} is not valid JSON ({err}); "
                                    f"{_rebuild_hint(root)}") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise StaleStoreError(
                f"{root} has store format {meta.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; {_rebuild_hint(root)}"
            )
        if fingerprint is not None:
            _check_fingerprint(root, meta["fingerprint"], fingerprint)
        store = cls(root, meta)
        missing = [i for i in range(store.n_chunks) if not store._record_path(i).exists()]
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
    def centering(self) -> Centering:
        """How the final LayerNorm's mean is split over the units (see :mod:`decompose`)."""
        return self.meta["centering"]

    @property
    def projector(self) -> UnitProjector:
        """The model's projector, saved with the store."""
        if self._projector is None:
            path = self.root / "projector.safetensors"
            try:
                tensors = load_file(path)
            except Exception as err:  # safetensors raises several types on bad files
                raise CorruptStoreError(f"cannot read {path} ({err}); "
                                        f"{_rebuild_hint(self.root)}") from err
            projector = UnitProjector(self.layout, self.centering)
            projector.load_state_dict(tensors)
            self._projector = projector
        return self._projector

    # ----- chunk files ---------------------------------------------------------------------
    def _file(self, i: int, field: str) -> Path:
        return self.root / f"c{i:06d}.{field}.npy"

    def _record_path(self, i: int) -> Path:
        return self.root / f"c{i:06d}.json"

    def _chunk_len(self, i: int) -> int:
        return min(self.chunk_size, self.n_samples - i * self.chunk_size)

    def _record(self, i: int) -> dict[str, Any]:
        path = self._record_path(i)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CorruptStoreError(f"cannot read chunk record {path} ({err}); "
                                    f"{_rebuild_hint(self.root)}") from err

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

    def _load(self, i: int, field: str) -> np.ndarray:
        path = self._file(i, field)
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CorruptStoreError(f"cannot read {path} ({err}); "
                                    f"{_rebuild_hint(self.root)}") from err

    def verify(self) -> None:
        """Check every file's sha256 against its commit record (reads the whole store).

        Raises:
            CorruptStoreError: Naming the first file whose content changed.
        """
        for i in range(self.n_chunks):
            record = self._record(i)
            for field in _FIELDS:
                path = self._file(i, field)
                if _sha256(path) != record["sha256"][field]:
                    raise CorruptStoreError(f"{path} is corrupted (sha256 mismatch); "
                                            f"{_rebuild_hint(self.root)}")

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
            labels: The units to read (only their slices of each chunk are read); ``None``:
                every unit, chunk by chunk.
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


def _check_fingerprint(root: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    wanted = json.loads(json.dumps(wanted))  # the stored one went through JSON
    if stored != wanted:
        keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        diffs = "; ".join(f"{k}: stored {stored.get(k)!r} vs wanted {wanted.get(k)!r}"
                          for k in keys)
        raise StaleStoreError(f"{root} was built from something else ({diffs}); "
                              f"{_rebuild_hint(root)}")


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
        overwrite: Delete a store with another fingerprint instead of raising.
        progress: Show a progress bar.

    Returns:
        The finished store.

    Raises:
        ValueError: For an unknown ``dtype``.
        StaleStoreError: If ``root`` holds a store of another fingerprint and not ``overwrite``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    check_centering(centering)
    root = Path(root)
    layout = check_supported(model)
    n = len(dataset)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": json.loads(json.dumps(fingerprint)),
        "layout": asdict(layout),
        "centering": centering,
        "chunk_size": chunk_size,
        "n_samples": n,
        "dtype": dtype,
    }
    if (root / "meta.json").exists():
        try:
            store = EncodingStore.open(root, fingerprint, require_complete=False)
            built = (store.chunk_size, store.n_samples, store.meta["dtype"], store.centering)
            if built != (chunk_size, n, dtype, centering):
                raise StaleStoreError(
                    f"{root} was built with chunk_size={store.chunk_size}, n={store.n_samples}, "
                    f"dtype={store.meta['dtype']}, centering={store.centering}; asked "
                    f"chunk_size={chunk_size}, n={n}, dtype={dtype}, centering={centering}; "
                    f"{_rebuild_hint(root)}"
                )
        except (StaleStoreError, CorruptStoreError) as err:
            if not overwrite:
                raise
            warnings.warn(f"rebuilding the store: {err}", stacklevel=2)
            _remove_store(root)
    if not (root / "meta.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in
                   UnitProjector.from_model(model, centering).state_dict().items()},
                  str(root / "projector.safetensors"))
        atomic_write(root / "meta.json", json.dumps(meta, indent=1))
    store = EncodingStore(root, json.loads((root / "meta.json").read_text()))
    todo = [i for i in range(store.n_chunks) if not store._record_path(i).exists()]
    np_dtype = _DTYPES[dtype]
    dev = torch.device(device)
    amp = torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    bar = tqdm(total=n, initial=n - sum(store._chunk_len(i) for i in todo), unit="img",
               desc=f"encode {root.name}", disable=not progress)
    for i in todo:
        start = i * chunk_size
        idx = range(start, start + store._chunk_len(i))
        loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=dev.type == "cuda")
        raws, targets = [], []
        for images, target in loader:
            with torch.inference_mode(), amp:
                raw = decompose_raw(model, images.to(dev, non_blocking=True))
            raws.append(raw.to("cpu"))
            targets.append(torch.as_tensor(target))
            bar.update(len(target))
        _write_chunk(store, i, RawUnits.cat(raws), torch.cat(targets), np_dtype)
    bar.close()
    return EncodingStore.open(root, fingerprint)


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
    record = {"chunk": i, "start": i * store.chunk_size, "n": n, "bytes": {}, "sha256": {}}
    for field, array in arrays.items():
        path = store._file(i, field)
        atomic_write(path, lambda f, a=array: np.save(f, a))
        record["bytes"][field] = path.stat().st_size
        record["sha256"][field] = _sha256(path)
    # The record is the commit: written last, atomically.
    atomic_write(store._record_path(i), json.dumps(record))


def _remove_store(root: Path) -> None:
    """Delete the store's own files only (never anything else in the directory)."""
    # the store's files, and the temporary files of an interrupted atomic_write of one
    pattern = re.compile(r"^\.?(meta\.json|projector\.safetensors|c\d{6}\.\w+(\.npy)?)"
                         r"(\.[^/]+\.\d+\.tmp)?$")
    for path in root.iterdir():
        if pattern.match(path.name):
            path.unlink()


def store_lock(root: Path, poll_s: float = 1.0) -> contextlib.AbstractContextManager[None]:
    """Hold ``{root}.lock`` while building or resuming the store at ``root``.

    Parallel jobs (``runner sweep --workers N``, several machines sharing a cache) may ask for
    the same store at once; the lock (:func:`residual_core.core.io.file_lock`) makes the second
    wait and then reuse the finished store instead of writing the same chunk files concurrently.
    """
    return file_lock(root.with_name(root.name + ".lock"), poll_s, what="store")
