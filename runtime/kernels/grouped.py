"""q2 / q3 / q4: grouped asymmetric integers with 8-bit group scales (SPEC.md 2.3).

    Ŵ[r, i] = row_scale[r] · sq[r, g] · (q[r, i] − z[r, g]),    g = i // G
    y[r]    = row_scale[r] · Σ_g sq[r, g] · (Σ_{i in g} q[r, i] x[i]  −  z[r, g] · xs[g])

with the group sums of the activation xs[g] = Σ_{i in g} x[i] computed once per token and shared
by every row. Inside a group the codes are streams (byte j holds q[j + k·G/per]), so the inner
loop walks consecutive bytes against contiguous slices of x:

- q4: G/2 bytes; stream 0 = low nibbles vs x[0:G/2], stream 1 = high nibbles vs x[G/2:G];
- q2: G/4 bytes; stream k = bits 2k..2k+1 vs x[k·G/4 : (k+1)·G/4];
- q3: the q2 layout for the low two bits, then G/8 bytes whose bit k is bit 2 of
  q[j + k·G/8]: Σ q x = Σ low·x + 4 · Σ high·x.

The activation is padded with zeros to whole groups (padding codes equal the zero point, so the
padded weights are exactly 0 either way).

q4 decode runs on int8 activations with one scale per group (as llama.cpp's K-quants × Q8_K):
with x = d_g · x_q in group g, Σ q·x = Σ_g d_g Σ q·x_q sums a whole group in integers
(`simd.dot_q4_i8`: u4 × i8 `vpmaddubsw` or `vpdpbusd`, one convert and FMA per group), and the
zero-point term uses the group sums of the quantised activation, zsum[g]. (2B-shaped model, 2
threads: float activations 9.9 tok/s, int8 blocks of 32 16.7-17.9, int8 groups of 128 see
docs/benchmarks.md.) q2/q3 decode run one `simd.row_dot_q{b}`
per row (vector IR: per-group products in <8 x float> accumulators, scaled into the row with one
FMA per group, one horizontal sum per row). Prefill (all three) keeps float32 activations,
dequantises a block of rows once into scratch and multiplies it with all T tokens: that reuse
beat int8 per-token dot products by 2× (measured on SmolLM2 q4).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings import Q2, Q3, Q4
from lowbit.runtime.kernels.common import ROW_BLOCK, rows_times_tokens
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel
from lowbit.runtime.kernels.q8 import decode_activation_ref, quantize_runs_into
from lowbit.runtime.kernels.simd import dot_q4_i8

f32 = np.float32
i32 = np.int32


@helper
def group_sums(xp, group):
    ng = xp.shape[0] // group
    xs = np.empty(ng, dtype=np.float32)
    for g in range(ng):
        xg = xp[g * group : (g + 1) * group]
        s = f32(0.0)
        for k in range(group):
            s += xg[k]
        xs[g] = s
    return xs


# -- q4 on int8 activations ----------------------------------------------------------------


@helper
def quantize_groups(x, xq, d, zsum, group):
    """x float32 [n] -> int8 with one scale per group (xq [ng·G], zero-filled by the caller;
    d [ng]) and zsum[g] = d_g Σ_{k in g} x_q[k], the group sums of what the rows see."""
    quantize_runs_into(x, xq, d, group)
    for g in range(zsum.shape[0]):
        s = i32(0)
        for k in range(g * group, (g + 1) * group):
            s += i32(xq[k])
        zsum[g] = d[g] * f32(s)


@helper
def q4_row(codes, xq, d, zsum, scales, zeros, group):
    """Σ_g sq_g (d_g Σ q·x_q − z_g · zsum_g) for one row (times row_scale by the caller)."""
    zt = f32(0.0)
    for g in range(scales.shape[0]):
        zt += f32(scales[g]) * f32(zeros[g]) * zsum[g]
    return dot_q4_i8(codes, xq, d, scales, group) - zt


# -- prefill -------------------------------------------------------------------------------


@helper
def _unpack_row(bits, c, sc, zr, rs, group, dst):
    """Dequantise one row into dst [ng·G] float32."""
    ng = sc.shape[0]
    per = group * bits // 8
    for g in range(ng):
        step = rs * f32(sc[g])
        z = i32(zr[g])
        cg = c[g * per : (g + 1) * per]
        dg = dst[g * group : (g + 1) * group]
        if bits == 4:
            h = group // 2
            d0 = dg[:h]
            d1 = dg[h:]
            for j in range(h):
                b = i32(cg[j])
                d0[j] = step * f32(i32((b & 15) - z))
                d1[j] = step * f32(i32((b >> 4) - z))
        else:
            m = group // 4
            if bits == 3:
                hg = cg[m:]
                e = group // 8
                for k in range(8):
                    dk = dg[k * e : (k + 1) * e]
                    for j in range(e):
                        dk[j] = f32(i32(((hg[j] >> k) & 1) << 2))
            else:
                for j in range(group):
                    dg[j] = f32(0.0)
            for k in range(4):
                dk = dg[k * m : (k + 1) * m]
                for j in range(m):
                    q = dk[j] + f32(i32((cg[j] >> (2 * k)) & 3))
                    dk[j] = step * (q - f32(z))


@kernel
def grouped_prefill(x, codes, scales, zeros, row_scale, bits, group, y):
    """x f32 [T, in]; codes u8 [out, ng·G·b/8]; scales, zeros u8 [out, ng]; row_scale u16 [out]
    (f16 bits); bits b ∈ {2, 3, 4}; group G; y f32 [T, out]."""
    out, ng = scales.shape
    nblocks = (out + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(nblocks):
        r0 = b * ROW_BLOCK
        nr = min(ROW_BLOCK, out - r0)
        scratch = np.empty((ROW_BLOCK, ng * group), dtype=np.float32)
        for i in range(nr):
            r = r0 + i
            rs = f16_to_f32(row_scale[r])
            _unpack_row(bits, codes[r], scales[r], zeros[r], rs, group, scratch[i])
        rows_times_tokens(scratch, nr, x, y, r0)


def q4_ref(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, row_scale: np.ndarray,
    group: int, n_in: int,
) -> np.ndarray:
    """q4 as the kernels run it: the dequantised weights times the int8 activations with one
    scale per group (decode, T = 1) or the float32 activations (prefill)."""
    parts = {"codes": codes, "scales": scales, "zeros": zeros, "row_scale": row_scale.view(np.float16)}
    w = Q4.dequantize(parts, (codes.shape[0], n_in), {"group_size": group})
    return (decode_activation_ref(x, group) @ w.astype(np.float64).T).astype(np.float32)


def grouped_ref(
    x: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    row_scale: np.ndarray,
    bits: int,
    group: int,
    n_in: int,
) -> np.ndarray:
    """x [T, in] -> [T, out] through the encoding's own dequantize()."""
    enc = {2: Q2, 3: Q3, 4: Q4}[bits]
    parts = {
        "codes": codes,
        "scales": scales,
        "zeros": zeros,
        "row_scale": row_scale.view(np.float16),
    }
    w = enc.dequantize(parts, (codes.shape[0], n_in), {"group_size": group})
    return (np.asarray(x, np.float64) @ w.astype(np.float64).T).astype(np.float32)
