"""Causal grouped-query attention over the KV cache, one numba call per layer.

Queries q [T, H, D] sit at positions start..start+T-1 and attend to keys/values [KVH, L, D]
(the cache, already holding this step's keys) at positions ≤ their own, and, with a sliding
window W, > position − W. Query head h reads KV head h // (H / KVH). Parallel over (token, head)
pairs; each keeps its scores in a private buffer. Softmax in float32 with the max subtracted.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from lowbit.runtime.kernels.jit import helper, kernel
from lowbit.runtime.kernels.kv_store import widen


@helper
def attend(qh, keys, key_scales, values, value_scales, lo, n, scale, out, softcap=0.0):
    """out [D] = softmax(keys[lo:lo+n] · qh × scale) · values[lo:lo+n] for one query head
    (keys/values [L, D] of its KV head, in any stored form of `kv_store`; key_scales /
    value_scales [L] the q8 scales, or empty when unscaled); the scores live in a private buffer.
    softcap > 0 caps each score to softcap·tanh(score / softcap) first (Gemma 2)."""
    d = qh.shape[0]
    scaled = key_scales.shape[0] > 0
    scores = np.empty(n, np.float32)
    best = np.float32(-np.inf)
    for j in range(n):
        kj = keys[lo + j]
        acc = np.float32(0.0)
        for i in range(d):
            acc += qh[i] * widen(kj[i])
        if scaled:
            acc *= key_scales[lo + j]
        acc *= scale
        if softcap > 0:
            acc = np.float32(np.tanh(acc / softcap) * softcap)
        scores[j] = acc
        if acc > best:
            best = acc
    total = np.float32(0.0)
    for j in range(n):
        e = np.exp(scores[j] - best)
        scores[j] = e
        total += e
    inv = np.float32(1.0) / total
    for i in range(d):
        out[i] = 0.0
    for j in range(n):
        p = scores[j] * inv
        if scaled:
            p *= value_scales[lo + j]
        vj = values[lo + j]
        for i in range(d):
            out[i] += p * widen(vj[i])


@helper
def visible(pos, window):
    """(first position, count) a query at pos attends to."""
    lo = 0
    if window > 0 and pos - window + 1 > 0:
        lo = pos - window + 1
    return lo, pos + 1 - lo


@kernel
def attention(q, keys, values, start, window, out, scale=0.0, softcap=0.0, key_scales=None, value_scales=None):
    """out [T, H*D] = softmax(q kᵀ · scale + causal mask) v, per query head.

    q [T, H, D] f32; keys/values [KVH, ≥ start+T, D] f32, or f16 bits (uint16), or q8 (int8 with
    key_scales/value_scales [KVH, ≥ start+T]; [KVH, 0] or None when unscaled); window 0 means no
    sliding window; scale 0 means 1/sqrt(D); softcap > 0 soft-caps the scores (see `attend`).
    """
    t_len, n_heads, d = q.shape
    rep = n_heads // keys.shape[0]
    scale = np.float32(1.0 / math.sqrt(d)) if scale == 0 else np.float32(scale)
    none = np.empty(0, np.float32)
    for task in prange(t_len * n_heads):
        t = task // n_heads
        h = task % n_heads
        lo, n = visible(start + t, window)
        kv = h // rep
        if key_scales is None:
            attend(q[t, h], keys[kv], none, values[kv], none, lo, n, scale, out[t, h * d : (h + 1) * d], softcap)
        else:
            attend(q[t, h], keys[kv], key_scales[kv], values[kv], value_scales[kv], lo, n, scale,
                   out[t, h * d : (h + 1) * d], softcap)


def attention_ref(q, keys, values, start, window, scale=0.0, softcap=0.0):
    """numpy reference: the same result by dense masked softmax (keys/values float32: a stored
    cache goes through `kv_store.load_ref` first)."""
    t_len, n_heads, d = q.shape
    rep = n_heads // keys.shape[0]
    out = np.zeros((t_len, n_heads * d), np.float32)
    for h in range(n_heads):
        k = keys[h // rep].astype(np.float64)
        v = values[h // rep].astype(np.float64)
        for t in range(t_len):
            pos = start + t
            lo = max(0, pos - window + 1) if window > 0 else 0
            s = k[lo : pos + 1] @ q[t, h].astype(np.float64) * (scale or 1.0 / math.sqrt(d))
            if softcap:
                s = np.tanh(s / softcap) * softcap
            p = np.exp(s - s.max())
            out[t, h * d : (h + 1) * d] = (p / p.sum()) @ v[lo : pos + 1]
    return out
