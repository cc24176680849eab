"""Causal grouped-query attention over the KV cache, one numba call per layer.

Queries q [T, H, D] sit at positions start..start+T-1 and attend to keys/values [KVH, L, D]
(the cache, already holding this step's keys) at positions ≤ their own, and, with a sliding
window W, > position − W. Query head h reads KV head h // (H / KVH).

`attention` (prefill, and any T through the layer-by-layer forward) runs many queries at once:
a task takes one KV head and up to Q_BLOCK tokens, i.e. Q_BLOCK × H/KVH query rows that all read
the same keys. Keys and values go through in blocks of K_BLOCK positions (aligned to multiples of
K_BLOCK): each block is widened from its stored form once (keys transposed to [D, K_BLOCK]) and
serves every query row of the task, which scores it with K_BLOCK-wide vector FMAs (no horizontal
sum per key) and folds it into its output with an online softmax (running max and sum, as flash
attention). A row only visits the blocks its own visible range touches, in the same order, so
its result does not depend on T or on which rows share its task (prefix reuse and batching keep
their bits). Measured (CPU time, one thread, f16 cache) against the former per-(token, head)
loop of `attend` for every query: SmolLM2's shapes (9/3 heads, D 64) 128 / 512 queries from
position 0: 0.83 → 0.58 / 11.9 → 7.0 ms per layer, 16 queries at depth 4096: 5.8 → 3.3 ms;
BitNet-2B's (20/5, D 128): 2.9 → 2.0 / 43.6 → 25.4 / 22.0 → 12.2 ms. Then (wall time, one
thread, SmolLM2's shapes, 128 queries at depth 4096 / 512 from 0): 16 tokens a task instead of
8, a vector max of each block's scores (`block_max`) instead of a compare per key, and four FMA
chains in `score_block`: 40.3 → 25.4 / 10.6 → 6.8 ms.

`attend` (one query head over its KV head's keys, scores in a private buffer, softmax with the max
subtracted, its exponentials by `exp_block`) and `attend_group` (the same for four query heads of
one KV head, which then load and widen each key and value row once) are the fused decode step's,
through `attend_heads`. Softmax in float32 throughout.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from lowbit.runtime.kernels.attention_simd import (
    K_BLOCK,
    LANES,
    VECTOR_DIM,
    accumulate_block,
    block_max,
    exp_block,
    score_block,
)
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
    scores = np.empty(-(-n // LANES) * LANES, np.float32)  # whole vectors for exp_block
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
    inv = np.float32(1.0) / exp_block(scores, 0, n, best)
    for i in range(d):
        out[i] = 0.0
    for j in range(n):
        p = scores[j] * inv
        if scaled:
            p *= value_scales[lo + j]
        vj = values[lo + j]
        for i in range(d):
            out[i] += p * widen(vj[i])


GROUP = 4  # query heads of one KV head that decode attends together (`attend_group`)


@helper
def attend_group(q, h0, count, keys, key_scales, values, value_scales, lo, n, scale, out, softcap=0.0):
    """`attend` for the query heads h0..h0+count−1 (count ≤ GROUP; q, out [H·D]) of one KV head
    in one pass: each key and value row is loaded and widened once for all of them. Slots past
    count repeat head h0 and are not written. Measured (BitNet-2B's 20/5 heads, D 128, f16
    cache, 30 layers from memory, one Zen 5 thread): 1.04 → 0.96 ms a token at depth 160, 6.2 →
    5.2 ms at 1024; SmolLM2's 9/3 heads, D 64 (three of the four slots in use): 0.42 → 0.37 /
    2.10 → 1.77 ms. With two slots of four in use it would cost more than two `attend` calls, so
    `attend_heads` groups only where a KV head has three query heads or more."""
    d = keys.shape[1]
    scaled = key_scales.shape[0] > 0
    width = -(-n // LANES) * LANES  # whole vectors for exp_block
    s0 = np.empty(width, np.float32)
    s1 = np.empty(width, np.float32)
    s2 = np.empty(width, np.float32)
    s3 = np.empty(width, np.float32)
    h1 = h0 + 1 if count > 1 else h0
    h2 = h0 + 2 if count > 2 else h0
    h3 = h0 + 3 if count > 3 else h0
    q0 = q[h0 * d : (h0 + 1) * d]
    q1 = q[h1 * d : (h1 + 1) * d]
    q2 = q[h2 * d : (h2 + 1) * d]
    q3 = q[h3 * d : (h3 + 1) * d]
    m0 = m1 = m2 = m3 = np.float32(-np.inf)
    for j in range(n):
        kj = keys[lo + j]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(d):
            k = widen(kj[i])
            a0 += q0[i] * k
            a1 += q1[i] * k
            a2 += q2[i] * k
            a3 += q3[i] * k
        if scaled:
            ks = key_scales[lo + j]
            a0, a1, a2, a3 = a0 * ks, a1 * ks, a2 * ks, a3 * ks
        a0, a1, a2, a3 = a0 * scale, a1 * scale, a2 * scale, a3 * scale
        if softcap > 0:
            a0 = np.float32(np.tanh(a0 / softcap) * softcap)
            a1 = np.float32(np.tanh(a1 / softcap) * softcap)
            a2 = np.float32(np.tanh(a2 / softcap) * softcap)
            a3 = np.float32(np.tanh(a3 / softcap) * softcap)
        s0[j], s1[j], s2[j], s3[j] = a0, a1, a2, a3
        m0, m1, m2, m3 = max(m0, a0), max(m1, a1), max(m2, a2), max(m3, a3)
    i0 = np.float32(1.0) / exp_block(s0, 0, n, m0)
    i1 = np.float32(1.0) / exp_block(s1, 0, n, m1)
    i2 = np.float32(1.0) / exp_block(s2, 0, n, m2)
    i3 = np.float32(1.0) / exp_block(s3, 0, n, m3)
    o0 = np.zeros(d, np.float32)
    o1 = np.zeros(d, np.float32)
    o2 = np.zeros(d, np.float32)
    o3 = np.zeros(d, np.float32)
    for j in range(n):
        vj = values[lo + j]
        vs = value_scales[lo + j] if scaled else np.float32(1.0)
        p0, p1, p2, p3 = s0[j] * i0, s1[j] * i1, s2[j] * i2, s3[j] * i3
        if scaled:
            p0, p1, p2, p3 = p0 * vs, p1 * vs, p2 * vs, p3 * vs
        for i in range(d):
            v = widen(vj[i])
            o0[i] += p0 * v
            o1[i] += p1 * v
            o2[i] += p2 * v
            o3[i] += p3 * v
    for i in range(d):
        out[h0 * d + i] = o0[i]
    if count > 1:
        for i in range(d):
            out[h1 * d + i] = o1[i]
    if count > 2:
        for i in range(d):
            out[h2 * d + i] = o2[i]
    if count > 3:
        for i in range(d):
            out[h3 * d + i] = o3[i]


@helper
def attend_heads(q, keys, key_scales, values, value_scales, first, n, scale, softcap, threads, out):
    """Decode attention of one token: out [H·D] for q [H·D] over keys/values [KVH, L, D] stored
    (scales [KVH, L], or [KVH, 0] unscaled), positions first..first+n−1. One task per GROUP
    query heads of a KV head where a KV head has at least three and the tasks split evenly over
    the `threads` (the caller's: numba cannot cache a kernel that asks), else one per head. An
    uneven split cost more than grouping saved: BitNet-2B's 5 tasks at 2 threads decoded 50.7
    tok/s against 55.2 per head (depth 128), SmolLM2's 3 took 1.57 against 1.42 ms of attention
    a token at depth 1024. Inlined, so its prange is one of the caller's parallel regions."""
    kvh = keys.shape[0]
    d = keys.shape[2]
    rep = q.shape[0] // d // kvh
    per = (rep + GROUP - 1) // GROUP  # grouped tasks per KV head
    size = GROUP
    if rep < 3 or (kvh * per) % threads != 0:
        per, size = rep, 1
    for t in prange(kvh * per):
        kv = t // per
        h0 = kv * rep + (t % per) * size
        count = min(size, kv * rep + rep - h0)
        if count == 1:
            attend(q[h0 * d : (h0 + 1) * d], keys[kv], key_scales[kv], values[kv], value_scales[kv], first, n,
                   scale, out[h0 * d : (h0 + 1) * d], softcap)
        else:
            attend_group(q, h0, count, keys[kv], key_scales[kv], values[kv], value_scales[kv], first, n, scale,
                         out, softcap)


@kernel
def decode_attention(q, keys, key_scales, values, value_scales, first, n, scale, softcap, threads, out):
    """`attend_heads` as a kernel of its own (the tests'; decode_layers inlines the helper)."""
    attend_heads(q, keys, key_scales, values, value_scales, first, n, scale, softcap, threads, out)


@helper
def visible(pos, window):
    """(first position, count) a query at pos attends to."""
    lo = 0
    if window > 0 and pos - window + 1 > 0:
        lo = pos - window + 1
    return lo, pos + 1 - lo


Q_BLOCK = 16  # tokens per task (each with H/KVH query heads)


@helper
def widen_block(keys, key_scales, values, value_scales, b0, nb, kt, vb):
    """kt [D, K_BLOCK] = keys[b0:b0+nb]ᵀ and vb [K_BLOCK, D] = values[b0:b0+nb] as float32 (q8
    scales applied); columns / rows from nb on are zero."""
    d = keys.shape[1]
    scaled = key_scales.shape[0] > 0
    for j in range(K_BLOCK):
        if j < nb:
            kr = keys[b0 + j]
            vr = values[b0 + j]
            ks = key_scales[b0 + j] if scaled else np.float32(1.0)
            vs = value_scales[b0 + j] if scaled else np.float32(1.0)
            for i in range(d):
                kt[i, j] = widen(kr[i]) * ks
                vb[j, i] = widen(vr[i]) * vs
        else:
            for i in range(d):
                kt[i, j] = 0.0
                vb[j, i] = 0.0


@helper
def attend_rows(q, t0, t1, h0, rep, keys, key_scales, values, value_scales, start, window, scale, softcap, out):
    """Query heads h0..h0+rep−1 of tokens t0..t1−1 (one KV head: keys/values [L, D] stored,
    scales [L] or empty) into out [T, H·D], block by block with an online softmax per row."""
    d = keys.shape[1]
    nq = (t1 - t0) * rep
    qs = np.empty((nq, d), np.float32)
    for a in range(nq):
        src = q[t0 + a // rep, h0 + a % rep]
        for i in range(d):
            qs[a, i] = src[i] * scale
    run_max = np.full(nq, -np.inf, np.float32)
    run_sum = np.zeros(nq, np.float32)
    acc = np.zeros((nq, d), np.float32)
    kt = np.empty((d, K_BLOCK), np.float32)
    vb = np.empty((K_BLOCK, d), np.float32)
    s = np.empty(K_BLOCK, np.float32)
    lo_first, _ = visible(start + t0, window)
    end = start + t1
    for b0 in range(lo_first // K_BLOCK * K_BLOCK, end, K_BLOCK):
        nb = min(K_BLOCK, end - b0)
        widen_block(keys, key_scales, values, value_scales, b0, nb, kt, vb)
        for a in range(nq):
            pos = start + t0 + a // rep
            lo, n = visible(pos, window)
            j0 = max(lo, b0) - b0
            j1 = min(pos + 1, b0 + nb) - b0
            if j1 <= j0:
                continue
            score_block(qs[a], kt, s)
            if softcap > 0:
                best = run_max[a]
                for j in range(j0, j1):
                    v = np.float32(np.tanh(s[j] / softcap) * softcap)
                    s[j] = v
                    if v > best:
                        best = v
            else:
                best = block_max(s, j0, j1, run_max[a])
            fix = np.float32(np.exp(run_max[a] - best))  # 0 on a row's first block (its max was −inf)
            run_sum[a] = run_sum[a] * fix + exp_block(s, j0, j1, best)  # s: the weights, 0 off [j0, j1)
            run_max[a] = best
            row = acc[a]
            if d % VECTOR_DIM == 0:
                accumulate_block(row, s, vb, fix)
            else:
                for i in range(d):
                    row[i] *= fix
                for j in range(j0, j1):
                    p = s[j]
                    vj = vb[j]
                    for i in range(d):
                        row[i] += p * vj[i]
    for a in range(nq):
        t = t0 + a // rep
        h = h0 + a % rep
        inv = np.float32(1.0) / run_sum[a]
        dst = out[t, h * d : (h + 1) * d]
        for i in range(d):
            dst[i] = acc[a, i] * inv


@helper
def from_both_ends(i, n):
    """The i-th of 0, n−1, 1, n−2, 2, …: prange gives each thread one contiguous run of its
    range, and under the causal mask a late query block costs more than an early one, so in
    this order every run holds as many of each. In token order the second of two threads got
    3/4 of a prompt's attention (SmolLM2 pp512: 7.1 ms a layer at 2 threads, as at 1)."""
    return i // 2 if i % 2 == 0 else n - 1 - i // 2


@kernel
def attention(q, keys, values, start, window, out, scale=0.0, softcap=0.0, key_scales=None, value_scales=None):
    """out [T, H*D] = softmax(q kᵀ · scale + causal mask) v, per query head.

    q [T, H, D] f32; keys/values [KVH, ≥ start+T, D] f32, or f16 bits (uint16), or q8 (int8 with
    key_scales/value_scales [KVH, ≥ start+T]; [KVH, 0] or None when unscaled); window 0 means no
    sliding window; scale 0 means 1/sqrt(D); softcap > 0 soft-caps the scores (see `attend`).
    """
    t_len, n_heads, d = q.shape
    kvh = keys.shape[0]
    rep = n_heads // kvh
    scale = np.float32(1.0 / math.sqrt(d)) if scale == 0 else np.float32(scale)
    none = np.empty(0, np.float32)
    n_blocks = (t_len + Q_BLOCK - 1) // Q_BLOCK
    for task in prange(n_blocks * kvh):
        kv = task % kvh
        t0 = from_both_ends(task // kvh, n_blocks) * Q_BLOCK
        t1 = min(t_len, t0 + Q_BLOCK)
        if key_scales is None:
            attend_rows(q, t0, t1, kv * rep, rep, keys[kv], none, values[kv], none, start, window, scale,
                        softcap, out)
        else:
            attend_rows(q, t0, t1, kv * rep, rep, keys[kv], key_scales[kv], values[kv], value_scales[kv], start,
                        window, scale, softcap, out)


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
