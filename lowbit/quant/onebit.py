"""OneBit initialisation by SVID: W ≈ sign(W) ⊙ (h gᵀ), with h gᵀ the rank-1 approximation of |W|.

The first singular pair of the non-negative |W| is non-negative (Perron-Frobenius), so a few
power iterations give it directly — far cheaper than a full SVD and equal to the NMF solution the
reference code uses at rank 1.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.encodings import EncodedTensor
from lowbit.formats.encodings.onebit import ONEBIT


def svid(w: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """signs (int8 ±1) [out, in], h [out], g [in] with |W| ≈ h gᵀ."""
    w = np.asarray(w, dtype=np.float32)
    a = np.abs(w)
    g = a.mean(axis=0) + 1e-12
    g /= np.linalg.norm(g)
    for _ in range(iterations):
        h = a @ g
        g = a.T @ h
        norm = np.linalg.norm(g)
        if norm == 0:
            break
        g /= norm
    h = a @ g  # |W| ≈ h gᵀ with ‖g‖ = 1
    # balance the magnitudes of h and g so both fit comfortably in f16
    scale = np.sqrt(np.linalg.norm(h) / max(np.linalg.norm(g), 1e-30) / np.sqrt(len(h) / len(g)))
    if np.isfinite(scale) and scale > 0:
        h, g = h / scale, g * scale
    signs = np.where(w >= 0, 1, -1).astype(np.int8)
    return signs, h.astype(np.float32), g.astype(np.float32)


def quantize_onebit(w: np.ndarray, layernorm: bool = False) -> EncodedTensor:
    signs, h, g = svid(w)
    return ONEBIT.pack(signs, g, h, layernorm=layernorm)


def fit_values(
    w: np.ndarray, hessian: np.ndarray, signs: np.ndarray, h: np.ndarray, g: np.ndarray,
    iterations: int = 4, ridge: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Refit h and g by alternating least squares against the layer's real outputs.

    With calibration inputs X and H = XᵀX, the loss ‖X Wᵀ − X (S ⊙ h gᵀ)ᵀ‖² is quadratic in h for
    fixed g and in g for fixed h, and both closed forms need only H:
      h_r = (s_r⊙g)·(H w_r) / (s_r⊙g)ᵀ H (s_r⊙g)
      [H ⊙ (Sᵀ diag(h²) S)] g = rowsum((H Wᵀ) ⊙ (Sᵀ diag(h)))
    """
    w = np.asarray(w, np.float64)
    hm = np.asarray(hessian, np.float64)
    s = signs.astype(np.float64)
    h = h.astype(np.float64)
    g = g.astype(np.float64)
    wh = w @ hm  # [out, in] = (H wᵣ)ᵣ since H is symmetric
    for _ in range(iterations):
        sg = s * g
        den = np.einsum("ri,ri->r", sg @ hm, sg)
        h = np.where(den > 0, np.einsum("ri,ri->r", sg, wh) / np.where(den > 0, den, 1), h)
        a = hm * (s.T @ (s * (h * h)[:, None]))
        b = np.einsum("ir,ir->i", wh.T, s.T * h)
        a[np.diag_indices_from(a)] += ridge * np.mean(np.diag(a)) + 1e-12
        g = np.linalg.solve(a, b)
    return h.astype(np.float32), g.astype(np.float32)


def quantize_onebit_calibrated(
    w: np.ndarray, hessian: np.ndarray, layernorm: bool = False, rounds: int | None = None
) -> EncodedTensor:
    """SVID, h and g fitted to the calibration outputs, then `rounds` of ARB-style alternation
    (signs by error feedback for the current h, g; h, g refitted): the best round is kept."""
    from lowbit.quant.arb import ROUNDS, onebit_codes, output_loss, prepared

    signs, h, g = svid(w)
    h, g = fit_values(w, hessian, signs, h, g)
    best = (output_loss(w, signs * np.outer(h, g), hessian), signs, h, g)
    n = ROUNDS if rounds is None else rounds
    prep = prepared(hessian) if n else None
    for _ in range(n):
        signs = onebit_codes(w, prep, h, g)
        h, g = fit_values(w, hessian, signs, h, g)
        loss = output_loss(w, signs * np.outer(h, g), hessian)
        if loss < best[0]:
            best = (loss, signs, h, g)
    _, signs, h, g = best
    return ONEBIT.pack(signs, g, h, layernorm=layernorm)
