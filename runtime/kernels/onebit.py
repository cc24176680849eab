"""OneBit: sign bit-planes with f16 value vectors (SPEC.md 2.6).

    x' = g ⊙ x                       (once per token, zero-padded to in_p = Q · 8)
    y[r] = h[r] · (2 · Σ_{i: S[r,i]=+1} x'[i] − Σ_i x'[i])

The inner loop has no multiplication: it selects x' where the sign bit is set and adds. Byte k of
a row holds bit j = sign of weight k + j·Q, so stream j walks consecutive bytes against the
contiguous slice x'[jQ:(j+1)Q]. The parameter-free LayerNorm of OneBit students is applied by
the caller (`lowbit.runtime.linear`). g and h arrive as raw f16 bits (u16).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings import ONEBIT
from lowbit.runtime.kernels.common import ROW_BLOCK
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel

f32 = np.float32
i32 = np.int32


@helper
def scaled_input(x, g, n_p):
    """x' = g ⊙ x padded to n_p, and its sum."""
    n = x.shape[0]
    xg = np.zeros(n_p, dtype=np.float32)
    tot = f32(0.0)
    for k in range(n):
        v = f16_to_f32(g[k]) * x[k]
        xg[k] = v
        tot += v
    return xg, tot


@helper
def select_sum(c, xg):
    """Σ over set bits: Σ_j Σ_k bit_j(c[k]) · xg[jQ + k] (selects, no multiplications).

    Bit j is shifted into the sign of an int32 (`b << 31 - j < 0`), which x86 turns into
    vpslld + vblendvps; the activations are loaded before the select, as a conditional load
    would become a slow masked load (vmaskmovps).
    """
    q = c.shape[0]
    x0 = xg[:q]
    x1 = xg[q : 2 * q]
    x2 = xg[2 * q : 3 * q]
    x3 = xg[3 * q : 4 * q]
    x4 = xg[4 * q : 5 * q]
    x5 = xg[5 * q : 6 * q]
    x6 = xg[6 * q : 7 * q]
    x7 = xg[7 * q : 8 * q]
    zero = f32(0.0)
    s = f32(0.0)
    for k in range(q):
        b = i32(c[k])
        a0 = x0[k]
        a1 = x1[k]
        a2 = x2[k]
        a3 = x3[k]
        a4 = x4[k]
        a5 = x5[k]
        a6 = x6[k]
        a7 = x7[k]
        s += (
            (a0 if i32(b << 31) < 0 else zero)
            + (a1 if i32(b << 30) < 0 else zero)
            + (a2 if i32(b << 29) < 0 else zero)
            + (a3 if i32(b << 28) < 0 else zero)
            + (a4 if i32(b << 27) < 0 else zero)
            + (a5 if i32(b << 26) < 0 else zero)
            + (a6 if i32(b << 25) < 0 else zero)
            + (a7 if i32(b << 24) < 0 else zero)
        )
    return s


@helper
def _unpack_bits(c, dst, n):
    """Sign bits of one row -> dst u8 [>= n] (1 = +1) in natural order."""
    q = c.shape[0]
    for j in range(8):
        lo = j * q
        if lo >= n:
            break
        m = min(q, n - lo)
        d = dst[lo : lo + m]
        for k in range(m):
            d[k] = (c[k] >> j) & 1


@helper
def _bits_times_tokens(bb, nr, xg, tot, h, y, r0):
    """y[t, r0+i] = h · (2 Σ_{bit} xg[t] − tot[t]): selects only, four rows × two tokens."""
    t_count, n = xg.shape
    zero = f32(0.0)
    two = f32(2.0)
    i = 0
    while i + 4 <= nr:
        b0 = bb[i]
        b1 = bb[i + 1]
        b2 = bb[i + 2]
        b3 = bb[i + 3]
        h0 = f16_to_f32(h[r0 + i])
        h1 = f16_to_f32(h[r0 + i + 1])
        h2 = f16_to_f32(h[r0 + i + 2])
        h3 = f16_to_f32(h[r0 + i + 3])
        t = 0
        while t < t_count:
            tb = min(
                t + 1, t_count - 1
            )  # the second token of the pair (the last one twice at the end)
            xa = xg[t]
            xb = xg[tb]
            a0 = f32(0.0)
            a1 = f32(0.0)
            a2 = f32(0.0)
            a3 = f32(0.0)
            c0 = f32(0.0)
            c1 = f32(0.0)
            c2 = f32(0.0)
            c3 = f32(0.0)
            for k in range(n):
                u = xa[k]
                v = xb[k]
                m0 = b0[k] != 0
                m1 = b1[k] != 0
                m2 = b2[k] != 0
                m3 = b3[k] != 0
                a0 += u if m0 else zero
                a1 += u if m1 else zero
                a2 += u if m2 else zero
                a3 += u if m3 else zero
                c0 += v if m0 else zero
                c1 += v if m1 else zero
                c2 += v if m2 else zero
                c3 += v if m3 else zero
            y[t, r0 + i] = h0 * (two * a0 - tot[t])
            y[t, r0 + i + 1] = h1 * (two * a1 - tot[t])
            y[t, r0 + i + 2] = h2 * (two * a2 - tot[t])
            y[t, r0 + i + 3] = h3 * (two * a3 - tot[t])
            y[tb, r0 + i] = h0 * (two * c0 - tot[tb])
            y[tb, r0 + i + 1] = h1 * (two * c1 - tot[tb])
            y[tb, r0 + i + 2] = h2 * (two * c2 - tot[tb])
            y[tb, r0 + i + 3] = h3 * (two * c3 - tot[tb])
            t += 2
        i += 4
    while i < nr:
        bi = bb[i]
        hi = f16_to_f32(h[r0 + i])
        for t in range(t_count):
            xt = xg[t]
            s = f32(0.0)
            for k in range(n):
                v = xt[k]
                s += v if bi[k] != 0 else zero
            y[t, r0 + i] = hi * (two * s - tot[t])
        i += 1


@kernel
def onebit_prefill(x, signs, g, h, y):
    """x f32 [T, in]; signs, g, h as onebit_prefill docs; y f32 [T, out]."""
    out = signs.shape[0]
    t_count, n = x.shape
    xg = np.empty((t_count, n), dtype=np.float32)
    tot = np.empty(t_count, dtype=np.float32)
    for t in prange(t_count):
        s = f32(0.0)
        for k in range(n):
            v = f16_to_f32(g[k]) * x[t, k]
            xg[t, k] = v
            s += v
        tot[t] = s
    nblocks = (out + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(nblocks):
        r0 = b * ROW_BLOCK
        nr = min(ROW_BLOCK, out - r0)
        bb = np.empty((ROW_BLOCK, n), dtype=np.uint8)
        for i in range(nr):
            _unpack_bits(signs[r0 + i], bb[i], n)
        _bits_times_tokens(bb, nr, xg, tot, h, y, r0)


def onebit_ref(x: np.ndarray, signs: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x [T, in] -> [T, out] (without the optional LayerNorm) via the encoding's dequantize()."""
    parts = {"signs": signs, "g": g.view(np.float16), "h": h.view(np.float16)}
    w = ONEBIT.dequantize(parts, (signs.shape[0], g.shape[0]), {"layernorm": False})
    return (np.asarray(x, np.float64) @ w.astype(np.float64).T).astype(np.float32)
