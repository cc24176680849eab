"""OneBit: sign bit-planes with f16 value vectors (SPEC.md 2.6).

    x' = g ⊙ x, then int8 per token as BitNet activations (x_q, s; `ternary.quantize_into`)
    y[r] = h[r] · (2 · Σ_{i: S[r,i]=+1} x_q[i] − Σ_i x_q[i]) / s

Byte k of a row holds bit j = sign of weight k + j·Q, so stream j walks consecutive bytes against
the contiguous slice x_q[jQ:(j+1)Q]; `simd.dot_b1` unpacks 32 bytes into eight 0/1 byte vectors
and runs `vpmaddubsw` on each (the ternary kernel's trick with one bit per weight: 256 weights per
eight instructions). Quantising the activation costs ~1/127 of max|x'| per element and made the
kernel ~3× faster than the float select-and-add it replaced. The parameter-free LayerNorm of
OneBit students is applied by the caller (`matvec.finish`, `linear`). g and h arrive as raw f16
bits (u16).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings import ONEBIT
from lowbit.runtime.kernels.common import ROW_BLOCK
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel
from lowbit.runtime.kernels.simd import dot_b1
from lowbit.runtime.kernels.ternary import quantize_activation_ref, quantize_into, quantize_tokens

f32 = np.float32
i32 = np.int32
PAD = 32  # activation bytes past 8Q that `simd.dot_b1`'s last vector step may read


@helper
def scaled_input(x, g, n_p):
    """x' = g ⊙ x (float32 [n]) quantised per token: (x_q int8 [n_p + PAD] zero-padded, Σ x_q,
    1/s)."""
    n = x.shape[0]
    xg = np.empty(n, dtype=np.float32)
    for k in range(n):
        xg[k] = f16_to_f32(g[k]) * x[k]
    xq = np.zeros(n_p + PAD, dtype=np.int8)
    off, s = quantize_into(xg, xq)
    return xq, off, f32(1.0) / s


@helper
def row_value(signs_row, xq, off, h_r, inv, tail):
    """h · (2 Σ_{bit set} x_q − Σ x_q) / s for one row (tail: `simd.dot_b1` scratch)."""
    return f32(2 * dot_b1(signs_row, xq, tail) - off) * (h_r * inv)


@kernel
def onebit_prefill(x, signs, g, h, y):
    """x f32 [T, in]; signs u8 [out, Q]; g u16 [in], h u16 [out] (f16 bits); y f32 [T, out]."""
    out, q = signs.shape
    t_count, n = x.shape
    xg = np.zeros((t_count, n), dtype=np.float32)
    for t in prange(t_count):
        for k in range(n):
            xg[t, k] = f16_to_f32(g[k]) * x[t, k]
    xq, xsum, s = quantize_tokens(xg, q * 8 + PAD)
    nblocks = (out + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(nblocks):
        r0 = b * ROW_BLOCK
        r1 = min(out, r0 + ROW_BLOCK)
        tail = np.zeros(PAD, dtype=np.uint8)
        for t in range(t_count):
            inv = f32(1.0) / s[t]  # as scaled_input: the same float steps as decode
            for r in range(r0, r1):
                y[t, r] = row_value(signs[r], xq[t], xsum[t], f16_to_f32(h[r]), inv, tail)


def onebit_ref(x: np.ndarray, signs: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x [T, in] -> [T, out] (without the optional LayerNorm): g ⊙ x in float32, quantised per
    token to int8 as the kernels do, times the encoding's own unpacked signs in exact integers."""
    gf = g.view(np.float16).astype(np.float32)
    xq, s = quantize_activation_ref(np.asarray(x, np.float32) * gf)
    parts = {"signs": signs, "g": g.view(np.float16), "h": h.view(np.float16)}
    shape = (signs.shape[0], g.shape[0])
    sign = ONEBIT.unpack(parts, shape, {"layernorm": False}).astype(np.int64)
    acc = xq.astype(np.int64) @ sign.T
    hf = h.view(np.float16).astype(np.float32)
    return acc.astype(np.float32) * (hf[None, :] / s[:, None])
