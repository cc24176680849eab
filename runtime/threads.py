"""How many threads the kernels use, which thread pool runs them, and a check that it is a real one.

Numba's fallback `workqueue` layer costs ~100-130 µs per parallel call (measured: ~2 µs with TBB
or OpenMP), i.e. tens of milliseconds per token; `check_threading_layer()` warns about it.

Sharing the CPU: a decode step is ~5 parallel regions per layer (150 per SmolLM2 token), each
ending when its slowest thread does. With another process busy on one of two cores, a worker that
spins between regions (TBB, or OpenMP's default: 300,000 spins before sleeping) burns its share of
that core and then waits for its next time slice inside a region, so `--threads 2` decoded slower
than `--threads 1` (issue 20: 9.8 against 86.5 tok/s). A worker that spins only a few µs (about
the gap between two regions of one token) and then sleeps keeps its scheduler credit and preempts
the busy process when woken. `tools/bench_contention.py` on a 2-core VM with a busy loop on one
core (SmolLM2 q4, decode tok/s at threads 1 → 2, medians of 5; the VM was also shared with other
work, load 7-11): GNU OpenMP with GOMP_SPINCOUNT=300 21 → 86 and 43 → 89 (one run of four 31 → 24),
OMP_WAIT_POLICY=PASSIVE 26 → 111 and 23 → 106, TBB 24 → 20 and 22 → 19, OpenMP's default
spinning 23 → 2.4. Passive waits were as good under contention, but pay a wake-up per region on
an idle machine, which a 300-spin wait (a few µs) mostly avoids. So, unless the
user chose (NUMBA_THREADING_LAYER, NUMBA_THREADING_LAYER_PRIORITY, OMP_WAIT_POLICY, GOMP_SPINCOUNT,
KMP_BLOCKTIME), lowbit asks numba for OpenMP first (then TBB, then workqueue) with a 300-spin wait
(KMP_BLOCKTIME=0 for Intel's OpenMP, whose finest setting is 1 ms).
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


WAIT_ENV = {"GOMP_SPINCOUNT": "300", "KMP_BLOCKTIME": "0"}
CHOICES = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "OMP_WAIT_POLICY", *WAIT_ENV)


def prefer_passive_openmp() -> None:
    """Ask numba for OpenMP with short spin waits first (see the module's docstring), unless the
    user chose a layer or a wait policy; must run before the first parallel call starts the pool."""
    if any(os.environ.get(k, "").strip() for k in CHOICES):
        return
    os.environ.update(WAIT_ENV)  # read by the OpenMP runtime when numba's omp pool loads it
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
