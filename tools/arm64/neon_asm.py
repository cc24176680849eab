"""Print the inner loop of each NEON dot: numba's own assembly of a jitted caller when run on an
ARM64 CPU with dotprod (e.g. inside tools/arm64/run_tests.sh's root), else LLVM's AArch64
assembly of the same IR cross-compiled on this host; and the inner loop's instructions per 32
int8 multiply-adds (32 weights against one activation vector).

    python tools/arm64/neon_asm.py [--full]
"""

from __future__ import annotations

import argparse
import collections
import re

import numpy as np
from numba import njit

from lowbit.runtime.kernels import affine, grouped, neon, onebit, q8, ternary
from lowbit.runtime.kernels.cpu_features import HAVE_I8MM, HAVE_NEON_DOTPROD


def _numba_asm(name: str) -> str:
    """numba's assembly of a jitted caller of the dot (this CPU's target)."""
    u8, i8, f32 = np.uint8, np.int8, np.float32
    z = np.zeros
    calls = {
        "dot_ternary": (lambda a, b: ternary._dot_ternary_neon(a, b), (z(64, u8), z(4 * 64, i8))),
        "dot_ternary_1p6": (lambda a, b: ternary._dot_ternary_1p6_neon(a, b), (z(64, u8), z(5 * 64, i8))),
        "dot_b1": (lambda a, b, c, d: onebit._dot_b1_neon(a, b, c, d), (z(64, u8), z(8 * 64 + 32, i8), 64, z(32, u8))),
        "dot_q8": (lambda a, b, c: q8._dot_q8_neon(a, b, c), (z(64, i8), z(64, i8), z(2, f32))),
        "dot_q4_i8": (lambda a, b, c, d, e: grouped._dot_q4_i8_neon(a, b, c, d, e),
                      (z(64, u8), z(128, i8), z(2, f32), z(2, u8), 64)),
        "dot_q4f_i8": (lambda a, b, c: affine._dot_q4f_neon(a, b, c), (z(32, u8), z(64, i8), z(2, f32))),
        "dot_q8_2x2": (lambda a, b, c, d, e: q8.dot_q8_2x2(a, b, c, d, e), (z(32, i8),) * 4 + (z(4, f32),)),
        "dot_q4_tokens": (lambda a, b, c, d, e, f, g: grouped._dot_q4_tokens_neon(a, b, c, d, e, f, g, 0),
                          (z(32, u8), z((4, 64), i8), z((2, 4), f32), z((2, 4), f32), z(2, u8), z(2, u8), 32)),
    }
    fn, args = calls[name]
    jf = njit(fn)
    jf(*args)
    return next(iter(jf.inspect_asm().values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="print every loop instruction")
    args = ap.parse_args()
    native = HAVE_NEON_DOTPROD
    print(f"source: {'numba inspect_asm on this ARM64 CPU' if native else 'LLVM AArch64 cross-compile'}")
    for name in neon.DOTS:
        if name == "dot_q8_2x2" and native and not HAVE_I8MM:
            continue
        asm = _numba_asm(name) if native else neon.aarch64_asm(name)
        loop = neon.inner_loop(asm)
        ops = collections.Counter(i.split()[0] for i in loop)
        macs = sum(neon.MACS[k] * n for k, n in ops.items() if k in neon.MACS)
        dots = {k: v for k, v in ops.items() if k in neon.MACS}
        print(f"{name}: inner loop {len(loop)} instructions, {macs} int8 MACs: "
              f"{len(loop) * 32 / macs:.1f} instructions per 32 MACs; {dots}")
        shown = loop if args.full else [i for i in loop if re.match(r"(sdot|smmla)\b", i)][:2]
        for ins in shown:
            print(f"    {ins}")


if __name__ == "__main__":
    main()
