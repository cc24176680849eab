"""Alternating refinement (ARB-LLM style) of the 1-bit and ternary codes and their scales, on
calibration statistics (H = XᵀX of the layer's inputs), without training.

The values (OneBit's h and g, ternary row scales) already have closed forms for fixed codes
(`onebit.fit_values`, `ternary.fit_row_scales`); what is left is the codes. For fixed values,
choosing codes to minimise the layer-output error ‖X(W − Ŵ)ᵀ‖² is GPTQ's problem on another
grid: each column's code is the nearest level of its own grid (±h_r·g_j for OneBit,
{−s_r, 0, s_r} for ternary), and the column's error, divided by the diagonal of the upper
Cholesky factor of H⁻¹, is spread onto the columns not yet coded. Codes and values then
alternate: the codes' sweep lowers the error for the current values, the closed-form refit
lowers it for the current codes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lowbit.quant.gptq import PreparedHessian, prepare_hessian

BLOCK = 128
ROUNDS = 2

def error_feedback_codes(w: np.ndarray, prep: PreparedHessian, nearest: Callable[[np.ndarray, int], np.ndarray]
                         ) -> np.ndarray:
    """Codes [out, in] chosen column by column in prep's order: `nearest(values [out], j)` gives
    the quantised column (in weight units) for original column j; errors feed forward."""
    w = np.array(w, dtype=np.float64)
    out, n = w.shape
    w[:, prep.dead] = 0.0
    perm, upper = prep.perm, prep.upper
    w = np.ascontiguousarray(w[:, perm])
    q = np.zeros_like(w)
    for i1 in range(0, n, BLOCK):
        i2 = min(i1 + BLOCK, n)
        w1 = w[:, i1:i2].copy()
        err = np.empty_like(w1)
        u = upper[i1:i2, i1:i2]
        for k in range(i2 - i1):
            col = nearest(w1[:, k], int(perm[i1 + k]))
            q[:, i1 + k] = col
            e = (w1[:, k] - col) / u[k, k]
            err[:, k] = e
            w1[:, k + 1 :] -= np.outer(e, u[k, k + 1 :])
        w[:, i2:] -= err @ upper[i1:i2, i2:]
    out_q = np.empty_like(q)
    out_q[:, perm] = q
    return out_q


def onebit_codes(w: np.ndarray, prep: PreparedHessian, h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Signs int8 [out, in] for Ŵ = S ⊙ h gᵀ, by the error-feedback sweep."""
    h64, g64 = h.astype(np.float64), g.astype(np.float64)

    def nearest(col: np.ndarray, j: int) -> np.ndarray:
        level = h64 * g64[j]
        return np.where(col * level >= 0, level, -level)

    dq = error_feedback_codes(w, prep, nearest)
    mag = h64[:, None] * g64[None, :]
    return np.where(dq * np.sign(mag) >= 0, 1, -1).astype(np.int8)


def ternary_codes(w: np.ndarray, prep: PreparedHessian, scale: np.ndarray) -> np.ndarray:
    """Trits int8 [out, in] for Ŵ = diag(s) T, by the error-feedback sweep."""
    s = np.abs(scale.astype(np.float64))
    safe = np.where(s > 0, s, 1.0)

    def nearest(col: np.ndarray, j: int) -> np.ndarray:
        return np.clip(np.rint(col / safe), -1, 1) * s

    dq = error_feedback_codes(w, prep, nearest)
    return np.clip(np.rint(dq / safe[:, None]), -1, 1).astype(np.int8)


def output_loss(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ): the layer-output error on the calibration inputs."""
    e = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum((e @ np.asarray(hessian, np.float64)) * e))


def prepared(hessian: np.ndarray) -> PreparedHessian:
    """GPTQ's factorisation of H (H = XᵀX / N: the scale does not change the sweep)."""
    return prepare_hessian(2 * np.asarray(hessian, np.float64))
