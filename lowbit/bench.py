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
    read_ceiling_gbs: float | None = None  # this machine's memory read rate at `threads` (ReadProbe)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def ordinary_ids(vocab: int, n: int, avoid: set[int], seed: int = 0) -> list[int]:
    """n token ids drawn from the middle of the vocabulary, none in `avoid`: benchmark speed does
    not depend on the text, and the same seed gives every engine the same prompt."""
    rng = np.random.default_rng(seed)
    lo, hi = min(1000, vocab // 4), vocab // 2
    ids: list[int] = []
    while len(ids) < n:
        ids += [int(i) for i in rng.integers(lo, hi, size=n) if int(i) not in avoid]
    return ids[:n]


def bench_prompt(llm, n: int, seed: int = 0) -> list[int]:
    """n ordinary (non-special) token ids for `llm`."""
    return ordinary_ids(llm.args.vocab_size, n, set(llm.tokenizer.eos_token_ids), seed)


@dataclass
class TimedRun:
    prefill_s: float  # prefill of the prompt
    time_to_first_token_s: float  # prefill and picking the first token
    decode_s: float  # gen_tokens greedy decode steps after the first token
    tokens: list[int]  # the first token and the gen_tokens decoded after it


def timed_run(model, prompt: list[int], gen_tokens: int, context: list[int] | None = None) -> TimedRun:
    """Reset, prefill `prompt`, then greedy-decode gen_tokens tokens, timing each phase. `model` is
    anything with reset(), prefill(ids) and decode(token) returning logits (an LLM, or
    tools/bench_vs_llamacpp.py's engine adapters). `context` tokens (decode at depth) are run
    untimed first; the timed prefill reuses them as a cached prefix."""
    model.reset()
    if context:
        model.prefill(context)
        prompt = context + prompt
    t0 = time.perf_counter()
    logits = model.prefill(prompt)
    tp = time.perf_counter()
    tok = int(np.argmax(logits))
    t1 = time.perf_counter()
    tokens = [tok]
    for _ in range(gen_tokens):
        tok = int(np.argmax(model.decode(tok)))
        tokens.append(tok)
    return TimedRun(tp - t0, t1 - t0, time.perf_counter() - t1, tokens)


def run_once(llm, prompt: list[int], gen_tokens: int, context: list[int] | None = None) -> tuple[float, float]:
    """(prefill seconds, decode seconds for gen_tokens greedy tokens, counted from prefill's end),
    after `context` tokens already in the cache."""
    run = timed_run(llm, prompt, gen_tokens, context)
    return run.prefill_s, run.time_to_first_token_s - run.prefill_s + run.decode_s


def bench_model(llm, prompt_tokens: int = 128, gen_tokens: int = 128, threads: list[int] | None = None,
                repeats: int = 3, depths: list[int] | None = None, probe=None) -> list[BenchRow]:
    """One row per (thread count, depth); the context before each depth is the same text. With
    `probe` (a runtime.read_bandwidth.ReadProbe) each row also holds the memory read rate measured
    right after its decode runs, at the same thread count, in the same process."""
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
            ceiling = probe.gbs(n) if probe is not None else None
            rows.append(BenchRow(n, len(prompt), gen_tokens, p, len(prompt) / p, gen_tokens / d, depth, ceiling))
    return rows


def weights_read_gbs(decode_tps: float, summary: dict) -> float | None:
    """GB/s of weights a decode at `decode_tps` streams (summary: lowbit.file_info.summarize's)."""
    per_token = summary.get("decode_read_bytes")
    return per_token * decode_tps / 1e9 if per_token else None


def bench_report(path: Path, load_s: float, rows: list[BenchRow], summary: dict) -> dict:
    runs = [asdict(r) | {"weights_read_gbs": weights_read_gbs(r.decode_tps, summary)} for r in rows]
    return {
        "model": str(path),
        "file_size_bytes": path.stat().st_size,
        "bits_per_weight": summary.get("bits_per_weight"),
        "linear_bits_per_weight": summary.get("linear_bits_per_weight"),
        "load_seconds": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "decode_read_bytes": summary.get("decode_read_bytes"),
        "runs": runs,
    }
