"""Where a generating lowbit process's resident memory goes, stage by stage.

Issue 7 asks for peak RSS ≤ file size + KV cache + 150 MB. This tool measures each stage in one
fresh process (RSS is read from /proc/self/status, so Linux only) so the fixed costs that lowbit
does not control — Python + numpy, importing numba, numba's JIT and thread pool on the first
parallel kernel, the Rust tokenizer — can be told apart from what the model adds:

    python tools/rss_breakdown.py MODEL.lowbit [--ctx 512] [--prompt 128] [--gen 128] [--threads 2]

Run it twice: the first run may compile kernels (compilation memory is not part of the budget).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _status_mb() -> dict[str, float]:
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    return out


def _touch(a):
    """The smallest parallel kernel (numba-compiled in main, cached): loading it starts numba's
    JIT and its thread pool, the memory every numba program pays. `prange` is bound by main, after
    numba is imported (importing it is a measured stage)."""
    s = 0.0
    for i in prange(a.size):  # noqa: F821
        s += a[i]
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--ctx", type=int, default=512, help="context length (the benchmark's 512)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    rows: list[tuple[str, dict[str, float]]] = [("python", _status_mb())]
    import numpy as np

    rows.append(("+ numpy", _status_mb()))
    import numba

    rows.append(("+ import numba", _status_mb()))

    globals()["prange"] = numba.prange
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    numba.njit(parallel=True, cache=True)(_touch)(np.ones(64))
    rows.append(("+ first parallel kernel (numba floor)", _status_mb()))

    from lowbit.runtime import load

    rows.append(("+ import lowbit.runtime", _status_mb()))
    llm = load(args.model, threads=args.threads, context_length=args.ctx)
    rows.append(("+ load (mmap, tokenizer, KV allocated)", _status_mb()))
    vocab = int(llm.args.vocab_size)
    ids = [int(i) for i in np.random.default_rng(0).integers(vocab // 4, vocab // 2, args.prompt)]
    tok = int(np.argmax(llm.prefill(ids)))
    rows.append((f"+ prefill {args.prompt} (kernels, weights paged in)", _status_mb()))
    for _ in range(args.gen):
        tok = int(np.argmax(llm.decode(tok)))
    rows.append((f"+ decode {args.gen}", _status_mb()))

    file_mb = args.model.stat().st_size / 1e6 * (1e6 / 2**20)
    kv_mb = sum(a.nbytes for a in (llm.cache.keys, llm.cache.values)) / 2**20
    peak = rows[-1][1]["VmHWM"]
    floor = rows[3][1]["VmRSS"]
    print(f"{'stage':44s} {'RSS':>7s} {'anon':>7s} {'file':>7s}   (MiB)")
    for name, s in rows:
        print(f"{name:44s} {s['VmRSS']:7.1f} {s.get('RssAnon', 0):7.1f} {s.get('RssFile', 0):7.1f}")
    budget = file_mb + kv_mb + 150
    print(f"\nfile {file_mb:.1f} MiB, KV cache {kv_mb:.1f} MiB (ctx {args.ctx}); budget file + KV + 150 = {budget:.1f} MiB")
    print(f"peak RSS {peak:.1f} MiB ({peak - budget:+.1f} vs budget); numba floor (numpy + numba + one parallel "
          f"kernel) {floor:.1f} MiB; peak above floor + file + KV: {peak - floor - file_mb - kv_mb:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
