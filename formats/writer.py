"""Streaming writer: tensors are appended one at a time (memory bounded by one tensor), and the
file appears at its path only when complete (temp file, fsync, atomic rename)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.formats.constants import (
    ALIGNMENT,
    DTYPE_NAMES,
    MAGIC,
    MAX_HEADER_BYTES,
    PREFIX_FORMAT,
    PREFIX_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    align,
)
from lowbit.formats.encodings import EncodedTensor, get_encoding
from lowbit.formats.errors import FormatError, HeaderTooLarge, InvalidHeader


class LowbitWriter:
    """Write a .lowbit file.

    Usage::

        with LowbitWriter(path, metadata) as w:
            w.add_tensor("model.norm.weight", F32.pack(norm))
            w.add_blob("tokenizer.json", data)
        # the file exists only after a clean exit; an exception removes every temp file

    Data records go to a temp file as they arrive; finish() writes prefix + header into a second
    temp file beside the target, appends the data and renames it into place.
    """

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._tensors: list[dict[str, Any]] = []
        self._blobs: list[dict[str, Any]] = []
        self._names: set[tuple[str, str]] = set()
        self._pos = 0
        self._state = "open"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".data.tmp", dir=self.path.parent)
        self._data_path = Path(tmp)
        self._data = os.fdopen(fd, "w+b")

    # -- records ---------------------------------------------------------------------------
    def _start_record(self, kind: str, name: str) -> int:
        if self._state != "open":
            raise FormatError(f"writer for {self.path} is {self._state}: cannot add {kind} {name!r}")
        if (kind, name) in self._names:
            raise InvalidHeader(f"duplicate {kind} name {name!r}")
        self._names.add((kind, name))
        start = align(self._pos)
        self._data.write(b"\0" * (start - self._pos))
        self._pos = start
        return start

    def _write(self, data: bytes | memoryview, crc: int) -> int:
        self._data.write(data)
        self._pos += len(data)
        return zlib.crc32(data, crc)

    def add_tensor(self, name: str, tensor: EncodedTensor, info: dict[str, Any] | None = None) -> None:
        """Append one encoded tensor (its parts, each 64-byte aligned, form one record)."""
        encoding = get_encoding(tensor.encoding)
        tensor = encoding.make(tensor.shape, tensor.params, tensor.parts)  # re-validate
        start = self._start_record("tensor", name)
        crc = 0
        parts = {}
        for part_name in sorted(tensor.parts):
            arr = tensor.parts[part_name]
            rel = align(self._pos) - start
            crc = self._write(b"\0" * (start + rel - self._pos), crc)
            parts[part_name] = {"dtype": DTYPE_NAMES[arr.dtype], "shape": list(arr.shape), "offset": rel}
            crc = self._write(memoryview(np.ascontiguousarray(arr)).cast("B"), crc)
        entry = {
            "name": name,
            "encoding": tensor.encoding,
            "shape": list(tensor.shape),
            "params": tensor.params,
            "offset": start,
            "nbytes": self._pos - start,
            "crc32": crc,
            "parts": parts,
        }
        merged_info = {**tensor.info, **(info or {})}
        if merged_info:
            entry["info"] = merged_info
        self._tensors.append(entry)

    def add_blob(self, name: str, data: bytes) -> None:
        start = self._start_record("blob", name)
        crc = self._write(bytes(data), 0)
        self._blobs.append({"name": name, "offset": start, "nbytes": len(data), "crc32": crc})

    # -- finishing -------------------------------------------------------------------------
    def header_bytes(self) -> bytes:
        header = {"metadata": self.metadata, "tensors": self._tensors, "blobs": self._blobs}
        try:
            raw = json.dumps(header, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise InvalidHeader(f"metadata is not JSON-serialisable: {e}") from None
        if len(raw) > MAX_HEADER_BYTES:
            raise HeaderTooLarge(f"header is {len(raw)} bytes, the limit is {MAX_HEADER_BYTES}")
        return raw

    def finish(self) -> Path:
        """Write prefix + header + data to a temp file, fsync it, and rename it over the target."""
        try:
            header = self.header_bytes()
        except BaseException:
            self.abort()  # do not leave the data temp file behind
            raise
        data_offset = align(PREFIX_SIZE + len(header), ALIGNMENT)
        prefix = struct.pack(
            PREFIX_FORMAT, MAGIC, VERSION_MAJOR, VERSION_MINOR, zlib.crc32(header), len(header), data_offset
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        tmp_path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(prefix)
                f.write(header)
                f.write(b"\0" * (data_offset - PREFIX_SIZE - len(header)))
                self._data.flush()
                self._data.seek(0)
                shutil.copyfileobj(self._data, f, 16 << 20)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would make the model private
            os.replace(tmp_path, self.path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            self.abort()
            raise
        self._close_data()
        self._state = "finished"
        return self.path

    def _close_data(self) -> None:
        if not self._data.closed:
            self._data.close()
        self._data_path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._close_data()
        self._state = "aborted"

    def __enter__(self) -> LowbitWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._state == "open":
            self.finish()
        elif self._state == "open":
            self.abort()
