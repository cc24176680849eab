"""Memory-mapped safetensors reading into numpy, bf16 included.

safetensors' own numpy backend refuses bf16 (numpy has no such dtype), yet most checkpoints are
bf16; the format is simple enough (8-byte length, JSON header, raw little-endian data) to map
directly and hand out zero-copy views, widening one tensor at a time.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from lowbit.errors import ConversionError

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER = 100 * 1024 * 1024


def _is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class SafetensorsFile:
    """One .safetensors file: names, dtypes, shapes, and raw or float32 arrays on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = self.path.stat().st_size
            if size < 8:
                raise ConversionError(f"{self.path}: truncated safetensors file")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER or 8 + n > size:
                raise ConversionError(f"{self.path}: invalid safetensors header length {n}")
            try:
                header = json.loads(f.read(n))
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                raise ConversionError(f"{self.path}: safetensors header is not valid JSON") from None
            if not isinstance(header, dict):
                raise ConversionError(f"{self.path}: safetensors header must be a JSON object")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}
        for name, e in header.items():
            self._entries[name] = self._check_entry(name, e, size)

    def _check_entry(self, name: str, e: object, size: int) -> tuple[str, list[int], int, int]:
        """dtype, shape, offsets of one header entry, every field checked before use."""
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(e, dict):
            raise ConversionError(f"{where}: header entry must be an object")
        dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ConversionError(f"{where} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise ConversionError(f"{where}: shape {shape!r} must be a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
            raise ConversionError(f"{where}: data_offsets {offsets!r} must be two non-negative integers")
        start, end = offsets
        nbytes = _DTYPES[dtype].itemsize * int(np.prod(shape, dtype=object))
        if end - start != nbytes or self._base + end > size:
            raise ConversionError(f"{where} has invalid data offsets")
        return dtype, list(shape), start, end

    def keys(self) -> list[str]:
        return list(self._entries)

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def shape(self, name: str) -> list[int]:
        return self._entries[name][1]

    def raw(self, name: str) -> np.ndarray:
        """Zero-copy view in the stored dtype (bf16 as uint16)."""
        dtype, shape, start, end = self._entries[name]
        count = int(np.prod(shape, dtype=np.int64))
        arr = np.frombuffer(self._mmap, dtype=_DTYPES[dtype], count=count, offset=self._base + start)
        return arr.reshape(shape)

    def rows_float32(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of a 2-D tensor widened to float32 (only that slice is touched)."""
        arr = self.raw(name)[start:stop]
        if self.dtype(name) == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process (they stay in the page cache): without it a
        streamed conversion's RSS would grow to the whole mapped model."""
        _, _, start, end = self._entries[name]
        page = mmap.PAGESIZE
        lo = (self._base + start) // page * page
        hi = self._base + end
        if hi > lo and hasattr(self._mmap, "madvise"):
            self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def float32(self, name: str) -> np.ndarray:
        """The tensor widened to float32 (a copy unless it is already f32)."""
        arr = self.raw(name)
        if self.dtype(name) == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32, copy=False)
