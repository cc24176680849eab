"""Perplexity and KL divergence the way llama.cpp's `perplexity` tool computes them.

The text is tokenised once and cut into non-overlapping windows of `ctx` tokens (a trailing
partial window is dropped); the first token of each window becomes BOS when the model adds one;
only the second half of each window is scored (positions ctx/2 .. ctx-2 predict the next token),
so every scored token has at least ctx/2 tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lowbit.errors import LowbitError

Progress = Callable[[int, int], None]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def make_windows(tokens: list[int], ctx: int, bos: int | None) -> list[list[int]]:
    n = len(tokens) // ctx
    if n == 0:
        raise LowbitError(f"the text has {len(tokens)} tokens, fewer than one window of --ctx {ctx}")
    out = []
    for i in range(n):
        w = list(tokens[i * ctx : (i + 1) * ctx])
        if bos is not None:
            w[0] = bos
        out.append(w)
    return out


def scored_logprobs(logits: np.ndarray, window: list[int], offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities [n, vocab] of the scored positions (the window's second half) and the
    tokens they predict [n]; logits[i] is position offset + i of the window."""
    first = len(window) // 2
    if not 0 <= offset <= first:
        raise ValueError(f"logits from position {offset} miss the scored positions from {first}")
    lp = log_softmax(logits[first - offset : len(window) - 1 - offset])
    return lp, np.asarray(window[first + 1 :], dtype=np.int64)


def window_logprobs(llm, window: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """scored_logprobs of one window through a lowbit model, its head run on the scored half only."""
    first = len(window) // 2
    return scored_logprobs(llm.logits(window, first=first), window, offset=first)


@dataclass
class PerplexityResult:
    ppl: float
    ppl_error: float  # one standard error, propagated from the per-token NLL spread
    nll: float
    tokens_scored: int
    windows: int
    ctx: int


def _ppl_from_nll(nll: np.ndarray) -> tuple[float, float, float]:
    mean = float(nll.mean())
    err = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    ppl = math.exp(mean)
    return ppl, ppl * err, mean


def model_bos(llm) -> int | None:
    """BOS replaces each window's first token only for models whose tokenizer adds one."""
    tok = llm.tokenizer
    probe = tok.encode("a", add_special_tokens=True)
    bos = tok.bos_token_id
    return bos if bos is not None and probe and probe[0] == bos else None


def text_tokens(llm, text: str) -> list[int]:
    return llm.tokenize(text, add_special_tokens=False)


def perplexity(llm, text: str, ctx: int = 512, progress: Progress | None = None) -> PerplexityResult:
    windows = make_windows(text_tokens(llm, text), ctx, model_bos(llm))
    nll = []
    for i, w in enumerate(windows):
        lp, targets = window_logprobs(llm, w)
        nll.append(-lp[np.arange(len(targets)), targets])
        if progress:
            progress(i + 1, len(windows))
    all_nll = np.concatenate(nll)
    ppl, err, mean = _ppl_from_nll(all_nll)
    return PerplexityResult(ppl, err, mean, len(all_nll), len(windows), ctx)


@dataclass
class KLResult:
    kl_mean: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    ppl: float
    ppl_ref: float
    tokens_scored: int
    windows: int
    ctx: int


def kl_divergence(llm, ref, text: str, ctx: int = 512, progress: Progress | None = None) -> KLResult:
    """KL(P_ref ‖ P_model) per scored token, with top-1 agreement and both perplexities."""
    tokens = text_tokens(llm, text)
    if text_tokens(ref, text) != tokens:
        raise LowbitError("the model and the reference tokenise the text differently; KL needs the same tokenizer")
    windows = make_windows(tokens, ctx, model_bos(llm))
    kls, agree, nll, nll_ref = [], [], [], []
    for i, w in enumerate(windows):
        lp, targets = window_logprobs(llm, w)
        lr, _ = window_logprobs(ref, w)
        kls.append((np.exp(lr) * (lr - lp)).sum(axis=-1))
        agree.append(lp.argmax(-1) == lr.argmax(-1))
        idx = np.arange(len(targets))
        nll.append(-lp[idx, targets])
        nll_ref.append(-lr[idx, targets])
        if progress:
            progress(i + 1, len(windows))
    kl = np.maximum(np.concatenate(kls), 0.0)
    return KLResult(
        kl_mean=float(kl.mean()),
        kl_median=float(np.median(kl)),
        kl_p99=float(np.percentile(kl, 99)),
        kl_max=float(kl.max()),
        top1_agreement=float(np.concatenate(agree).mean()),
        ppl=_ppl_from_nll(np.concatenate(nll))[0],
        ppl_ref=_ppl_from_nll(np.concatenate(nll_ref))[0],
        tokens_scored=len(kl),
        windows=len(windows),
        ctx=ctx,
    )
