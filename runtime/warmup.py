"""Kernel warm-up: numba compiles on first use (a minute or more) and loads from its on-disk cache
later (`kernels.cache`); running a tiny prefill and decode before timing anything does either up
front. `CompileWatch` tells a caller when numba really compiles (a cache miss), so a front end can
show progress whatever the cache location."""

from __future__ import annotations

from collections.abc import Callable

from numba.core import event

from lowbit.runtime.kernels.cache import cache_dir, kernels_cached
from lowbit.runtime.threads import check_threading_layer


def warm_up_kernels(llm) -> None:
    """Run a 2-token prefill and one decode step, then forget them."""
    ids = [int(llm.args.bos_token_id or 0), 1]
    logits = llm.prefill(ids)
    llm.decode(int(logits.argmax()))
    llm.reset()
    check_threading_layer()  # warns (logging) when numba fell back to the slow workqueue layer


class CompileWatch(event.Listener):
    """Counts numba compilations while installed (`with CompileWatch(...):`); calls `on_first`
    when the first one starts. Loads from the cache fire no event, so a warm run stays silent."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.on_first = on_first
        self.started = 0
        self.finished = 0

    def on_start(self, ev: event.Event) -> None:
        self.started += 1
        if self.started == 1 and self.on_first is not None:
            self.on_first()

    def on_end(self, ev: event.Event) -> None:
        self.finished += 1

    def __enter__(self) -> CompileWatch:
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc) -> None:
        event.unregister("numba:compile", self)


__all__ = ["CompileWatch", "cache_dir", "kernels_cached", "warm_up_kernels"]
