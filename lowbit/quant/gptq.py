"""GPTQ (Frantar et al. 2022) for the grouped q2/q3/q4 encodings (algorithms.md §1).

Columns are quantised left to right (or by decreasing Hessian diagonal with act-order); each
column's rounding error, divided by the diagonal of the upper Cholesky factor of H⁻¹, is spread
onto the columns not yet quantised, in blocks of 128 with lazy updates of the rest.

Group scales and zero points are fixed before the sweep from the original weights ("static
groups"): that keeps act-order compatible with groups along the input dimension, and lets the
per-row f16 scale of our double-quantised scales be known up front.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.formats.encodings import EncodedTensor
from lowbit.formats.encodings.grouped import GroupedEncoding
from lowbit.quant.gptq_kernel import sweep_block
from lowbit.quant.rtn import choose_group_params


@dataclass
class PreparedHessian:
    """What GPTQ needs from H, computed once per layer input (q/k/v share it, gate/up too)."""

    diag: np.ndarray  # diag(H) before damping (also the imatrix importance)
    dead: np.ndarray  # inputs never active in calibration
    perm: np.ndarray  # column order (act-order: decreasing diag(H))
    upper: np.ndarray  # upper Cholesky factor of H⁻¹ in that order


def prepare_hessian(hessian: np.ndarray, damp: float = 0.01, act_order: bool = True) -> PreparedHessian:
    h = np.array(hessian, dtype=np.float64)
    n = len(h)
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    h = h[np.ix_(perm, perm)]
    h[np.diag_indices(n)] += damp * np.mean(np.diag(h))
    return PreparedHessian(diag, dead, perm, _inverse_cholesky_upper(h))


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray | PreparedHessian,
    bits: int,
    group: int = 128,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
    refine: bool = False,
) -> EncodedTensor:
    """Quantise w [out, in] given H = 2 XᵀX [in, in] of the layer's calibration inputs
    (or a PreparedHessian of it); `refine`: HQQ-style refined group scales as the static grid."""
    prep = hessian if isinstance(hessian, PreparedHessian) else prepare_hessian(hessian, damp, act_order)
    w = np.array(w, dtype=np.float64)
    out, n = w.shape
    qmax = float((1 << bits) - 1)
    sq, z, row_scale = choose_group_params(w.astype(np.float32), bits, group, importance=np.maximum(prep.diag, 0),
                                         refine=refine)
    step = row_scale.astype(np.float64)[:, None] * sq.astype(np.float64)  # [out, ng]
    step = np.ascontiguousarray(np.where(step > 0, step, 1.0))
    zf = np.ascontiguousarray(z, dtype=np.float64)
    w[:, prep.dead] = 0.0
    perm, upper = prep.perm, prep.upper
    w = np.ascontiguousarray(w[:, perm])
    groups = (perm // group).astype(np.int64)
    q = np.zeros((out, n), dtype=np.float64)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = np.ascontiguousarray(w[:, i1:i2])
        q1 = np.empty_like(w1)
        err1 = np.empty_like(w1)
        sweep_block(w1, np.ascontiguousarray(upper[i1:i2, i1:i2]), step, zf, groups[i1:i2], qmax, q1, err1)
        q[:, i1:i2] = q1
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    codes = np.empty_like(q)
    codes[:, perm] = q
    return GroupedEncoding(bits).pack(codes.astype(np.uint8), sq, z, row_scale, group)


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), adding damping until H is positive definite.

    With J the reversal permutation and J H J = L Lᵀ, U = J L⁻¹ J: one Cholesky and one
    triangular inverse instead of GPTQ's Cholesky, inverse and second Cholesky.
    """
    eye = np.eye(len(h))
    extra = 0.0
    for _ in range(8):
        try:
            lower = np.linalg.cholesky((h + extra * eye)[::-1, ::-1])
            return np.ascontiguousarray(lower_triangular_inverse(lower)[::-1, ::-1])
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(h))) or 1e-6)
    raise np.linalg.LinAlgError("Hessian is not positive definite even after damping")


def lower_triangular_inverse(lower: np.ndarray, leaf: int = 64) -> np.ndarray:
    """L⁻¹ of a lower-triangular L by halves (as LAPACK's blocked trtri):
    [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [-D⁻¹ C A⁻¹, D⁻¹]], so nearly all the work is two matrix
    products per level; numpy has no triangular solve, and its general `solve` (an LU of a matrix
    that is already triangular) took 3-4x as long on GPTQ's 576- and 1536-wide Hessians."""
    n = len(lower)
    if n <= leaf:
        return np.linalg.solve(lower, np.eye(n))
    k = n // 2
    a_inv, d_inv = lower_triangular_inverse(lower[:k, :k], leaf), lower_triangular_inverse(lower[k:, k:], leaf)
    out = np.zeros_like(lower)
    out[:k, :k], out[k:, k:] = a_inv, d_inv
    out[k:, :k] = -(d_inv @ (lower[k:, :k] @ a_inv))
    return out
