"""Which vector instructions this CPU has: the flags every kernel module dispatches on.

Each encoding's module (`ternary`, `onebit`, `q8`, `grouped`, `affine`) picks its dot products
at import from these flags: the x86 IR when `HAVE_AVX2` (`vpmaddubsw`), its VNNI form when
`HAVE_VNNI` (`vpdpbusd`), else the portable numba loops. The aarch64 flags name the
instructions a NEON path would use (`sdot`/`udot`, `smmla`/`usmmla`). Numba's cache keys
compiled code by CPU (`cache._cpu_key`), so each machine gets the path its flags choose.
"""

from __future__ import annotations

import platform

from llvmlite import binding as llvm

_MACHINE = platform.machine().lower()
IS_X86 = _MACHINE in ("x86_64", "amd64", "i686", "x86")
IS_AARCH64 = _MACHINE in ("aarch64", "arm64")


def _host_features() -> dict[str, bool]:
    try:
        return dict(llvm.get_host_cpu_features())
    except Exception:  # pragma: no cover - feature detection unavailable
        return {}


_FEATURES = _host_features()


def _has(*names: str) -> bool:
    return all(_FEATURES.get(n, False) for n in names)


HAVE_AVX2 = IS_X86 and _has("avx2")
# AVX-512 VNNI (with VL) or AVX-VNNI: `vpdpbusd` on 256-bit vectors (u8 × i8, four products
# summed straight into each int32 lane)
HAVE_VNNI = HAVE_AVX2 and (_has("avx512vnni", "avx512vl") or _has("avxvnni"))
HAVE_NEON_DOTPROD = IS_AARCH64 and _has("dotprod")  # sdot / udot: 4 int8 products per i32 lane
HAVE_I8MM = IS_AARCH64 and _has("i8mm")  # smmla / usmmla: 2×8 by 8×2 int8 matrix tiles
