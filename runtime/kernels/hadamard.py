"""The online Hadamard transform before down_proj (files converted with `--rotate`).

Incoherence processing (QuaRot / QuIP#) folds most rotations into the weights, but the MLP's
hidden state passes through an elementwise product, so the rotation that makes down_proj's
input columns incoherent has to be applied at run time: y = T·h with

    T = (H_p / √p) ⊗ C_m,     n = p · m, p the largest power of two dividing n, m odd,

H_p the Sylvester Hadamard matrix (a fast Walsh-Hadamard transform, p·log2 p additions) and C_m
the orthonormal DCT-II matrix (m² multiply-adds per chunk; m = 3 for SmolLM2's 1536, 1 for
powers of two). T is orthogonal and fixed by n alone, so a file records only the flag
(`config.down_proj_hadamard`); the converter stores down_proj as W·Tᵀ (random signs are
folded into up_proj's rows). Index i = a·m + b: C mixes each chunk of m neighbours, H mixes the
p chunks (stride m).

`hadamard_rows` (numba, parallel over rows) and `transform` (the in-place helper the fused decode
step inlines) are held to `hadamard_ref`, the numpy reference, by tests/test_rotation.py.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import prange

from lowbit.runtime.kernels.jit import helper, kernel

MAX_ODD_BLOCK = 255  # the odd factor m of a transformed size: m² work per m values


def split_size(n: int) -> tuple[int, int]:
    """n = p · m with p the largest power of two dividing n and m odd."""
    p = n & -n
    return p, n // p


@lru_cache(maxsize=16)
def odd_block(m: int) -> np.ndarray:
    """The orthonormal DCT-II matrix C [m, m] (float32): C[k, j] = √(2/m)·cos(π(j + ½)k/m), row 0 / √2."""
    k = np.arange(m, dtype=np.float64)[:, None]
    j = np.arange(m, dtype=np.float64)[None, :]
    c = np.sqrt(2.0 / m) * np.cos(np.pi * (j + 0.5) * k / m)
    c[0] /= np.sqrt(2.0)
    return np.ascontiguousarray(c, dtype=np.float32)


def sylvester(p: int) -> np.ndarray:
    """The unnormalised Sylvester Hadamard matrix H_p [p, p] (p a power of two), float64."""
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_ref(x: np.ndarray, block: np.ndarray | None = None) -> np.ndarray:
    """numpy reference: ((H_p/√p) ⊗ C) applied to the last axis of x (C = `block`, default the DCT)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    p, m = split_size(n)
    c = odd_block(m).astype(np.float64) if block is None else np.asarray(block, dtype=np.float64)
    y = x.reshape(*x.shape[:-1], p, m) @ c.T
    y = np.einsum("ab,...bm->...am", sylvester(p) / math.sqrt(p), y)
    return y.reshape(x.shape)


@helper
def transform(v, block):
    """v [p·m] ← ((H_p/√p) ⊗ block) v in place (float32; block [m, m])."""
    m = block.shape[0]
    n = v.shape[0]
    p = n // m
    if m > 1:
        chunk = np.empty(m, dtype=np.float32)
        for a in range(p):
            base = a * m
            for b in range(m):
                chunk[b] = v[base + b]
            for b in range(m):
                s = np.float32(0.0)
                for c in range(m):
                    s += block[b, c] * chunk[c]
                v[base + b] = s
    h = 1
    while h < p:
        for i in range(0, p, 2 * h):
            for j in range(i, i + h):
                lo = j * m
                hi = (j + h) * m
                for b in range(m):
                    x = v[lo + b]
                    y = v[hi + b]
                    v[lo + b] = x + y
                    v[hi + b] = x - y
        h *= 2
    scale = np.float32(1.0 / math.sqrt(p))
    for i in range(n):
        v[i] *= scale


@kernel
def _rows(x, block):
    for r in prange(x.shape[0]):
        transform(x[r], block)


def hadamard_rows(x: np.ndarray) -> np.ndarray:
    """A float32 copy of x [T, n] with T applied to every row (the prefill path)."""
    out = np.array(x, dtype=np.float32, order="C")
    _rows(out, odd_block(split_size(out.shape[1])[1]))
    return out


def no_block() -> np.ndarray:
    """What the fused decode step receives when a file has no online transform."""
    return np.zeros((0, 0), dtype=np.float32)
