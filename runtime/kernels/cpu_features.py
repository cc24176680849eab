"""Which vector instructions this CPU has: the flags every kernel module dispatches on.

Each encoding's module (`ternary`, `onebit`, `q8`, `grouped`, `affine`) picks its dot products
at import from these flags: the x86 IR when `HAVE_AVX2` (`vpmaddubsw`), its VNNI form when
`HAVE_VNNI` (`vpdpbusd`), the AArch64 IR when `HAVE_NEON_DOTPROD` (`sdot`; `smmla` with
`HAVE_I8MM`), else the portable numba loops. Numba's cache keys compiled code by CPU
(`cache._cpu_key`), so each machine gets the path its flags choose.

On AArch64 a flag is set only when the CPU has the extension (the kernel's HWCAP bits, else
/proc/cpuinfo's Features) *and* numba compiles with it: without `+dotprod` in its target
features LLVM aborts on the intrinsic instead of compiling it. LLVM's host detection reads
/proc/cpuinfo, which QEMU 7's user mode shows from the x86 host, so under emulation it misses
features the emulated CPU has; when the kernel reports one that LLVM missed and the user set no
NUMBA_CPU_FEATURES, it is added to numba's target features. Numba reads them when its code
generator starts, at the first `@njit` decoration of the process, so `lowbit.runtime.kernels`
imports this module before anything is decorated; the flags then read back what the code
generator really has (a process that decorated functions before importing lowbit keeps the
portable loops rather than crash).
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import TypeVar

from llvmlite import binding as llvm
from numba.core import config

_MACHINE = platform.machine().lower()
T = TypeVar("T")

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
# 512-bit `vpermi2b` table lookups and `vpdpbusd`: ternary-1.6's dots
HAVE_AVX512_VBMI = HAVE_AVX2 and _has("avx512vbmi", "avx512bw", "avx512vnni")

AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAP_ASIMDDP = 1 << 20  # linux arch/arm64/include/uapi/asm/hwcap.h
HWCAP2_I8MM = 1 << 13
CPUINFO_FLAGS = {"dotprod": "asimddp", "i8mm": "i8mm"}  # LLVM feature -> /proc/cpuinfo flag


def cpuinfo_features(text: str) -> set[str]:
    """The LLVM names of dotprod / i8mm in a /proc/cpuinfo text's Features lines."""
    flags = {w for line in text.splitlines() if line.startswith("Features") for w in line.split(":", 1)[1].split()}
    return {name for name, flag in CPUINFO_FLAGS.items() if flag in flags}


def kernel_features(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """dotprod / i8mm as the kernel reports them for this AArch64 CPU: its HWCAP bits (right
    under QEMU too), else /proc/cpuinfo's Features line."""
    found: set[str] = set()
    try:
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        if getauxval(AT_HWCAP) & HWCAP_ASIMDDP:
            found.add("dotprod")
        if getauxval(AT_HWCAP2) & HWCAP2_I8MM:
            found.add("i8mm")
        if found:
            return found
    except (AttributeError, OSError):  # no getauxval (macOS): /proc/cpuinfo, else LLVM alone
        pass
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return cpuinfo_features(f.read())
    except OSError:
        return found


def parse_features(text: str) -> dict[str, bool]:
    """LLVM's "+a,-b" feature string as {name: on}."""
    return {t[1:]: t[0] == "+" for t in (t.strip() for t in text.split(",")) if len(t) > 1}


def _numba_features() -> dict[str, bool]:
    """The target features numba compiles with, after adding the kernel-reported AArch64
    features LLVM's detection missed (see the module's docstring)."""
    if config.CPU_FEATURES is None and not os.environ.get("NUMBA_CPU_FEATURES"):
        host = {k: bool(v) for k, v in _FEATURES.items()}
        missing = sorted(f for f in kernel_features() if not host.get(f))
        if missing:
            host.update(dict.fromkeys(missing, True))
            config.CPU_FEATURES = ",".join(("+" if on else "-") + k for k, on in sorted(host.items()))
    from numba.core.registry import cpu_target

    features = getattr(cpu_target.target_context.codegen(), "_tm_features", None)
    if features is None:  # pragma: no cover - a numba without the attribute: what it was given
        return parse_features(config.CPU_FEATURES) if config.CPU_FEATURES else dict(_FEATURES)
    return parse_features(features)


def _aarch64_features() -> dict[str, bool]:
    if not IS_AARCH64:
        return {}
    try:
        return _numba_features()
    except Exception:  # pragma: no cover - feature detection unavailable: the portable loops
        return {}


_ARM = _aarch64_features()
HAVE_NEON_DOTPROD = bool(_ARM.get("dotprod"))  # sdot / udot: 4 int8 products per i32 lane
HAVE_I8MM = HAVE_NEON_DOTPROD and bool(_ARM.get("i8mm"))  # smmla / usmmla: 2×8 by 8×2 int8 tiles


def best_dot(portable: T, *, avx2: T | None = None, vnni: T | None = None, neon: T | None = None) -> T:
    """The fastest form of one dot this CPU runs: VNNI, then AVX2, then NEON DotProd, then the
    portable loops (each module passes the forms it has; a missing one falls to the next)."""
    for have, form in ((HAVE_VNNI, vnni), (HAVE_AVX2, avx2), (HAVE_NEON_DOTPROD, neon)):
        if have and form is not None:
            return form
    return portable
