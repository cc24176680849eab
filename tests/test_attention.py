"""The attention kernel against its numpy reference: GQA, causal mask, sliding window, threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from lowbit.runtime.kernels.attention import attention, attention_ref


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
