"""How fast this machine streams memory at a given thread count: the ceiling decode runs against.

Decode reads every weight once a token, so its speed is bounded by the bytes a token reads over
the rate at which the cores can read memory. `read_bandwidth` measures that rate the way decode
reads: each thread one contiguous run of a buffer larger than the caches, with the same software
prefetch distance as the matvec rows (kernels.matvec.PREFETCH_BYTES). `lowbit bench --read-ceiling`
prints it beside the weights' own read rate, and tools/bench_vs_llamacpp.py records it next to
every timed run.

Why it is worth a column: on a shared VM the rate is not a constant of the machine. On the 2-vCPU
Zen 5 VM of the benchmarks, two threads read 47-50 GB/s in one placement of the vCPUs on the
host and 73-77 GB/s in another, from one process to the next, and decode at two threads follows.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import prange

from lowbit.runtime.kernels.jit import kernel, prefetch
from lowbit.runtime.kernels.matvec import PREFETCH_BYTES

PROBE_BYTES = 256 << 20  # 8 × a 32 MiB L3: almost every line comes from memory
WORDS_AHEAD = PREFETCH_BYTES // 8
LINE_WORDS = 8  # 64-byte lines of uint64 words


@kernel
def read_sum(words, parts):
    """Σ words (mod 2^64), `parts` contiguous runs summed by as many parallel tasks: the read is
    the point, the sum only keeps the compiler from dropping it (and lets tests check it)."""
    n = words.shape[0]
    lines = n // LINE_WORDS
    per = (lines + parts - 1) // parts  # whole 64-byte lines a task
    sums = np.zeros(parts, np.uint64)
    for p in prange(parts):
        lo, hi = p * per, min(lines, (p + 1) * per)
        acc = np.zeros(LINE_WORDS, np.uint64)  # one lane a word of the line: a vector add each
        for line in range(lo, hi):
            i = line * LINE_WORDS
            if i + WORDS_AHEAD < n:
                prefetch(words, i + WORDS_AHEAD)
            for k in range(LINE_WORDS):
                acc[k] += words[i + k]
        sums[p] = acc.sum()
    for i in range(lines * LINE_WORDS, n):  # the words after the last whole line
        sums[0] += words[i]
    total = np.uint64(0)
    for p in range(parts):
        total += sums[p]
    return total


def read_sum_ref(words: np.ndarray) -> int:
    """numpy's twin of read_sum (uint64 sums wrap the same way)."""
    return int(np.sum(words, dtype=np.uint64))


class ReadProbe:
    """A buffer kept for repeated probes (allocating and touching 256 MB takes longer than
    reading it), and the probe itself."""

    def __init__(self, nbytes: int = PROBE_BYTES) -> None:
        self.words = np.ones(max(nbytes // 8, LINE_WORDS), np.uint64)

    def gbs(self, threads: int | None = None, repeats: int = 3) -> float:
        """The best of `repeats` reads of the whole buffer, in GB/s, at `threads` threads (default:
        numba's current count; the count is restored afterwards)."""
        before = numba.get_num_threads()
        threads = threads or before
        numba.set_num_threads(threads)
        try:
            read_sum(self.words[:LINE_WORDS * threads], threads)  # compiled or loaded before timing
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                read_sum(self.words, threads)
                best = min(best, time.perf_counter() - t0)
        finally:
            numba.set_num_threads(before)
        return self.words.nbytes / best / 1e9


def read_bandwidth(threads: int | None = None, nbytes: int = PROBE_BYTES, repeats: int = 3) -> float:
    """GB/s that `threads` threads read from memory (a fresh buffer of `nbytes`)."""
    return ReadProbe(nbytes).gbs(threads, repeats)
