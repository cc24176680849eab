"""The vector steps of many-query attention (`attention.attend_rows`), written as portable LLVM
vector IR (numba @intrinsic): numba's loops left them scalar.

A key block is K_BLOCK = 32 positions, one score row two 16-lane float vectors (two zmm on
AVX-512, four ymm on AVX2, eight NEON registers; LLVM legalises the width):

- `score_block(qa, kt, s)`: s [32] = Σ_i qa[i] · kt[i, :] (kt [D, 32] the block's keys,
  transposed): a broadcast FMA per query element; a constant-trip loop over the lanes was unrolled
  into scalar FMAs by LLVM, a runtime-trip one was not vectorised at all (aliasing of s and kt).
- `exp_block(s, j0, j1, best)`: s[j] = exp(s[j] − best) on lanes j0 ≤ j < j1, 0 elsewhere, and
  their sum (s of any length that is a multiple of 16: a key block, or a decode head's scores). exp is Cephes' expf (range reduction by ln 2, degree-6 polynomial, 2^n by exponent
  bits; relative error ~2e-7 in float32): libm's expf is a scalar call, and it was most of the
  old kernel's time (one per query and key).
- `accumulate_block(row, s, vb)`: row [D] = row · s_fix + Σ_j s[j] · vb[j, :], with the correction
  factor of the online softmax passed in; D a multiple of 16 (`VECTOR_DIM`), else the caller
  runs `accumulate_block_ref`'s loop. Where D is a multiple of 64 the row goes 64 lanes at a
  time, four vectors held in registers while j runs, so one broadcast of s[j] feeds four FMA
  chains; 16 lanes at a time it was one chain of 32 dependent FMAs, and the 32 weights it
  hoisted did not fit the registers. Measured on one Zen 5 core, SmolLM2's shapes (9/3 heads,
  D 64, f16 cache), 128 queries at depth 4096: 17.8 → 16.4 ms a layer. Every lane sees the same
  operations in the same order either way.

Each has a numpy twin here that the tests hold it to; the IR blocks (loop, broadcast, FMA) are
`llvm_ir`'s.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from lowbit.runtime.kernels import llvm_ir as lir

K_BLOCK = 32
LANES = 16
ACC_VECTORS = 4  # accumulate_block's output vectors in registers at once (4 FMA chains)
ACC_WIDTH = ACC_VECTORS * LANES
VECTOR_DIM = LANES  # accumulate_block needs D % VECTOR_DIM == 0

_f32 = ir.FloatType()
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)
_vf = ir.VectorType(_f32, LANES)
_vi = ir.VectorType(_i32, LANES)

# Cephes expf
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_EXP_LO, _EXP_HI = -87.3, 88.3


def _splat(builder, value: ir.Value) -> ir.Value:
    return lir.broadcast(builder, value, LANES)


def _const(x: float) -> ir.Constant:
    return lir.splat(_f32, LANES, float(np.float32(x)))


def _fma(builder) -> ir.Function:
    return lir.fma(builder, _vf)


def _vec_ptr(builder, base: ir.Value, offset: ir.Value) -> ir.Value:
    return builder.bitcast(builder.gep(base, [offset]), _vf.as_pointer())


def _f32_array(t, ndim: int) -> bool:
    return isinstance(t, types.Array) and t.ndim == ndim and t.dtype == types.float32 and t.layout == "C"


@intrinsic
def score_block(typingctx, qa, kt, s):
    """s [32] = qa [D] · kt [D, 32] (all float32, C-contiguous)."""
    if not (isinstance(qa, types.Array) and qa.ndim == 1 and qa.dtype == types.float32
            and _f32_array(kt, 2) and _f32_array(s, 1)):
        return None

    def codegen(context, builder, sig, args):
        q = context.make_array(sig.args[0])(context, builder, args[0])
        k = context.make_array(sig.args[1])(context, builder, args[1])
        out = context.make_array(sig.args[2])(context, builder, args[2])
        d = builder.extract_value(q.shape, 0)
        qstride = builder.sdiv(builder.extract_value(q.strides, 0), ir.Constant(_i64, 4))
        fma = _fma(builder)
        zero = ir.Constant(_vf, None)

        halves = K_BLOCK // LANES

        def step(i, accs):
            qi = _splat(builder, builder.load(builder.gep(q.data, [builder.mul(i, qstride)])))
            row = builder.mul(i, ir.Constant(_i64, K_BLOCK))
            return [builder.call(fma, [qi, builder.load(_vec_ptr(builder, k.data, builder.add(row, ir.Constant(_i64, h * LANES))),
                                                        align=4), acc])
                    for h, acc in enumerate(accs)]

        # even and odd i into separate accumulators: four FMA chains, not two (one chain of D
        # dependent FMAs per 16 keys bounded the block by the FMA latency, not its throughput)
        def body(i, accs):
            return step(i, accs[:halves]) + step(builder.add(i, ir.Constant(_i64, 1)), accs[halves:])

        pairs = builder.mul(builder.sdiv(d, ir.Constant(_i64, 2)), ir.Constant(_i64, 2))
        accs = lir.loop(builder, pairs, 2, [zero] * (2 * halves), body, "score")
        odd = builder.icmp_signed("!=", pairs, d)
        accs = lir.when(builder, odd, accs, lambda a: step(pairs, a[:halves]) + a[halves:], "score.odd")
        for h in range(halves):
            total = builder.fadd(accs[h], accs[halves + h])
            builder.store(total, _vec_ptr(builder, out.data, ir.Constant(_i64, h * LANES)), align=4)
        return context.get_dummy_value()

    return types.none(qa, kt, s), codegen


def _masked_block_args(typingctx, s, j0, j1, value) -> bool:
    """The signature block_max and exp_block share: (s f32 [n], j0, j1, a float)."""
    return (_f32_array(s, 1) and isinstance(j0, types.Integer) and isinstance(j1, types.Integer)
            and isinstance(value, types.Float))


def _unpack_masked_block(context, builder, sig, args):
    """(s's array struct, the lane bounds j0 and j1 as <16 x i32> splats, the float32 value)."""
    a = context.make_array(sig.args[0])(context, builder, args[0])
    lo = builder.trunc(context.cast(builder, args[1], sig.args[1], types.int64), _i32)
    hi = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int64), _i32)
    value = context.cast(builder, args[3], sig.args[3], types.float32)
    return a, lir.broadcast(builder, lo, LANES), lir.broadcast(builder, hi, LANES), value


@intrinsic
def block_max(typingctx, s, j0, j1, best):
    """max(best, s[j] for j0 ≤ j < j1) over s [32]: masked vector maxima, then one reduction (the
    scalar loop, a compare and branch per key, measured ~10 % of a prefill block's time at depth).
    NaN scores are passed over, as by that loop's `if v > best`."""
    if not _masked_block_args(typingctx, s, j0, j1, best):
        return None

    def codegen(context, builder, sig, args):
        a, lo_v, hi_v, start = _unpack_masked_block(context, builder, sig, args)
        vmax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vf, [_vf, _vf]), "llvm.maxnum.v16f32")
        smax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_f32, [_f32, _f32]), "llvm.maxnum.f32")
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_f32, [_vf]), "llvm.vector.reduce.fmax.v16f32")
        floor = _const(-np.inf)
        m = floor
        for h in range(K_BLOCK // LANES):
            v = builder.load(_vec_ptr(builder, a.data, ir.Constant(_i64, h * LANES)), align=4)
            lane = ir.Constant(_vi, list(range(h * LANES, (h + 1) * LANES)))
            inside = builder.and_(builder.icmp_signed(">=", lane, lo_v), builder.icmp_signed("<", lane, hi_v))
            m = builder.call(vmax, [m, builder.select(inside, v, floor)])
        return builder.call(smax, [start, builder.call(reduce, [m])])

    return types.float32(s, j0, j1, best), codegen


def _exp(builder, x: ir.Value) -> ir.Value:
    """Cephes expf on a <16 x float> (inputs clamped to its finite range)."""
    fmaxf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vf, [_vf, _vf]), "llvm.maxnum.v16f32")
    fminf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vf, [_vf, _vf]), "llvm.minnum.v16f32")
    rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vf, [_vf]), "llvm.rint.v16f32")
    fma = _fma(builder)
    x = builder.call(fminf, [builder.call(fmaxf, [x, _const(_EXP_LO)]), _const(_EXP_HI)])
    n = builder.call(rint, [builder.fmul(x, _const(_LOG2E))])
    r = builder.call(fma, [n, _const(-_LN2_HI), x])
    r = builder.call(fma, [n, _const(-_LN2_LO), r])
    p = _const(_EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = builder.call(fma, [p, r, _const(c)])
    y = builder.fadd(builder.call(fma, [p, builder.fmul(r, r), r]), _const(1.0))
    bits = builder.shl(builder.add(builder.fptosi(n, _vi), ir.Constant(_vi, [127] * LANES)),
                       ir.Constant(_vi, [23] * LANES))
    return builder.fmul(y, builder.bitcast(bits, _vf))


@intrinsic
def exp_block(typingctx, s, j0, j1, best):
    """s [16·m]: s[j] = exp(s[j] − best) for j0 ≤ j < j1, else 0; returns the sum (float32)."""
    if not _masked_block_args(typingctx, s, j0, j1, best):
        return None

    def codegen(context, builder, sig, args):
        a, lo_v, hi_v, best_f = _unpack_masked_block(context, builder, sig, args)
        m = _splat(builder, best_f)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_f32, [_f32, _vf]),
                                                "llvm.vector.reduce.fadd.v16f32")
        lanes = ir.Constant(_vi, list(range(LANES)))

        def body(off, carried):
            ptr = _vec_ptr(builder, a.data, off)
            e = _exp(builder, builder.fsub(builder.load(ptr, align=4), m))
            lane = builder.add(lanes, lir.broadcast(builder, builder.trunc(off, _i32), LANES))
            inside = builder.and_(builder.icmp_signed(">=", lane, lo_v), builder.icmp_signed("<", lane, hi_v))
            e = builder.select(inside, e, ir.Constant(_vf, None))
            builder.store(e, ptr, align=4)
            return [builder.fadd(carried[0], e)]

        (acc,) = lir.loop(builder, builder.extract_value(a.shape, 0), LANES, [ir.Constant(_vf, None)], body, "exp")
        return builder.call(reduce, [ir.Constant(_f32, 0.0), acc], fastmath=("reassoc",))  # a tree sum of the lanes

    return types.float32(s, j0, j1, best), codegen


@intrinsic
def accumulate_block(typingctx, row, s, vb, fix):
    """row [D] = row · fix + Σ_j s[j] · vb[j, :] (vb [32, D]); D % 16 == 0 (the caller checks)."""
    if not (_f32_array(row, 1) and _f32_array(s, 1) and _f32_array(vb, 2) and isinstance(fix, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        r = context.make_array(sig.args[0])(context, builder, args[0])
        p = context.make_array(sig.args[1])(context, builder, args[1])
        v = context.make_array(sig.args[2])(context, builder, args[2])
        f = _splat(builder, context.cast(builder, args[3], sig.args[3], types.float32))
        d = builder.extract_value(r.shape, 0)
        fma = _fma(builder)

        def wide(off, _):
            # ACC_WIDTH output lanes held in registers while j runs over the block: one
            # broadcast per key serves ACC_WIDTH / 16 independent FMA chains
            ptrs = [_vec_ptr(builder, r.data, builder.add(off, ir.Constant(_i64, c * LANES))) for c in range(ACC_VECTORS)]
            accs = [builder.fmul(builder.load(ptr, align=4), f) for ptr in ptrs]
            for j in range(K_BLOCK):
                w = _splat(builder, builder.load(builder.gep(p.data, [ir.Constant(_i64, j)])))
                base = builder.add(builder.mul(ir.Constant(_i64, j), d), off)
                for c in range(ACC_VECTORS):
                    vj = builder.load(_vec_ptr(builder, v.data, builder.add(base, ir.Constant(_i64, c * LANES))), align=4)
                    accs[c] = builder.call(fma, [w, vj, accs[c]])
            for ptr, acc in zip(ptrs, accs):
                builder.store(acc, ptr, align=4)
            return []

        whole = builder.icmp_signed("==", builder.srem(d, ir.Constant(_i64, ACC_WIDTH)), ir.Constant(_i64, 0))
        with builder.if_else(whole) as (then, otherwise):
            with then:
                lir.loop(builder, d, ACC_WIDTH, [], wide, "acc.wide")
            with otherwise:
                _accumulate_narrow(builder, r, p, v, f, d, fma)
        return context.get_dummy_value()

    return types.none(row, s, vb, fix), codegen


def _accumulate_narrow(builder, r, p, v, f, d, fma) -> None:
    """accumulate_block for D a multiple of 16 but not of ACC_WIDTH: 16 lanes at a time."""
    weights = [_splat(builder, builder.load(builder.gep(p.data, [ir.Constant(_i64, j)]))) for j in range(K_BLOCK)]

    def body(off, _):
        ptr = _vec_ptr(builder, r.data, off)
        acc = builder.fmul(builder.load(ptr, align=4), f)
        for j in range(K_BLOCK):
            vj = builder.load(_vec_ptr(builder, v.data, builder.add(builder.mul(ir.Constant(_i64, j), d), off)), align=4)
            acc = builder.call(fma, [weights[j], vj, acc])
        builder.store(acc, ptr, align=4)
        return []

    lir.loop(builder, d, LANES, [], body, "acc")


# -- numpy references ------------------------------------------------------------------------


def score_block_ref(qa: np.ndarray, kt: np.ndarray) -> np.ndarray:
    return (qa.astype(np.float64) @ kt.astype(np.float64)).astype(np.float32)


def block_max_ref(s: np.ndarray, j0: int, j1: int, best: float) -> float:
    return float(max([best, *s[j0:j1]]))


def exp_block_ref(s: np.ndarray, j0: int, j1: int, best: float) -> tuple[np.ndarray, float]:
    e = np.zeros_like(s)
    e[j0:j1] = np.exp(s[j0:j1].astype(np.float64) - best)
    return e, float(e.sum())


def accumulate_block_ref(row: np.ndarray, s: np.ndarray, vb: np.ndarray, fix: float) -> np.ndarray:
    return (row.astype(np.float64) * fix + s.astype(np.float64) @ vb.astype(np.float64)).astype(np.float32)
