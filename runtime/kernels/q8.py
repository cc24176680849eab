"""q8: symmetric int8 codes with one f16 scale per group of G weights, or per row (SPEC.md 2.2),
times int8 activations in blocks of 32 (llama.cpp's Q8_0 × Q8_0 dot product).

Activations, per token and per block b of 32 (zero-padded to whole blocks):

    d[b] = max|x_b| / 127,    x_q = rint(x · 127 / max|x_b|)      (0 for an all-zero block)

    y[r] = Σ_g scale[r, g] · Σ_{b in g} d[b] · Σ_{k in b} code[r, k] · x_q[k]

so the inner product is integer (`simd.dot_q8`: |c| × sign(x, c) in `vpmaddubsw`), with one
convert and one FMA per 32 weights. Measured on SmolLM2's 49152×576 tied head: 2× the float
kernel it replaced. The activation error per block is ≤ d/2 (KL against float activations on
SmolLM2's head: ~6e-4, against ~5e-3 for one scale per token). G is the effective group length
(`group_size`, a multiple of 32, or `in` when group_size is 0); the last group of a row may be
short (codes are not padded). Scales arrive as raw f16 bits (u16).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings import Q8
from lowbit.runtime.kernels.common import ROW_BLOCK
from lowbit.runtime.kernels.jit import exact, f16_to_f32, helper, kernel
from lowbit.runtime.kernels.simd import dot_q8

BLOCK = 32
f32 = np.float32
i32 = np.int32


def blocks_of(n: int) -> int:
    return -(-n // BLOCK)


@exact
def quantize_blocks_into(x, xq, d):
    """x float32 [n] -> xq int8 [>= 32·nb] (zero-filled by the caller), d float32 [nb]."""
    n = x.shape[0]
    for b in range(d.shape[0]):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        m = f32(0.0)
        for k in range(lo, hi):
            m = max(m, abs(x[k]))
        d[b] = m / f32(127.0)
        inv = f32(127.0) / m if m > f32(0.0) else f32(0.0)
        for k in range(lo, hi):
            xq[k] = np.int8(min(max(np.rint(x[k] * inv), f32(-127.0)), f32(127.0)))


@helper
def q8_row(codes, xq, d, scales, group):
    """One row: codes int8 [in], xq int8 [>= in], d float32 [nb], scales u16 [ng]."""
    n = codes.shape[0]
    acc = f32(0.0)
    for g in range(scales.shape[0]):
        lo = g * group
        m = min(group, n - lo)
        full = m // BLOCK * BLOCK
        b0 = lo // BLOCK
        v = dot_q8(codes[lo : lo + full], xq[lo : lo + full], d[b0 : b0 + full // BLOCK])
        if full < m:  # the row's last, partial block
            s = i32(0)
            for k in range(lo + full, lo + m):
                s += i32(codes[k]) * i32(xq[k])
            v += f32(s) * d[(lo + full) // BLOCK]
        acc += f16_to_f32(scales[g]) * v
    return acc


@kernel
def q8_prefill(x, codes, scales, group, y):
    """x f32 [T, in], codes i8 [out, in], scales u16 [out, ng], y f32 [T, out]."""
    out, n = codes.shape
    t_count = x.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    xq = np.zeros((t_count, nb * BLOCK), dtype=np.int8)
    d = np.empty((t_count, nb), dtype=np.float32)
    for t in prange(t_count):
        quantize_blocks_into(x[t], xq[t], d[t])
    nblocks = (out + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(nblocks):
        r0 = b * ROW_BLOCK
        r1 = min(out, r0 + ROW_BLOCK)
        for t in range(t_count):
            for r in range(r0, r1):
                y[t, r] = q8_row(codes[r], xq[t], d[t], scales[r], group)


# -- numpy references -------------------------------------------------------------------------


def q8_activation_ref(x: np.ndarray) -> np.ndarray:
    """x float32 [T, n] -> the activation the kernels multiply, d[b] · x_q, as float64."""
    x = np.asarray(x, np.float32)
    t, n = x.shape
    nb = blocks_of(n)
    xb = np.zeros((t, nb * BLOCK), np.float32)
    xb[:, :n] = x
    xb = xb.reshape(t, nb, BLOCK)
    m = np.abs(xb).max(axis=-1, keepdims=True)
    d = m / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(m > 0, np.float32(127.0) / m, np.float32(0.0)).astype(np.float32)
    xq = np.clip(np.rint(xb * inv), -127, 127)
    return (xq.astype(np.float64) * d.astype(np.float64)).reshape(t, -1)[:, :n]


def q8_ref(x: np.ndarray, codes: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """x [T, in] -> [T, out]; scales as f16 (or their u16 bits); group_size as in params."""
    parts = {"codes": codes, "scales": scales.view(np.float16)}
    w = Q8.dequantize(parts, codes.shape, {"group_size": group_size})
    return (q8_activation_ref(x) @ w.astype(np.float64).T).astype(np.float32)
