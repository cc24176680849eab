"""ARM64 row dot products written as LLVM vector IR with NEON's dot-product instructions: the
AArch64 twins of the x86 dots in `simd` (same arguments, same results), and the CPU features
that select them.

`sdot` (ARMv8.2 DotProd, `llvm.aarch64.neon.sdot`) multiplies 16 int8 pairs and adds each group
of four products into one of four int32 lanes: it does the work of x86's `vpmaddubsw` +
`vpmaddwd` (or VNNI's `vpdpbusd`) on 128-bit vectors. Every code here is < 128 (ternary digits
0..2, sign bits 0/1 or 0/-1 masks, q4 nibbles) and every activation int8, so the signed form
is exact for all of them and `udot` is never needed. Each dot steps 32 code bytes (two 16-byte
halves) per iteration with one int32 accumulator per stream (each `sdot` chain then waits for
itself only), and sums lanes once per row (`addv`).

- `dot_t2` / `dot_t3`: one `ternary` / `ternary-1.6` row, unpacked with shifts and masks or a
  vector divide by 3 (LLVM turns it into a multiply-high), one `sdot` per stream and half.
- `dot_b1_row`: OneBit sign planes; bit j becomes a 0/-1 byte mask with one `cmtst`, so one
  instruction unpacks and one `sdot` sums; the row's sum is the negated total.
- `dot_q8`: blocks of 32 (two `sdot`, one convert and one FMA by the block's scale each).
- `dot_q4_i8`: grouped q4 (any G % 32 == 0); `dot_q4f_i8`: q4f G = 32 on pair-permuted x.
- `dot_q8_2x2`: i8mm's `smmla` (a 2×8 by 8×2 int8 matrix product into 2×2 int32 per
  instruction): two rows against two activation vectors, the prefill shape, where one `smmla`
  does the work of four `sdot`s; a single activation vector would waste half of it, so the
  one-vector dots above keep `sdot`.

`HAVE_DOTPROD` / `HAVE_I8MM` say whether this process may use them: the kernel's HWCAP bits
(what the CPU has) and LLVM's target features (what numba may emit; without `+dotprod` LLVM
aborts on the intrinsic instead of compiling it). QEMU 7's user mode shows the host's
/proc/cpuinfo, so LLVM's own host detection misses the features there: when the kernel reports
a feature LLVM did not detect and the user set no NUMBA_CPU_FEATURES, it is added to numba's
target features before numba's first compile. `aarch64_asm()` compiles any of the dots for an
AArch64 target on any host (the tests check its instructions on x86 too).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

ARM64 = ("aarch64", "arm64")
AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAP_ASIMDDP = 1 << 20  # linux/arch/arm64/include/uapi/asm/hwcap.h
HWCAP2_I8MM = 1 << 13
CPUINFO_NAMES = {"dotprod": "asimddp", "i8mm": "i8mm"}  # LLVM feature -> /proc/cpuinfo flag

_i1 = ir.IntType(1)
_i8 = ir.IntType(8)
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)
_f32 = ir.FloatType()
_v16i8 = ir.VectorType(_i8, 16)
_v4i32 = ir.VectorType(_i32, 4)
_v4f32 = ir.VectorType(_f32, 4)


# -- which features this process has and may use ---------------------------------------------


def cpuinfo_features(text: str) -> set[str]:
    """The LLVM names of dotprod / i8mm in a /proc/cpuinfo text's Features lines."""
    flags = {w for line in text.splitlines() if line.startswith("Features") for w in line.split(":", 1)[1].split()}
    return {name for name, flag in CPUINFO_NAMES.items() if flag in flags}


def kernel_features(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The LLVM names of dotprod / i8mm the kernel reports for this ARM64 CPU: its HWCAP bits
    (right under QEMU too), else /proc/cpuinfo's Features line."""
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
    except (AttributeError, OSError):  # no getauxval (macOS): LLVM's detection alone
        pass
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return cpuinfo_features(f.read())
    except OSError:
        return found


def _parse_features(text: str) -> dict[str, bool]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        out[item[1:]] = item[0] == "+"
    return out


def _host_features() -> dict[str, bool]:
    try:
        return {k: bool(v) for k, v in llvm.get_host_cpu_features().items()}
    except RuntimeError:  # LLVM could not tell (e.g. a /proc/cpuinfo of another architecture)
        return {}


def _numba_features() -> dict[str, bool]:
    """The target features numba compiles with, after adding the kernel-reported ARM features
    LLVM's host detection missed (only when the user chose none; numba reads them when its
    code generator starts, which this then does)."""
    if config.CPU_FEATURES is None and not os.environ.get("NUMBA_CPU_FEATURES"):
        host = _host_features()
        missing = sorted(f for f in kernel_features() if not host.get(f))
        if missing:
            host.update(dict.fromkeys(missing, True))
            config.CPU_FEATURES = ",".join(("+" if on else "-") + k for k, on in sorted(host.items()))
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    features = getattr(codegen, "_tm_features", None)
    if features is None:  # pragma: no cover - a numba without the attribute: what it was given
        features = config.CPU_FEATURES or ",".join(("+" if v else "-") + k for k, v in _host_features().items())
    return _parse_features(features)


def _target_features() -> dict[str, bool]:
    if platform.machine().lower() not in ARM64:
        return {}
    try:
        return _numba_features()
    except Exception:  # pragma: no cover - feature detection unavailable: the portable loops
        return {}


_FEATURES = _target_features()
HAVE_DOTPROD = bool(_FEATURES.get("dotprod"))
HAVE_I8MM = HAVE_DOTPROD and bool(_FEATURES.get("i8mm"))


# -- IR helpers ------------------------------------------------------------------------------


def _const(v: int) -> ir.Constant:
    return ir.Constant(_i64, v)


def _splat8(v: int) -> ir.Constant:
    return ir.Constant(_v16i8, [ir.Constant(_i8, v)] * 16)


def _for(b, n: ir.Value, inits: list, body, name: str) -> list:
    """for i in range(n): vals = body(i, vals); the values after the loop (inits when n <= 0).
    `body` may open blocks of its own (an inner loop)."""
    pre = b.block
    loop = b.append_basic_block(f"{name}.loop")
    done = b.append_basic_block(f"{name}.done")
    b.cbranch(b.icmp_signed(">", n, _const(0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(_i64)
    phis = [b.phi(v.type) for v in inits]
    nxt = body(i, phis)
    end = b.block
    i1 = b.add(i, _const(1))
    i.add_incoming(_const(0), pre)
    i.add_incoming(i1, end)
    for p, v0, v1 in zip(phis, inits, nxt, strict=True):
        p.add_incoming(v0, pre)
        p.add_incoming(v1, end)
    b.cbranch(b.icmp_signed("<", i1, n), loop, done)
    b.position_at_end(done)
    outs = []
    for v0, v1 in zip(inits, nxt, strict=True):
        p = b.phi(v0.type)
        p.add_incoming(v0, pre)
        p.add_incoming(v1, end)
        outs.append(p)
    return outs


class _Ops:
    """The NEON operations the dots use, declared in the builder's module."""

    def __init__(self, b):
        self.b = b
        mod = b.module
        fn = cgutils.get_or_insert_function
        self._sdot = fn(mod, ir.FunctionType(_v4i32, [_v4i32, _v16i8, _v16i8]), "llvm.aarch64.neon.sdot.v4i32.v16i8")
        self._smmla = fn(mod, ir.FunctionType(_v4i32, [_v4i32, _v16i8, _v16i8]), "llvm.aarch64.neon.smmla.v4i32.v16i8")
        self._addv = fn(mod, ir.FunctionType(_i32, [_v4i32]), "llvm.vector.reduce.add.v4i32")
        self._faddv = fn(mod, ir.FunctionType(_f32, [_f32, _v4f32]), "llvm.vector.reduce.fadd.v4f32")
        self._fma = fn(mod, ir.FunctionType(_v4f32, [_v4f32] * 3), "llvm.fmuladd.v4f32")

    def load(self, ptr: ir.Value, off: ir.Value) -> ir.Value:
        return self.b.load(self.b.bitcast(self.b.gep(ptr, [off]), _v16i8.as_pointer()), align=1)

    def sdot(self, acc, a, x):
        return self.b.call(self._sdot, [acc, a, x])

    def smmla(self, acc, a, x):
        return self.b.call(self._smmla, [acc, a, x])

    def addv(self, v):
        return self.b.call(self._addv, [v])

    def faddv(self, v):
        return self.b.call(self._faddv, [ir.Constant(_f32, 0.0), v])

    def fma(self, a, x, acc):
        return self.b.call(self._fma, [a, x, acc])

    def splat_f(self, v):
        b = self.b
        one = b.insert_element(ir.Constant(_v4f32, ir.Undefined), v, ir.Constant(_i32, 0))
        return b.shuffle_vector(one, ir.Constant(_v4f32, ir.Undefined), ir.Constant(_v4i32, [0] * 4))

    def scale(self, ptr, i):
        return self.b.load(self.b.gep(ptr, [i]))


_zero_i = ir.Constant(_v4i32, None)
_zero_f = ir.Constant(_v4f32, None)


# -- the dots, on raw pointers (so aarch64_asm can build them without numba) -----------------


def _unpack2(b, c):
    three = _splat8(3)
    return [b.and_(c, three), b.and_(b.lshr(c, _splat8(2)), three),
            b.and_(b.lshr(c, _splat8(4)), three), b.lshr(c, _splat8(6))]


def _unpack3(b, c):
    three = _splat8(3)
    digits = []
    for _ in range(4):
        nxt = b.udiv(c, three)
        digits.append(b.sub(c, b.mul(nxt, three)))
        c = nxt
    return [*digits, c]


def _unpack1_masks(b, c):
    """Bit j of each byte as a 0 / -1 byte (`cmtst`)."""
    return [b.sext(b.icmp_unsigned("!=", b.and_(c, _splat8(1 << j)), _splat8(0)), _v16i8) for j in range(8)]


def _emit_streams(b, codes, x, q, stride, streams: int, unpack, tail=None) -> ir.Value:
    """Σ_j Σ_k unpack(codes)[j][k] · x[k + j·stride] over q code bytes (32 per step; with `tail`,
    a last partial step reads its codes from tail[0:32] instead of past the end)."""
    ops = _Ops(b)
    steps = b.sdiv(b.add(q, _const(31)), _const(32))

    def body(s, accs):
        i = b.mul(s, _const(32))
        src, off = codes, i
        if tail is not None:
            partial = b.icmp_signed(">", b.add(i, _const(32)), q)
            src = b.select(partial, tail, b.gep(codes, [i]))
            off = _const(0)
        out = list(accs)
        for h in range(2):
            cs = unpack(b, ops.load(src, b.add(off, _const(16 * h))))
            for j in range(streams):
                xo = b.add(b.add(i, _const(16 * h)), b.mul(stride, _const(j)))
                out[j] = ops.sdot(out[j], cs[j], ops.load(x, xo))
        return out

    accs = _for(b, steps, [_zero_i] * streams, body, "neon.streams")
    total = accs[0]
    for a in accs[1:]:
        total = b.add(total, a)
    return ops.addv(total)


def _emit_t2(b, codes, x, q):
    return _emit_streams(b, codes, x, q, q, 4, _unpack2)


def _emit_t3(b, codes, x, q):
    return _emit_streams(b, codes, x, q, q, 5, _unpack3)


def _emit_b1(b, codes, x, q, stride, tail):
    return b.neg(_emit_streams(b, codes, x, q, stride, 8, _unpack1_masks, tail=tail))


def _emit_q8(b, codes, x, d, nblocks):
    """Σ_b d[b] Σ_{k<32} codes[32b+k] x[32b+k]: two `sdot` per block, two blocks per step into
    two float accumulators (the FMA chain's latency), an odd last block after the loop."""
    ops = _Ops(b)

    def block(blk, acc):
        off = b.mul(blk, _const(32))
        ints = ops.sdot(_zero_i, ops.load(codes, off), ops.load(x, off))
        ints = ops.sdot(ints, ops.load(codes, b.add(off, _const(16))), ops.load(x, b.add(off, _const(16))))
        return ops.fma(b.sitofp(ints, _v4f32), ops.splat_f(ops.scale(d, blk)), acc)

    def body(s, accs):
        two = b.mul(s, _const(2))
        return [block(two, accs[0]), block(b.add(two, _const(1)), accs[1])]

    a0, a1 = _for(b, b.sdiv(nblocks, _const(2)), [_zero_f, _zero_f], body, "neon.q8")
    total = b.fadd(a0, a1)
    odd = b.icmp_signed("!=", b.srem(nblocks, _const(2)), _const(0))
    here = b.block
    odd_bb = b.append_basic_block("neon.q8.odd")
    end_bb = b.append_basic_block("neon.q8.end")
    b.cbranch(odd, odd_bb, end_bb)
    b.position_at_end(odd_bb)
    last = block(b.sub(nblocks, _const(1)), total)
    b.branch(end_bb)
    b.position_at_end(end_bb)
    res = b.phi(_v4f32)
    res.add_incoming(total, here)
    res.add_incoming(last, odd_bb)
    return ops.faddv(res)


def _emit_q4(b, codes, x, d, scales, ngroups, group):
    """Σ_g sq_g d_g Σ q·x for one q4 row (G % 32 == 0): code byte k of a group holds the codes of
    x[gG + k] (low nibble) and x[gG + G/2 + k] (high). 32 code bytes per step, four `sdot` into
    four int32 accumulators (a last 16 when G/2 % 32 == 16); one convert and FMA by sq_g·d_g per
    group."""
    ops = _Ops(b)
    half = b.sdiv(group, _const(2))
    fifteen = _splat8(15)

    def group_body(g, accs):
        cbase, xbase = b.mul(g, half), b.mul(g, group)

        def chunk16(o, ia):
            v = ops.load(codes, b.add(cbase, o))
            xo = b.add(xbase, o)
            lo = ops.sdot(ia[0], b.and_(v, fifteen), ops.load(x, xo))
            hi = ops.sdot(ia[1], b.lshr(v, _splat8(4)), ops.load(x, b.add(xo, half)))
            return [lo, hi]

        def chunk32(c, ia):
            o = b.mul(c, _const(32))
            return chunk16(o, ia[:2]) + chunk16(b.add(o, _const(16)), ia[2:])

        ia = _for(b, b.sdiv(half, _const(32)), [_zero_i] * 4, chunk32, "neon.q4.chunk")
        last = b.mul(b.sdiv(half, _const(32)), _const(32))
        ia = _for(b, b.sdiv(b.srem(half, _const(32)), _const(16)), ia[:2],
                  lambda _, a2: chunk16(last, a2), "neon.q4.last") + ia[2:]
        sq = b.uitofp(ops.scale(scales, g), _f32)
        s = b.fmul(sq, ops.scale(d, g))
        total = b.add(b.add(ia[0], ia[1]), b.add(ia[2], ia[3]))
        return [ops.fma(b.sitofp(total, _v4f32), ops.splat_f(s), accs[0])]

    (acc,) = _for(b, ngroups, [_zero_f], group_body, "neon.q4")
    return ops.faddv(acc)


def _emit_q4f(b, codes, x, sd, ngroups):
    """Σ_g sd_g Σ q·x for one q4f G = 32 row with an even group count; x pair-permuted (per 64
    values [0:16, 32:48, 16:32, 48:64], `affine.permute_pairs`): group 2c's 16 code bytes meet
    xp[64c ..] (low nibbles) and xp[64c + 32 ..] (high), group 2c+1's xp[64c + 16 ..] and
    xp[64c + 48 ..]. Two `sdot` per group, one convert and FMA by sd_g each."""
    ops = _Ops(b)
    fifteen = _splat8(15)

    def body(c, accs):
        out = list(accs)
        for h in range(2):
            g = b.add(b.mul(c, _const(2)), _const(h))
            v = ops.load(codes, b.mul(g, _const(16)))
            xo = b.add(b.mul(c, _const(64)), _const(16 * h))
            ints = ops.sdot(_zero_i, b.and_(v, fifteen), ops.load(x, xo))
            ints = ops.sdot(ints, b.lshr(v, _splat8(4)), ops.load(x, b.add(xo, _const(32))))
            out[h] = ops.fma(b.sitofp(ints, _v4f32), ops.splat_f(ops.scale(sd, g)), out[h])
        return out

    a0, a1 = _for(b, b.sdiv(ngroups, _const(2)), [_zero_f, _zero_f], body, "neon.q4f")
    return ops.faddv(b.fadd(a0, a1))


def _emit_q8_2x2(b, w0, w1, x0, x1, d, nblocks):
    """The four dots rows (w0, w1) × activations (x0, x1) of q8 blocks of 32, scaled per block by
    d[b] (the block's weight-scale × activation-scale products are the caller's: d has
    4·nblocks values ordered [b][r·2 + t]). Per 8 bytes, `smmla` takes the 2×8 int8 rows and
    2×8 activations and adds the 2×2 products [r0x0, r0x1, r1x0, r1x1] into int32 lanes: four
    `smmla` (two zips per operand half) per block, one convert and one FMA by d's four."""
    ops = _Ops(b)
    v2i64 = ir.VectorType(_i64, 2)

    def pair(p, q, which):
        """[p's, q's] first (which = 0) or second 8 bytes: one zip1 / zip2 of 64-bit lanes."""
        a = b.bitcast(p, v2i64)
        c = b.bitcast(q, v2i64)
        idx = ir.Constant(ir.VectorType(_i32, 2), [0, 2] if which == 0 else [1, 3])
        return b.bitcast(b.shuffle_vector(a, c, idx), _v16i8)

    def body(blk, accs):
        off = b.mul(blk, _const(32))
        ints = _zero_i
        for h in range(2):
            o = b.add(off, _const(16 * h))
            r0, r1 = ops.load(w0, o), ops.load(w1, o)
            t0, t1 = ops.load(x0, o), ops.load(x1, o)
            for which in range(2):
                ints = ops.smmla(ints, pair(r0, r1, which), pair(t0, t1, which))
        dv = b.load(b.bitcast(b.gep(d, [b.mul(blk, _const(4))]), _v4f32.as_pointer()), align=4)
        return [ops.fma(b.sitofp(ints, _v4f32), dv, accs[0])]

    (acc,) = _for(b, nblocks, [_zero_f], body, "neon.q8mm")
    return acc


# -- numba intrinsics ------------------------------------------------------------------------


def _arr(a, dtype) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == dtype


def _arrays(context, builder, sig, args, n):
    return [context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:n], args[:n])]


def _len(builder, arr):
    return builder.extract_value(arr.shape, 0)


def _i64_arg(context, builder, sig, args, k):
    return context.cast(builder, args[k], sig.args[k], types.int64)


def _ternary_intrinsic(emit):
    @intrinsic
    def dot(typingctx, codes, x):
        if not (_arr(codes, types.uint8) and _arr(x, types.int8)):
            return None

        def codegen(context, builder, sig, args):
            ca, xa = _arrays(context, builder, sig, args, 2)
            return emit(builder, ca.data, xa.data, _len(builder, ca))

        return types.int32(codes, x), codegen

    return dot


dot_t2 = _ternary_intrinsic(_emit_t2)
dot_t3 = _ternary_intrinsic(_emit_t3)


@intrinsic
def dot_b1_row(typingctx, codes, x, stride, tail):
    """Σ over set bits of codes, bit j of byte k ↔ x[k + j·stride]; the last len % 32 code bytes
    come from tail (uint8 [32], zero beyond them), as `simd._dot_b1_row`."""
    if not (_arr(codes, types.uint8) and _arr(x, types.int8) and isinstance(stride, types.Integer)
            and _arr(tail, types.uint8)):
        return None

    def codegen(context, builder, sig, args):
        ca, xa = _arrays(context, builder, sig, args, 2)
        ta = context.make_array(sig.args[3])(context, builder, args[3])
        st = _i64_arg(context, builder, sig, args, 2)
        return _emit_b1(builder, ca.data, xa.data, _len(builder, ca), st, ta.data)

    return types.int32(codes, x, stride, tail), codegen


@intrinsic
def dot_q8(typingctx, codes, x, d):
    """As `simd.dot_q8`: Σ_b d[b] Σ_{k<32} codes·x over len(codes) // 32 blocks."""
    if not (_arr(codes, types.int8) and _arr(x, types.int8) and _arr(d, types.float32)):
        return None

    def codegen(context, builder, sig, args):
        ca, xa, da = _arrays(context, builder, sig, args, 3)
        nb = builder.sdiv(_len(builder, ca), _const(32))
        return _emit_q8(builder, ca.data, xa.data, da.data, nb)

    return types.float32(codes, x, d), codegen


@intrinsic
def dot_q4_i8(typingctx, codes, x, d, scales, group):
    """As `simd.dot_q4_i8` for G % 32 == 0: Σ_g scales[g] d[g] Σ q·x."""
    if not (_arr(codes, types.uint8) and _arr(x, types.int8) and _arr(d, types.float32)
            and _arr(scales, types.uint8) and isinstance(group, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ca, xa, da, sa = _arrays(context, builder, sig, args, 4)
        g = _i64_arg(context, builder, sig, args, 4)
        return _emit_q4(builder, ca.data, xa.data, da.data, sa.data, _len(builder, sa), g)

    return types.float32(codes, x, d, scales, group), codegen


@intrinsic
def dot_q4f_i8(typingctx, codes, x, sd):
    """As `simd._q4f_i8_dot`: one q4f G = 32 row, an even number of groups, x pair-permuted."""
    if not (_arr(codes, types.uint8) and _arr(x, types.int8) and _arr(sd, types.float32)):
        return None

    def codegen(context, builder, sig, args):
        ca, xa, sa = _arrays(context, builder, sig, args, 3)
        return _emit_q4f(builder, ca.data, xa.data, sa.data, _len(builder, sa))

    return types.float32(codes, x, sd), codegen


@intrinsic
def dot_q8_2x2(typingctx, w0, w1, x0, x1, d):
    """i8mm: the 2×2 q8 dots of rows w0, w1 with activations x0, x1 (int8, len % 32 == 0), block b
    scaled by d[4b + 2r + t]; returns float32 [4] lanes [r0x0, r0x1, r1x0, r1x1] as a tuple."""
    if not (all(_arr(a, types.int8) for a in (w0, w1, x0, x1)) and _arr(d, types.float32)):
        return None
    ret = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        arrs = _arrays(context, builder, sig, args, 5)
        nb = builder.sdiv(_len(builder, arrs[0]), _const(32))
        acc = _emit_q8_2x2(builder, *(a.data for a in arrs), nb)
        vals = [builder.extract_element(acc, ir.Constant(_i32, k)) for k in range(4)]
        return context.make_tuple(builder, ret, vals)

    return ret(w0, w1, x0, x1, d), codegen


# -- AArch64 assembly of the dots on any host ------------------------------------------------

_P8 = _i8.as_pointer()
_PF = _f32.as_pointer()
SIGNATURES = {  # name: (return type, argument types, emit)
    "dot_t2": (_i32, [_P8, _P8, _i64], _emit_t2),
    "dot_t3": (_i32, [_P8, _P8, _i64], _emit_t3),
    "dot_b1": (_i32, [_P8, _P8, _i64, _i64, _P8], _emit_b1),
    "dot_q8": (_f32, [_P8, _P8, _PF, _i64], _emit_q8),
    "dot_q4_i8": (_f32, [_P8, _P8, _PF, _P8, _i64, _i64], _emit_q4),
    "dot_q4f_i8": (_f32, [_P8, _P8, _PF, _i64], _emit_q4f),
    "dot_q8_2x2": (_v4f32, [_P8, _P8, _P8, _P8, _PF, _i64], _emit_q8_2x2),
}


MACS = {"sdot": 16, "udot": 16, "smmla": 32}  # int8 multiply-adds per instruction


def _loops(asm: str) -> list[list[str]]:
    """Each loop's instructions: from a label to the branch back to it."""
    lines = [ln.strip() for ln in asm.splitlines()]
    loops = []
    for k, s in enumerate(lines):
        m = re.match(r"^([.\w$]+):", s)
        if not m:
            continue
        body = []
        for t in lines[k + 1 :]:
            if not t or t.startswith((".", "//", "@")) or re.match(r"^[.\w$]+:", t):
                continue
            body.append(t)
            if re.match(r"^b(\.\w+)?\s+" + re.escape(m.group(1)) + "$", t) or re.match(
                r"^(cbn?z|tbn?z)\b.*" + re.escape(m.group(1)) + "$", t
            ):
                loops.append(body)
                break
            if t.startswith(("ret", "b\t")) or t == "ret":
                break
    return loops


def inner_loop(asm: str) -> list[str]:
    """The innermost loop that holds the dot instructions."""
    hot = [b for b in _loops(asm) if any(i.split()[0] in MACS for i in b)]
    return min(hot, key=len) if hot else []


def aarch64_asm(name: str, features: str = "+neon,+dotprod,+i8mm") -> str:
    """The AArch64 assembly LLVM makes of one dot (as a standalone function `name`), for reading
    its instructions on any host."""
    ret, argtys, emit = SIGNATURES[name]
    mod = ir.Module(name=f"neon_{name}")
    mod.triple = "aarch64-unknown-linux-gnu"
    fn = ir.Function(mod, ir.FunctionType(ret, argtys), name=name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(emit(b, *fn.args))
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    tm = llvm.Target.from_triple(mod.triple).create_target_machine(cpu="generic", features=features, opt=3)
    parsed = llvm.parse_assembly(str(mod))
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(parsed, pb)
    return tm.emit_assembly(parsed)
