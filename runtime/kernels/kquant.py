"""q4k (GGUF's Q4_K, SPEC.md 2.8): decode and prefill kernels beside their numpy reference.

    y[r] = Σ_g (d_s sc_g) Σ_{i in g} q_i x_i − (dmin_s m_g) Σ_{i in g} x_i,   s = g // 8

Decode runs as llama.cpp runs Q4_K (against int8 activations, one scale per group of 32): the
codes have q4f's G = 32 layout, so the row is `affine.dot_q4f32_i8` on the pair-permuted int8
input with per-group factors (d_s sc_g) · xd_g, plus the minimum term over the quantised
input's group sums; the step and offset of each group come from the super-block's f16 d / dmin
and the u8 sub-scales in the row loop (a few multiplies per 32 weights, no expanded copy).
Prefill dequantises a block of rows once into scratch and multiplies it with every token
(`common.rows_times_tokens`), as the other prefill kernels do.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings.kquant import GROUP, Q4K, SUPER
from lowbit.runtime.kernels.affine import dot_q4f32_i8
from lowbit.runtime.kernels.common import ROW_BLOCK, row_block, row_blocks, rows_times_tokens
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel
from lowbit.runtime.kernels.q8 import decode_activation_ref

f32 = np.float32
i32 = np.int32


@helper
def q4k_row_i8(codes, xq, d, zsum, sub_scales, sub_mins, sup, sd):
    """One q4k row on int8 activations: codes u8 [in/2], xq pair-permuted int8 [in]
    (`affine.permute_pairs`), d [ng] its group scales, zsum [ng] = d_g Σ_{k in g} x_q[k];
    sub_scales / sub_mins u8 [ng]; sup u16 [2·ng/8] (f16 bits of d, dmin per super-block);
    sd [ng] scratch."""
    corr = f32(0.0)
    for s in range(sub_scales.shape[0] // SUPER):  # the inner loop of 8 groups is one f32x8 vector
        ds = f16_to_f32(sup[2 * s])
        dm = f16_to_f32(sup[2 * s + 1])
        c = f32(0.0)
        for g in range(s * SUPER, (s + 1) * SUPER):
            sd[g] = ds * f32(sub_scales[g]) * d[g]
            c += f32(sub_mins[g]) * zsum[g]
        corr += dm * c
    return dot_q4f32_i8(codes, xq, sd) - corr


@helper
def _dequantize_row(c, sc, mn, sup, dst):
    """One row of Ŵ into dst f32 [in]: (d·sc)·q − (dmin·m), both products exact in f32."""
    h = GROUP // 2
    for g in range(sc.shape[0]):
        s = 2 * (g // SUPER)
        step = f16_to_f32(sup[s]) * f32(sc[g])
        off = f16_to_f32(sup[s + 1]) * f32(mn[g])
        cg = c[g * h : (g + 1) * h]
        dg = dst[g * GROUP : (g + 1) * GROUP]
        for j in range(h):
            b = i32(cg[j])
            dg[j] = step * f32(b & 15) - off
            dg[h + j] = step * f32(b >> 4) - off


@kernel
def q4k_prefill(x, codes, sub_scales, sub_mins, sup, y):
    """x f32 [T, in]; codes u8 [out, in/2]; sub_scales / sub_mins u8 [out, ng]; sup u16
    [out, 2·ng/8]; y f32 [T, out]."""
    out, ng = sub_scales.shape
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        scratch = np.empty((ROW_BLOCK, ng * GROUP), dtype=np.float32)
        for r in range(r0, r0 + nr):
            _dequantize_row(codes[r], sub_scales[r], sub_mins[r], sup[r], scratch[r - r0])
        rows_times_tokens(scratch, nr, x, y, r0)


# -- numpy reference ------------------------------------------------------------------------


def q4k_ref(x: np.ndarray, codes: np.ndarray, sub_scales: np.ndarray, sub_mins: np.ndarray,
            sup: np.ndarray) -> np.ndarray:
    """x [T, in] -> [T, out] through the encoding's own dequantize(), in float64: decode (T = 1)
    on int8 activations per group of 32, as the kernel; prefill on float32 ones."""
    parts = {"codes": codes, "sub_scales": sub_scales, "sub_mins": sub_mins, "super": sup.view(np.float16)}
    shape = (codes.shape[0], codes.shape[1] * 2)
    w = Q4K.dequantize(parts, shape, {"group_size": GROUP, "super_group": SUPER})
    return (decode_activation_ref(x, GROUP) @ w.astype(np.float64).T).astype(np.float32)


def entry_ref(x: np.ndarray, entry) -> np.ndarray:
    """x [T, in] -> [T, out] for a q4k tensor entry (`.parts`)."""
    p = entry.parts
    return q4k_ref(x, p["codes"], p["sub_scales"], p["sub_mins"], p["super"])
