"""Minimal streaming reader/writer for the safetensors format, numpy only.

Why not ``safetensors.safe_open(framework="numpy")``: numpy has no bfloat16,
so that path cannot read bf16 checkpoints (most hub LLMs), and it memory-maps
the whole file, so every tensor read stays resident as file-backed memory
until the handle closes. Here each tensor is read with ``readinto`` into its
own buffer (freed as soon as it is on device), and files are written tensor
by tensor from a precomputed header. The format (8-byte little-endian header
length, JSON header, raw little-endian data) is documented at
https://github.com/huggingface/safetensors.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

DTYPE_BY_CODE: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
CODE_BY_DTYPE = {dtype: code for code, dtype in DTYPE_BY_CODE.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    """Header of one ``.safetensors`` file; ``read(name)`` loads one tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise ValueError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER:
                raise ValueError(f"{self.path}: not a safetensors file (header length {header_len})")
            try:
                header = json.loads(f.read(header_len))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}: corrupt safetensors header: {e}") from e
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict[str, Any]] = header
        self.data_start = 8 + header_len

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        code = self.entries[name]["dtype"]
        if code not in DTYPE_BY_CODE:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        return DTYPE_BY_CODE[code]

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a fresh numpy array (bf16 as ``ml_dtypes.bfloat16``)."""
        begin, end = self.entries[name]["data_offsets"]
        out = np.empty(self.shape(name), dtype=self.dtype(name))
        if out.nbytes != end - begin:
            raise ValueError(f"{self.path}: tensor {name!r} spans {end - begin} bytes, expected {out.nbytes}")
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.data_start + begin)
            done = 0
            while done < out.nbytes:
                got = f.readinto(buffer[done:])
                if not got:
                    raise ValueError(f"{self.path}: file ends inside tensor {name!r}")
                done += got
        return out


def write_safetensors(
    path: str | os.PathLike,
    tensors: Iterable[tuple[str, tuple[int, ...], np.dtype]],
    produce: Callable[[str], np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Writes ``tensors`` (name, shape, dtype) to ``path``, asking ``produce(name)`` for each one in turn.

    Only one tensor is held at a time. Returns the number of data bytes written.
    """
    tensors = list(tensors)
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in tensors:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": CODE_BY_DTYPE[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape, dtype in tensors:
            array = np.ascontiguousarray(produce(name), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"{path}: tensor {name!r} has shape {array.shape}, header says {tuple(shape)}")
            f.write(array.reshape(-1).view(np.uint8).data)
    return offset


def parse_size(size: int | str) -> int:
    """Bytes in ``2GB`` / ``500MB`` / ``10KiB`` / ``1234`` (decimal units as in transformers)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)
