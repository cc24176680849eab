"""How many threads the kernels use, which thread pool runs them, and a check that it is a real one.

Numba's fallback `workqueue` layer costs ~100-130 µs per parallel call (measured: ~2 µs with TBB
or OpenMP), i.e. tens of milliseconds per token; `check_threading_layer()` warns about it.

Sharing the CPU: a decode step is ~5 parallel regions per layer (150 per SmolLM2 token), each
ending when its slowest thread does. With another process busy on one of two cores, a worker that
spins between regions (TBB, or OpenMP's default spin-then-sleep) burns its share of that core and
then waits for its next time slice inside the region, so `--threads 2` decoded slower than
`--threads 1` (issue 20: 9.8 against 86.5 tok/s). A worker that sleeps at once (OpenMP's
`OMP_WAIT_POLICY=PASSIVE`) keeps its scheduler credit and preempts the busy process when woken:
`tools/bench_contention.py` measured 112 tok/s at 2 threads against 34 at 1 with a busy loop on a
shared 2-core VM, where TBB gave 34 against 40 and spinning OpenMP 2.4 against 23. So, unless the
user chose (NUMBA_THREADING_LAYER, NUMBA_THREADING_LAYER_PRIORITY, OMP_WAIT_POLICY), lowbit asks
numba for OpenMP with passive waits first, then TBB, then workqueue.
"""

from __future__ import annotations

import logging
import os

import numba
import numpy as np

import lowbit.runtime.kernels.cache  # noqa: F401  (numba's cache outside the installation)

log = logging.getLogger(__name__)

ENV = "LOWBIT_THREADS"
LAYER_ORDER = "omp tbb workqueue"


def prefer_passive_openmp() -> None:
    """Ask numba for OpenMP with passive waits first (see the module's docstring), unless the user
    chose a layer or a wait policy; must run before the first parallel call starts the pool."""
    if os.environ.get("NUMBA_THREADING_LAYER", "default").lower() != "default":
        return
    if "NUMBA_THREADING_LAYER_PRIORITY" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read by libgomp when numba's omp pool loads it
    os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = LAYER_ORDER  # numba re-reads its env at compiles
    numba.config.THREADING_LAYER_PRIORITY = LAYER_ORDER.split()


prefer_passive_openmp()


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
