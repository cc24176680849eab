"""The flat table `kernels.decode_step` reads a model's layers from.

A decode step runs every layer inside one numba call, so the layers' arrays must reach numba in
a form that is cheap to pass and quick to type. Tuples of ~40 arrays per layer in a typed list
cost seconds of uncached compilation at every start; instead each array is described by four
integers (buffer, byte offset, rows, bytes per row) into one of two uint8 buffers:

- buffer 0: the memory-mapped file itself (weights stay packed and mapped, nothing is copied);
- buffer 1: a small side arena for arrays that are not views into the file (norms and biases
  converted to float32, parts of in-memory tensors).

Table row per layer: one entry per norm and linear, each the descriptor's kind, group and flags,
then the specs of its arrays; `kernels.table_layout` names the entries and fields, and
`kernels.matvec` says what a..d hold per encoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.runtime.kernels import table_layout as tl
from lowbit.runtime.kernels.table_layout import ENTRY, ROW, SPEC

ALIGN = 64


class _Buffers:
    """Locates arrays in the mapped file, or copies them into the side arena."""

    def __init__(self, file_buffer: np.ndarray | None) -> None:
        self.file = file_buffer
        self.base = file_buffer.__array_interface__["data"][0] if file_buffer is not None else 0
        self.side: list[np.ndarray] = []
        self.side_size = 0

    def spec(self, a: np.ndarray) -> tuple[int, int, int, int]:
        a2 = a.reshape(1, -1) if a.ndim != 2 else a
        rows, row_bytes = a2.shape[0], a2.shape[1] * a2.itemsize
        if a.size == 0:
            return (1, 0, rows, 0)
        if self.file is not None and a.flags.c_contiguous:
            off = a.__array_interface__["data"][0] - self.base
            if 0 <= off and off + a.nbytes <= self.file.nbytes:
                return (0, off, rows, row_bytes)
        off = self.side_size
        self.side.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        self.side_size += -(-a.nbytes // ALIGN) * ALIGN
        return (1, off, rows, row_bytes)

    def arena(self) -> np.ndarray:
        out = np.zeros(max(self.side_size, ALIGN), dtype=np.uint8)
        pos = 0
        for chunk in self.side:
            out[pos : pos + chunk.size] = chunk
            pos += -(-chunk.size // ALIGN) * ALIGN
        out.flags.writeable = False
        return out


def build_decode_table(blocks: list[Any], file_buffer: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(file buffer, side arena, table int64 [layers, ROW, ENTRY]) for `decode_layers`, or None
    when some linear layer has no descriptor (a custom class): decode then runs block by block."""
    buffers = _Buffers(file_buffer)
    table = np.zeros((len(blocks), ROW, ENTRY), dtype=np.int64)
    for i, b in enumerate(blocks):
        a, m = b.attn, b.mlp
        norms = {
            tl.INPUT_NORM: b.input_norm, tl.POST_NORM: b.post_norm, tl.ATTN_SUB_NORM: a.sub_norm,
            tl.MLP_SUB_NORM: m.sub_norm, tl.Q_NORM: getattr(a, "q_norm", None),
            tl.K_NORM: getattr(a, "k_norm", None), tl.ATTN_OUT_NORM: getattr(b, "attn_output_norm", None),
            tl.MLP_OUT_NORM: getattr(b, "mlp_output_norm", None),
        }  # fmt: skip
        for j, norm in norms.items():
            if norm is not None:
                table[i, j, tl.NORM : tl.NORM + SPEC] = buffers.spec(np.ascontiguousarray(norm, dtype=np.float32))
            else:
                table[i, j, tl.NORM : tl.NORM + SPEC] = (1, 0, 1, 0)
        linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
        for j, lin in zip(tl.LINEARS, linears, strict=True):
            desc = getattr(lin, "descriptor", None)
            if desc is None:
                return None
            kind, a_, b_, c_, d_, bias, group, flags = desc
            table[i, j, [tl.KIND, tl.GROUP, tl.FLAGS]] = (kind, group, flags)
            norm = getattr(lin, "input_norm", None)
            own = np.ascontiguousarray(norm, dtype=np.float32) if norm is not None else np.zeros(0, np.float32)
            arrays = {tl.A: a_, tl.B: b_, tl.C: c_, tl.D: d_, tl.BIAS: bias, tl.IN_NORM: own}
            for at, arr in arrays.items():
                table[i, j, at : at + SPEC] = buffers.spec(arr)
    if not len(blocks):
        return None
    file = file_buffer if file_buffer is not None else np.zeros(ALIGN, np.uint8)
    file = file.view()
    file.flags.writeable = False
    return file, buffers.arena(), table
