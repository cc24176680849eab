"""Memory-mapped reader. Every size, offset, dtype and shape is checked with Python integers
before any data is touched (SPEC.md section 5); tensors are then zero-copy numpy views."""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.formats.constants import (
    ALIGNMENT,
    DTYPES,
    MAGIC,
    MAX_HEADER_BYTES,
    PREFIX_FORMAT,
    PREFIX_SIZE,
    VERSION_MAJOR,
)
from lowbit.formats.encodings import get_encoding
from lowbit.formats.errors import (
    BadMagic,
    ChecksumMismatch,
    FormatError,
    HeaderTooLarge,
    InvalidHeader,
    InvalidOffset,
    InvalidTensor,
    OverlappingRecords,
    TruncatedFile,
    UnsupportedVersion,
)


@dataclass
class TensorEntry:
    """One tensor of an open file: its encoding and zero-copy views of its parts."""

    name: str
    encoding: str
    shape: tuple[int, ...]
    params: dict[str, Any]
    parts: dict[str, np.ndarray]
    offset: int
    nbytes: int
    crc32: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return get_encoding(self.encoding).bits_per_weight(self.shape, self.params)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def dequantize(self, rows: np.ndarray | None = None) -> np.ndarray:
        return get_encoding(self.encoding).dequantize(self.parts, self.shape, self.params, rows)


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class LowbitReader:
    """Open and validate a .lowbit file. Raises only FormatError subclasses for bad files."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise FormatError(f"{self.path}: cannot open: {e.strerror or e}") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- validation --------------------------------------------------------------------------
    def _open(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        self.file_size = size
        where = str(self.path)
        if size < PREFIX_SIZE:
            raise TruncatedFile(f"{where}: truncated file ({size} bytes, the prefix alone is {PREFIX_SIZE})")
        magic, major, minor, header_crc, header_len, data_offset = struct.unpack(
            PREFIX_FORMAT, self._file.read(PREFIX_SIZE)
        )
        if magic != MAGIC:
            raise BadMagic(f"{where}: not a .lowbit file (bad magic {magic[:8]!r})")
        if major != VERSION_MAJOR:
            raise UnsupportedVersion(
                f"{where}: format version {major}.{minor} is not supported (this lowbit reads {VERSION_MAJOR}.x)"
            )
        self.version = (major, minor)
        if header_len > MAX_HEADER_BYTES:
            raise HeaderTooLarge(f"{where}: header of {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
        if header_len < 2:
            raise InvalidHeader(f"{where}: header length {header_len} is too small")
        if PREFIX_SIZE + header_len > size:
            raise TruncatedFile(f"{where}: truncated file (header needs {PREFIX_SIZE + header_len} bytes, file has {size})")
        if data_offset % ALIGNMENT or data_offset < PREFIX_SIZE + header_len:
            raise InvalidOffset(f"{where}: invalid data_offset {data_offset}")
        if data_offset > size:
            raise TruncatedFile(f"{where}: truncated file (data starts at {data_offset}, file has {size} bytes)")
        raw = self._file.read(header_len)
        if zlib.crc32(raw) != header_crc:
            raise ChecksumMismatch(f"{where}: header checksum mismatch (corrupt header)")
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InvalidHeader(f"{where}: header is not valid JSON ({type(e).__name__})") from None
        if not isinstance(header, dict):
            raise InvalidHeader(f"{where}: header must be a JSON object")
        self.data_offset = data_offset
        self.data_size = size - data_offset
        self.metadata = header.get("metadata", {})
        if not isinstance(self.metadata, dict):
            raise InvalidHeader(f"{where}: field 'metadata' must be an object")
        tensors = header.get("tensors", [])
        blobs = header.get("blobs", [])
        if not isinstance(tensors, list) or not isinstance(blobs, list):
            raise InvalidHeader(f"{where}: fields 'tensors' and 'blobs' must be lists")
        self._tensor_specs = [self._check_tensor(t, i) for i, t in enumerate(tensors)]
        self._blob_specs = [self._check_record(b, f"blob #{i}", "blob") for i, b in enumerate(blobs)]
        self._check_unique_and_disjoint()
        self._mmap = None
        if size > 0:
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.tensors: dict[str, TensorEntry] = {}
        for spec in self._tensor_specs:
            self.tensors[spec["name"]] = self._make_entry(spec)

    def _check_record(self, rec: Any, label: str, kind: str) -> dict[str, Any]:
        where = f"{self.path}: {label}"
        if not isinstance(rec, dict):
            raise InvalidHeader(f"{where} must be an object")
        name = rec.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidHeader(f"{where}: field 'name' must be a non-empty string")
        where = f"{self.path}: {kind} {name!r}"
        for key in ("offset", "nbytes", "crc32"):
            if not _is_uint(rec.get(key)):
                raise InvalidHeader(f"{where}: field {key!r} must be a non-negative integer")
        offset, nbytes = rec["offset"], rec["nbytes"]
        if offset % ALIGNMENT:
            raise InvalidOffset(f"{where}: offset {offset} is not {ALIGNMENT}-byte aligned")
        if offset + nbytes > self.data_size:
            raise InvalidOffset(
                f"{where}: offset {offset} + {nbytes} bytes runs past the end of the file (data section is {self.data_size} bytes)"
            )
        return rec

    def _check_tensor(self, rec: Any, index: int) -> dict[str, Any]:
        rec = self._check_record(rec, f"tensor #{index}", "tensor")
        where = f"{self.path}: tensor {rec['name']!r}"
        shape = rec.get("shape")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise InvalidHeader(f"{where}: field 'shape' must be a list of non-negative integers")
        numel = 1
        for d in shape:
            numel *= d or 1
            if numel >= 1 << 62:  # numpy cannot index it (even when a zero makes it empty)
                raise InvalidHeader(f"{where}: shape {shape} is too large")
        params = rec.get("params", {})
        if not isinstance(params, dict):
            raise InvalidHeader(f"{where}: field 'params' must be an object")
        parts = rec.get("parts")
        if not isinstance(parts, dict):
            raise InvalidHeader(f"{where}: field 'parts' must be an object")
        try:
            encoding = get_encoding(rec.get("encoding"))
            encoding.check(tuple(shape), params)
            expected = encoding.part_specs(tuple(shape), params)
        except FormatError as e:
            raise type(e)(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidTensor(f"{where}: invalid params {params!r} ({type(e).__name__})") from None
        if set(parts) != set(expected):
            raise InvalidTensor(f"{where}: parts {sorted(parts)} do not match encoding {encoding.name} ({sorted(expected)})")
        for pname, (dtype, pshape) in expected.items():
            p = parts[pname]
            if (
                not isinstance(p, dict)
                or p.get("dtype") != dtype
                or p.get("shape") != list(pshape)
                or not all(_is_uint(d) for d in p["shape"])  # [2.0] == [2] but is not a shape
            ):
                raise InvalidTensor(f"{where}: part {pname!r} must be {dtype}{list(pshape)}")
            poff = p.get("offset")
            if not _is_uint(poff) or poff % ALIGNMENT:
                raise InvalidOffset(f"{where}: part {pname!r} has an invalid offset {poff!r}")
            pbytes = DTYPES[dtype].itemsize * int(np.prod(pshape, dtype=object))
            if poff + pbytes > rec["nbytes"]:
                raise InvalidOffset(f"{where}: part {pname!r} runs past the end of its record")
        return rec

    def _check_unique_and_disjoint(self) -> None:
        for kind, specs in (("tensor", self._tensor_specs), ("blob", self._blob_specs)):
            names = [s["name"] for s in specs]
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise InvalidHeader(f"{self.path}: duplicate {kind} name {dup!r}")
        records = sorted(
            (s["offset"], s["offset"] + s["nbytes"], s["name"]) for s in self._tensor_specs + self._blob_specs
        )
        for (_s0, e0, n0), (s1, _e1, n1) in zip(records, records[1:]):
            if s1 < e0:
                raise OverlappingRecords(f"{self.path}: records {n0!r} and {n1!r} overlap")

    def _make_entry(self, spec: dict[str, Any]) -> TensorEntry:
        base = self.data_offset + spec["offset"]
        parts = {}
        for pname, p in spec["parts"].items():
            dtype = DTYPES[p["dtype"]]
            count = int(np.prod(p["shape"], dtype=np.int64))
            arr = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=base + p["offset"]) if count else np.zeros(0, dtype)
            parts[pname] = arr.reshape(p["shape"])
        return TensorEntry(
            name=spec["name"],
            encoding=spec["encoding"],
            shape=tuple(spec["shape"]),
            params=spec.get("params", {}),
            parts=parts,
            offset=spec["offset"],
            nbytes=spec["nbytes"],
            crc32=spec["crc32"],
            info=spec.get("info", {}) if isinstance(spec.get("info"), dict) else {},
        )

    # -- access ------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    @property
    def buffer(self) -> np.ndarray | None:
        """The whole mapped file as read-only uint8 (every tensor part is a view into it), or
        None for an empty file."""
        if self._mmap is None:
            return None
        return np.frombuffer(self._mmap, dtype=np.uint8)

    def blob_names(self) -> list[str]:
        return [b["name"] for b in self._blob_specs]

    def blob(self, name: str) -> bytes:
        for b in self._blob_specs:
            if b["name"] == name:
                start = self.data_offset + b["offset"]
                return bytes(self._mmap[start : start + b["nbytes"]])
        raise KeyError(f"{self.path}: no blob named {name!r}")

    def _record_crc(self, rec: dict[str, Any]) -> int:
        start = self.data_offset + rec["offset"]
        crc, pos, end = 0, start, start + rec["nbytes"]
        while pos < end:
            step = min(end - pos, 16 << 20)
            crc = zlib.crc32(self._mmap[pos : pos + step], crc)
            pos += step
        return crc

    def iter_verify(self) -> Iterator[tuple[str, str]]:
        """Check every record's CRC32, yielding (kind, name) as each passes."""
        for kind, specs in (("tensor", self._tensor_specs), ("blob", self._blob_specs)):
            for rec in specs:
                if self._record_crc(rec) != rec["crc32"]:
                    raise ChecksumMismatch(f"{self.path}: checksum mismatch in {kind} {rec['name']!r}")
                yield kind, rec["name"]

    def verify(self) -> int:
        """Check all checksums; return the number of records checked."""
        return sum(1 for _ in self.iter_verify())

    def close(self) -> None:
        self.tensors = {}
        m = getattr(self, "_mmap", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # views still alive; the map closes when they are collected
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __enter__(self) -> LowbitReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
