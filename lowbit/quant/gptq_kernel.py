"""GPTQ's column sweep inside one block, as a numba kernel parallel over rows (each row's
updates depend only on that row), with the numpy loop it replaces as the reference."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

import lowbit.runtime.kernels.cache  # noqa: F401  (numba's cache outside the installation)


@njit(parallel=True, cache=True, nogil=True)
def sweep_block(w1, u1, step, zero, groups, qmax, q_out, err_out):
    """Quantise columns 0..B-1 of w1 [out, B] left to right, spreading each column's error
    (divided by u1[i, i]) onto the later columns of the block through row i of u1 [B, B].

    step/zero [out, ng] are the group scales, groups [B] each column's group, q_out [out, B]
    receives the codes and err_out [out, B] the scaled errors for the lazy update of later blocks.
    """
    rows, width = w1.shape
    for r in prange(rows):
        for i in range(width):
            g = groups[i]
            s = step[r, g]
            z = zero[r, g]
            q = np.rint(w1[r, i] / s) + z
            q = min(max(q, 0.0), qmax)
            q_out[r, i] = q
            e = (w1[r, i] - (q - z) * s) / u1[i, i]
            err_out[r, i] = e
            for j in range(i + 1, width):
                w1[r, j] -= e * u1[i, j]


def sweep_block_ref(w1, u1, step, zero, groups, qmax, q_out, err_out):
    """numpy reference of sweep_block (vectorised over rows)."""
    for i in range(w1.shape[1]):
        s, z = step[:, groups[i]], zero[:, groups[i]]
        q = np.clip(np.rint(w1[:, i] / s) + z, 0, qmax)
        q_out[:, i] = q
        e = (w1[:, i] - (q - z) * s) / u1[i, i]
        err_out[:, i] = e
        w1[:, i + 1 :] -= np.outer(e, u1[i, i + 1 :])
