"""q8: symmetric int8 codes with one f16 scale per group of G weights, or per row (SPEC.md 2.2).

    y[r] = Σ_g scale[r, g] · Σ_{k in g} code[r, k] · x[k]

float32 activations; each group's partial sum is one vectorised loop over contiguous slices.
`group` is the effective group length (`group_size`, or `in` when group_size is 0); the last
group of a row may be short (codes are not padded). Scales arrive as raw f16 bits (u16).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.formats.encodings import Q8
from lowbit.runtime.kernels.common import ROW_BLOCK, rows_times_tokens
from lowbit.runtime.kernels.jit import f16_to_f32, kernel


@kernel
def q8_prefill(x, codes, scales, group, y):
    """x f32 [T, in], codes i8 [out, in], scales u16 [out, ng], y f32 [T, out]."""
    out, n = codes.shape
    ng = scales.shape[1]
    nblocks = (out + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(nblocks):
        r0 = b * ROW_BLOCK
        nr = min(ROW_BLOCK, out - r0)
        scratch = np.empty((ROW_BLOCK, n), dtype=np.float32)
        for i in range(nr):
            c = codes[r0 + i]
            sc = scales[r0 + i]
            dst = scratch[i]
            for g in range(ng):
                lo = g * group
                m = min(group, n - lo)
                s = f16_to_f32(sc[g])
                cg = c[lo : lo + m]
                dg = dst[lo : lo + m]
                for k in range(m):
                    dg[k] = s * np.float32(cg[k])
        rows_times_tokens(scratch, nr, x, y, r0)


def q8_ref(x: np.ndarray, codes: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """x [T, in] -> [T, out]; scales as f16 (or their u16 bits); group_size as in params."""
    parts = {"codes": codes, "scales": scales.view(np.float16)}
    w = Q8.dequantize(parts, codes.shape, {"group_size": group_size})
    return (np.asarray(x, np.float64) @ w.astype(np.float64).T).astype(np.float32)
