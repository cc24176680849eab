"""The .lowbit container (SPEC.md sections 1 and 5): writer/reader round trip, alignment and
zero-copy, the streaming writer's all-or-nothing behaviour, and bad files crafted byte by byte
with struct.pack from the spec, each failing with its own error class and a one-line message."""

from __future__ import annotations

import copy
import json
import mmap
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from lowbit.file_info import summarize
from lowbit.formats import LowbitReader, LowbitWriter
from lowbit.formats.encodings import BF16, F16, F32, ONEBIT, Q2, Q3, Q4, Q8, TERNARY, TERNARY_1P6
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
    UnknownEncoding,
    UnsupportedVersion,
)

# SPEC.md 1.1, written out here rather than imported: the spec is the oracle
MAGIC = b"\x89LOWBIT\n"
PREFIX = struct.Struct("<8sHHIQQ")  # magic, major, minor, header crc32, header_len, data_offset


def align64(n: int) -> int:
    return -(-n // 64) * 64


def craft(
    header: dict | None,
    data: bytes = b"",
    *,
    raw_header: bytes | None = None,
    magic: bytes = MAGIC,
    major: int = 1,
    minor: int = 0,
    crc: int | None = None,
    header_len: int | None = None,
    data_offset: int | None = None,
) -> bytes:
    """A file laid out as SPEC.md 1 says; keyword arguments override single prefix fields."""
    hb = raw_header if raw_header is not None else json.dumps(header).encode()
    natural = align64(32 + len(hb))
    prefix = PREFIX.pack(
        magic,
        major,
        minor,
        zlib.crc32(hb) if crc is None else crc,
        len(hb) if header_len is None else header_len,
        natural if data_offset is None else data_offset,
    )
    return prefix + hb + b"\0" * (natural - 32 - len(hb)) + data


def base_file() -> tuple[dict, bytes]:
    """Two tensors and a blob, by hand: an f32 [2, 3] and a q4 [1, 32] (G = 32), then 'tok'."""
    a = np.arange(6, dtype="<f4") - 2.5
    q = [(3 * i) % 16 for i in range(32)]
    codes = bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    b_record = (
        codes.ljust(64, b"\0")  # codes u8[1, 16] at 0
        + struct.pack("<B", 2).ljust(64, b"\0")  # scales u8[1, 1] at 64
        + struct.pack("<B", 8).ljust(64, b"\0")  # zeros u8[1, 1] at 128
        + struct.pack("<e", 0.25)  # row_scale f16[1] at 192
    )
    a_record = a.tobytes()
    data = a_record.ljust(64, b"\0") + b_record.ljust(256, b"\0") + b"hello"
    header = {
        "metadata": {"architecture": "llama", "config": {"max_position_embeddings": 128}},
        "tensors": [
            {
                "name": "a",
                "encoding": "f32",
                "shape": [2, 3],
                "params": {},
                "offset": 0,
                "nbytes": 24,
                "crc32": zlib.crc32(a_record),
                "parts": {"data": {"dtype": "f32", "shape": [2, 3], "offset": 0}},
            },
            {
                "name": "b",
                "encoding": "q4",
                "shape": [1, 32],
                "params": {"group_size": 32},
                "offset": 64,
                "nbytes": len(b_record),
                "crc32": zlib.crc32(b_record),
                "parts": {
                    "codes": {"dtype": "u8", "shape": [1, 16], "offset": 0},
                    "scales": {"dtype": "u8", "shape": [1, 1], "offset": 64},
                    "zeros": {"dtype": "u8", "shape": [1, 1], "offset": 128},
                    "row_scale": {"dtype": "f16", "shape": [1], "offset": 192},
                },
            },
        ],
        "blobs": [{"name": "tok", "offset": 320, "nbytes": 5, "crc32": zlib.crc32(b"hello")}],
    }
    return header, data


def write(tmp_path: Path, content: bytes, name: str = "x.lowbit") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


# -- a file built from the spec alone ----------------------------------------------------------
def test_hand_built_file_reads(tmp_path):
    header, data = base_file()
    p = write(tmp_path, craft(header, data))
    with LowbitReader(p) as r:
        assert r.version == (1, 0)
        assert r.metadata == header["metadata"]
        np.testing.assert_array_equal(
            r["a"].dequantize(), np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
        )
        q = np.array([(3 * i) % 16 for i in range(32)], np.float32)
        np.testing.assert_array_equal(r["b"].dequantize(), (0.25 * 2 * (q - 8))[None, :])
        assert r.blob("tok") == b"hello"
        assert r.verify() == 3


def test_newer_minor_version_is_readable(tmp_path):
    header, data = base_file()
    header["metadata"]["some_future_key"] = {"x": 1}
    with LowbitReader(write(tmp_path, craft(header, data, minor=7))) as r:
        assert r.version == (1, 7)
        assert r.verify() == 3


# -- writer -> reader --------------------------------------------------------------------------
def all_encodings(rng: np.random.Generator, out: int = 2, n_in: int = 40) -> dict:
    shape = (out, n_in)
    t = {
        "model.norm.weight": F32.pack(rng.standard_normal(n_in)),
        "model.layers.0.f16.weight": F16.pack(rng.standard_normal(shape)),
        "model.layers.0.bf16.weight": BF16.pack(rng.standard_normal(shape)),
        "model.layers.0.q8.weight": Q8.pack(
            rng.integers(-127, 128, shape), rng.random((out, 2)), 32
        ),
        "model.layers.0.ternary.weight": TERNARY.pack(rng.integers(-1, 2, shape), rng.random(out)),
        "model.layers.0.ternary16.weight": TERNARY_1P6.pack(
            rng.integers(-1, 2, shape), rng.random(1)
        ),
        "model.layers.0.onebit.weight": ONEBIT.pack(
            rng.integers(-1, 2, shape), rng.random(n_in), rng.random(out), True
        ),
    }
    for enc in (Q2, Q3, Q4):
        top = (1 << enc.bits) - 1
        t[f"model.layers.1.{enc.name}.weight"] = enc.pack(
            rng.integers(0, top + 1, shape),
            rng.integers(0, 256, (out, 2)),
            rng.integers(0, top + 1, (out, 2)),
            rng.random(out),
            32,
        )
    return t


METADATA = {
    "architecture": "llama",
    "config": {
        "hidden_size": 40,
        "max_position_embeddings": 512,
        "rope_scaling": None,
        "eos_token_id": [2, 3],
    },
    "tokenizer": {
        "kind": "tokenizers",
        "blob": "tokenizer.json",
        "chat_template": "{{ x }} — ünïcode ✓",
    },
    "provenance": {
        "source": "hub/id",
        "converter": "lowbit 0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
    },
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "m.lowbit"
    tensors = all_encodings(np.random.default_rng(0))
    blobs = {"tokenizer.json": b'{"x": 1}', "empty": b"", "big": bytes(range(256)) * 3}
    with LowbitWriter(path, METADATA) as w:
        w.add_blob("tokenizer.json", blobs["tokenizer.json"])
        for i, (name, t) in enumerate(tensors.items()):
            w.add_tensor(name, t, info={"rel_error": i / 100})
        w.add_blob("empty", blobs["empty"])
        w.add_blob("big", blobs["big"])
    return path, tensors, blobs


def test_round_trip(written):
    path, tensors, blobs = written
    with LowbitReader(path) as r:
        assert r.metadata == METADATA
        assert list(r.tensors) == list(tensors)
        for i, (name, t) in enumerate(tensors.items()):
            e = r[name]
            assert (e.encoding, e.shape, e.params) == (t.encoding, t.shape, t.params)
            assert e.info == {"rel_error": i / 100}
            assert set(e.parts) == set(t.parts)
            for pname, arr in t.parts.items():
                assert e.parts[pname].dtype == arr.dtype
                np.testing.assert_array_equal(e.parts[pname], arr)
            np.testing.assert_array_equal(e.dequantize(), t.dequantize())
        assert r.blob_names() == ["tokenizer.json", "empty", "big"]
        for name, data in blobs.items():
            assert r.blob(name) == data
        assert r.verify() == len(tensors) + len(blobs)
        with pytest.raises(KeyError, match="no tensor named 'nope'"):
            r["nope"]


def test_written_file_follows_the_spec(written):
    """Parse the writer's output with struct and json alone, as a reader in another language would."""
    path, tensors, blobs = written
    raw = path.read_bytes()
    magic, major, minor, crc, header_len, data_offset = PREFIX.unpack_from(raw)
    assert (magic, major, minor) == (MAGIC, 1, 0)
    hb = raw[32 : 32 + header_len]
    assert zlib.crc32(hb) == crc
    assert data_offset % 64 == 0 and 32 + header_len <= data_offset < 32 + header_len + 64
    assert raw[32 + header_len : data_offset] == b"\0" * (data_offset - 32 - header_len)
    header = json.loads(hb)
    records = sorted(
        [(t["offset"], t["nbytes"], t) for t in header["tensors"]]
        + [(b["offset"], b["nbytes"], b) for b in header["blobs"]],
        key=lambda x: x[0],
    )
    end = 0
    for off, nbytes, rec in records:
        assert off % 64 == 0
        assert raw[data_offset + end : data_offset + off] == b"\0" * (off - end)  # gaps are zeros
        assert off >= end  # disjoint
        body = raw[data_offset + off : data_offset + off + nbytes]
        assert zlib.crc32(body) == rec["crc32"]
        end = off + nbytes
        for p in rec.get("parts", {}).values():
            assert p["offset"] % 64 == 0
            assert (data_offset + off + p["offset"]) % 64 == 0
    assert data_offset + end == len(raw)
    # part bytes as SPEC says: plain little-endian C-ordered arrays at their offsets
    t = header["tensors"][1]  # f16 2-D
    p = t["parts"]["data"]
    start = data_offset + t["offset"] + p["offset"]
    want = tensors[t["name"]].parts["data"]
    assert raw[start : start + want.nbytes] == want.astype("<f2").tobytes()


def test_parts_are_aligned_zero_copy_read_only(written):
    path, tensors, _ = written
    with LowbitReader(path) as r:
        for e in r.tensors.values():
            for pname, arr in e.parts.items():
                assert arr.ctypes.data % 64 == 0, (e.name, pname)
                assert not arr.flags.writeable
                with pytest.raises(ValueError):
                    arr.reshape(-1)[:1] = 0
                base = arr
                while not isinstance(base, mmap.mmap):  # arr -> ... -> the file's mmap
                    assert base is not None, f"{e.name}.{pname} is not a view of the mmap"
                    base = base.base if isinstance(base, np.ndarray) else base.obj
                assert np.shares_memory(arr, np.frombuffer(base, dtype=np.uint8))


def test_written_file_has_ordinary_permissions(written):
    path = written[0]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


# -- the streaming writer is all-or-nothing ---------------------------------------------------
def test_exception_inside_writer_leaves_nothing(tmp_path):
    target = tmp_path / "out.lowbit"
    with pytest.raises(RuntimeError, match="boom"):
        with LowbitWriter(target, {"architecture": "llama"}) as w:
            w.add_tensor("a", F32.pack(np.ones((4, 4))))
            assert any(tmp_path.iterdir())  # data is being streamed to a temp file
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_an_existing_target(tmp_path):
    target = tmp_path / "out.lowbit"
    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with LowbitWriter(target) as w:
            w.add_blob("x", b"123")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.lowbit"]


def test_unserialisable_metadata_leaves_nothing(tmp_path):
    target = tmp_path / "out.lowbit"
    with pytest.raises(InvalidHeader, match="not JSON-serialisable"):
        with LowbitWriter(target, {"bad": {1, 2}}) as w:
            w.add_tensor("a", F32.pack(np.ones(3)))
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_input(tmp_path):
    with LowbitWriter(tmp_path / "w.lowbit") as w:
        w.add_tensor("a", F32.pack(np.ones(3)))
        with pytest.raises(InvalidHeader, match="duplicate tensor name 'a'"):
            w.add_tensor("a", F32.pack(np.ones(3)))
        bad = Q4.pack(np.zeros((1, 32)), np.ones((1, 1)), np.zeros((1, 1)), np.ones(1), 32)
        bad.parts["codes"] = np.zeros((1, 32), np.uint8)
        with pytest.raises(
            InvalidTensor, match="part codes is uint8\\[1, 32\\], expected u8\\[1, 16\\]"
        ):
            w.add_tensor("b", bad)
    with pytest.raises(FormatError, match="is finished"):
        w.add_blob("late", b"")
    with LowbitReader(tmp_path / "w.lowbit") as r:
        assert list(r.tensors) == ["a"]


# -- bad files, each with its own error ---------------------------------------------------------
def edit(fn):
    header, data = base_file()
    header = copy.deepcopy(header)
    fn(header)
    return craft(header, data)


def set_in(path: list, value):
    def fn(h):
        obj = h
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return fn


HEADER, DATA = base_file()
VALID = craft(HEADER, DATA)
HB_LEN = len(json.dumps(HEADER).encode())

BAD_FILES = {
    # name: (file bytes, error class, message fragment)
    "truncated prefix": (
        VALID[:20],
        TruncatedFile,
        "truncated file (20 bytes, the prefix alone is 32)",
    ),
    "truncated header": (
        VALID[:100],
        TruncatedFile,
        f"truncated file (header needs {32 + HB_LEN} bytes, file has 100)",
    ),
    "empty file": (b"", TruncatedFile, "truncated file (0 bytes"),
    "text-mode magic": (b"\x89LOWBIT\r\n" + VALID[9:], BadMagic, "not a .lowbit file (bad magic"),
    "gguf magic": (b"GGUF" + VALID[4:], BadMagic, "not a .lowbit file"),
    "future major version": (
        craft(HEADER, DATA, major=2, minor=1),
        UnsupportedVersion,
        "format version 2.1 is not supported (this lowbit reads 1.x)",
    ),
    "major version 0": (
        craft(HEADER, DATA, major=0),
        UnsupportedVersion,
        "format version 0.0 is not supported",
    ),
    "header too large": (
        craft(HEADER, DATA, header_len=64 * 1024 * 1024 + 1),
        HeaderTooLarge,
        "header of 67108865 bytes exceeds the 67108864-byte limit",
    ),
    "header length 2**64-1": (
        craft(HEADER, DATA, header_len=2**64 - 1),
        HeaderTooLarge,
        "exceeds the 67108864-byte limit",
    ),
    "header length 1": (
        craft(HEADER, DATA, header_len=1),
        InvalidHeader,
        "header length 1 is too small",
    ),
    "header crc": (craft(HEADER, DATA, crc=12345), ChecksumMismatch, "header checksum mismatch"),
    "garbage json": (
        craft(None, DATA, raw_header=b'{"tensors": [1, 2'),
        InvalidHeader,
        "header is not valid JSON (JSONDecodeError)",
    ),
    "not utf-8": (
        craft(None, DATA, raw_header=b'{"a": "\xff\xfe"}'),
        InvalidHeader,
        "header is not valid JSON (UnicodeDecodeError)",
    ),
    "deeply nested json": (
        craft(None, b"", raw_header=b"[" * 200000 + b"]" * 200000),
        InvalidHeader,
        "header is not valid JSON (RecursionError)",
    ),
    "json array": (
        craft(None, DATA, raw_header=b"[1, 2]"),
        InvalidHeader,
        "header must be a JSON object",
    ),
    "metadata not object": (
        edit(set_in(["metadata"], [1])),
        InvalidHeader,
        "field 'metadata' must be an object",
    ),
    "tensors not list": (
        edit(set_in(["tensors"], {})),
        InvalidHeader,
        "fields 'tensors' and 'blobs' must be lists",
    ),
    "data_offset misaligned": (
        craft(HEADER, DATA, data_offset=align64(32 + HB_LEN) + 8),
        InvalidOffset,
        "invalid data_offset",
    ),
    "data_offset inside header": (
        craft(HEADER, DATA, data_offset=align64(32 + HB_LEN) - 64),
        InvalidOffset,
        "invalid data_offset",
    ),
    "data_offset past EOF": (
        craft(HEADER, b"", data_offset=align64(32 + HB_LEN) + 640),
        TruncatedFile,
        "data starts at",
    ),
    "offset past EOF": (
        edit(set_in(["tensors", 0, "offset"], 1024)),
        InvalidOffset,
        "tensor 'a': offset 1024 + 24 bytes runs past the end of the file (data section is 325 bytes)",
    ),
    "nbytes past EOF": (
        edit(set_in(["blobs", 0, "nbytes"], 2**64)),
        InvalidOffset,
        f"blob 'tok': offset 320 + {2**64} bytes runs past the end of the file",
    ),
    "truncated data": (
        VALID[:-3],
        InvalidOffset,
        "blob 'tok': offset 320 + 5 bytes runs past the end of the file (data section is 322 bytes)",
    ),
    "misaligned record": (
        edit(set_in(["tensors", 1, "offset"], 72)),
        InvalidOffset,
        "tensor 'b': offset 72 is not 64-byte aligned",
    ),
    "negative offset": (
        edit(set_in(["tensors", 0, "offset"], -64)),
        InvalidHeader,
        "tensor 'a': field 'offset' must be a non-negative integer",
    ),
    "float nbytes": (
        edit(set_in(["tensors", 0, "nbytes"], 24.0)),
        InvalidHeader,
        "field 'nbytes' must be a non-negative integer",
    ),
    "missing crc": (
        edit(lambda h: h["blobs"][0].pop("crc32")),
        InvalidHeader,
        "blob 'tok': field 'crc32' must be a non-negative integer",
    ),
    "overlapping tensors": (
        edit(set_in(["tensors", 1, "offset"], 0)),
        OverlappingRecords,
        "records 'a' and 'b' overlap",
    ),
    "blob overlaps tensor": (
        edit(set_in(["blobs", 0, "offset"], 256)),
        OverlappingRecords,
        "records 'b' and 'tok' overlap",
    ),
    "duplicate names": (
        edit(set_in(["tensors", 1, "name"], "a")),
        InvalidHeader,
        "duplicate tensor name 'a'",
    ),
    "unknown encoding": (
        edit(set_in(["tensors", 1, "encoding"], "q5")),
        UnknownEncoding,
        "tensor 'b': unknown encoding 'q5'",
    ),
    "encoding not a string": (
        edit(set_in(["tensors", 1, "encoding"], ["q4"])),
        UnknownEncoding,
        "unknown encoding ['q4']",
    ),
    "bad group size": (
        edit(set_in(["tensors", 1, "params", "group_size"], 48)),
        InvalidTensor,
        "tensor 'b': q4: group_size must be one of (32, 64, 128), got 48",
    ),
    "1-D q4": (
        edit(set_in(["tensors", 1, "shape"], [32])),
        InvalidTensor,
        "needs a 2-D [out, in] shape, got [32]",
    ),
    "part shape mismatch": (
        edit(set_in(["tensors", 1, "parts", "codes", "shape"], [1, 32])),
        InvalidTensor,
        "tensor 'b': part 'codes' must be u8[1, 16]",
    ),
    "part dtype mismatch": (
        edit(set_in(["tensors", 1, "parts", "row_scale", "dtype"], "f32")),
        InvalidTensor,
        "part 'row_scale' must be f16[1]",
    ),
    "part shape of floats": (
        edit(set_in(["tensors", 1, "parts", "codes", "shape"], [1.0, 16.0])),
        InvalidTensor,
        "part 'codes' must be u8[1, 16]",
    ),
    "missing part": (
        edit(lambda h: h["tensors"][1]["parts"].pop("zeros")),
        InvalidTensor,
        "parts ['codes', 'row_scale', 'scales'] do not match encoding q4",
    ),
    "part past its record": (
        edit(set_in(["tensors", 1, "parts", "row_scale", "offset"], 256)),
        InvalidOffset,
        "part 'row_scale' runs past the end of its record",
    ),
    "part misaligned": (
        edit(set_in(["tensors", 1, "parts", "zeros", "offset"], 130)),
        InvalidOffset,
        "part 'zeros' has an invalid offset 130",
    ),
    "huge empty shape": (
        edit(
            lambda h: h["tensors"][0].update(
                shape=[0, 2**70], parts={"data": {"dtype": "f32", "shape": [0, 2**70], "offset": 0}}
            )
        ),
        InvalidHeader,
        "tensor 'a': shape [0, 1180591620717411303424] is too large",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file(tmp_path, case):
    content, cls, fragment = BAD_FILES[case]
    p = write(tmp_path, content)
    with pytest.raises(FormatError) as info:
        LowbitReader(p)
    assert type(info.value) is cls, f"{case}: {type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: "), msg  # names the file
    assert fragment in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="cannot open: No such file or directory"):
        LowbitReader(tmp_path / "nope.lowbit")


@pytest.mark.parametrize("target", ["a", "b", "tok"])
def test_flipped_data_byte(tmp_path, target):
    header, data = base_file()
    rec = next(r for r in header["tensors"] + header["blobs"] if r["name"] == target)
    content = bytearray(craft(header, data))
    content[align64(32 + HB_LEN) + rec["offset"] + 1] ^= 0x10
    p = write(tmp_path, bytes(content))
    with LowbitReader(p) as r:  # structure is intact: opening does not read the data
        kind = "blob" if target == "tok" else "tensor"
        with pytest.raises(ChecksumMismatch) as info:
            r.verify()
        assert str(info.value) == f"{p}: checksum mismatch in {kind} '{target}'"


# -- fuzz --------------------------------------------------------------------------------------
FUZZ_VALUES = [
    -1,
    0,
    1,
    2,
    3,
    31,
    32,
    63,
    64,
    65,
    127,
    128,
    255,
    256,
    2**31,
    2**32 - 1,
    2**63,
    2**64,
    2**70,
    0.5,
    32.0,
    -0.0,
    1e308,
    "",
    "x",
    "q4",
    "q2",
    "ternary",
    "onebit",
    "f32",
    "u8",
    "f16",
    "row",
    "tensor",
    None,
    True,
    False,
    [],
    [0],
    [1, 1],
    [2**40, 2**40, 0],
    [-1, 3],
    {},
    {"group_size": 32},
]


SHAPES = [[0, 2**70], [2**40, 2**40, 0], [0], [], [2**31, 2**31], [1, 2**62], [2, 0, 3], [5]]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate_json(header: dict, rng: np.random.Generator) -> dict:
    h = copy.deepcopy(header)
    if rng.random() < 0.2:
        # a tensor and all its parts reshaped alike, so only the shape itself is wrong
        t = h["tensors"][int(rng.integers(len(h["tensors"])))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        t["shape"] = list(shape)
        for part in t["parts"].values():
            part["shape"] = list(shape)
        return h
    for _ in range(int(rng.integers(1, 4))):
        paths = [p for p in _paths(h) if p]
        path = paths[int(rng.integers(len(paths)))]
        parent = h
        for k in path[:-1]:
            parent = parent[k]
        action = rng.random()
        value = parent[path[-1]]
        if action < 0.1 and isinstance(value, int) and not isinstance(value, bool):
            parent[path[-1]] = float(value)  # 32.0 == 32, but is not an integer
        elif action < 0.25 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.3 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))  # duplicate an entry
        elif action < 0.45 and isinstance(value, int) and not isinstance(value, bool):
            parent[path[-1]] += int(rng.choice([-64, -1, 1, 64, 2**32]))
        else:
            parent[path[-1]] = copy.deepcopy(FUZZ_VALUES[int(rng.integers(len(FUZZ_VALUES)))])
    return h


def _exercise(path: Path) -> None:
    """Everything a user of a file does: open, read every tensor and blob, summarise, verify."""
    with LowbitReader(path) as r:
        for e in r.tensors.values():
            e.dequantize()
            if len(e.shape) == 2 and e.shape[0] > 0:
                e.dequantize(np.array([e.shape[0] - 1]))
            _ = e.bits_per_weight, e.numel
        for name in r.blob_names():
            r.blob(name)
        summarize(r, tensors=True)
        r.verify()


def test_fuzz_mutations_raise_only_format_errors(tmp_path):
    src = tmp_path / "src.lowbit"
    with LowbitWriter(src, METADATA) as w:
        w.add_blob("tokenizer.json", b'{"model": {}}')
        for name, t in all_encodings(np.random.default_rng(1), out=2, n_in=40).items():
            w.add_tensor(name, t, info={"rel_error": 0.1})
    valid = src.read_bytes()
    _exercise(src)  # the unmutated file is fine
    header_len = PREFIX.unpack_from(valid)[4]
    data_offset = PREFIX.unpack_from(valid)[5]
    header = json.loads(valid[32 : 32 + header_len])
    data = valid[data_offset:]
    target = tmp_path / "fuzz.lowbit"
    failures, outcomes = [], {}
    for i in range(1650):
        rng = np.random.default_rng(i)
        kinds = [
            "flip",
            "flip_header",
            "truncate",
            "insert",
            "insert_header",
            "prefix",
            "json",
            "json",
            "json",
            "data",
            "nest",
        ]
        kind = kinds[i % len(kinds)]
        buf = bytearray(valid)
        if kind == "flip":  # anywhere, header CRC left as is
            for _ in range(int(rng.integers(1, 4))):
                buf[int(rng.integers(len(buf)))] ^= int(rng.integers(1, 256))
        elif kind == "flip_header":  # inside the header, CRC recomputed so parsing is reached
            hb = bytearray(valid[32 : 32 + header_len])
            for _ in range(int(rng.integers(1, 3))):
                hb[int(rng.integers(len(hb)))] = int(rng.integers(32, 127))
            buf = bytearray(craft(None, data, raw_header=bytes(hb)))
        elif kind == "truncate":
            buf = buf[: int(rng.integers(len(buf)))]
        elif kind == "insert":
            pos = int(rng.integers(len(buf)))
            buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 70))).astype(np.uint8).tobytes()
        elif kind == "insert_header":  # header grows; data_offset kept, so it may now be inside it
            hb = bytearray(valid[32 : 32 + header_len])
            pos = int(rng.integers(len(hb)))
            hb[pos:pos] = bytes(
                rng.choice(list(b'{}[]",:0123456789 -.e'), int(rng.integers(1, 40)))
            )
            buf = bytearray(craft(None, data, raw_header=bytes(hb), data_offset=data_offset))
        elif kind == "prefix":
            field = int(rng.integers(6))
            vals = list(PREFIX.unpack_from(valid))
            vals[field] = {
                0: bytes(rng.integers(0, 256, 8).astype(np.uint8)),
                1: int(rng.integers(0, 3)),
                2: int(rng.integers(0, 65536)),
                3: int(rng.integers(0, 2**32)),
                4: [0, 2, header_len - 1, header_len + 1, len(valid), 2**64 - 1][
                    int(rng.integers(6))
                ],
                5: [0, 32, data_offset - 64, data_offset + 64, len(valid), 2**64 - 64][
                    int(rng.integers(6))
                ],
            }[field]
            buf[:32] = PREFIX.pack(*vals)
        elif kind == "json":  # structured header edit, CRC and data_offset recomputed
            buf = bytearray(craft(_mutate_json(header, rng), data))
        elif kind == "nest":  # deeply nested JSON must not overflow the parser's stack
            n = int(rng.integers(1, 200_000))
            buf = bytearray(
                craft(None, data, raw_header=b"[" * n + valid[32 : 32 + header_len] + b"]" * n)
            )
        else:  # corrupt tensor data behind a valid header: dequantize must still not crash
            for _ in range(int(rng.integers(1, 20))):
                buf[data_offset + int(rng.integers(len(data)))] = int(rng.integers(256))
        target.write_bytes(bytes(buf))
        try:
            with np.errstate(all="ignore"):  # corrupt f16 data may hold inf/nan: not an error
                _exercise(target)
            outcome = "ok"
        except FormatError as e:
            outcome = type(e).__name__
            if "\n" in str(e):
                failures.append((i, kind, f"multi-line message: {e!r}"))
        except Exception as e:  # noqa: BLE001 - the point of the test
            failures.append((i, kind, f"{type(e).__name__}: {e}"))
            outcome = "crash"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    kinds = sorted({f[2].split(":")[0] for f in failures})
    assert not failures, (
        f"{len(failures)} mutations escaped FormatError ({kinds}), e.g. {failures[:5]}"
    )
    # the mutations reached many different checks, not just the header CRC
    assert len(outcomes) >= 8, outcomes
