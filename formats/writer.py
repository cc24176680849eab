"""Streaming writer: tensors are appended one at a time (memory bounded by one tensor), and the
file appears at its path only when complete (temp file, fsync, atomic rename).

One writer per target at a time: a lock file `.NAME.lock` beside the target (fcntl.flock, held
until finish or abort) makes a second writer of the same path fail at once, and the holder of the
lock removes temp files an interrupted writer of that target left behind (a SIGKILL'd convert).
Write errors (a full disk) surface as one-line WriteErrors, with every temp file removed.
"""

from __future__ import annotations

import errno
import json
import os
import re
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
from lowbit.formats.errors import FormatError, HeaderTooLarge, InvalidHeader, WriteError
from lowbit.formats.reader import LowbitReader

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the exists-check and atomic rename remain
    fcntl = None


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temp files of this target: `.NAME.` + mkstemp's 8 random characters + `.tmp`/`.data.tmp`."""
    return re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}(\.data)?\.tmp$")


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return WriteError(f"{path}: cannot write: {reason}")


class TargetLock:
    """An exclusive lock on writing one target path (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path.parent / f".{path.name}.lock"
        self._fd: int | None = None
        while fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise WriteError(f"{path}: another lowbit process is writing this file") from None
            try:  # the lock file may have been removed by its previous holder: lock the live one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


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

    def __init__(
        self, path: str | os.PathLike, metadata: dict[str, Any] | None = None, overwrite: bool = True
    ) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.overwrite = overwrite
        self._tensors: list[dict[str, Any]] = []
        self._blobs: list[dict[str, Any]] = []
        self._names: set[tuple[str, str]] = set()
        self._pos = 0
        self._state = "open"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = TargetLock(self.path)
        except OSError as e:
            raise _write_error(self.path, e) from None
        try:
            self._check_target()
            self._remove_stale_temps()
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".data.tmp", dir=self.path.parent)
        except OSError as e:
            self._lock.release()
            raise _write_error(self.path, e) from None
        except BaseException:
            self._lock.release()
            raise
        self._data_path = Path(tmp)
        self._data = os.fdopen(fd, "w+b")

    def _check_target(self) -> None:
        if not self.overwrite and self.path.exists():
            raise WriteError(f"{self.path} already exists")

    def _remove_stale_temps(self) -> None:
        """Temp files of this target that no live writer owns (we hold the target's lock)."""
        pattern = _temp_pattern(self.path.name)
        for entry in os.scandir(self.path.parent):
            if pattern.match(entry.name):
                Path(entry.path).unlink(missing_ok=True)

    @property
    def tensor_records(self) -> list[dict[str, Any]]:
        """The header records of the tensors added so far (name, encoding, shape, params, ...)."""
        return list(self._tensors)

    # -- records ---------------------------------------------------------------------------
    def _start_record(self, kind: str, name: str) -> int:
        if self._state != "open":
            raise FormatError(f"writer for {self.path} is {self._state}: cannot add {kind} {name!r}")
        if (kind, name) in self._names:
            raise InvalidHeader(f"duplicate {kind} name {name!r}")
        self._names.add((kind, name))
        start = align(self._pos)
        self._write(b"\0" * (start - self._pos), 0)
        return start

    def _write(self, data: bytes | memoryview, crc: int) -> int:
        try:
            self._data.write(data)
        except OSError as e:
            self.abort()
            raise _write_error(self.path, e) from None
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
        try:
            self._check_target()
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):
                raise _write_error(self.path, e) from None
            raise
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
        except BaseException as e:
            tmp_path.unlink(missing_ok=True)
            self.abort()
            if isinstance(e, OSError):
                raise _write_error(self.path, e) from None
            raise
        self._close_data()
        self._state = "finished"
        return self.path

    def _close_data(self) -> None:
        try:
            if not self._data.closed:
                self._data.close()
        except OSError:
            pass  # a full disk may fail the final flush; the file is deleted anyway
        self._data_path.unlink(missing_ok=True)
        self._lock.release()

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


def rewrite(src: str | os.PathLike, dst: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """A copy of the .lowbit file `src` at `dst` with these top-level metadata keys replaced;
    tensors (with their info) and blobs streamed as they are. `dst` may be `src`: the header sits
    before the data, so it cannot grow in place, and the copy replaces the file atomically."""
    with LowbitReader(src) as reader, LowbitWriter(dst, {**reader.metadata, **metadata}) as writer:
        for name in reader.blob_names():
            writer.add_blob(name, reader.blob(name))
        for name, e in reader.tensors.items():
            writer.add_tensor(name, EncodedTensor(e.encoding, e.shape, e.params, e.parts), info=e.info)
    return Path(dst)
