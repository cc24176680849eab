"""The threading layer lowbit asks numba for: OpenMP with passive waits (it shares a busy CPU
gracefully, tools/bench_contention.py), unless the user chose a layer or a wait policy."""

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
print(json.dumps({"layer": layer, "wait": os.environ.get("OMP_WAIT_POLICY")}))
"""
CHOICES = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "OMP_WAIT_POLICY")


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


def test_default_is_passive_openmp():
    got = probe()
    if omp_available():
        assert got == {"layer": "omp", "wait": "PASSIVE"}
    else:  # no OpenMP runtime: TBB, as numba would pick
        assert got["layer"] == "tbb"


@pytest.mark.parametrize("env,layer,wait", [
    ({"NUMBA_THREADING_LAYER": "tbb"}, "tbb", None),
    ({"NUMBA_THREADING_LAYER_PRIORITY": "tbb omp workqueue"}, "tbb", None),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "tbb", "ACTIVE"),  # a wait policy of their own: numba's order
])
def test_the_users_choice_is_left_alone(env, layer, wait):
    assert probe(**env) == {"layer": layer, "wait": wait}
