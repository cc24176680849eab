"""How many threads the kernels use, which thread pool runs them, and a check that it is a real one.

Numba's fallback `workqueue` layer costs ~100-130 µs per parallel call (measured: ~2 µs with TBB
or OpenMP), i.e. tens of milliseconds per token; `check_threading_layer()` warns about it.

Sharing the CPU: a decode step is ~5 parallel regions per layer (150 per SmolLM2 token), each
ending when its slowest thread does, so how a worker waits between regions decides what a busy
neighbour costs. `tools/bench_contention.py` on this 2-core VM, quiet apart from the test's own
busy loop (SmolLM2 q4, decode tok/s at threads 1 -> 2, medians of 5, 2026-12-01):
- busy loop on one core: TBB 88.2 -> 79.0 and 92.1 -> 94.9 (two runs); GNU OpenMP with GOMP_SPINCOUNT=300 93.6 -> 64.1,
  with OMP_WAIT_POLICY=PASSIVE 85.2 -> 61.8, with GOMP_SPINCOUNT=3000 85.4 -> 32.1;
- no busy loop: TBB 78.7 -> 105.6 and 83.9 -> 123.1; OpenMP (300 spins) 80.7 -> 30.2, OMP_WAIT_POLICY=ACTIVE 86.1 -> 35.2.
(Issue 20's report, TBB 86.5 -> 9.8, came from a machine loaded by other work; in runs while
other test suites loaded this VM, OpenMP with 300 spins read 21 -> 86 and TBB 24 -> 20.)
So on x86 lowbit asks numba for TBB first, then OpenMP with a short spin wait (GOMP_SPINCOUNT=300,
KMP_BLOCKTIME=0), then workqueue, unless the user chose a layer or a wait policy
(NUMBA_THREADING_LAYER, NUMBA_THREADING_LAYER_PRIORITY, OMP_WAIT_POLICY, GOMP_SPINCOUNT,
KMP_BLOCKTIME). With a busy neighbour, `--threads 2` is then ~0.9 x `--threads 1`, not 8 x slower.
On ARM64 (and wherever the tbb library is missing) OpenMP comes first: PyPI has no ARM64 wheel of
tbb, numba's ARM64 wheels have an OpenMP pool, and the system's libgomp (Debian `libgomp1`) runs it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform

import numba
import numpy as np

import lowbit.runtime.kernels.cache  # noqa: F401  (numba's cache outside the installation)

log = logging.getLogger(__name__)

ENV = "LOWBIT_THREADS"
ARM64 = ("aarch64", "arm64")


def tbb_installed() -> bool:
    """Whether numba's TBB pool could load: its extension and the tbb package's library."""
    if importlib.util.find_spec("numba.np.ufunc.tbbpool") is None:
        return False
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def layer_order(machine: str | None = None, have_tbb: bool | None = None) -> list[str]:
    """Numba's threading layers in the order to try them (numba wants all three; it skips one
    that will not load): TBB before OpenMP on x86; on ARM64 OpenMP with the system libgomp
    first, then TBB where it is installed, else workqueue before a TBB that is not there."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ARM64:
        return ["tbb", "omp", "workqueue"]
    tbb = tbb_installed() if have_tbb is None else have_tbb
    return ["omp", "tbb", "workqueue"] if tbb else ["omp", "workqueue", "tbb"]


WAIT_ENV = {"GOMP_SPINCOUNT": "300", "KMP_BLOCKTIME": "0"}
CHOICES = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "OMP_WAIT_POLICY", *WAIT_ENV)
_SET_HERE: dict[str, str] = {}  # what choose_threading_layer put into os.environ


def choose_threading_layer() -> None:
    """Ask numba for the layers of `layer_order()` with OpenMP's short spin waits (see the module's
    docstring), unless the user chose a layer or a wait policy; must run before the first
    parallel call starts the pool."""
    if any(os.environ.get(k, "").strip() for k in CHOICES):
        return
    order = layer_order()
    _SET_HERE.update(WAIT_ENV, NUMBA_THREADING_LAYER_PRIORITY=" ".join(order))
    os.environ.update(_SET_HERE)  # the OpenMP runtime reads it when numba's omp pool loads; numba at compiles
    numba.config.THREADING_LAYER_PRIORITY = order


def environment_for_other_programs() -> dict[str, str]:
    """os.environ without what choose_threading_layer put there, for a child process that is not
    lowbit. Other OpenMP programs would inherit lowbit's short spin waits, which suit numba's few
    regions per layer but not their many barriers per token: bitnet.cpp (LLVM OpenMP) decoded
    15.7 tok/s at 2 threads alone and 6.6 with KMP_BLOCKTIME=0 (2026-12-02, the 2B-4T shape)."""
    return {k: v for k, v in os.environ.items() if _SET_HERE.get(k) != v}


choose_threading_layer()


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


def workqueue_hint(machine: str | None = None) -> str:
    """What to install for a real thread pool on this machine."""
    if (machine if machine is not None else platform.machine()).lower() in ARM64:
        return "install the OpenMP runtime (Debian/Ubuntu: `apt install libgomp1`; there is no tbb for ARM64)"
    return "install TBB (`pip install tbb`) or an OpenMP runtime"


def check_threading_layer() -> str:
    """Run a tiny parallel kernel and return numba's threading layer; warn on `workqueue`."""
    _tiny_parallel(np.zeros(4, dtype=np.float32))
    layer = numba.threading_layer()
    if layer == "workqueue":
        log.warning(
            "numba is using its 'workqueue' threading layer (~100 µs per parallel call, much "
            "slower decoding); %s",
            workqueue_hint(),
        )
    return layer
