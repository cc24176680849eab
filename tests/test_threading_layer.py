"""The threading layer lowbit asks numba for: TBB, else OpenMP with short spin waits (measured in
runtime/threads.py with tools/bench_contention.py), unless the user chose a layer or a wait policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os
from lowbit.runtime.threads import check_threading_layer
layer = check_threading_layer()
print(json.dumps({"layer": layer, "wait": os.environ.get("OMP_WAIT_POLICY"), "spin": os.environ.get("GOMP_SPINCOUNT")}))
"""
CHOICES = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
           "KMP_BLOCKTIME")


def probe(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in CHOICES}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def omp_available() -> bool:
    try:
        import numba.np.ufunc.omppool  # noqa: F401
    except ImportError:
        return False
    return True


def tbb_available() -> bool:
    """Whether numba can start its TBB pool here (it loads the tbb package's library itself)."""
    base = {k: v for k, v in os.environ.items() if k not in CHOICES}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**base, "NUMBA_THREADING_LAYER": "tbb"},
                          capture_output=True, text=True, timeout=300)
    return proc.returncode == 0


def test_default_is_tbb_else_openmp_with_short_spins():
    got = probe()
    if tbb_available():
        assert got == {"layer": "tbb", "wait": None, "spin": "300"}
    elif omp_available():  # no TBB (ARM64 has no wheel): OpenMP, spinning only briefly
        assert got == {"layer": "omp", "wait": None, "spin": "300"}


@pytest.mark.parametrize("env,layer,wait,spin", [
    ({"NUMBA_THREADING_LAYER": "omp"}, "omp", None, None),
    ({"NUMBA_THREADING_LAYER_PRIORITY": "omp tbb workqueue"}, "omp", None, None),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "tbb|omp", "PASSIVE", None),  # a wait policy of their own: numba's order
    ({"GOMP_SPINCOUNT": "1000"}, "tbb|omp", None, "1000"),
])
def test_the_users_choice_is_left_alone(env, layer, wait, spin):
    if layer == "tbb|omp":  # numba's own order: TBB where it loads (not on ARM64), else OpenMP
        layer = "tbb" if tbb_available() else "omp"
    assert probe(**env) == {"layer": layer, "wait": wait, "spin": spin}


OTHERS = """
import json, os
from lowbit.runtime.threads import environment_for_other_programs
env = environment_for_other_programs()
print(json.dumps({"ours": os.environ.get("GOMP_SPINCOUNT"), "theirs": env.get("GOMP_SPINCOUNT"),
                  "blocktime": env.get("KMP_BLOCKTIME"), "kept": env.get("LOWBIT_PROBE")}))
"""


@pytest.mark.parametrize("user,theirs", [({}, None), ({"GOMP_SPINCOUNT": "1000"}, "1000")])
def test_other_programs_do_not_inherit_our_spin_waits(user, theirs):
    """llama.cpp / bitnet.cpp started by the benchmark get the user's OpenMP settings, not lowbit's
    (with lowbit's, bitnet.cpp's 2-thread decode measured 2.4x slower)."""
    base = {k: v for k, v in os.environ.items() if k not in CHOICES}
    proc = subprocess.run([sys.executable, "-c", OTHERS], env={**base, **user, "LOWBIT_PROBE": "x"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"ours": user.get("GOMP_SPINCOUNT", "300"), "theirs": theirs, "blocktime": None, "kept": "x"}
