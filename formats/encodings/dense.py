"""Unquantised storage: f32, f16 and bf16 (bf16 kept as the upper half of an f32, in u16)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.encodings.base import EncodedTensor, Encoding, PartSpecs, Shape, select_rows


def f32_to_bf16_bits(w: np.ndarray) -> np.ndarray:
    """Round f32 to bf16 (nearest-even) and return the 16 bits as u16."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    bits = ((u + rounding) >> 16).astype(np.uint16)
    # NaN stays a (quiet) NaN: rounding would carry it into Inf or wrap it to ±0
    return np.where(np.isnan(u.view(np.float32)), (u >> 16).astype(np.uint16) | np.uint16(0x40), bits)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


class DenseEncoding(Encoding):
    family = "dense"
    matrix_only = False

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = dtype  # part dtype: f32, f16 or u16 (bf16)

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        return {"data": (self.dtype, tuple(shape))}

    def pack(self, w: np.ndarray) -> EncodedTensor:
        w = np.asarray(w, dtype=np.float32)
        if self.name == "bf16":
            data = f32_to_bf16_bits(w)
        else:
            data = w.astype(np.float16 if self.name == "f16" else np.float32)
        return self.make(w.shape, {}, {"data": data})

    def dequantize(self, parts, shape, params, rows=None) -> np.ndarray:
        data = select_rows(parts["data"], rows)
        if self.name == "bf16":
            return bf16_bits_to_f32(data)
        return np.asarray(data, dtype=np.float32)


F32 = DenseEncoding("f32", "f32")
F16 = DenseEncoding("f16", "f16")
BF16 = DenseEncoding("bf16", "u16")
