"""How many threads the kernels use, and a check that numba runs them on a real thread pool.

Numba's fallback `workqueue` layer costs ~100-130 µs per parallel call (measured: ~2 µs with TBB
or OpenMP), i.e. tens of milliseconds per token; `check_threading_layer()` warns about it.
Numba's default order (tbb, omp, workqueue) already prefers TBB, which lowbit depends on, so the
layer is left to numba (NUMBA_THREADING_LAYER still overrides it).
"""

from __future__ import annotations

import logging
import os

import numba
import numpy as np

import lowbit.runtime.kernels.cache  # noqa: F401  (numba's cache outside the installation)

log = logging.getLogger(__name__)

ENV = "LOWBIT_THREADS"


def _available_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpuinfo: str = "/proc/cpuinfo") -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    cpus = _available_cpus()
    cores: set[tuple[str, str]] = set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields or not fields["processor"].isdigit():
            continue
        if int(fields["processor"]) not in cpus:
            continue
        core = fields.get("core id")
        if core is None:  # no topology (some VMs, ARM): one core per CPU
            core = "cpu" + fields["processor"]
        cores.add((fields.get("physical id", "0"), core))
    return max(1, min(len(cores) or len(cpus), len(cpus)))


def resolve_threads(threads: int | None = None) -> int:
    """The explicit argument, else $LOWBIT_THREADS, else the physical cores; never more than
    the CPUs available to this process or numba's pool."""
    n = threads
    if n is None:
        env = os.environ.get(ENV, "").strip()
        if env:
            try:
                n = int(env)
            except ValueError:
                raise ValueError(f"{ENV} must be a positive integer, got {env!r}") from None
    if n is None:
        n = physical_cores()
    n = int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    return max(1, min(n, len(_available_cpus()), numba.config.NUMBA_NUM_THREADS))


def set_threads(n: int) -> int:
    """Set the kernels' thread count for the calling thread (clamped as resolve_threads)."""
    n = resolve_threads(n)
    numba.set_num_threads(n)
    return n


@numba.njit(parallel=True, cache=True, nogil=True)
def _tiny_parallel(a):
    for i in numba.prange(a.shape[0]):
        a[i] += 1.0


def check_threading_layer() -> str:
    """Run a tiny parallel kernel and return numba's threading layer; warn on `workqueue`."""
    _tiny_parallel(np.zeros(4, dtype=np.float32))
    layer = numba.threading_layer()
    if layer == "workqueue":
        log.warning(
            "numba is using its 'workqueue' threading layer (~100 µs per parallel call, much "
            "slower decoding); install TBB (`pip install tbb`) or an OpenMP runtime"
        )
    return layer
