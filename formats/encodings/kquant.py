"""q4k: GGUF's Q4_K grid held exactly (SPEC.md 2.8): 4-bit codes in groups of 32, each group with
an 8-bit sub-scale and sub-minimum under one f16 scale and one f16 minimum per super-block of
eight groups (256 weights):

    Ŵ[r, i] = (d[r, s] · sc[r, g]) · q[r, i] − (dmin[r, s] · m[r, g]),   g = i // 32, s = g // 8

evaluated in float32 as ggml does: both products are exact (an f16 times an integer < 256), so Ŵ
has one rounding, in the subtraction, and equals gguf's dequantisation bit for bit. q4f cannot
hold this grid: d · sc is not an f16. Codes are laid out as q4f G = 32 (per group 16 bytes, byte
j = weight j in the low nibble, weight j + 16 in the high one), so the q4f int8 dot serves it;
the sub-scales are stored one per byte (ggml packs them in 6 bits: 4.625 bpw here, 4.5 there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.encodings.affine import pack_codes, unpack_codes
from lowbit.formats.encodings.base import (
    EncodedTensor,
    Encoding,
    PartSpecs,
    Shape,
    select_rows,
)

GROUP = 32  # weights per sub-block
SUPER = 8  # sub-blocks per super-block (QK_K = 256)


class Q4KEncoding(Encoding):
    name = "q4k"
    family = "kquant"

    def check(self, shape: Shape, params: dict[str, Any]) -> None:
        super().check(shape, params)
        self.require(params.get("group_size") == GROUP, f"group_size must be {GROUP}, got {params.get('group_size')!r}")
        self.require(params.get("super_group") == SUPER, f"super_group must be {SUPER}, got {params.get('super_group')!r}")
        self.require(shape[1] % (GROUP * SUPER) == 0, f"{shape[1]} inputs is not a multiple of {GROUP * SUPER}")

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        out, n_in = shape
        ng = n_in // GROUP
        return {
            "codes": ("u8", (out, n_in // 2)),
            "sub_scales": ("u8", (out, ng)),
            "sub_mins": ("u8", (out, ng)),
            "super": ("f16", (out, 2 * (ng // SUPER))),  # (d, dmin) per super-block
        }

    def pack(self, q: np.ndarray, sub_scales: np.ndarray, sub_mins: np.ndarray, d: np.ndarray,
             dmin: np.ndarray) -> EncodedTensor:
        """Codes q [out, in] (u8 < 16), sub-scales / sub-minimums [out, in / 32] (u8), d / dmin
        [out, in / 256] (f16)."""
        out, n_in = q.shape
        sup = np.stack([np.asarray(d, np.float16), np.asarray(dmin, np.float16)], axis=-1).reshape(out, -1)
        parts = {
            "codes": pack_codes(q, 4, GROUP),
            "sub_scales": np.asarray(sub_scales, np.uint8).reshape(out, -1),
            "sub_mins": np.asarray(sub_mins, np.uint8).reshape(out, -1),
            "super": sup,
        }
        return self.make((out, n_in), {"group_size": GROUP, "super_group": SUPER}, parts)

    def unpack(self, parts, shape, params, rows=None) -> np.ndarray:
        """Codes q [rows, in] (u8)."""
        return unpack_codes(select_rows(parts["codes"], rows), 4, GROUP)

    def group_affine(self, parts, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """Per group the float32 step d · sc and offset dmin · m [rows, ng] (both exact)."""
        sup = select_rows(parts["super"], rows).astype(np.float32)
        n = sup.shape[0]
        d = np.repeat(sup[:, 0::2], SUPER, axis=1)
        dmin = np.repeat(sup[:, 1::2], SUPER, axis=1)
        step = d * select_rows(parts["sub_scales"], rows).astype(np.float32)
        offset = dmin * select_rows(parts["sub_mins"], rows).astype(np.float32)
        return step.reshape(n, -1), offset.reshape(n, -1)

    def dequantize(self, parts, shape, params, rows=None) -> np.ndarray:
        q = self.unpack(parts, shape, params, rows).astype(np.float32)
        n = q.shape[0]
        step, offset = self.group_affine(parts, rows)
        w = step[..., None] * q.reshape(n, -1, GROUP) - offset[..., None]
        return w.reshape(n, -1)


Q4K = Q4KEncoding()
