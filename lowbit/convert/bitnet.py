"""Native BitNet weights: packed 2-bit codes + weight_scale, converted losslessly to trits.

Packed layout (transformers' BitNet integration): uint8 [ceil(out/4), in]; byte r of column c
holds row r + k·ceil(out/4) in bits 2k..2k+1; value = code − 1.
"""

from __future__ import annotations

import numpy as np

from lowbit.errors import ConversionError


def unpack_hf_ternary(packed: np.ndarray, out_features: int) -> np.ndarray:
    """uint8 [ceil(out/4), in] -> trits int8 [out, in]."""
    rows, _ = packed.shape
    planes = [((packed >> (2 * k)) & 3) for k in range(4)]
    trits = np.concatenate(planes, axis=0)[:out_features].astype(np.int8) - 1
    if (trits > 1).any():
        raise ConversionError("packed ternary weight holds the invalid code 3")
    return trits


def ternary_scale(weight_scale: np.ndarray, divides: bool) -> np.ndarray:
    """Our per-tensor scale s with W = s·t from the checkpoint's weight_scale."""
    ws = np.asarray(weight_scale, dtype=np.float32).reshape(-1)
    if ws.size != 1:
        raise ConversionError(f"weight_scale must hold one value, got shape {list(weight_scale.shape)}")
    if not np.isfinite(ws).all() or ws[0] == 0:
        raise ConversionError(f"weight_scale {ws[0]} is not a finite non-zero number")
    return (1.0 / ws if divides else ws).astype(np.float32)
