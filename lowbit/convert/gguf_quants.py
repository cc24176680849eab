"""GGUF tensor types gguf-py cannot read or dequantise, and the raw block fields of the types
lowbit re-packs losslessly (`--method keep`).

gguf-py 0.19 knows Q1_0's type id but has no dequantiser for it, and does not know Q2_0 (id 42,
llama.cpp) or bitnet.cpp's I2_S (id 36) at all: its reader raises on them. This module reads
such files with a reader whose tensor table accepts those ids, and dequantises them in numpy,
from the block definitions (llama.cpp ggml-common.h / bitnet.cpp):

- Q1_0: 128 weights in 18 bytes: f16 d, then 16 bytes; weight j is +d when bit j % 8 of byte
  j // 8 is set, else -d.
- Q2_0: 64 weights in 18 bytes: f16 d, then 16 bytes; weight j is (q - 1)·d with
  q = (byte[j // 4] >> 2·(j % 4)) & 3 (q = 3, i.e. +2d, is a valid level).
- I2_S: the whole tensor as blocks of 128 weights in 32 bytes, then one f32 scale (the tensor
  padded by 32 bytes): weight j of a block is (q - 1)·scale with
  q = (byte[j % 32] >> (6 - 2·(j // 32))) & 3.

Dequantisation runs in blocks of rows into one float32 output, so that memory stays at the
output plus one block's temporaries (as HF input is read in row blocks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lowbit.errors import ConversionError, UnsupportedModel

I2_S, Q1_0, Q2_0 = 36, 41, 42
ROW_BLOCK_WEIGHTS = 1 << 22  # weights dequantised per row block


class ExtraType(NamedTuple):
    """A GGML type gguf-py's enum lacks: its name, id, block length and block bytes."""

    name: str
    value: int
    block: int
    type_size: int


# types gguf-py's reader refuses (not in its enum); Q1_0 is in it and read normally
EXTRA_TYPES = {
    Q2_0: ExtraType("Q2_0", Q2_0, 64, 18),
    I2_S: ExtraType("I2_S", I2_S, 128, 32),  # + 32 bytes per tensor: the f32 scale, padded
}
I2_S_TAIL = 32


def type_name(tensor_type: Any) -> str:
    return str(getattr(tensor_type, "name", tensor_type))


def type_id(tensor_type: Any) -> int:
    return int(getattr(tensor_type, "value", tensor_type))


def open_reader(path: Path) -> Any:
    """gguf-py's GGUFReader, with a tensor table that also accepts EXTRA_TYPES and checks every
    tensor lies inside the file; errors name the tensor (one line, ConversionError)."""
    import gguf

    class Reader(gguf.GGUFReader):
        # gguf-py slices its np.memmap once per metadata string; the memmap subclass's per-slice
        # bookkeeping made a 128k-token vocabulary (Llama 3, Qwen) take ~17 s to open. A plain
        # ndarray view of the same mapping reads the same bytes, still mapped, without it.
        @property
        def data(self) -> np.ndarray:
            return self._mapped

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._mapped = value.view(np.ndarray)

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            known = {int(t) for t in gguf.GGMLQuantizationType}
            size = int(self.data.shape[0])
            std, extras = [], []
            for field in fields:
                _, name_data, _, dims, raw_dtype, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                raw = int(raw_dtype[0])
                n = int(np.prod(dims.astype(np.int64)))
                if raw in EXTRA_TYPES:
                    t = EXTRA_TYPES[raw]
                    nbytes = _extra_nbytes(t, dims, name)
                    extras.append((field, name, t, n, nbytes))
                elif raw not in known:
                    raise UnsupportedModel(
                        f"{path.name}: tensor {name!r} has GGML type id {raw}, which lowbit does not know"
                    )
                else:
                    block, tsize = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw)]
                    if n % block or (len(dims) and int(dims[0]) % block):
                        raise ConversionError(
                            f"{path.name}: tensor {name!r}: {int(dims[0])} columns is not a multiple "
                            f"of its {gguf.GGMLQuantizationType(raw).name} block ({block})"
                        )
                    nbytes = n * tsize // block
                    std.append(field)
                end = int(start_offs + offset[0]) + nbytes
                if end > size:
                    raise ConversionError(
                        f"{path.name}: tensor {name!r} ends at byte {end}, past the end of the file "
                        f"({size} bytes): truncated?"
                    )
            super()._build_tensors(start_offs, std)
            by_name = {t.name: t for t in self.tensors}
            for field, name, t, n, nbytes in extras:
                dims = field.parts[3]
                off = int(start_offs + field.parts[5][0])
                by_name[name] = gguf.gguf_reader.ReaderTensor(
                    name=name, tensor_type=t, shape=dims, n_elements=n, n_bytes=nbytes,
                    data_offset=off, data=self._get(off, np.uint8, nbytes), field=field,
                )
            order = [bytes(f.parts[1]).decode("utf-8", "replace") for f in fields]
            self.tensors = [by_name[n] for n in order]

    try:
        return Reader(path)
    except LookupError as e:  # KeyError / IndexError from a malformed table
        raise ConversionError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _extra_nbytes(t: ExtraType, dims: np.ndarray, name: str) -> int:
    cols = int(dims[0])
    n = int(np.prod(dims.astype(np.int64)))
    if cols % t.block:
        raise ConversionError(f"tensor {name!r}: {cols} columns is not a multiple of its {t.name} block ({t.block})")
    return n // t.block * t.type_size + (I2_S_TAIL if t.value == I2_S else 0)


# -- raw rows ---------------------------------------------------------------------------------


def raw_rows(t: Any) -> np.ndarray:
    """A tensor's bytes as uint8 [rows, bytes per row] (I2_S: without the scale tail)."""
    cols = int(t.shape[0])
    rows = int(t.n_elements) // max(1, cols)
    data = np.asarray(t.data).reshape(-1).view(np.uint8)
    if type_id(t.tensor_type) == I2_S:
        data = data[: rows * cols // 4]
    return data.reshape(rows, -1)


def i2s_scale(t: Any) -> np.float32:
    data = np.asarray(t.data).reshape(-1).view(np.uint8)
    n = int(t.n_elements)
    return data[n // 4 : n // 4 + 4].view(np.float32)[0]


# -- dequantisers (one block of rows: uint8 [rows, row bytes] -> float32 [rows, cols]) --------


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian f16 from the last axis' two bytes, as float32 with a trailing axis of 1."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def q1_0_fields(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bits u8 [rows, cols] in {0, 1}, d f16 [rows, nb])."""
    blocks = raw.reshape(raw.shape[0], -1, 18)
    bits = np.unpackbits(blocks[..., 2:], axis=-1, bitorder="little")
    return bits.reshape(raw.shape[0], -1), np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]


def q2_0_fields(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q u8 [rows, cols] in 0..3, d f16 [rows, nb])."""
    blocks = raw.reshape(raw.shape[0], -1, 18)
    qs = blocks[..., 2:, None] >> np.array([0, 2, 4, 6], np.uint8)
    return (qs & 3).reshape(raw.shape[0], -1), np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]


def i2s_codes(raw: np.ndarray) -> np.ndarray:
    """q u8 [rows, cols] in 0..3 (weight = (q - 1)·scale)."""
    blocks = raw.reshape(raw.shape[0], -1, 1, 32)
    q = (blocks >> np.array([6, 4, 2, 0], np.uint8)[:, None]) & 3  # [rows, nb, 4, 32]
    return q.reshape(raw.shape[0], -1)


def dequantize_q1_0(raw: np.ndarray) -> np.ndarray:
    bits, d = q1_0_fields(raw)
    df = d.astype(np.float32)
    w = np.repeat(df, 128, axis=1)
    return np.where(bits.astype(bool), w, -w)


def dequantize_q2_0(raw: np.ndarray) -> np.ndarray:
    q, d = q2_0_fields(raw)
    return (q.astype(np.float32) - np.float32(1)) * np.repeat(d.astype(np.float32), 64, axis=1)


def dequantize_i2s(raw: np.ndarray, scale: np.float32) -> np.ndarray:
    return (i2s_codes(raw).astype(np.float32) - np.float32(1)) * np.float32(scale)


def dequantize(t: Any, where: str = "") -> np.ndarray:
    """A GGUF tensor as float32 [rows, cols] (GGUF's [ne1, ne0]), in row blocks."""
    import gguf.quants

    cols = int(t.shape[0])
    rows = int(t.n_elements) // max(1, cols)
    tid = type_id(t.tensor_type)
    if tid not in (Q1_0, Q2_0, I2_S):
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise UnsupportedModel(
                f"{where}tensor {t.name} uses GGML type {type_name(t.tensor_type)}, which lowbit cannot dequantise"
            ) from None
        return np.asarray(w, dtype=np.float32).reshape(rows, cols)
    raw = raw_rows(t)
    scale = i2s_scale(t) if tid == I2_S else None
    out = np.empty((rows, cols), dtype=np.float32)
    step = max(1, ROW_BLOCK_WEIGHTS // max(1, cols))
    for r0 in range(0, rows, step):
        block = raw[r0 : r0 + step]
        if tid == Q1_0:
            out[r0 : r0 + step] = dequantize_q1_0(block)
        elif tid == Q2_0:
            out[r0 : r0 + step] = dequantize_q2_0(block)
        else:
            out[r0 : r0 + step] = dequantize_i2s(block, scale)
    return out


# -- writers used by tests and tools: raw blocks per ggml-common.h -----------------------------


def pack_q1_0(bits: np.ndarray, d: np.ndarray) -> np.ndarray:
    """bits u8 [rows, cols] in {0, 1}, d f16 [rows, cols/128] -> raw rows u8 [rows, cols/128·18]."""
    rows, cols = bits.shape
    qs = np.packbits(bits.reshape(rows, -1, 128).astype(np.uint8), axis=-1, bitorder="little")
    head = np.asarray(d, np.float16).reshape(rows, -1, 1).view(np.uint8)
    return np.concatenate([head, qs], axis=-1).reshape(rows, -1)


def pack_q2_0(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """q u8 [rows, cols] in 0..3, d f16 [rows, cols/64] -> raw rows u8 [rows, cols/64·18]."""
    rows, cols = q.shape
    qb = q.reshape(rows, -1, 16, 4).astype(np.uint8)
    qs = qb[..., 0] | (qb[..., 1] << 2) | (qb[..., 2] << 4) | (qb[..., 3] << 6)
    head = np.asarray(d, np.float16).reshape(rows, -1, 1).view(np.uint8)
    return np.concatenate([head, qs], axis=-1).reshape(rows, -1)


def pack_i2s(q: np.ndarray, scale: float) -> np.ndarray:
    """q u8 [rows, cols] in 0..3 and one scale -> the tensor's bytes (codes, f32 scale, padding)."""
    rows, cols = q.shape
    qb = q.reshape(rows, -1, 4, 32).astype(np.uint8)
    codes = (qb[:, :, 0] << 6) | (qb[:, :, 1] << 4) | (qb[:, :, 2] << 2) | qb[:, :, 3]
    tail = np.zeros(I2_S_TAIL, np.uint8)
    tail[:4] = np.array([scale], np.float32).view(np.uint8)
    return np.concatenate([codes.reshape(-1), tail])
