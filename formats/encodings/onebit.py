"""OneBit: 1-bit sign planes with f16 value vectors, Ŵ = h gᵀ ⊙ sign(W) (SPEC.md 2.6).

The layer computes y = h ⊙ (S (g ⊙ x)) — never materialising Ŵ — optionally followed by a
parameter-free LayerNorm for models trained as OneBit students.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.constants import ceil_div
from lowbit.formats.encodings.base import EncodedTensor, Encoding, PartSpecs, Shape, select_rows

ROW_BLOCK = 64  # rows padded to 64 bits


class OneBitEncoding(Encoding):
    family = "onebit"
    name = "onebit"

    def padded_in(self, n_in: int) -> int:
        return ceil_div(n_in, ROW_BLOCK) * ROW_BLOCK

    def check(self, shape: Shape, params: dict[str, Any]) -> None:
        super().check(shape, params)
        self.require(isinstance(params.get("layernorm"), bool), "params.layernorm must be a boolean")

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        out, n_in = shape
        return {
            "signs": ("u8", (out, self.padded_in(n_in) // 8)),
            "g": ("f16", (n_in,)),
            "h": ("f16", (out,)),
        }

    def pack(self, signs: np.ndarray, g: np.ndarray, h: np.ndarray, layernorm: bool = False) -> EncodedTensor:
        """Pack signs[out, in] (> 0 means +1), g[in], h[out]."""
        out, n_in = signs.shape
        bits = np.zeros((out, self.padded_in(n_in)), dtype=np.uint8)
        bits[:, :n_in] = signs > 0
        streams = bits.reshape(out, 8, -1)
        packed = np.zeros(streams[:, 0, :].shape, dtype=np.uint8)
        for j in range(8):
            packed |= streams[:, j, :] << j
        parts = {"signs": packed, "g": g.astype(np.float16), "h": h.astype(np.float16)}
        return self.make((out, n_in), {"layernorm": bool(layernorm)}, parts)

    def unpack(self, parts, shape, params, rows=None) -> np.ndarray:
        """Signs [rows, in] as int8 ±1."""
        b = select_rows(parts["signs"], rows)
        bits = np.concatenate([(b >> j) & 1 for j in range(8)], axis=-1)[:, : shape[1]]
        return bits.astype(np.int8) * 2 - 1

    def dequantize(self, parts, shape, params, rows=None) -> np.ndarray:
        s = self.unpack(parts, shape, params, rows).astype(np.float32)
        h = select_rows(parts["h"], rows).astype(np.float32)
        return h[:, None] * s * parts["g"].astype(np.float32)[None, :]


ONEBIT = OneBitEncoding()
