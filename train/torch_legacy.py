"""Read a legacy (pre-zip, torch<1.6) PyTorch checkpoint without torch.

The legacy format is a sequence of pickles: a magic number, the protocol
version, system info, the object itself (tensors appear as persistent ids that
name a storage), the list of storage keys, then each storage's raw bytes
prefixed with its element count. A restricted unpickler that only rebuilds
tensors and ordered dicts is enough, and refuses any other global, so a
malicious checkpoint cannot execute code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shelfsight.edge_app.core.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _TensorRef:
    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: tuple[str, str], offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> _TensorRef:
    return _TensorRef(storage[0], int(offset), tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle: BinaryIO, storage_dtypes: dict[str, Any]) -> None:
        super().__init__(handle)
        self._storage_dtypes = storage_dtypes

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> tuple[str, str]:
        # ('storage', storage_type, key, location, size[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        self._storage_dtypes[key] = _STORAGE_DTYPES[storage_type.name]
        return (key, storage_type.name)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the checkpoint's tensors as numpy arrays, keyed like the torch state dict."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _read(handle)
    except (OSError, pickle.UnpicklingError, EOFError, struct.error, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: not a readable legacy PyTorch checkpoint ({exc})") from exc


def _read(handle: BinaryIO) -> dict[str, np.ndarray]:
    plain = _PlainUnpickler(handle)
    if plain.load() != LEGACY_MAGIC:
        raise ValueError("bad magic number (zip-format checkpoints are not supported here)")
    plain.load()  # protocol version
    plain.load()  # sys info
    storage_dtypes: dict[str, Any] = {}
    state = _RestrictedUnpickler(handle, storage_dtypes).load()
    keys = _PlainUnpickler(handle).load()
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        dtype = np.dtype(storage_dtypes[str(key)])
        (count,) = struct.unpack("<q", handle.read(8))
        raw = handle.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"storage {key} truncated")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    if not isinstance(state, dict):
        raise ValueError("checkpoint is not a state dict")
    out: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            continue
        flat = storages[ref.key]
        itemsize = flat.dtype.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            flat[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.stride),
        ).copy()
    return out


class _PlainUnpickler(pickle.Unpickler):
    """For the header records and the key list: plain data, no globals at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"checkpoint header refers to {module}.{name}, which is not allowed")
