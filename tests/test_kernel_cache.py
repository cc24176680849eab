"""numba's kernel cache: outside the source tree, reused by a fresh copy of the same code (CI's
fresh clone, a reinstall), never by changed code; NUMBA_CACHE_DIR honoured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys
# import the copy on PYTHONPATH, not an editable install of this tree (its finder maps lowbit.runtime)
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import numpy as np
from lowbit.runtime.kernels import q8
from lowbit.runtime.kernels.cache import cache_dir, kernels_cached
from lowbit.runtime import threads
x = np.linspace(-1, 1, 64).astype(np.float32)
q8.quantize_blocks_into(x, np.zeros(64, np.int8), np.zeros(2, np.float32))
threads._tiny_parallel(np.zeros(4, np.float32))
fns = {"kernels": q8.quantize_blocks_into, "runtime": threads._tiny_parallel}
print(json.dumps({
    "dir": str(cache_dir()),
    "runtime_file": threads.__file__,
    "hits": {k: sum(f.stats.cache_hits.values()) for k, f in fns.items()},
    "misses": {k: sum(f.stats.cache_misses.values()) for k, f in fns.items()},
    "cached": kernels_cached(),
}))
"""


def clone(dest: Path) -> Path:
    """The installed layout of lowbit (lowbit/, lowbit/runtime, lowbit/formats) copied from this
    tree, with fresh mtimes, as a fresh clone + install would have it."""
    pkg = dest / "lowbit"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "lowbit", pkg, ignore=ignore)
    shutil.copytree(ROOT / "runtime", pkg / "runtime", ignore=ignore)
    shutil.copytree(ROOT / "formats", pkg / "formats", ignore=ignore)
    later = time.time() + 5
    for p in pkg.rglob("*.py"):
        os.utime(p, (later, later))
    return dest


def probe(path: Path, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(path), "NUMBA_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kcache")
    cache = root / "numba-cache"
    a, b, c = clone(root / "a"), clone(root / "b"), clone(root / "c")
    with open(c / "lowbit" / "runtime" / "kernels" / "q8.py", "a") as f:
        f.write("\n# an edit\n")
    return {"a": probe(a, cache), "b": probe(b, cache), "a2": probe(a, cache), "c": probe(c, cache),
            "cache": cache, "root": root}


def test_the_cache_is_outside_the_source_tree_and_under_numba_cache_dir(runs):
    first = runs["a"]
    assert first["runtime_file"].startswith(str(runs["root"] / "a"))  # the copy was imported
    assert Path(first["dir"]).parent == runs["cache"]
    assert list(Path(first["dir"]).rglob("*.nbi"))
    assert not list((runs["root"] / "a").rglob("*.nbi")) and not list((runs["root"] / "a").rglob("*.nbc"))
    assert not list((runs["root"] / "a").rglob("__pycache__/*.nb*"))


def test_a_fresh_copy_of_the_same_code_reuses_the_compiled_kernels(runs):
    assert runs["a"]["misses"] == {"kernels": 1, "runtime": 1}  # compiled once (cold cache)
    assert runs["b"]["dir"] == runs["a"]["dir"]  # another path, newer mtimes: the same folder
    assert runs["b"]["hits"] == {"kernels": 1, "runtime": 1} and runs["b"]["misses"] == {"kernels": 0, "runtime": 0}
    assert runs["a2"]["hits"] == {"kernels": 1, "runtime": 1}  # and the first copy still hits


def test_an_edited_kernel_module_is_never_served_stale(runs):
    assert runs["c"]["dir"] != runs["a"]["dir"]  # another digest, another folder
    assert runs["c"]["misses"]["kernels"] == 1


def test_kernels_cached_looks_where_the_cache_is(tmp_path, monkeypatch):
    from lowbit.runtime.kernels import cache

    monkeypatch.setattr(cache.config, "CACHE_DIR", str(tmp_path))
    cache.cache_dir.cache_clear()
    try:
        assert cache.cache_root() == tmp_path
        assert not cache.kernels_cached()
        (cache.cache_dir() / "kernels").mkdir(parents=True, exist_ok=True)
        (cache.cache_dir() / "kernels" / "decode_step.decode_step-1.py311.nbi").write_bytes(b"")
        assert cache.kernels_cached()
        assert cache.cache_dir().parent == tmp_path
    finally:
        cache.cache_dir.cache_clear()


def test_unused_folders_of_other_code_are_pruned(tmp_path):
    from lowbit.runtime.kernels import cache

    old, recent, keep = tmp_path / "lowbit-0-x-old", tmp_path / "lowbit-0-x-recent", tmp_path / "lowbit-0-x-keep"
    for p in (old, recent, keep):
        p.mkdir()
    stale = time.time() - (cache.PRUNE_DAYS + 1) * 86400
    os.utime(old, (stale, stale))
    os.utime(keep, (stale, stale))
    cache._prune(tmp_path, keep=keep)
    assert not old.exists() and recent.exists() and keep.exists()


def test_first_compilation_is_announced_and_a_warm_run_is_silent():
    import io

    import numba

    from lowbit.commands.progress import compiling_notice

    @numba.njit
    def add_one(x):
        return x + 1

    out = io.StringIO()  # not a terminal: one line at the start, one at the end
    with compiling_notice(stream=out):
        assert add_one(1) == 2
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("compiling kernels (first run only")
    assert lines[-1].startswith("compiled 1 kernels in") and "cached in" in lines[-1]
    again = io.StringIO()
    with compiling_notice(stream=again):
        assert add_one(2) == 3  # nothing to compile: nothing said
    assert again.getvalue() == ""


def test_a_terminal_sees_a_live_count():
    import io
    import time as _time

    from numba.core import event

    from lowbit.commands.progress import compiling_notice

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with compiling_notice(stream=out):
        for _ in range(2):  # two compilations of 0.5 s each, as numba announces them
            with event.trigger_event("numba:compile", data={"dispatcher": None, "args": (), "return_type": None}):
                _time.sleep(0.5)
    text = out.getvalue()
    assert "\r⠋ compiling kernels (first run only): 0 compiled, 0 s" in text  # the live line
    assert ": 1 compiled" in text  # updated while the second one compiles
    assert text.endswith("\x1b[K\n") and "\rcompiled 2 kernels in 1 s" in text
