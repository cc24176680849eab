"""The attention kernel against its numpy reference: GQA, causal mask, sliding window, threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from lowbit.runtime.kernels.attention import attention, attention_ref, decode_attention
from lowbit.runtime.kernels.kv_store import load_ref, store_ref


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("t_len,start,window", [(1, 0, 0), (1, 40, 0), (17, 0, 0), (9, 23, 0), (30, 5, 8), (1, 60, 16)])
def test_attention_matches_reference(threads, t_len, start, window):
    rng = np.random.default_rng(t_len * 100 + start)
    heads, kv_heads, d = 6, 2, 16
    q = rng.standard_normal((t_len, heads, d)).astype(np.float32)
    keys = rng.standard_normal((kv_heads, start + t_len + 5, d)).astype(np.float32)
    values = rng.standard_normal((kv_heads, start + t_len + 5, d)).astype(np.float32)
    keys[:, start + t_len :] = 1e6  # positions beyond the last query must never be read
    out = np.empty((t_len, heads * d), np.float32)
    numba.set_num_threads(threads)
    attention(q, keys, values, start, window, out)
    ref = attention_ref(q, keys, values, start, window)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


@pytest.mark.parametrize("d,softcap", [(12, 0.0), (64, 0.0), (32, 5.0)])
def test_many_queries_match_reference_any_head_dim_and_softcap(d, softcap):
    """Head dims off the 16-lane vector (the loop fallback) and on it, with and without soft-capping;
    43 queries cross several query blocks and key blocks."""
    rng = np.random.default_rng(d)
    q = rng.standard_normal((43, 8, d)).astype(np.float32) * 2
    keys = rng.standard_normal((2, 80, d)).astype(np.float32)
    values = rng.standard_normal((2, 80, d)).astype(np.float32)
    out = np.empty((43, 8 * d), np.float32)
    attention(q, keys, values, 30, 0, out, 0.0, softcap)
    ref = attention_ref(q, keys, values, 30, 0, 0.0, softcap)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


def test_a_query_row_has_the_same_bits_whatever_runs_with_it():
    """Prefix reuse and batching rely on it: the last tokens alone (T = 1 and 3) get the bits they
    got inside a 40-token prefill, with a window too."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((40, 4, 64)).astype(np.float32)
    keys = rng.standard_normal((2, 50, 64)).astype(np.float32)
    values = rng.standard_normal((2, 50, 64)).astype(np.float32)
    for window in (0, 19):
        full = np.empty((40, 4 * 64), np.float32)
        attention(q, keys, values, 0, window, full)
        for n in (1, 3, 11):
            part = np.empty((n, 4 * 64), np.float32)
            attention(np.ascontiguousarray(q[40 - n :]), keys, values, 40 - n, window, part)
            assert np.array_equal(part, full[40 - n :]), (window, n)


@pytest.mark.parametrize("d", [48, 64, 128])  # accumulate_block: 16 lanes at a time, then 64
def test_vector_steps_match_numpy(d):
    """score_block, exp_block (masked lanes zero, the sum of the rest) and accumulate_block."""
    from numba import njit

    from lowbit.runtime.kernels import attention_simd as a

    @njit
    def run(qa, kt, s, e, j0, j1, best, row, vb, fix):
        a.score_block(qa, kt, s)
        total = a.exp_block(e, j0, j1, best)
        a.accumulate_block(row, e, vb, fix)
        return total

    rng = np.random.default_rng(3)
    qa = rng.standard_normal(d).astype(np.float32)
    kt = rng.standard_normal((d, a.K_BLOCK)).astype(np.float32)
    s = np.empty(a.K_BLOCK, np.float32)
    x = (rng.standard_normal(a.K_BLOCK) * 8).astype(np.float32)
    e = x.copy()
    row = rng.standard_normal(d).astype(np.float32)
    vb = rng.standard_normal((a.K_BLOCK, d)).astype(np.float32)
    best = np.float32(x[5:27].max())
    total = run(qa, kt, s, e, 5, 27, best, row.copy(), vb, np.float32(0.5))
    np.testing.assert_allclose(s, a.score_block_ref(qa, kt), rtol=1e-5, atol=1e-5)
    ref_e, ref_total = a.exp_block_ref(x, 5, 27, float(best))
    assert not e[:5].any() and not e[27:].any()
    np.testing.assert_allclose(e, ref_e, rtol=3e-6, atol=1e-30)
    assert abs(total - ref_total) <= 1e-6 * ref_total
    got = row.copy()
    run(qa, kt, s, x.copy(), 5, 27, best, got, vb, np.float32(0.5))
    np.testing.assert_allclose(got, a.accumulate_block_ref(row, ref_e.astype(np.float32), vb, 0.5), rtol=1e-5, atol=1e-5)
    # exp over its whole float32 range, relative error of the polynomial
    y = np.linspace(-87, 0, a.K_BLOCK * 4).astype(np.float32)
    z = y.copy()
    run(qa, kt, s, z, 0, z.size, np.float32(0.0), row.copy(), vb, np.float32(1.0))
    assert np.abs(z / np.exp(y.astype(np.float64)) - 1).max() < 3e-6


def test_block_max_and_odd_head_dims_against_numpy():
    """block_max takes only the lanes of [j0, j1) (larger scores outside must not leak in) and
    keeps a larger running max; score_block's even/odd accumulators with an odd D."""
    from numba import njit

    from lowbit.runtime.kernels import attention_simd as a

    @njit
    def block_max(s, j0, j1, best):
        return a.block_max(s, j0, j1, best)

    @njit
    def score(qa, kt, s):
        a.score_block(qa, kt, s)

    rng = np.random.default_rng(5)
    s = rng.standard_normal(a.K_BLOCK).astype(np.float32)
    s[0], s[31], s[16] = 50.0, 60.0, -40.0
    for j0, j1, best in ((1, 31, -np.inf), (0, 32, -np.inf), (3, 17, 0.5), (15, 17, -np.inf), (9, 9, -3.0),
                         (2, 30, 100.0)):
        assert block_max(s, j0, j1, np.float32(best)) == np.float32(a.block_max_ref(s, j0, j1, best))
    for d in (1, 47, 64):
        qa = rng.standard_normal(d).astype(np.float32)
        kt = rng.standard_normal((d, a.K_BLOCK)).astype(np.float32)
        out = np.empty(a.K_BLOCK, np.float32)
        score(qa, kt, out)
        np.testing.assert_allclose(out, a.score_block_ref(qa, kt), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["f32", "f16", "q8"])
@pytest.mark.parametrize("heads,kv_heads,d", [(20, 5, 128), (9, 3, 64), (8, 2, 32), (6, 3, 16), (4, 4, 48), (10, 2, 16)])
def test_decode_attention_matches_reference(kind, heads, kv_heads, d):
    """Decode's attention (`attend_heads`: four query heads of a KV head a pass where a KV head has
    at least three, else one) on every cache form, with a window and soft-capping, at 1 and 2
    threads: the reference on the values the cache stands for."""
    rng = np.random.default_rng(heads * 7 + d)
    pos, cap = 70, 200
    q = rng.standard_normal(heads * d).astype(np.float32) * 2
    k = rng.standard_normal((kv_heads, cap, d)).astype(np.float32)
    v = rng.standard_normal((kv_heads, cap, d)).astype(np.float32)
    keys, ks = store_ref(kind, k)
    values, vs = store_ref(kind, v)
    none = np.zeros((kv_heads, 0), np.float32)
    ks, vs = (none, none) if ks is None else (ks, vs)
    kf, vf = load_ref(kind, keys, None if kind != "q8" else ks), load_ref(kind, values, None if kind != "q8" else vs)
    kf[:, pos + 1 :] = vf[:, pos + 1 :] = 0  # the reference sees only what decode may read
    for window, softcap in ((0, 0.0), (25, 0.0), (0, 3.0)):
        first, n = (pos - window + 1, window) if window else (0, pos + 1)
        ref = attention_ref(q.reshape(1, heads, d), kf, vf, pos, window, 0.0, softcap)[0]
        for threads in (1, 2):
            numba.set_num_threads(threads)
            out = np.full(heads * d, np.nan, np.float32)
            decode_attention(q, keys, ks, values, vs, first, n, np.float32(1.0 / np.sqrt(d)), softcap, threads, out)
            assert np.abs(out - ref).max() <= 2e-5 * np.abs(ref).max() + 1e-6, (window, softcap, threads)
