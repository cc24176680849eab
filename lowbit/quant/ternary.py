"""BitNet b1.58 absmean ternarisation: γ = mean|W|, W̃ = RoundClip(W/(γ+ε), −1, 1), W ≈ γ W̃.

Lossless for weights that are already ternary (a trained BitNet's latent weights quantise to
what it was trained with); destroys an ordinary model without retraining.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.encodings import EncodedTensor
from lowbit.formats.encodings.ternary import TERNARY, TERNARY_1P6

EPS = 1e-5


def absmean_ternary(w: np.ndarray, per_row: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Trits int8 [out, in] and scale γ ([1] per tensor or [out] per row)."""
    w = np.asarray(w, dtype=np.float32)
    if per_row:
        gamma = np.abs(w).mean(axis=1)
        trits = np.clip(np.round(w / (gamma[:, None] + EPS)), -1, 1)
    else:
        gamma = np.array([np.abs(w).mean()], dtype=np.float32)
        trits = np.clip(np.round(w / (gamma[0] + EPS)), -1, 1)
    return trits.astype(np.int8), gamma.astype(np.float32)


def quantize_ternary(w: np.ndarray, per_row: bool = False, base3: bool = False) -> EncodedTensor:
    trits, scale = absmean_ternary(w, per_row)
    return (TERNARY_1P6 if base3 else TERNARY).pack(trits, scale)


def fit_row_scales(w: np.ndarray, hessian: np.ndarray, trits: np.ndarray) -> np.ndarray:
    """Per-row scales minimising ‖X wᵣ − sᵣ X tᵣ‖² on calibration inputs (H = XᵀX):
    sᵣ = tᵣᵀ H wᵣ / tᵣᵀ H tᵣ."""
    t = trits.astype(np.float64)
    th = t @ np.asarray(hessian, np.float64)
    num = np.einsum("ri,ri->r", th, np.asarray(w, np.float64))
    den = np.einsum("ri,ri->r", th, t)
    fallback = np.abs(w).mean(axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), fallback).astype(np.float32)


def quantize_ternary_calibrated(
    w: np.ndarray, hessian: np.ndarray, base3: bool = False, rounds: int | None = None
) -> EncodedTensor:
    """Absmean trits per row with fitted row scales, then `rounds` of ARB-style alternation
    (trits by error feedback for the current scales; scales refitted): the best round is kept."""
    from lowbit.quant.arb import ROUNDS, output_loss, prepared, ternary_codes

    trits, _ = absmean_ternary(w, per_row=True)
    scale = fit_row_scales(w, hessian, trits)
    best = (output_loss(w, trits * scale[:, None], hessian), trits, scale)
    n = ROUNDS if rounds is None else rounds
    prep = prepared(hessian) if n else None
    for _ in range(n):
        trits = ternary_codes(w, prep, scale)
        scale = fit_row_scales(w, hessian, trits)
        loss = output_loss(w, trits * scale[:, None], hessian)
        if loss < best[0]:
            best = (loss, trits, scale)
    _, trits, scale = best
    return (TERNARY_1P6 if base3 else TERNARY).pack(trits, scale)
