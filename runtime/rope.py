"""Rotary position embeddings (rotate-half convention, as Hugging Face Llama), with the
`linear`, Llama 3 and LongRoPE frequency scalings and partial rotation (the first `rotary_dim`
dims of each head; the rest pass through, as Phi's)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lowbit.runtime.kernels import pointwise

ROPE_TYPES = ("default", "linear", "llama3", "longrope")  # rope_scaling types inverse_frequencies implements
DEFAULT_POSITIONS = 4096  # tables built up front when the caller does not say how many it needs


def inverse_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None, context_length: int | None = None
) -> np.ndarray:
    """Frequencies of a `head_dim`-wide rotation (pass the rotary dims for partial RoPE).

    LongRoPE divides them by its short factors, or by its long ones when the context the
    runtime allocates exceeds the original training context (transformers switches the same
    way by sequence length; llama.cpp by context size, as here, so cached keys stay valid)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv = 1.0 / (theta**exponent)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return inv / factor
    if kind == "longrope":
        orig = int(scaling["original_max_position_embeddings"])
        long = context_length is not None and context_length > orig
        ext = np.asarray(scaling["long_factor" if long else "short_factor"], dtype=np.float32)
        # in float32, as transformers computes them
        return (1.0 / (ext * np.float32(theta) ** exponent.astype(np.float32))).astype(np.float64)
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


def attention_factor(scaling: dict[str, Any] | None) -> float:
    """The factor LongRoPE multiplies cos and sin by (1 for the other scalings)."""
    if scaling and scaling.get("rope_type") == "longrope":
        return float(scaling.get("attention_factor", 1.0))
    return 1.0


class RotaryEmbedding:
    """Precomputed cos/sin tables [positions, rotary_dim / 2] for the context actually used.

    `max_positions` is the model's limit (max_position_embeddings, which a file may set to 2^24);
    the tables cover `context_length` (default min(limit, DEFAULT_POSITIONS)) and `ensure()` grows
    them when a longer context is run, so their size follows the context, never the file's claim."""

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: dict[str, Any] | None,
        rotary_dim: int | None = None,
        context_length: int | None = None,
    ) -> None:
        self.rotary_dim = rotary_dim or head_dim
        self.inv = inverse_frequencies(self.rotary_dim, theta, scaling, context_length or max_positions)
        self.mult = attention_factor(scaling)
        self.max_positions = max_positions
        self._build(min(max_positions, DEFAULT_POSITIONS) if context_length is None else context_length)

    def _build(self, n: int) -> None:
        angles = np.outer(np.arange(n, dtype=np.float64), self.inv)  # [P, R/2]
        self.cos = (np.cos(angles) * self.mult).astype(np.float32)
        self.sin = (np.sin(angles) * self.mult).astype(np.float32)

    @property
    def positions(self) -> int:
        return self.cos.shape[0]

    def ensure(self, n: int) -> None:
        """Tables for at least n positions (the kernels index them without bounds checks)."""
        if n > self.positions:
            self._build(max(n, min(2 * self.positions, self.max_positions)))

    def apply(self, x: np.ndarray, start: int) -> np.ndarray:
        """x [T, heads, D] at positions start..start+T-1 -> rotated copy (tokens in parallel:
        `pointwise.rope_rows`)."""
        t, heads, d = x.shape
        if self.rotary_dim > d:
            raise ValueError(f"rotary_dim {self.rotary_dim} exceeds head_dim {d}")
        self.ensure(start + t)
        rows = np.ascontiguousarray(x, dtype=np.float32).reshape(t, heads * d)
        out = np.empty_like(rows)
        pointwise.rope_rows(rows, heads, d, self.rotary_dim, self.cos, self.sin, start, out)
        return out.reshape(t, heads, d)
