"""Ternary weights {-1, 0, +1} × scale: 2-bit codes (4 per byte) or base-3 (5 per byte).

Both layouts are whole-row streams (SPEC.md 2.4, 2.5): byte k of a row holds the trits at
k, k+Q, k+2Q, ... so that a kernel walks each stream over consecutive bytes against a contiguous
activation slice. Codes are unsigned (t + 1); kernels remove the offset with the activation sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.constants import ceil_div
from lowbit.formats.encodings.base import EncodedTensor, Encoding, PartSpecs, Shape, select_rows

SCALE_MODES = ("tensor", "row")


class TernaryEncoding(Encoding):
    family = "ternary"

    def __init__(self, name: str, trits_per_byte: int, row_block: int) -> None:
        self.name = name
        self.trits_per_byte = trits_per_byte
        self.row_block = row_block  # rows are padded to a multiple of this

    def padded_in(self, n_in: int) -> int:
        return ceil_div(n_in, self.row_block) * self.row_block

    def check(self, shape: Shape, params: dict[str, Any]) -> None:
        super().check(shape, params)
        self.require(params.get("scale_mode") in SCALE_MODES, f"scale_mode must be one of {SCALE_MODES}")

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        out, n_in = shape
        n_scale = 1 if params["scale_mode"] == "tensor" else out
        return {
            "codes": ("u8", (out, self.padded_in(n_in) // self.trits_per_byte)),
            "scale": ("f32", (n_scale,)),
        }

    def pack(self, trits: np.ndarray, scale: np.ndarray) -> EncodedTensor:
        """Pack trits[out, in] in {-1, 0, 1} with scale of shape [1] (tensor) or [out] (row)."""
        out, n_in = trits.shape
        scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        mode = "tensor" if scale.size == 1 else "row"
        codes = np.ones((out, self.padded_in(n_in)), dtype=np.uint8)
        codes[:, :n_in] = (trits + 1).astype(np.uint8)
        streams = codes.reshape(out, self.trits_per_byte, -1)
        packed = np.zeros(streams[:, 0, :].shape, dtype=np.uint8)
        for j in range(self.trits_per_byte):
            if self.trits_per_byte == 4:
                packed |= streams[:, j, :] << (2 * j)
            else:
                packed += streams[:, j, :] * np.uint8(3**j)
        return self.make((out, n_in), {"scale_mode": mode}, {"codes": packed, "scale": scale})

    def unpack(self, parts, shape, params, rows=None) -> np.ndarray:
        """Trits [rows, in] as int8."""
        codes = select_rows(parts["codes"], rows)
        if self.trits_per_byte == 4:
            streams = [(codes >> (2 * j)) & 3 for j in range(4)]
        else:
            streams = [(codes // np.uint8(3**j)) % 3 for j in range(5)]
        trits = np.concatenate(streams, axis=-1).astype(np.int8) - 1
        return trits[:, : shape[1]]

    def dequantize(self, parts, shape, params, rows=None) -> np.ndarray:
        trits = self.unpack(parts, shape, params, rows).astype(np.float32)
        scale = parts["scale"].astype(np.float32)
        if params["scale_mode"] == "row":
            return trits * select_rows(scale, rows)[:, None]
        return trits * scale[0]


TERNARY = TernaryEncoding("ternary", 4, 128)
TERNARY_1P6 = TernaryEncoding("ternary-1.6", 5, 160)
