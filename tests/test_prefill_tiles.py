"""The prefill tiles that run several tokens per pass over a weight row, against their one-token
twins: the ternary 4-token dots (exact integers, so equal bits) over the int8 range's extremes."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from lowbit.runtime.kernels import ternary


@njit
def _tokens(codes, xq, t, three):
    if three:
        return ternary.dot_ternary_1p6_tokens(codes, xq, t)
    return ternary.dot_ternary_tokens(codes, xq, t)


@njit
def _generic(codes, xq, t, three):
    if three:
        return ternary.dot_ternary_1p6_tokens_generic(codes, xq, t)
    return ternary.dot_ternary_tokens_generic(codes, xq, t)


@pytest.mark.parametrize("three", [False, True], ids=["ternary", "ternary-1.6"])
@pytest.mark.parametrize("q", [32, 160, 640])
def test_token_tile_dots_equal_one_token_dots(q, three):
    rng = np.random.default_rng(q + three)
    streams = 5 if three else 4
    codes = rng.integers(0, 243 if three else 256, q).astype(np.uint8)
    xq = rng.integers(-128, 128, (7, streams * q + 64)).astype(np.int8)
    xq[2] = -128  # the extremes: int16 pair sums at their largest
    xq[3] = 127
    codes_max = np.full(q, 242 if three else 170, np.uint8)  # every code 2
    for c in (codes, codes_max):
        for t in (0, 2, 3):
            got = _tokens(c, xq, t, three)
            assert got == _generic(c, xq, t, three)
            if three:
                digits = [(c.astype(np.int64) // 3**j) % 3 for j in range(5)]
            else:
                digits = [(c.astype(np.int64) >> (2 * j)) & 3 for j in range(4)]
            want = tuple(int(sum(digits[j] @ xq[t + u, j * q : (j + 1) * q].astype(np.int64) for j in range(streams)))
                         for u in range(4))
            assert got == want


def test_prefill_rows_do_not_depend_on_the_batch():
    """A token's output is the same bits alone, in the 4-token passes or in the remainder."""
    rng = np.random.default_rng(1)
    from lowbit.formats.encodings import ENCODINGS

    for enc, fn in (("ternary", ternary.ternary_prefill), ("ternary-1.6", ternary.ternary_1p6_prefill)):
        entry = ENCODINGS[enc].pack(rng.integers(-1, 2, (37, 700)), (rng.random(37) + 0.5).astype(np.float32))
        codes, scale = entry.parts["codes"], entry.parts["scale"]
        x = rng.standard_normal((11, 700)).astype(np.float32)
        qa = ternary.quantize_activation(x)
        full = np.empty((11, 37), np.float32)
        fn(qa.xq, qa.xsum, qa.s, codes, scale, full)
        for lo, hi in ((0, 1), (8, 11), (3, 10)):
            part = np.empty((hi - lo, 37), np.float32)
            fn(np.ascontiguousarray(qa.xq[lo:hi]), qa.xsum[lo:hi].copy(), qa.s[lo:hi].copy(), codes, scale, part)
            assert np.array_equal(part, full[lo:hi]), (enc, lo, hi)
