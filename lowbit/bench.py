"""Benchmark one model: load time, time to first token, prefill and decode tokens/s, peak RSS.

Medians over repeats; kernels are warmed up (compiled or loaded from numba's cache) before any
timing, so first-run compilation never counts. At a depth N (llama-bench's -d) the cache first
holds N tokens of context, run untimed as a prompt; prefill and decode are then timed after them.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchRow:
    threads: int
    prompt_tokens: int
    gen_tokens: int
    time_to_first_token_s: float
    prefill_tps: float
    decode_tps: float
    depth: int = 0


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def bench_prompt(llm, n: int, seed: int = 0) -> list[int]:
    """n ordinary (non-special) token ids: benchmark speed does not depend on the text."""
    rng = np.random.default_rng(seed)
    vocab = llm.args.vocab_size
    specials = set(llm.tokenizer.eos_token_ids)
    ids = [int(i) for i in rng.integers(min(1000, vocab // 4), vocab // 2, size=n + 64)]
    return [i for i in ids if i not in specials][:n]


def run_once(llm, prompt: list[int], gen_tokens: int, context: list[int] | None = None) -> tuple[float, float]:
    """(prefill seconds, decode seconds for gen_tokens greedy tokens), after `context` tokens
    already in the cache (run untimed first; the timed prefill reuses them as a prefix)."""
    llm.reset()
    if context:
        llm.prefill(context)
        prompt = context + prompt
    t0 = time.perf_counter()
    logits = llm.prefill(prompt)
    t1 = time.perf_counter()
    for _ in range(gen_tokens):
        logits = llm.decode(int(np.argmax(logits)))
    return t1 - t0, time.perf_counter() - t1


def bench_model(llm, prompt_tokens: int = 128, gen_tokens: int = 128, threads: list[int] | None = None,
                repeats: int = 3, depths: list[int] | None = None) -> list[BenchRow]:
    """One row per (thread count, depth); the context before each depth is the same text."""
    rows = []
    prompt = bench_prompt(llm, prompt_tokens)
    context = bench_prompt(llm, max(depths or [0]), seed=1)
    for n in threads or [llm.threads]:
        llm.threads = n
        run_once(llm, prompt[:8], 2)  # warm the caches for this thread count
        for depth in depths or [0]:
            pre, dec = [], []
            for _ in range(repeats):
                p, d = run_once(llm, prompt, gen_tokens, context[:depth])
                pre.append(p)
                dec.append(d)
            p, d = statistics.median(pre), statistics.median(dec)
            rows.append(BenchRow(n, len(prompt), gen_tokens, p, len(prompt) / p, gen_tokens / d, depth))
    return rows


def bench_report(path: Path, load_s: float, rows: list[BenchRow], summary: dict) -> dict:
    return {
        "model": str(path),
        "file_size_bytes": path.stat().st_size,
        "bits_per_weight": summary.get("bits_per_weight"),
        "linear_bits_per_weight": summary.get("linear_bits_per_weight"),
        "load_seconds": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "runs": [asdict(r) for r in rows],
    }
