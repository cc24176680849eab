"""The memory read probe (runtime.read_bandwidth): its kernel reads every word exactly once."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from lowbit.runtime.read_bandwidth import ReadProbe, read_sum, read_sum_ref


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 8 * 4096 + 5, 100_003])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_read_sum_matches_numpy(n, parts):
    words = np.random.default_rng(n).integers(0, 2**64, n, dtype=np.uint64)  # sums wrap mod 2^64
    assert read_sum(words, parts) == read_sum_ref(words)
    words[-1] += np.uint64(1)  # every word counts, the last one (past the whole lines) too
    assert read_sum(words, parts) == read_sum_ref(words)


def test_probe_restores_the_thread_count():
    before = numba.get_num_threads()
    gbs = ReadProbe(1 << 20).gbs(1, repeats=1)
    assert numba.get_num_threads() == before
    assert np.isfinite(gbs) and gbs > 0
