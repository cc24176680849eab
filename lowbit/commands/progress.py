"""What the user sees while something slow happens for the first time: numba compiling the
kernels (a minute or two, once per installation and CPU) and a model converted into the cache."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

SPIN = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@contextmanager
def compiling_notice(enabled: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """While the body runs, say so as soon as numba starts compiling (a cache miss): on a terminal
    a live line (spinner, kernels compiled, seconds), elsewhere one line at the start; a summary
    line at the end. Nothing at all when every kernel comes from the cache."""
    from lowbit.runtime.warmup import CompileWatch, cache_dir

    out = stream or sys.stderr
    if not enabled:
        yield
        return
    live = out.isatty()
    stop = threading.Event()
    t0 = [0.0]
    spinner: list[threading.Thread] = []
    watch: CompileWatch

    def show() -> None:
        i = 0
        while not stop.wait(0.2):
            out.write(f"\r{SPIN[i % len(SPIN)]} compiling kernels (first run only): {watch.finished} compiled, "
                      f"{time.perf_counter() - t0[0]:.0f} s ")
            out.flush()
            i += 1

    def first() -> None:
        t0[0] = time.perf_counter()
        if live:
            spinner.append(threading.Thread(target=show, daemon=True))
            spinner[0].start()
        else:
            out.write("compiling kernels (first run only, about a minute)…\n")
            out.flush()

    with CompileWatch(on_first=first) as watch:
        try:
            yield
        finally:
            stop.set()
            for t in spinner:
                t.join()
            if watch.started:
                line = (f"compiled {watch.finished} kernels in {time.perf_counter() - t0[0]:.0f} s "
                        f"(cached in {cache_dir()})")
                out.write(f"\r{line}\033[K\n" if live else f"{line}\n")
                out.flush()
