"""Row dot products written directly as LLVM vector IR (numba @intrinsic), where numba's loops
left a large factor on the table: ternary codes × int8 activations (x86 `vpmaddubsw`), and the
grouped q2/q3/q4 rows (portable vector IR; see the second half of this file).

LLVM's auto-vectoriser never forms `vpmaddubsw` (u8 × i8 → i16 pair sums, 32 multiply-adds per
instruction) from numba loops; written directly it makes the 2-bit ternary kernel 4-5× faster
(measured: 17 → 77 GMAC/s on one core at 2560×6912, where two threads then saturate memory).

- `dot_t2(codes, x)`: Σ_k c[k]·x[k] for one `ternary` row: Q = len(codes) bytes (Q % 32 == 0), each
  byte four 2-bit codes c ∈ {0, 1, 2} in streams (bits 2j..2j+1 of byte k ↔ x[k + jQ]).
- `dot_t3(codes, x)`: the same for one `ternary-1.6` row: digit j of the base-3 byte k ↔ x[k + jQ].

x is int8 [>= 4Q or 5Q]. Per 32 code bytes: unpack the streams with shifts and masks (or udiv/urem
by constants for base 3), one `vpmaddubsw` per stream (pairs: |c·x| ≤ 256, a 4- or 5-stream sum
≤ 2560 fits int16), then `vpmaddwd` by ones widens to int32 lanes; one horizontal sum per row.
`dot_b1` (OneBit sign bitplanes, eight streams) and `dot_q4_i8` (q4 nibbles) work the same way.
With AVX-512 VNNI or AVX-VNNI, one `vpdpbusd` per stream replaces `vpmaddubsw` + `vpmaddwd`
(OneBit 2B-shaped decode layers: 22.8 → 17.3 ms/token).

On CPUs without AVX2 (or not x86) the same functions are plain numba loops that sum in int16 over
runs of 32 bytes and widen to int32 (numba-lessons: ~16 GMAC/s per core here). `HAVE_AVX2` and
`HAVE_VNNI` say which path this process uses; numba's cache keys compiled code by CPU, so each
machine gets its own.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from lowbit.runtime.kernels.jit import helper


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except Exception:  # pragma: no cover - feature detection unavailable
        return False


def _has_vnni() -> bool:
    """AVX-512 VNNI (with VL) or AVX-VNNI: `vpdpbusd` on 256-bit vectors (u8 × i8, four products
    summed straight into each int32 lane)."""
    if not HAVE_AVX2:
        return False
    try:
        f = llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - feature detection unavailable
        return False
    return bool((f.get("avx512vnni", False) and f.get("avx512vl", False)) or f.get("avxvnni", False))


HAVE_AVX2 = _has_avx2()
HAVE_VNNI = _has_vnni()
VNNI_ACCUMULATORS = 4  # streams j go to accumulator j % 4: two dependent vpdpbusd per step, not 4-8

_i8 = ir.IntType(8)
_i16 = ir.IntType(16)
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)
_v32i8 = ir.VectorType(_i8, 32)
_v16i16 = ir.VectorType(_i16, 16)
_v8i32 = ir.VectorType(_i32, 8)


def _splat(ty: ir.Type, n: int, value: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(ty, n), [ir.Constant(ty, value)] * n)


def _open_loop(builder, count: ir.Value, name: str) -> tuple:
    """Blocks (pre, loop, done) of a loop run while count > 0, the builder placed in `loop`."""
    pre = builder.block
    loop = builder.append_basic_block(f"{name}.loop")
    done = builder.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(_i64, 0)), loop, done)
    builder.position_at_end(loop)
    return pre, loop, done


def _exit_phis(builder, values: list, pre, loop, zero) -> list:
    """At a loop's exit block: each loop-carried value as a phi (zero when the loop never ran)."""
    phis = []
    for v in values:  # all phis first: LLVM wants them at the top of the block
        p = builder.phi(v.type)
        p.add_incoming(zero, pre)
        p.add_incoming(v, loop)
        phis.append(p)
    return phis


def _dpbusd(builder) -> ir.Function:
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_v8i32, [_v8i32] * 3), "llvm.x86.avx512.vpdpbusd.256"
    )


def _build_dot(
    context, builder, sig, args, streams: int, unpack, stride=None, vnni: bool = False, tail=None
) -> ir.Value:
    """Emit the loop over 32-byte steps: stream j of code byte k pairs with x[k + j·stride]
    (stride = the number of code bytes by default). AVX2: acc += pmaddwd(Σ_j pmaddubsw(code_j, x_j), 1);
    VNNI: acc = vpdpbusd(acc, code_j, x_j) into VNNI_ACCUMULATORS accumulators (one would chain
    every stream through the instruction's latency), summed after the loop. With `tail` (the
    index of a uint8 [32] argument holding the codes' last len % 32 bytes, zero beyond), a last
    partial step reads its codes from there instead of past the end of the codes."""
    ca = context.make_array(sig.args[0])(context, builder, args[0])
    xa = context.make_array(sig.args[1])(context, builder, args[1])
    ta = None if tail is None else context.make_array(sig.args[tail])(context, builder, args[tail])
    q = builder.extract_value(ca.shape, 0)
    step = q if stride is None else stride
    mod = builder.module
    maddubs = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_v16i16, [_v32i8, _v32i8]), "llvm.x86.avx2.pmadd.ub.sw"
    )
    maddwd = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_v8i32, [_v16i16, _v16i16]), "llvm.x86.avx2.pmadd.wd"
    )
    reduce_add = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_i32, [_v8i32]), "llvm.vector.reduce.add.v8i32"
    )
    dpbusd = _dpbusd(builder) if vnni else None

    def load(ptr: ir.Value, offset: ir.Value) -> ir.Value:
        p = builder.bitcast(builder.gep(ptr, [offset]), _v32i8.as_pointer())
        return builder.load(p, align=1)

    zero = ir.Constant(_v8i32, None)
    n_acc = min(streams, VNNI_ACCUMULATORS) if vnni else 1
    pre, loop, done = _open_loop(builder, q, "tdot")
    i = builder.phi(_i64)
    accs = [builder.phi(_v8i32) for _ in range(n_acc)]
    i.add_incoming(ir.Constant(_i64, 0), pre)
    for acc in accs:
        acc.add_incoming(zero, pre)
    if ta is None:
        codes = unpack(builder, load(ca.data, i))
    else:
        partial = builder.icmp_signed(">", builder.add(i, ir.Constant(_i64, 32)), q)
        src = builder.select(partial, ta.data, builder.gep(ca.data, [i]))
        codes = unpack(builder, load(src, ir.Constant(_i64, 0)))
    xs = [load(xa.data, builder.add(i, builder.mul(step, ir.Constant(_i64, j)))) for j in range(streams)]
    if vnni:
        nexts = list(accs)
        for j in range(streams):
            a = j % n_acc
            nexts[a] = builder.call(dpbusd, [nexts[a], builder.bitcast(codes[j], _v8i32), builder.bitcast(xs[j], _v8i32)])
    else:
        pairs = None
        for j in range(streams):
            p = builder.call(maddubs, [codes[j], xs[j]])
            pairs = p if pairs is None else builder.add(pairs, p)
        nexts = [builder.add(accs[0], builder.call(maddwd, [pairs, _splat(_i16, 16, 1)]))]
    i_next = builder.add(i, ir.Constant(_i64, 32))
    i.add_incoming(i_next, builder.block)
    for acc, nxt in zip(accs, nexts):
        acc.add_incoming(nxt, builder.block)
    builder.cbranch(builder.icmp_signed("<", i_next, q), loop, done)

    builder.position_at_end(done)
    totals = _exit_phis(builder, nexts, pre, loop, zero)
    total = totals[0]
    for t in totals[1:]:
        total = builder.add(total, t)
    return builder.call(reduce_add, [total])


def _unpack2(builder, c):
    three = _splat(_i8, 32, 3)
    return [
        builder.and_(c, three),
        builder.and_(builder.lshr(c, _splat(_i8, 32, 2)), three),
        builder.and_(builder.lshr(c, _splat(_i8, 32, 4)), three),
        builder.lshr(c, _splat(_i8, 32, 6)),
    ]


def _unpack1(builder, c):
    one = _splat(_i8, 32, 1)
    return [builder.and_(builder.lshr(c, _splat(_i8, 32, j)), one) for j in range(8)]


def _unpack3(builder, c):
    three = _splat(_i8, 32, 3)
    digits = []
    for _ in range(4):
        nxt = builder.udiv(c, three)
        digits.append(builder.sub(c, builder.mul(nxt, three)))
        c = nxt
    digits.append(c)
    return digits


def _check(codes, x):
    return (
        isinstance(codes, types.Array)
        and codes.ndim == 1
        and codes.layout == "C"
        and codes.dtype == types.uint8
        and isinstance(x, types.Array)
        and x.ndim == 1
        and x.layout == "C"
        and x.dtype == types.int8
    )


def _ternary_dot(streams: int, unpack, vnni: bool):
    @intrinsic
    def dot(typingctx, codes, x):
        if not _check(codes, x):
            return None

        def codegen(context, builder, sig, args):
            return _build_dot(context, builder, sig, args, streams, unpack, vnni=vnni)

        return types.int32(codes, x), codegen

    return dot


def _onebit_dot(vnni: bool):
    @intrinsic
    def dot(typingctx, codes, x, stride, tail):
        """Σ over set bits of codes; bit j of byte k ↔ x[k + j·stride] (AVX2: the 8 pair sums per
        i16 lane stay ≤ 8 · 2 · 127). The last len(codes) % 32 bytes come from `tail` (see
        dot_b1), in the same loop: one call and one horizontal sum per row."""
        if not _check(codes, x) or not isinstance(stride, types.Integer) or not _check(tail, x):
            return None

        def codegen(context, builder, sig, args):
            st = context.cast(builder, args[2], sig.args[2], types.int64)
            return _build_dot(context, builder, sig, args, 8, _unpack1, stride=st, vnni=vnni, tail=3)

        return types.int32(codes, x, stride, tail), codegen

    return dot


_dot_t2_avx2 = _ternary_dot(4, _unpack2, vnni=False)
_dot_t3_avx2 = _ternary_dot(5, _unpack3, vnni=False)
_dot_b1_avx2 = _onebit_dot(vnni=False)
_dot_t2_vnni = _ternary_dot(4, _unpack2, vnni=True)
_dot_t3_vnni = _ternary_dot(5, _unpack3, vnni=True)
_dot_b1_vnni = _onebit_dot(vnni=True)


# -- portable fallbacks (also the reference the tests hold the intrinsics to) ----------------

_RUN = 32
_i16n = np.int16
_i32n = np.int32


@helper
def dot_t2_generic(codes, x):
    q = codes.shape[0]
    acc = _i32n(0)
    for o in range(0, q, _RUN):
        c = codes[o : o + _RUN]
        x0 = x[o : o + _RUN]
        x1 = x[q + o : q + o + _RUN]
        x2 = x[2 * q + o : 2 * q + o + _RUN]
        x3 = x[3 * q + o : 3 * q + o + _RUN]
        s = _i16n(0)
        for k in range(_RUN):
            u = _i16n(c[k])
            s = _i16n(
                s
                + (u & 3) * x0[k]
                + ((u >> 2) & 3) * x1[k]
                + ((u >> 4) & 3) * x2[k]
                + (u >> 6) * x3[k]
            )
        acc = _i32n(acc + s)
    return acc


@helper
def dot_t3_generic(codes, x):
    q = codes.shape[0]
    acc = _i32n(0)
    for o in range(0, q, 16):  # 5 streams × 16 × 256 < 2^15
        c = codes[o : o + 16]
        x0 = x[o : o + 16]
        x1 = x[q + o : q + o + 16]
        x2 = x[2 * q + o : 2 * q + o + 16]
        x3 = x[3 * q + o : 3 * q + o + 16]
        x4 = x[4 * q + o : 4 * q + o + 16]
        s = _i16n(0)
        for k in range(16):
            b = c[k]
            s = _i16n(
                s
                + _i16n(b % 3) * x0[k]
                + _i16n((b // 3) % 3) * x1[k]
                + _i16n((b // 9) % 3) * x2[k]
                + _i16n((b // 27) % 3) * x3[k]
                + _i16n(b // 81) * x4[k]
            )
        acc = _i32n(acc + s)
    return acc


@helper
def dot_b1_generic(codes, x, stride, tail):
    """As _dot_b1_avx2, in plain loops (reads the codes directly; `tail` is unused)."""
    acc = _i32n(0)
    for o in range(0, codes.shape[0], _RUN):
        s = _i32n(0)
        for k in range(o, min(o + _RUN, codes.shape[0])):
            b = _i32n(codes[k])
            for j in range(8):
                s += ((b >> j) & 1) * _i32n(x[k + j * stride])
        acc = _i32n(acc + s)
    return acc


if HAVE_VNNI:
    dot_t2 = _dot_t2_vnni
    dot_t3 = _dot_t3_vnni
    _dot_b1_row = _dot_b1_vnni
elif HAVE_AVX2:
    dot_t2 = _dot_t2_avx2
    dot_t3 = _dot_t3_avx2
    _dot_b1_row = _dot_b1_avx2
else:  # pragma: no cover - exercised on machines without AVX2
    dot_t2 = dot_t2_generic
    dot_t3 = dot_t3_generic
    _dot_b1_row = dot_b1_generic


@helper
def dot_b1(codes, x, tail):
    """Σ_k Σ_j bit_j(codes[k]) · x[k + jQ] (Q = len(codes)): one OneBit row's sum of the int8
    activations where the sign is +1. The last Q % 32 bytes are copied into `tail` (uint8 [32],
    zero beyond them, reused across rows) and run as the loop's last vector step, reading up to
    31 bytes past x[8Q]: x must be zero-padded to 8Q + 32."""
    q = codes.shape[0]
    runs = q // _RUN * _RUN
    for k in range(q - runs):
        tail[k] = codes[runs + k]
    return _dot_b1_row(codes, x, q, tail)


# -- q8 × int8 activations in blocks of 32 (llama.cpp's Q8_0 × Q8_0 dot) ---------------------

_v8f32_ = ir.VectorType(ir.FloatType(), 8)


@intrinsic
def _dot_q8_avx2(typingctx, codes, x, d):
    """Σ_b d[b] · Σ_{k<32} codes[32b+k] · x[32b+k] over len(codes) // 32 blocks (float32):
    |c| × sign(x, c) in `vpmaddubsw` (pairs ≤ 2·128·127), `vpmaddwd` to int32, then one
    convert and one FMA by the block's activation scale per 32 weights."""
    ok = (
        all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (codes, x, d))
        and codes.dtype == types.int8
        and x.dtype == types.int8
        and d.dtype == types.float32
    )
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        b = builder
        ca, xa, da = (context.make_array(t)(context, b, a) for t, a in zip(sig.args, args))
        nb = b.sdiv(b.extract_value(ca.shape, 0), ir.Constant(_i64, 32))
        mod = b.module
        fn = cgutils.get_or_insert_function
        maddubs = fn(mod, ir.FunctionType(_v16i16, [_v32i8, _v32i8]), "llvm.x86.avx2.pmadd.ub.sw")
        maddwd = fn(mod, ir.FunctionType(_v8i32, [_v16i16, _v16i16]), "llvm.x86.avx2.pmadd.wd")
        psign = fn(mod, ir.FunctionType(_v32i8, [_v32i8, _v32i8]), "llvm.x86.avx2.psign.b")
        absb = fn(mod, ir.FunctionType(_v32i8, [_v32i8, ir.IntType(1)]), "llvm.abs.v32i8")
        fma = fn(mod, ir.FunctionType(_v8f32_, [_v8f32_] * 3), "llvm.fmuladd.v8f32")
        reduce = fn(mod, ir.FunctionType(ir.FloatType(), [ir.FloatType(), _v8f32_]), "llvm.vector.reduce.fadd.v8f32")

        def load(ptr, off):
            return b.load(b.bitcast(b.gep(ptr, [off]), _v32i8.as_pointer()), align=1)

        def block(i, acc):
            off = b.mul(i, ir.Constant(_i64, 32))
            c = load(ca.data, off)
            xv = load(xa.data, off)
            sx = b.call(psign, [xv, c])
            pairs = b.call(maddubs, [b.call(absb, [c, ir.Constant(ir.IntType(1), 0)]), sx])
            ints = b.call(maddwd, [pairs, _splat(_i16, 16, 1)])
            scale = b.load(b.gep(da.data, [i]))
            splat = b.shuffle_vector(
                b.insert_element(ir.Constant(_v8f32_, ir.Undefined), scale, ir.Constant(_i32, 0)),
                ir.Constant(_v8f32_, ir.Undefined),
                ir.Constant(ir.VectorType(_i32, 8), [0] * 8),
            )
            return b.call(fma, [b.sitofp(ints, _v8f32_), splat, acc])

        # two blocks per step into two accumulators: the FMA chain's latency, not the loads,
        # bounds a single accumulator (measured 123 → 103 cycles per 576-byte row streamed from memory)
        zero = ir.Constant(_v8f32_, None)
        pairs_n = b.sdiv(nb, ir.Constant(_i64, 2))
        pre, loop, after = _open_loop(b, pairs_n, "q8dot")
        i = b.phi(_i64)
        acc0 = b.phi(_v8f32_)
        acc1 = b.phi(_v8f32_)
        i.add_incoming(ir.Constant(_i64, 0), pre)
        acc0.add_incoming(zero, pre)
        acc1.add_incoming(zero, pre)
        two_i = b.mul(i, ir.Constant(_i64, 2))
        n0 = block(two_i, acc0)
        n1 = block(b.add(two_i, ir.Constant(_i64, 1)), acc1)
        i_next = b.add(i, ir.Constant(_i64, 1))
        i.add_incoming(i_next, b.block)
        acc0.add_incoming(n0, b.block)
        acc1.add_incoming(n1, b.block)
        b.cbranch(b.icmp_signed("<", i_next, pairs_n), loop, after)
        b.position_at_end(after)
        s0, s1 = _exit_phis(b, [n0, n1], pre, loop, zero)
        total = b.fadd(s0, s1)
        odd = b.icmp_signed("!=", b.mul(pairs_n, ir.Constant(_i64, 2)), nb)
        here = b.block
        odd_bb = b.append_basic_block("q8dot.odd")
        end_bb = b.append_basic_block("q8dot.end")
        b.cbranch(odd, odd_bb, end_bb)
        b.position_at_end(odd_bb)
        last = block(b.sub(nb, ir.Constant(_i64, 1)), total)
        b.branch(end_bb)
        b.position_at_end(end_bb)
        res = b.phi(_v8f32_)
        res.add_incoming(total, here)
        res.add_incoming(last, odd_bb)
        return b.call(reduce, [ir.Constant(ir.FloatType(), 0.0), res])

    return types.float32(codes, x, d), codegen


@helper
def dot_q8_generic(codes, x, d):
    """As _dot_q8_avx2, in plain loops."""
    acc = np.float32(0.0)
    for blk in range(codes.shape[0] // _RUN):
        s = _i32n(0)
        for k in range(blk * _RUN, (blk + 1) * _RUN):
            s += _i32n(codes[k]) * _i32n(x[k])
        acc += np.float32(s) * d[blk]
    return acc


dot_q8 = _dot_q8_avx2 if HAVE_AVX2 else dot_q8_generic


# -- q4 codes × int8 activations, one activation scale per group ------------------------------


def _q4_i8_dot(vnni: bool):
    @intrinsic
    def dot(typingctx, codes, x, d, scales, group):
        """Σ_g scales[g] · d[g] · Σ_{k in g} q_k · x_k for one q4 row with G % 64 == 0 (x quantised
        with one scale d[g] per group, so a whole group sums in integers). Each 32-byte chunk of a
        group holds the low-nibble codes for x[c·32 ..] and the high-nibble codes for
        x[G/2 + c·32 ..] (the group's stream layout): one load feeds two `vpmaddubsw` (u4 × i8,
        summed pairs ≤ 4·15·128) widened by `vpmaddwd` (VNNI: two `vpdpbusd` into two int32
        accumulators). At the group's last chunk the integers are converted and added into the
        float accumulator with one FMA by sq·d[g]: one convert per G weights, where scales per
        block of 32 needed four."""
        ok = (
            all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (codes, x, d, scales))
            and codes.dtype == types.uint8
            and x.dtype == types.int8
            and d.dtype == types.float32
            and scales.dtype == types.uint8
            and isinstance(group, types.Integer)
        )
        if not ok:
            return None

        def codegen(context, builder, sig, args):
            b = builder
            ca, xa, da, sa = (context.make_array(t)(context, b, a) for t, a in zip(sig.args[:4], args[:4]))
            g_len = context.cast(b, args[4], sig.args[4], types.int64)
            g64 = b.sdiv(g_len, ir.Constant(_i64, 64))
            half = b.sdiv(g_len, ir.Constant(_i64, 2))
            chunks = b.mul(b.extract_value(sa.shape, 0), g64)
            mod = b.module
            fn = cgutils.get_or_insert_function
            maddubs = fn(mod, ir.FunctionType(_v16i16, [_v32i8, _v32i8]), "llvm.x86.avx2.pmadd.ub.sw")
            maddwd = fn(mod, ir.FunctionType(_v8i32, [_v16i16, _v16i16]), "llvm.x86.avx2.pmadd.wd")
            fma = fn(mod, ir.FunctionType(_v8f32_, [_v8f32_] * 3), "llvm.fmuladd.v8f32")
            reduce = fn(mod, ir.FunctionType(ir.FloatType(), [ir.FloatType(), _v8f32_]), "llvm.vector.reduce.fadd.v8f32")
            f32t = ir.FloatType()
            dpbusd = _dpbusd(b) if vnni else None

            def load32(ptr, off):
                return b.load(b.bitcast(b.gep(ptr, [off]), _v32i8.as_pointer()), align=1)

            def splat8(v):
                one = b.insert_element(ir.Constant(_v8f32_, ir.Undefined), v, ir.Constant(_i32, 0))
                return b.shuffle_vector(one, ir.Constant(_v8f32_, ir.Undefined), ir.Constant(ir.VectorType(_i32, 8), [0] * 8))

            zero_f = ir.Constant(_v8f32_, None)
            zero_i = ir.Constant(_v8i32, None)
            pre, loop, done = _open_loop(b, chunks, "q4dot")
            flush = b.append_basic_block("q4dot.flush")
            cont = b.append_basic_block("q4dot.cont")
            i = b.phi(_i64)
            g = b.phi(_i64)  # group and chunk within it, stepped without a division per chunk
            c = b.phi(_i64)
            acc_a = b.phi(_v8i32)
            acc_b = b.phi(_v8i32)
            acc_f = b.phi(_v8f32_)
            for v in (i, g, c):
                v.add_incoming(ir.Constant(_i64, 0), pre)
            acc_a.add_incoming(zero_i, pre)
            acc_b.add_incoming(zero_i, pre)
            acc_f.add_incoming(zero_f, pre)
            v = load32(ca.data, b.mul(i, ir.Constant(_i64, 32)))
            lo = b.and_(v, _splat(_i8, 32, 15))
            hi = b.and_(b.lshr(v, _splat(_i8, 32, 4)), _splat(_i8, 32, 15))
            x_off = b.add(b.mul(g, g_len), b.mul(c, ir.Constant(_i64, 32)))
            x_lo = load32(xa.data, x_off)
            x_hi = load32(xa.data, b.add(x_off, half))
            if vnni:
                a2 = b.call(dpbusd, [acc_a, b.bitcast(lo, _v8i32), b.bitcast(x_lo, _v8i32)])
                b2 = b.call(dpbusd, [acc_b, b.bitcast(hi, _v8i32), b.bitcast(x_hi, _v8i32)])
            else:
                pairs = b.add(b.call(maddubs, [lo, x_lo]), b.call(maddubs, [hi, x_hi]))
                a2 = b.add(acc_a, b.call(maddwd, [pairs, _splat(_i16, 16, 1)]))
                b2 = acc_b
            c_inc = b.add(c, ir.Constant(_i64, 1))
            wrap = b.icmp_signed("==", c_inc, g64)
            b.cbranch(wrap, flush, cont)

            b.position_at_end(flush)  # the group's last chunk: its integers into the float sum
            sq = b.uitofp(b.load(b.gep(sa.data, [g])), f32t)
            scale = b.fmul(sq, b.load(b.gep(da.data, [g])))
            f2 = b.call(fma, [b.sitofp(b.add(a2, b2), _v8f32_), splat8(scale), acc_f])
            b.branch(cont)

            b.position_at_end(cont)
            f_next = b.phi(_v8f32_)
            f_next.add_incoming(acc_f, loop)
            f_next.add_incoming(f2, flush)
            a_next = b.phi(_v8i32)
            a_next.add_incoming(a2, loop)
            a_next.add_incoming(zero_i, flush)
            b_next = b.phi(_v8i32)
            b_next.add_incoming(b2, loop)
            b_next.add_incoming(zero_i, flush)
            i_next = b.add(i, ir.Constant(_i64, 1))
            i.add_incoming(i_next, cont)
            c.add_incoming(b.select(wrap, ir.Constant(_i64, 0), c_inc), cont)
            g.add_incoming(b.add(g, b.zext(wrap, _i64)), cont)
            acc_a.add_incoming(a_next, cont)
            acc_b.add_incoming(b_next, cont)
            acc_f.add_incoming(f_next, cont)
            b.cbranch(b.icmp_signed("<", i_next, chunks), loop, done)
            b.position_at_end(done)
            (total,) = _exit_phis(b, [f_next], pre, cont, zero_f)
            return b.call(reduce, [ir.Constant(f32t, 0.0), total])

        return types.float32(codes, x, d, scales, group), codegen

    return dot


_dot_q4_i8_avx2 = _q4_i8_dot(vnni=False)
_dot_q4_i8_vnni = _q4_i8_dot(vnni=True)


@helper
def dot_q4_i8_generic(codes, x, d, scales, group):
    """As _dot_q4_i8_avx2 for any G (a multiple of 32), in plain loops."""
    half = group // 2
    acc = np.float32(0.0)
    for g in range(scales.shape[0]):
        cg = codes[g * half : (g + 1) * half]
        xg = x[g * group : (g + 1) * group]
        s = _i32n(0)
        for i in range(half):
            q = _i32n(cg[i])
            s += (q & 15) * _i32n(xg[i]) + (q >> 4) * _i32n(xg[half + i])
        acc += np.float32(s) * (np.float32(scales[g]) * d[g])
    return acc


if HAVE_AVX2:
    _dot_q4_i8_fast = _dot_q4_i8_vnni if HAVE_VNNI else _dot_q4_i8_avx2

    @helper
    def dot_q4_i8(codes, x, d, scales, group):
        """Σ_g sq_g d_g Σ q·x_q for one q4 row (vector path when G % 64 == 0)."""
        if group % 64 == 0:
            return _dot_q4_i8_fast(codes, x, d, scales, group)
        return dot_q4_i8_generic(codes, x, d, scales, group)

else:  # pragma: no cover - exercised on machines without AVX2
    dot_q4_i8 = dot_q4_i8_generic


# -- q4f with G = 32 (GGUF Q4_0 / Q4_1) × int8 activations -------------------------------------


def _q4f_i8_dot(vnni: bool):
    @intrinsic
    def dot(typingctx, codes, x, sd):
        """Σ_g sd[g] · Σ_{k in g} q_k · x_k for one q4f row with G = 32 and an even
        number of groups. Two groups' 32 code bytes are one load; x is int8 quantised per block of
        32 and *pair-permuted* (`affine.permute_pairs`: per 64 values [0:16, 32:48, 16:32, 48:64])
        so that the low nibbles of both groups meet one contiguous 32-byte x vector and the high
        nibbles the next. `vpmaddubsw` + `vpmaddwd` (VNNI: `vpdpbusd`) leave lanes 0-3 with the
        first group's sums and 4-7 with the second's: one convert and one FMA by the two groups'
        scale products per 64 weights (sd[g] = s_g · d_g, computed by the caller in one vector loop)."""
        ok = (
            all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (codes, x, sd))
            and codes.dtype == types.uint8
            and x.dtype == types.int8
            and sd.dtype == types.float32
        )
        if not ok:
            return None

        def codegen(context, builder, sig, args):
            b = builder
            ca, xa, sa = (context.make_array(t)(context, b, a) for t, a in zip(sig.args, args))
            chunks = b.sdiv(b.extract_value(sa.shape, 0), ir.Constant(_i64, 2))
            mod = b.module
            fn = cgutils.get_or_insert_function
            maddubs = fn(mod, ir.FunctionType(_v16i16, [_v32i8, _v32i8]), "llvm.x86.avx2.pmadd.ub.sw")
            maddwd = fn(mod, ir.FunctionType(_v8i32, [_v16i16, _v16i16]), "llvm.x86.avx2.pmadd.wd")
            fma = fn(mod, ir.FunctionType(_v8f32_, [_v8f32_] * 3), "llvm.fmuladd.v8f32")
            reduce = fn(mod, ir.FunctionType(ir.FloatType(), [ir.FloatType(), _v8f32_]), "llvm.vector.reduce.fadd.v8f32")
            dpbusd = _dpbusd(b) if vnni else None
            f32t = ir.FloatType()

            def load32(ptr, off):
                return b.load(b.bitcast(b.gep(ptr, [off]), _v32i8.as_pointer()), align=1)

            zero_f = ir.Constant(_v8f32_, None)
            pre, loop, done = _open_loop(b, chunks, "q4fdot")
            i = b.phi(_i64)
            acc = b.phi(_v8f32_)
            i.add_incoming(ir.Constant(_i64, 0), pre)
            acc.add_incoming(zero_f, pre)
            v = load32(ca.data, b.mul(i, ir.Constant(_i64, 32)))
            lo = b.and_(v, _splat(_i8, 32, 15))
            hi = b.and_(b.lshr(v, _splat(_i8, 32, 4)), _splat(_i8, 32, 15))
            x_off = b.mul(i, ir.Constant(_i64, 64))
            x_lo = load32(xa.data, x_off)
            x_hi = load32(xa.data, b.add(x_off, ir.Constant(_i64, 32)))
            if vnni:
                zero_i = ir.Constant(_v8i32, None)
                ints = b.call(dpbusd, [zero_i, b.bitcast(lo, _v8i32), b.bitcast(x_lo, _v8i32)])
                ints = b.call(dpbusd, [ints, b.bitcast(hi, _v8i32), b.bitcast(x_hi, _v8i32)])
            else:
                pairs = b.add(b.call(maddubs, [lo, x_lo]), b.call(maddubs, [hi, x_hi]))
                ints = b.call(maddwd, [pairs, _splat(_i16, 16, 1)])
            v2 = ir.VectorType(f32t, 2)
            pair = b.load(b.bitcast(b.gep(sa.data, [b.mul(i, ir.Constant(_i64, 2))]), v2.as_pointer()), align=4)
            sv = b.shuffle_vector(pair, ir.Constant(v2, ir.Undefined),
                                  ir.Constant(ir.VectorType(_i32, 8), [0, 0, 0, 0, 1, 1, 1, 1]))
            acc1 = b.call(fma, [b.sitofp(ints, _v8f32_), sv, acc])
            i_next = b.add(i, ir.Constant(_i64, 1))
            i.add_incoming(i_next, b.block)
            acc.add_incoming(acc1, b.block)
            b.cbranch(b.icmp_signed("<", i_next, chunks), loop, done)
            b.position_at_end(done)
            (total,) = _exit_phis(b, [acc1], pre, loop, zero_f)
            return b.call(reduce, [ir.Constant(f32t, 0.0), total])

        return types.float32(codes, x, sd), codegen

    return dot


@helper
def dot_q4f32_i8_generic(codes, x, sd):
    """As _q4f_i8_dot in plain loops (x pair-permuted the same way; any number of groups: an odd
    last group's x is not permuted, as `affine.permute_pairs` leaves it)."""
    acc = np.float32(0.0)
    ng = sd.shape[0]
    for g in range(ng):
        cg = codes[g * 16 : (g + 1) * 16]
        c, second = g // 2, g % 2
        s = _i32n(0)
        for j in range(16):
            q = _i32n(cg[j])
            if g == ng - 1 and ng % 2 == 1:  # unpaired: natural order
                lo_x = x[g * 32 + j]
                hi_x = x[g * 32 + 16 + j]
            else:
                lo_x = x[c * 64 + second * 16 + j]
                hi_x = x[c * 64 + 32 + second * 16 + j]
            s += (q & 15) * _i32n(lo_x) + (q >> 4) * _i32n(hi_x)
        acc += np.float32(s) * sd[g]
    return acc


if HAVE_AVX2:
    _dot_q4f_fast = _q4f_i8_dot(vnni=True) if HAVE_VNNI else _q4f_i8_dot(vnni=False)

    @helper
    def dot_q4f32_i8(codes, x, sd):
        """Σ_g sd_g Σ q·x_q for one q4f G = 32 row (vector path for an even group count)."""
        if sd.shape[0] % 2 == 0:
            return _dot_q4f_fast(codes, x, sd)
        return dot_q4f32_i8_generic(codes, x, sd)

else:  # pragma: no cover - exercised on machines without AVX2
    dot_q4f32_i8 = dot_q4f32_i8_generic


# -- grouped q2 / q3 / q4: one row's Σ_g sq_g (Σ q·x − z_g xs_g) in portable vector IR -----------
#
# The numba loops reduce each group's partial dot product horizontally (G/2 bytes = two vector
# iterations at G = 128) and spent as long on that as on the work. Here each group's products
# go to <8 x float> accumulators (several, to hide FMA latency) that are scaled into one row
# accumulator with a single fused multiply-add per group; one horizontal sum per row. Plain
# LLVM vector IR (no x86 intrinsics): any target legalises it.

_f32 = ir.FloatType()
_v8f32 = ir.VectorType(_f32, 8)
_v4f32 = ir.VectorType(_f32, 4)


class _Row:
    """Pointers and helpers for one grouped row (codes, padded x, group scales and zeros, xs)."""

    def __init__(self, context, builder, sig, args):
        self.b = builder
        arr = [
            context.make_array(t)(context, builder, a)
            for t, a in zip(sig.args[:5], args[:5], strict=True)
        ]
        self.codes, self.x, self.scales, self.zeros, self.xs = (a.data for a in arr)
        self.ng = builder.extract_value(arr[2].shape, 0)
        self.group = args[5]
        mod = builder.module
        self.fma8 = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_v8f32, [_v8f32, _v8f32, _v8f32]), "llvm.fmuladd.v8f32"
        )
        self.fma4 = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_v4f32, [_v4f32, _v4f32, _v4f32]), "llvm.fmuladd.v4f32"
        )

    def const(self, v: int) -> ir.Constant:
        return ir.Constant(_i64, v)

    def codes_i32(self, offset: ir.Value, n: int) -> ir.Value:
        """n bytes of codes at offset, zero-extended to <n x i32>."""
        vt = ir.VectorType(_i8, n)
        p = self.b.bitcast(self.b.gep(self.codes, [offset]), vt.as_pointer())
        return self.b.zext(self.b.load(p, align=1), ir.VectorType(_i32, n))

    def xvec(self, offset: ir.Value, n: int) -> ir.Value:
        vt = ir.VectorType(_f32, n)
        p = self.b.bitcast(self.b.gep(self.x, [offset]), vt.as_pointer())
        return self.b.load(p, align=4)

    def field(self, v: ir.Value, shift: int, mask: int | None, n: int) -> ir.Value:
        """((v >> shift) & mask) as <n x float>."""
        if shift:
            v = self.b.lshr(v, _splat(_i32, n, shift))
        if mask is not None:
            v = self.b.and_(v, _splat(_i32, n, mask))
        return self.b.sitofp(v, ir.VectorType(_f32, n))

    def fma(self, a, x, acc):
        return self.b.call(self.fma8 if a.type.count == 8 else self.fma4, [a, x, acc])

    def loop(self, count: ir.Value, step: int, inits: list[ir.Value], body) -> list[ir.Value]:
        """for j in range(0, count, step): accs = body(j, accs); count > 0, a multiple of step."""
        b = self.b
        pre = b.block
        head = b.append_basic_block("g.loop")
        end = b.append_basic_block("g.end")
        b.branch(head)
        b.position_at_end(head)
        j = b.phi(_i64)
        j.add_incoming(self.const(0), pre)
        phis = []
        for v in inits:
            p = b.phi(v.type)
            p.add_incoming(v, pre)
            phis.append(p)
        nxt = body(j, phis)
        j1 = b.add(j, self.const(step))
        j.add_incoming(j1, b.block)
        for p, v in zip(phis, nxt, strict=True):
            p.add_incoming(v, b.block)
        b.cbranch(b.icmp_signed("<", j1, count), head, end)
        b.position_at_end(end)
        return nxt


def _zeros8() -> ir.Constant:
    return ir.Constant(_v8f32, None)


def _sum(b, vs):
    while len(vs) > 1:
        vs = [b.fadd(vs[i], vs[i + 1]) if i + 1 < len(vs) else vs[i] for i in range(0, len(vs), 2)]
    return vs[0]


def _group_q4(row: _Row, cbase, xbase):
    b = row.b
    h = b.udiv(row.group, row.const(2))

    def body(j, acc):
        out = list(acc)
        for u in range(2):
            jj = b.add(j, row.const(8 * u))
            v = row.codes_i32(b.add(cbase, jj), 8)
            out[2 * u] = row.fma(row.field(v, 0, 15, 8), row.xvec(b.add(xbase, jj), 8), out[2 * u])
            out[2 * u + 1] = row.fma(
                row.field(v, 4, None, 8), row.xvec(b.add(b.add(xbase, h), jj), 8), out[2 * u + 1]
            )
        return out

    return _sum(b, row.loop(h, 16, [_zeros8()] * 4, body))


def _low2(row: _Row, cbase, xbase):
    """The 2-bit streams of a group (q2, and q3's low plane): G/4 bytes, stream k ↔ x[k·G/4 + j]."""
    b = row.b
    m = b.udiv(row.group, row.const(4))

    def body(j, acc):
        v = row.codes_i32(b.add(cbase, j), 8)
        out = []
        for k in range(4):
            xo = b.add(b.add(xbase, b.mul(m, row.const(k))), j)
            out.append(
                row.fma(row.field(v, 2 * k, 3 if k < 3 else None, 8), row.xvec(xo, 8), acc[k])
            )
        return out

    return _sum(b, row.loop(m, 8, [_zeros8()] * 4, body))


def _group_q2(row: _Row, cbase, xbase):
    return _low2(row, cbase, xbase)


def _group_q3(row: _Row, cbase, xbase):
    b = row.b
    low = _low2(row, cbase, xbase)
    m = b.udiv(row.group, row.const(4))
    e = b.udiv(row.group, row.const(8))  # high plane: G/8 bytes, bit k ↔ x[k·G/8 + j]
    hbase = b.add(cbase, m)
    zero4 = ir.Constant(_v4f32, None)

    def body(j, acc):
        v = row.codes_i32(b.add(hbase, j), 4)
        out = list(acc)
        for k in range(8):
            xo = b.add(b.add(xbase, b.mul(e, row.const(k))), j)
            out[k] = row.fma(row.field(v, k, 1, 4), row.xvec(xo, 4), out[k])
        return out

    hi = _sum(b, row.loop(e, 4, [zero4] * 8, body))
    hi8 = b.shuffle_vector(hi, zero4, ir.Constant(ir.VectorType(_i32, 8), list(range(8))))
    return row.fma(ir.Constant(_v8f32, [ir.Constant(_f32, 4.0)] * 8), hi8, low)


def _group_q1(row: _Row, cbase, xbase):
    """One bit per weight (q1f): G/8 bytes, bit k of byte j ↔ x[k·G/8 + j]; Σ bit·x."""
    b = row.b
    e = b.udiv(row.group, row.const(8))
    zero4 = ir.Constant(_v4f32, None)

    def body(j, acc):
        v = row.codes_i32(b.add(cbase, j), 4)
        out = list(acc)
        for k in range(8):
            xo = b.add(b.add(xbase, b.mul(e, row.const(k))), j)
            out[k] = row.fma(row.field(v, k, 1, 4), row.xvec(xo, 4), out[k])
        return out

    s4 = _sum(b, row.loop(e, 4, [zero4] * 8, body))
    return b.shuffle_vector(s4, zero4, ir.Constant(ir.VectorType(_i32, 8), list(range(8))))


def _build_grouped(context, builder, sig, args, group_dot) -> ir.Value:
    b = builder
    row = _Row(context, builder, sig, args)
    f16_scales = sig.args[2].dtype == types.uint16
    per = b.udiv(b.mul(row.group, row.const(row_bits[group_dot])), row.const(8))
    pre = b.block
    head = b.append_basic_block("rows.group")
    done = b.append_basic_block("rows.done")
    zero_f = ir.Constant(_f32, 0.0)
    b.cbranch(b.icmp_signed(">", row.ng, row.const(0)), head, done)

    b.position_at_end(head)
    g = b.phi(_i64)
    acc = b.phi(_v8f32)
    zs = b.phi(_f32)
    g.add_incoming(row.const(0), pre)
    acc.add_incoming(_zeros8(), pre)
    zs.add_incoming(zero_f, pre)
    d = group_dot(row, b.mul(g, per), b.mul(g, row.group))
    if f16_scales:  # q1f/q2f/q4f: f16 group scales (raw bits)
        s = b.fpext(b.bitcast(b.load(b.gep(row.scales, [g])), ir.HalfType()), _f32)
    else:
        s = b.uitofp(b.load(b.gep(row.scales, [g])), _f32)
    z = b.uitofp(b.load(b.gep(row.zeros, [g])), _f32)
    xsg = b.load(b.gep(row.xs, [g]))
    s8 = b.insert_element(ir.Constant(_v8f32, None), s, ir.Constant(_i32, 0))
    s8 = b.shuffle_vector(
        s8, ir.Constant(_v8f32, None), ir.Constant(ir.VectorType(_i32, 8), [0] * 8)
    )
    acc1 = row.fma(s8, d, acc)
    zs1 = b.fadd(zs, b.fmul(b.fmul(s, z), xsg))
    g1 = b.add(g, row.const(1))
    tail = b.block
    g.add_incoming(g1, tail)
    acc.add_incoming(acc1, tail)
    zs.add_incoming(zs1, tail)
    b.cbranch(b.icmp_signed("<", g1, row.ng), head, done)

    b.position_at_end(done)
    acc_f = b.phi(_v8f32)
    acc_f.add_incoming(_zeros8(), pre)
    acc_f.add_incoming(acc1, tail)
    zs_f = b.phi(_f32)
    zs_f.add_incoming(zero_f, pre)
    zs_f.add_incoming(zs1, tail)
    lanes = [b.extract_element(acc_f, ir.Constant(_i32, i)) for i in range(8)]
    return b.fsub(_sum(b, lanes), zs_f)


row_bits = {_group_q4: 4, _group_q3: 3, _group_q2: 2, _group_q1: 1}


def _grouped_intrinsic(group_dot, name: str):
    def typer(typingctx, codes, x, scales, zeros, xs, group):
        ok = (
            all(
                isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                for a in (codes, x, scales, zeros, xs)
            )
            and codes.dtype == zeros.dtype == types.uint8
            and scales.dtype in (types.uint8, types.uint16)  # u8 integer scales or f16 bits
            and x.dtype == xs.dtype == types.float32
            and isinstance(group, types.Integer)
        )
        if not ok:
            return None

        def codegen(context, builder, sig, args):
            args = list(args)
            args[5] = context.cast(builder, args[5], sig.args[5], types.int64)
            return _build_grouped(context, builder, sig, args, group_dot)

        return types.float32(codes, x, scales, zeros, xs, group), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


# row_dot_qB(codes_row, xp, scales_row, zeros_row, xs, G) -> Σ_g sq_g (Σ_{i in g} q_i xp_i − z_g xs_g)
# (scales u8, or u16 f16 bits for the q{b}f encodings; row_dot_q1: one bit per weight, q1f's layout)
row_dot_q1 = _grouped_intrinsic(_group_q1, "row_dot_q1")
row_dot_q4 = _grouped_intrinsic(_group_q4, "row_dot_q4")
row_dot_q3 = _grouped_intrinsic(_group_q3, "row_dot_q3")
row_dot_q2 = _grouped_intrinsic(_group_q2, "row_dot_q2")
