"""q2 / q3 / q4: grouped asymmetric integers with 8-bit group scales under an f16 row scale.

    Ŵ[r, i] = row_scale[r] · sq[r, g] · (q[r, i] − z[r, g]),   g = i // G

Inside each group the b-bit fields are interleaved in streams (SPEC.md 2.3) so that a kernel
unpacks consecutive bytes with one shift and mask per stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.constants import ceil_div
from lowbit.formats.encodings.base import (
    BitWidthEncoding,
    EncodedTensor,
    PartSpecs,
    Shape,
    select_rows,
)

GROUP_SIZES = (32, 64, 128)


def pack_groups(q: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Pack codes q[out, ng*G] (u8) into the stream layout: [out, ng * G*bits/8] bytes."""
    out, n = q.shape
    ng = n // group
    qg = q.reshape(out, ng, group).astype(np.uint8)
    if bits == 4:
        half = group // 2
        packed = qg[..., :half] | (qg[..., half:] << 4)
    elif bits == 2:
        packed = _pack2(qg)
    elif bits == 3:
        low = _pack2(qg & 3)
        high = ((qg >> 2) & 1).reshape(out, ng, 8, group // 8)
        planes = np.zeros((out, ng, group // 8), dtype=np.uint8)
        for k in range(8):
            planes |= high[:, :, k, :] << k
        packed = np.concatenate([low, planes], axis=-1)
    else:
        raise ValueError(f"bits={bits}")
    return np.ascontiguousarray(packed.reshape(out, -1), dtype=np.uint8)


def _pack2(qg: np.ndarray) -> np.ndarray:
    out, ng, group = qg.shape
    streams = qg.reshape(out, ng, 4, group // 4)
    packed = np.zeros((out, ng, group // 4), dtype=np.uint8)
    for k in range(4):
        packed |= streams[:, :, k, :] << (2 * k)
    return packed


def _unpack2(b: np.ndarray) -> np.ndarray:
    """[..., G/4] bytes -> [..., G] codes (stream k = bits 2k..2k+1)."""
    return np.concatenate([(b >> (2 * k)) & 3 for k in range(4)], axis=-1)


def unpack_groups(codes: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Inverse of pack_groups: [rows, ng * G*bits/8] -> [rows, ng*G] u8 codes."""
    rows = codes.shape[0]
    per_group = group * bits // 8
    cg = codes.reshape(rows, -1, per_group)
    if bits == 4:
        q = np.concatenate([cg & 15, cg >> 4], axis=-1)
    elif bits == 2:
        q = _unpack2(cg)
    else:
        low = _unpack2(cg[..., : group // 4])
        planes = cg[..., group // 4 :]
        high = np.concatenate([(planes >> k) & 1 for k in range(8)], axis=-1)
        q = low | (high << 2)
    return q.reshape(rows, -1)


class GroupedEncoding(BitWidthEncoding):
    family = "grouped"

    def check(self, shape: Shape, params: dict[str, Any]) -> None:
        super().check(shape, params)
        self.require_group_size(params, GROUP_SIZES)

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        out, n_in = shape
        group = int(params["group_size"])
        ng = ceil_div(n_in, group)
        return {
            "codes": ("u8", (out, ng * group * self.bits // 8)),
            "scales": ("u8", (out, ng)),
            "zeros": ("u8", (out, ng)),
            "row_scale": ("f16", (out,)),
        }

    def pack(
        self, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, row_scale: np.ndarray, group_size: int
    ) -> EncodedTensor:
        """Pack logical codes q[out, in], integer group scales/zeros [out, ng] and row_scale[out]."""
        out, n_in = q.shape
        ng = ceil_div(n_in, group_size)
        padded = np.repeat(zeros.astype(np.uint8), group_size, axis=1)  # padding dequantises to 0
        padded[:, :n_in] = q
        parts = {
            "codes": pack_groups(padded, self.bits, group_size),
            "scales": scales.astype(np.uint8).reshape(out, ng),
            "zeros": zeros.astype(np.uint8).reshape(out, ng),
            "row_scale": row_scale.astype(np.float16).reshape(out),
        }
        return self.make((out, n_in), {"group_size": int(group_size)}, parts)

    def unpack(self, parts, shape, params, rows=None) -> np.ndarray:
        """Logical codes q[rows, in]."""
        group = int(params["group_size"])
        q = unpack_groups(select_rows(parts["codes"], rows), self.bits, group)
        return q[:, : shape[1]]

    def dequantize(self, parts, shape, params, rows=None) -> np.ndarray:
        group = int(params["group_size"])
        n_in = shape[1]
        q = unpack_groups(select_rows(parts["codes"], rows), self.bits, group).astype(np.float32)
        scales = select_rows(parts["scales"], rows).astype(np.float32)
        zeros = select_rows(parts["zeros"], rows).astype(np.float32)
        row_scale = select_rows(parts["row_scale"], rows).astype(np.float32)
        step = row_scale[:, None] * scales  # [rows, ng]
        w = (q.reshape(q.shape[0], -1, group) - zeros[..., None]) * step[..., None]
        return w.reshape(q.shape[0], -1)[:, :n_in]


Q2 = GroupedEncoding(2)
Q3 = GroupedEncoding(3)
Q4 = GroupedEncoding(4)
