"""Sampling: SamplingParams and make_sampler(), which picks the next token from a logits vector.

The order is llama.cpp's and transformers': repetition penalty -> temperature -> top-k -> top-p ->
min-p -> draw. Everything is vectorised numpy; the only work proportional to the vocabulary is a
few passes over the logits (no sort of the whole vocabulary unless top-p needs it).

Each Sampler owns its `numpy.random.Generator`, so the same seed gives the same tokens for the same
logits and two samplers (two chats, two threads) never disturb each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lowbit.runtime.errors import LowbitError

# Top-p first looks for the nucleus among this many best tokens; a full sort only if it is wider.
_NUCLEUS_PROBE = 256


class InvalidSamplingParams(LowbitError, ValueError):
    """A sampling option is out of range."""


@dataclass
class SamplingParams:
    """How to choose tokens. The defaults are greedy decoding with every filter off."""

    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # 0.0 = off; keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages recent tokens
    repetition_context: int = 64  # how many recent ids (prompt included) the penalties look at
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from the logit of every recent id
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence of a recent id
    seed: int | None = None  # None = fresh entropy
    max_tokens: int | None = None  # None = the caller's default
    stop: list[str] = field(default_factory=list)  # stop strings; not part of the output

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 turns it off)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.repetition_context >= 0, "repetition_context must be >= 0"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
            (self.max_tokens is None or self.max_tokens >= 0, "max_tokens must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidSamplingParams(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def apply_repetition_penalty(
    logits: np.ndarray, previous_ids: Sequence[int], penalty: float, context: int
) -> np.ndarray:
    """Divide positive logits and multiply negative ones of recently seen ids (CTRL, llama.cpp).

    Each id is penalised once however often it occurs. Returns a new array; `logits` is untouched.
    """
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or context <= 0 or len(previous_ids) == 0:
        return out
    recent = np.asarray(previous_ids[-context:], dtype=np.int64)
    recent = np.unique(recent[(recent >= 0) & (recent < out.shape[0])])
    values = out[recent]
    out[recent] = np.where(values > 0, values / penalty, values * penalty)
    return out


class Sampler:
    """Callable: (logits [vocab], previous ids) -> next token id."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, previous_ids: Sequence[int] = ()) -> int:
        p = self.params
        if p.greedy:
            x = self._penalised(np.asarray(logits).reshape(-1), previous_ids)
            best = int(np.argmax(x))
            if np.isnan(x[best]):
                raise ValueError("logits contain NaN")
            return best
        ids, weights = self._filtered(logits, previous_ids)
        cdf = np.cumsum(weights)
        i = min(
            int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), cdf.shape[0] - 1
        )
        return int(ids[i]) if ids is not None else i

    def _penalised(self, x: np.ndarray, previous_ids: Sequence[int]) -> np.ndarray:
        """Repetition penalty (CTRL), then presence and frequency penalties (OpenAI), over the
        last repetition_context ids; x itself is never modified."""
        p = self.params
        if p.repetition_penalty != 1.0:
            x = apply_repetition_penalty(x, previous_ids, p.repetition_penalty, p.repetition_context)
        if (p.presence_penalty or p.frequency_penalty) and p.repetition_context > 0 and len(previous_ids):
            recent = np.asarray(previous_ids[-p.repetition_context :], dtype=np.int64)
            ids, counts = np.unique(recent[(recent >= 0) & (recent < x.shape[0])], return_counts=True)
            x = np.array(x, dtype=np.float32, copy=True)
            x[ids] -= np.float32(p.presence_penalty) + np.float32(p.frequency_penalty) * counts.astype(np.float32)
        return x

    def distribution(
        self, logits: np.ndarray, previous_ids: Sequence[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """(candidate ids, their probabilities) after every filter: what __call__ draws from.

        Not for greedy parameters (temperature 0 has no distribution).
        """
        if self.params.temperature == 0.0:
            raise ValueError("greedy sampling has no distribution")
        ids, weights = self._filtered(logits, previous_ids)
        if ids is None:
            ids = np.arange(weights.shape[0])
        return ids, weights / weights.sum()

    def _filtered(
        self, logits: np.ndarray, previous_ids: Sequence[int]
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(candidate ids or None for all, unnormalised float64 weights) after every filter."""
        p = self.params
        x = self._penalised(np.asarray(logits, dtype=np.float32).reshape(-1), previous_ids)
        ids: np.ndarray | None = None  # None: every id, in order
        if 0 < p.top_k < x.shape[0]:
            # Temperature keeps the order, so select on the raw logits and scale only k of them.
            ids = np.argpartition(x, -p.top_k)[-p.top_k :]
            x = x[ids]
        top = x.max()
        if not np.isfinite(top):
            raise ValueError("logits contain NaN or no finite value")
        e = np.exp((x - top) / np.float32(p.temperature))
        probs = e / e.sum(dtype=np.float64)  # float64 sums: cumulative mass over 100k+ tokens
        if p.top_p < 1.0:
            keep = self._nucleus(probs, p.top_p)
            probs = probs[keep]
            ids = keep if ids is None else ids[keep]
        if p.min_p > 0.0:
            keep = np.flatnonzero(probs >= p.min_p * probs.max())
            probs = probs[keep]
            ids = keep if ids is None else ids[keep]
        return ids, probs

    @staticmethod
    def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
        """Indices of the smallest set of most probable tokens whose mass reaches top_p
        (transformers' and llama.cpp's top-p: the token that crosses top_p is kept)."""
        n = probs.shape[0]
        # The nucleus is usually small: partition out the best m, sort only those, widen if short.
        m = _NUCLEUS_PROBE
        while True:
            if m >= n:
                idx = np.argsort(-probs)
                break
            idx = np.argpartition(probs, -m)[-m:]
            if probs[idx].sum() >= top_p:
                idx = idx[np.argsort(-probs[idx])]
                break
            m *= 16
        cum = np.cumsum(probs[idx])
        k = int(np.searchsorted(cum, top_p, side="left")) + 1
        return idx[: min(k, idx.shape[0])]


def make_sampler(params: SamplingParams | None = None) -> Sampler:
    """A sampler with its own random generator (seeded from params.seed)."""
    return Sampler(params or SamplingParams())
