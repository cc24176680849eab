"""q1f / q2f / q4f: grouped integer codes with an f16 scale (and optionally an f16 minimum) per
group (SPEC.md 2.7), the exact grids of llama.cpp's block types:

    Ŵ[r, i] = scale[r, g] · (v[r, i] − zero) [+ min[r, g]],   g = i // G

with v = q for b = 2, 4 and v = 2q − 1 (levels ±1) for b = 1. Q4_0 is q4f (zero 8), Q4_1 q4f
with minimums, Q2_0 and TQ2_0 q2f (zero 1), Q1_0 q1f; computed in float32 as llama.cpp does, the
values equal GGUF's bit for bit (the product of an f16 and a small integer is exact). The
`q{b}` encodings cannot hold these grids: their 8-bit group scales sit under one f16 per row.
Code layout: as q2 / q4 (SPEC.md 2.3); b = 1: G/8 bytes, byte j bit k = q[j + k·G/8].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.encodings.base import (
    BitWidthEncoding,
    EncodedTensor,
    PartSpecs,
    Shape,
    select_rows,
)
from lowbit.formats.encodings.grouped import pack_groups, unpack_groups

GROUP_SIZES = (32, 64, 128, 256)


def pack_codes(q: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Codes q [out, ng·G] (u8) -> the stream layout [out, ng·G·b/8]."""
    if bits != 1:
        return pack_groups(q, bits, group)
    out, n = q.shape
    planes = q.reshape(out, n // group, 8, group // 8).astype(np.uint8)
    packed = np.zeros((out, n // group, group // 8), np.uint8)
    for k in range(8):
        packed |= (planes[:, :, k, :] & 1) << k
    return packed.reshape(out, -1)


def unpack_codes(codes: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Inverse of pack_codes: [rows, ng·G·b/8] -> u8 [rows, ng·G]."""
    if bits != 1:
        return unpack_groups(codes, bits, group)
    rows = codes.shape[0]
    cg = codes.reshape(rows, -1, group // 8)
    return np.concatenate([(cg >> k) & 1 for k in range(8)], axis=-1).reshape(rows, -1)


class AffineEncoding(BitWidthEncoding):
    family = "affine"
    name_format = "q{bits}f"

    def check(self, shape: Shape, params: dict[str, Any]) -> None:
        super().check(shape, params)
        group = self.require_group_size(params, GROUP_SIZES)
        self.require(shape[1] % group == 0, f"{shape[1]} inputs is not a multiple of group_size {group}")
        self.require(isinstance(params.get("has_min"), bool), "params.has_min must be a boolean")
        zero = params.get("zero")
        limit = 0 if self.bits == 1 else (1 << self.bits) - 1
        self.require(
            isinstance(zero, int) and not isinstance(zero, bool) and 0 <= zero <= limit,
            f"params.zero must be an integer in [0, {limit}], got {zero!r}",
        )

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        out, n_in = shape
        ng = n_in // int(params["group_size"])
        specs: PartSpecs = {
            "codes": ("u8", (out, n_in * self.bits // 8)),
            "scales": ("f16", (out, ng)),
        }
        if params["has_min"]:
            specs["mins"] = ("f16", (out, ng))
        return specs

    def pack(
        self, q: np.ndarray, scales: np.ndarray, group_size: int, zero: int = 0,
        mins: np.ndarray | None = None,
    ) -> EncodedTensor:
        """Codes q [out, in] (u8), f16 scales (and mins) [out, in / G]."""
        out, n_in = q.shape
        parts = {
            "codes": pack_codes(q, self.bits, group_size),
            "scales": np.asarray(scales, np.float16).reshape(out, -1),
        }
        if mins is not None:
            parts["mins"] = np.asarray(mins, np.float16).reshape(out, -1)
        params = {"group_size": int(group_size), "zero": int(zero), "has_min": mins is not None}
        return self.make((out, n_in), params, parts)

    def unpack(self, parts, shape, params, rows=None) -> np.ndarray:
        """Codes q [rows, in] (u8)."""
        return unpack_codes(select_rows(parts["codes"], rows), self.bits, int(params["group_size"]))

    def dequantize(self, parts, shape, params, rows=None) -> np.ndarray:
        group = int(params["group_size"])
        q = self.unpack(parts, shape, params, rows).astype(np.float32)
        if self.bits == 1:
            q = q * np.float32(2) - np.float32(1)
        n = q.shape[0]
        v = (q - np.float32(params["zero"])).reshape(n, -1, group)
        w = v * select_rows(parts["scales"], rows).astype(np.float32)[..., None]
        if params["has_min"]:
            w = w + select_rows(parts["mins"], rows).astype(np.float32)[..., None]
        return w.reshape(n, -1)


Q1F = AffineEncoding(1)
Q2F = AffineEncoding(2)
Q4F = AffineEncoding(4)
