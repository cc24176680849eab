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
padded weights are exactly 0 either way). Decode runs one `simd.row_dot_q{b}` per row (vector IR:
per-group products in <8 x float> accumulators, scaled into the row with one FMA per group, one
horizontal sum per row). Prefill dequantises a block of rows once into float32 scratch and
multiplies it with all T tokens. float32 activations and accumulation.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings import Q2, Q3, Q4
from lowbit.runtime.kernels.common import ROW_BLOCK, rows_times_tokens
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel

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
