"""GPTQ (Frantar et al. 2022) for the grouped q2/q3/q4 encodings (algorithms.md §1).

Columns are quantised left to right (or by decreasing Hessian diagonal with act-order); each
column's rounding error, divided by the diagonal of the upper Cholesky factor of H⁻¹, is spread
onto the columns not yet quantised, in blocks of 128 with lazy updates of the rest.

Group scales and zero points are fixed before the sweep from the original weights ("static
groups"): that keeps act-order compatible with groups along the input dimension, and lets the
per-row f16 scale of our double-quantised scales be known up front.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.encodings import EncodedTensor
from lowbit.formats.encodings.grouped import GroupedEncoding
from lowbit.quant.rtn import choose_group_params


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    group: int = 128,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
) -> EncodedTensor:
    """Quantise w [out, in] given H = 2 XᵀX [in, in] of the layer's calibration inputs."""
    w = np.array(w, dtype=np.float64)
    h = np.array(hessian, dtype=np.float64)
    out, n = w.shape
    qmax = (1 << bits) - 1
    diag = np.diag(h).copy()
    sq, z, row_scale = choose_group_params(w.astype(np.float32), bits, group, importance=np.maximum(diag, 0))
    step = row_scale.astype(np.float64)[:, None] * sq.astype(np.float64)  # [out, ng]
    step = np.where(step > 0, step, 1.0)
    zf = z.astype(np.float64)

    dead = diag <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    w = w[:, perm]
    h = h[np.ix_(perm, perm)]
    h[np.diag_indices(n)] += damp * np.mean(np.diag(h))
    upper = _inverse_cholesky_upper(h)
    groups = perm // group
    q = np.zeros((out, n), dtype=np.int64)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = groups[i1 + i]
            col = w1[:, i]
            s, zz = step[:, g], zf[:, g]
            qi = np.clip(np.rint(col / s) + zz, 0, qmax)
            q[:, i1 + i] = qi
            e = (col - (qi - zz) * s) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    codes = np.empty_like(q)
    codes[:, perm] = q
    return GroupedEncoding(bits).pack(codes.astype(np.uint8), sq, z, row_scale, group)


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), adding damping until H is positive definite."""
    eye = np.eye(len(h))
    extra = 0.0
    for _ in range(8):
        try:
            hinv = np.linalg.inv(np.linalg.cholesky(h + extra * eye))
            hinv = hinv.T @ hinv
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(h))) or 1e-6)
    raise np.linalg.LinAlgError("Hessian is not positive definite even after damping")
