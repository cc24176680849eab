"""Time the linear layers' kernels on random packed weights: `python -m lowbit.runtime.kernel_bench`.

Reports µs per call (best of several repeats), GMAC/s and the weight bytes streamed per second,
for the decode kernels (T = 1) and optionally a prefill size. Compilation is excluded (warm-up
call first); the numbers are noisy on a shared machine, take the best of repeats.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from lowbit.formats.encodings import ENCODINGS
from lowbit.runtime.linear import make_linear

SHAPES = [(576, 576), (1536, 576), (576, 1536), (2560, 6912)]
ALL = ["f32", "f16", "bf16", "q8", "q4", "q3", "q2", "ternary", "ternary-1.6", "onebit", "q1f", "q4f"]


def default_group(encoding: str, n: int) -> int:
    """The converter's preset group sizes (q8 per row; q4/q3 128, q2 64, shrunk to divide n)."""
    group = {"q8": 0, "q4": 128, "q3": 128, "q2": 64}.get(encoding, 0)
    if group and n % group:
        group = next((g for g in (64, 32) if g < group and n % g == 0), group)
    return group


def random_entry(
    encoding: str, out: int, n: int, rng: np.random.Generator, group: int | None = None
):
    enc = ENCODINGS[encoding]
    group = default_group(encoding, n) if group is None else group
    if encoding in ("f32", "f16", "bf16"):
        return enc.pack(rng.standard_normal((out, n)).astype(np.float32))
    if encoding == "q8":
        ng = -(-n // (group or n))
        return enc.pack(
            rng.integers(-127, 128, (out, n)).astype(np.int8),
            np.full((out, ng), 0.01, np.float16),
            group,
        )
    if encoding in ("q2", "q3", "q4"):
        b = enc.bits
        ng = -(-n // group)
        return enc.pack(
            rng.integers(0, 2**b, (out, n)),
            rng.integers(0, 256, (out, ng)),
            rng.integers(0, 2**b, (out, ng)),
            np.full(out, 1e-3, np.float16),
            group,
        )
    if encoding in ("q1f", "q4f"):  # GGUF's Q1_0 (G 128) and Q4_1 (G 32, minimums) grids
        b = enc.bits
        group = group or (128 if b == 1 else 32)
        scales = np.full((out, n // group), 1e-3, np.float16)
        mins = scales if b == 4 else None
        return enc.pack(rng.integers(0, 2**b, (out, n)), scales, group, 0, mins)
    if encoding in ("ternary", "ternary-1.6"):
        return enc.pack(rng.integers(-1, 2, (out, n)), np.ones(1, np.float32))
    if encoding == "onebit":
        return enc.pack(
            rng.standard_normal((out, n)), np.ones(n, np.float16), np.ones(out, np.float16)
        )
    raise ValueError(encoding)


def time_call(fn, min_time: float = 0.2, repeats: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    n = max(3, int(min_time / repeats / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encodings", default=",".join(ALL))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=1, help="T (1 = decode)")
    ap.add_argument("--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES))
    ap.add_argument("--group", type=int, default=None, help="group size (default: the converter's)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(
        f"{'encoding':12s} {'shape':>10s} {'thr':>3s} {'us/call':>10s} {'GMAC/s':>8s} {'GB/s':>7s}"
    )
    for name in args.encodings.split(","):
        for out, n in shapes:
            lin = make_linear(random_entry(name, out, n, rng, args.group))
            x = rng.standard_normal((args.tokens, n)).astype(np.float32)
            y = np.empty((args.tokens, out), np.float32)
            for nt in threads:
                numba.set_num_threads(nt)
                sec = time_call(lambda lin=lin, x=x, y=y: lin(x, out=y))
                macs = out * n * args.tokens
                print(
                    f"{name:12s} {f'{out}x{n}':>10s} {nt:3d} {sec * 1e6:10.1f} {macs / sec / 1e9:8.2f} "
                    f"{lin.nbytes / sec / 1e9:7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
