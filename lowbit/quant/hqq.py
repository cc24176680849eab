"""Closed-form refinement of grouped scales and zero points (HQQ-style, no calibration data).

Min-max (or clip-searched) ranges put the grid where the extremes are, not where it lowers the
error. With the codes fixed, the (importance-weighted) squared error of a group is quadratic in
its step s and zero point z, so each has a closed form:

    s = Σ wᵢ·(qᵢ − z)·xᵢ / Σ wᵢ·(qᵢ − z)²          z = Σ wᵢ·(qᵢ − xᵢ/s) / Σ wᵢ

and the codes are then re-rounded against the new grid; a few alternations converge (HQQ's
half-quadratic solver alternates the same way, on a robust loss and a float zero). lowbit's
grouped format stores z as an integer and s as an 8-bit multiple of a per-row f16 scale, so z is
rounded and the final steps are re-quantised to that storage; a group keeps its old parameters
unless the refined ones, as stored, lower its error.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.constants import ceil_div

ITERATIONS = 8


def _groups(x: np.ndarray, group: int) -> np.ndarray:
    """[out, in] -> [out, ng, G] zero-padded."""
    out, n = x.shape
    ng = ceil_div(n, group)
    padded = np.zeros((out, ng * group), dtype=np.float64)
    padded[:, :n] = x
    return padded.reshape(out, ng, group)


def _codes(wg: np.ndarray, step: np.ndarray, zero: np.ndarray, qmax: int) -> np.ndarray:
    return np.clip(np.rint(wg / step[..., None]) + zero[..., None], 0, qmax)


def _error(wg, imp, step, zero, qmax) -> np.ndarray:
    q = _codes(wg, step, zero, qmax)
    return (((q - zero[..., None]) * step[..., None] - wg) ** 2 * imp).sum(-1)


def refine_group_params(
    w: np.ndarray,
    bits: int,
    group: int,
    sq: np.ndarray,
    z: np.ndarray,
    row_scale: np.ndarray,
    importance: np.ndarray | None = None,
    iterations: int = ITERATIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refined (sq u8 [out, ng], z u8 [out, ng], row_scale f16 [out]) for w [out, in], starting
    from stored parameters; `importance` [in] weights each input's squared error (diag H)."""
    w = np.asarray(w, dtype=np.float64)
    out, n = w.shape
    qmax = (1 << bits) - 1
    wg = _groups(w, group)
    imp = np.ones(n) if importance is None else np.maximum(np.asarray(importance, np.float64), 0) + 1e-12
    impg = _groups(imp[None, :], group)  # [1, ng, G], zero on padding
    step0 = row_scale.astype(np.float64)[:, None] * sq.astype(np.float64)
    step0 = np.where(step0 > 0, step0, 1.0)
    zero0 = z.astype(np.float64)
    step, zero = step0.copy(), zero0.copy()
    for _ in range(iterations):
        q = _codes(wg, step, zero, qmax)
        d = q - zero[..., None]
        den = (impg * d * d).sum(-1)
        new_step = np.where(den > 0, (impg * d * wg).sum(-1) / np.where(den > 0, den, 1), step)
        step = np.where(new_step > 0, new_step, step)
        new_zero = (impg * (q - wg / step[..., None])).sum(-1) / impg.sum(-1)
        zero = np.clip(np.rint(new_zero), 0, qmax)
    # the storage: 8-bit multiples of a per-row f16 scale
    rs = (step.max(axis=1) / 255.0).astype(np.float16)
    rsf = np.where(rs.astype(np.float64) > 0, rs.astype(np.float64), 1.0)
    new_sq = np.clip(np.rint(step / rsf[:, None]), 1, 255)
    stored = rsf[:, None] * new_sq
    # the groups of a row share its f16 scale: a row takes the refined parameters only if,
    # as stored, they lower its total error
    old_err = _error(wg, impg, step0, zero0, qmax)
    new_err = _error(wg, impg, stored, zero, qmax)
    better_row = new_err.sum(1) < old_err.sum(1)
    out_sq = np.where(better_row[:, None], new_sq, sq).astype(np.uint8)
    out_z = np.where(better_row[:, None], zero, zero0).astype(np.uint8)
    out_rs = np.where(better_row, rs, row_scale).astype(np.float16)
    return out_sq, out_z, out_rs
