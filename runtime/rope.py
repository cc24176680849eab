"""Rotary position embeddings (rotate-half convention, as Hugging Face Llama), with the
`linear` and Llama 3 frequency scalings."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ROPE_TYPES = ("default", "linear", "llama3")  # rope_scaling types inverse_frequencies implements
DEFAULT_POSITIONS = 4096  # tables built up front when the caller does not say how many it needs


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
    """Precomputed cos/sin tables [positions, D/2] for the context actually used.

    `max_positions` is the model's limit (max_position_embeddings, which a file may set to 2^24);
    the tables cover `positions` (default min(limit, DEFAULT_POSITIONS)) and `ensure()` grows them
    when a longer context is run, so their size follows the context, never the file's claim."""

    def __init__(
        self, head_dim: int, max_positions: int, theta: float, scaling: dict[str, Any] | None,
        positions: int | None = None,
    ) -> None:
        self.inv = inverse_frequencies(head_dim, theta, scaling)
        self.max_positions = max_positions
        self._build(min(max_positions, DEFAULT_POSITIONS) if positions is None else positions)

    def _build(self, n: int) -> None:
        angles = np.outer(np.arange(n, dtype=np.float64), self.inv)  # [P, D/2]
        self.cos = np.cos(angles).astype(np.float32)
        self.sin = np.sin(angles).astype(np.float32)

    @property
    def positions(self) -> int:
        return self.cos.shape[0]

    def ensure(self, n: int) -> None:
        """Tables for at least n positions (the kernels index them without bounds checks)."""
        if n > self.positions:
            self._build(max(n, min(2 * self.positions, self.max_positions)))

    def apply(self, x: np.ndarray, start: int) -> np.ndarray:
        """x [T, heads, D] at positions start..start+T-1 -> rotated copy."""
        t, _, d = x.shape
        self.ensure(start + t)
        half = d // 2
        cos = self.cos[start : start + t, None, :]
        sin = self.sin[start : start + t, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
