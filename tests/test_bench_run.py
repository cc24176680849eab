"""lowbit.bench's prompt builder and timed run, which `lowbit bench` and
tools/bench_vs_llamacpp.py share: the prompt avoids the ids it must, and a run decodes the
greedy chain of whatever model it is given."""

from __future__ import annotations

import numpy as np

from lowbit.bench import ordinary_ids, run_once, timed_run


def test_ordinary_ids_avoid_and_fill():
    """Exactly n ids from the middle of the vocabulary, none avoided, the same for the same seed;
    a small vocabulary where avoided ids are drawn still gives n (drawing again)."""
    ids = ordinary_ids(49152, 300, {1500, 2000})
    assert len(ids) == 300 and ids == ordinary_ids(49152, 300, {1500, 2000})
    assert all(1000 <= i < 49152 // 2 for i in ids)
    assert ids != ordinary_ids(49152, 300, set(), seed=1)
    avoid = set(range(64, 120))  # vocab 256 draws from [64, 128): most ids avoided
    small = ordinary_ids(256, 50, avoid)
    assert len(small) == 50 and all(120 <= i < 128 for i in small)
    # with nothing avoided the first draw is used as is
    rng = np.random.default_rng(0)
    assert ordinary_ids(256, 50, set()) == [int(i) for i in rng.integers(64, 128, size=50)]


class Chain:
    """A model whose logits after token t peak at (3t + 1) mod V; records what it was fed."""

    def __init__(self, vocab: int = 97) -> None:
        self.vocab = vocab
        self.fed: list[int] = []

    def reset(self) -> None:
        self.fed = []

    def _logits(self, t: int) -> np.ndarray:
        out = np.zeros(self.vocab, np.float32)
        out[(3 * t + 1) % self.vocab] = 1.0
        return out

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.fed += ids
        return self._logits(ids[-1])

    def decode(self, tok: int) -> np.ndarray:
        self.fed.append(tok)
        return self._logits(tok)


def test_timed_run_decodes_the_greedy_chain():
    m = Chain()
    m.fed = [99]  # reset first: a run never continues an earlier one
    r = timed_run(m, [5, 7], 4)
    want = [22]
    for _ in range(4):
        want.append((3 * want[-1] + 1) % 97)
    assert r.tokens == want
    assert m.fed == [5, 7, *want[:4]]  # each picked token fed back once; the last only picked
    assert 0 < r.prefill_s <= r.time_to_first_token_s and r.decode_s > 0
    pre, dec = run_once(m, [5, 7], 4)
    assert m.fed == [5, 7, *want[:4]] and pre > 0 and dec > 0
