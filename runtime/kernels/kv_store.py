"""The KV cache's stored forms and their conversions, read and written inside the kernels.

- f32: float32 as computed.
- f16: IEEE half as raw uint16 bits (numba has no float16): `f32_to_f16` to store, `f16_to_f32`
  to read; half of f32's bytes, rounding to nearest even.
- q8: int8 with one float32 scale per token per KV head (absmax / 127, as llama.cpp's q8_0 but
  over the whole head): (D + 4) / 4D of f32's bytes, 0.27 × at head_dim 64, 0.26 × at 128.

The attention kernels read the stored form directly (`widen` per element, the q8 scale once per
key and value row), so there is never a dequantised copy of the cache. `store` writes one row;
the fused decode step and `kv_write` (the layer-by-layer path) share it, so both paths store the
same bits. The numpy references (`store_ref`, `load_ref`) are what the tests hold these to.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import overload

from lowbit.runtime.kernels.jit import f16_to_f32, f32_to_f16, kernel

KINDS = ("f32", "f16", "q8")
DTYPES = {"f32": np.float32, "f16": np.uint16, "q8": np.int8}
SCALED = {"q8"}  # kinds that keep a float32 scale per token per head


def widen(x):
    """One stored element as float32 (numba only: dispatched on its type)."""
    raise NotImplementedError


def store(dst, scales, pos, src):
    """dst[pos] (and scales[pos] for q8) = row src [D] float32 in dst's stored form (numba only)."""
    raise NotImplementedError


@overload(widen, inline="always", jit_options={"fastmath": True})
def _widen(x):
    if x == types.uint16:
        return lambda x: f16_to_f32(x)
    if isinstance(x, (types.Integer, types.Float)):
        return lambda x: np.float32(x)
    return None


@overload(store, inline="always")
def _store(dst, scales, pos, src):
    kind = dst.dtype
    if kind == types.float32:
        def impl(dst, scales, pos, src):
            row = dst[pos]
            for i in range(src.shape[0]):
                row[i] = src[i]
        return impl
    if kind == types.uint16:
        def impl(dst, scales, pos, src):
            row = dst[pos]
            for i in range(src.shape[0]):
                row[i] = f32_to_f16(src[i])
        return impl
    if kind == types.int8:
        def impl(dst, scales, pos, src):
            row = dst[pos]
            amax = np.float32(0.0)
            for i in range(src.shape[0]):
                amax = max(amax, abs(src[i]))
            scale = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            for i in range(src.shape[0]):
                row[i] = np.int8(np.rint(src[i] * inv))
            scales[pos] = scale
        return impl
    return None


@kernel
def kv_write(dst, scales, start, src):
    """dst [KVH, C, D] (scales [KVH, C], or [KVH, 0] unscaled) at positions start.. = src [T, KVH, D]."""
    t_len, kvh, _ = src.shape
    for task in prange(t_len * kvh):
        t = task // kvh
        h = task % kvh
        store(dst[h], scales[h], start + t, src[t, h])


def store_ref(kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """numpy reference: (stored rows, scales or None) of x [..., D] float32."""
    x = np.asarray(x, dtype=np.float32)
    if kind == "f32":
        return x.copy(), None
    if kind == "f16":
        return x.astype(np.float16).view(np.uint16), None
    amax = np.abs(x).max(axis=-1)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    inv = np.divide(np.float32(127.0), amax, out=np.zeros_like(amax), where=amax > 0)
    return np.rint(x * inv[..., None]).astype(np.int8), scale


def load_ref(kind: str, data: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """numpy reference: the float32 values stored rows stand for."""
    if kind == "f32":
        return np.asarray(data, dtype=np.float32)
    if kind == "f16":
        return data.view(np.float16).astype(np.float32)
    return data.astype(np.float32) * scales[..., None]
