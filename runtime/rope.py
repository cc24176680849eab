"""Rotary position embeddings (rotate-half convention, as Hugging Face Llama), with the
`linear` and Llama 3 frequency scalings."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> np.ndarray:
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(is_mid, mid, scaled)
    return inv


class RotaryEmbedding:
    """Precomputed cos/sin tables for every position up to the context length."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict[str, Any] | None) -> None:
        inv = inverse_frequencies(head_dim, theta, scaling)
        angles = np.outer(np.arange(max_positions, dtype=np.float64), inv)  # [P, D/2]
        self.cos = np.cos(angles).astype(np.float32)
        self.sin = np.sin(angles).astype(np.float32)

    def apply(self, x: np.ndarray, start: int) -> np.ndarray:
        """x [T, heads, D] at positions start..start+T-1 -> rotated copy."""
        t, _, d = x.shape
        half = d // 2
        cos = self.cos[start : start + t, None, :]
        sin = self.sin[start : start + t, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
