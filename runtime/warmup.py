"""Kernel warm-up: numba compiles on first use (seconds) and loads from its on-disk cache later
(`cache=True`); running a tiny prefill and decode before timing anything does either up front."""

from __future__ import annotations

from pathlib import Path

import lowbit.runtime.kernels as _kernels
from lowbit.runtime.threads import check_threading_layer


def kernels_cached() -> bool:
    """True when numba's cache already holds compiled kernels (so warm-up will be quick)."""
    cache_dir = Path(_kernels.__file__).parent / "__pycache__"
    return cache_dir.is_dir() and any(cache_dir.glob("decode_step*.nbi"))  # the largest compile


def warm_up_kernels(llm) -> None:
    """Run a 2-token prefill and one decode step, then forget them."""
    ids = [int(llm.args.bos_token_id or 0), 1]
    logits = llm.prefill(ids)
    llm.decode(int(logits.argmax()))
    llm.reset()
    check_threading_layer()  # warns (logging) when numba fell back to the slow workqueue layer
