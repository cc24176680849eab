"""Dense weights: f32, f16 and bf16 (SPEC.md 2.1), float32 activations and accumulation.

f16 and bf16 weights arrive as their raw u16 bits (numba has no float16) and are converted in
the inner loop (`vcvtph2ps` for f16; a shift for bf16), never upcast to a float copy.

    decode:  y[r]    = Σ_k W[r, k] x[k]          x [in],    y [out]
    prefill: y[t, r] = Σ_k W[r, k] x[t, k]       x [T, in], y [T, out]

Prefill converts a block of rows once into per-thread float32 scratch (f16, bf16) and multiplies
it with all T tokens.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings import BF16, F16, F32
from lowbit.runtime.kernels.common import ROW_BLOCK, row_block, row_blocks, rows_times_tokens
from lowbit.runtime.kernels.jit import bf16_to_f32, f16_to_f32, helper, kernel


@kernel
def f32_prefill(x, w, y):
    """x f32 [T, in], w f32 [out, in], y f32 [T, out]."""
    out = w.shape[0]
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        rows_times_tokens(w[r0 : r0 + nr], nr, x, y, r0)


@helper
def _half_prefill(x, w, y, bf16):
    """f16 or bf16 rows (u16 bits; `bf16` a constant of the caller, folded after inlining)."""
    out, n = w.shape
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        scratch = np.empty((ROW_BLOCK, n), dtype=np.float32)
        for i in range(nr):
            src = w[r0 + i]
            dst = scratch[i]
            for k in range(n):
                dst[k] = bf16_to_f32(src[k]) if bf16 else f16_to_f32(src[k])
        rows_times_tokens(scratch, nr, x, y, r0)


@kernel
def f16_prefill(x, w, y):
    """x f32 [T, in], w u16 [out, in] (f16 bits), y f32 [T, out]."""
    _half_prefill(x, w, y, False)


@kernel
def bf16_prefill(x, w, y):
    """x f32 [T, in], w u16 [out, in] (bf16 bits), y f32 [T, out]."""
    _half_prefill(x, w, y, True)


# -- numpy references (the test oracle) -------------------------------------------------------


def f32_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [T, in] -> [T, out]."""
    return _matmul(x, F32.dequantize({"data": w}, w.shape, {}))


def f16_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """w: the f16 part (float16, or its u16 bits)."""
    w = w.view(np.float16)
    return _matmul(x, F16.dequantize({"data": w}, w.shape, {}))


def bf16_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _matmul(x, BF16.dequantize({"data": w}, w.shape, {}))


def _matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T).astype(np.float32)


def entry_ref(x: np.ndarray, entry) -> np.ndarray:
    """x [T, in] -> [T, out] for a dense tensor entry (`.encoding, .parts`)."""
    ref = {"f32": f32_ref, "f16": f16_ref, "bf16": bf16_ref}[entry.encoding]
    return ref(x, entry.parts["data"])
