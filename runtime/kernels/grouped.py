"""q2 / q3 / q4: grouped asymmetric integers with 8-bit group scales (SPEC.md 2.3).

    Ŵ[r, i] = row_scale[r] · sq[r, g] · (q[r, i] − z[r, g]),    g = i // G
    y[r]    = row_scale[r] · Σ_g sq[r, g] · (Σ_{i in g} q[r, i] x[i]  −  z[r, g] · xs[g])

with the group sums of the activation xs[g] = Σ_{i in g} x[i] computed once per token and shared
by every row. Inside a group the codes are streams (byte j holds q[j + k·G/per]), so the inner
loop walks consecutive bytes against contiguous slices of x:

- q4: G/2 bytes; stream 0 = low nibbles vs x[0:G/2], stream 1 = high nibbles vs x[G/2:G];
- q2: G/4 bytes; stream k = bits 2k..2k+1 vs x[k·G/4 : (k+1)·G/4];
- q3: the q2 layout for the low two bits, then G/8 bytes whose bit k is bit 2 of
  q[j + k·G/8]: Σ q x = Σ low·x + 4 · Σ high·x.

The activation is padded with zeros to whole groups (padding codes equal the zero point, so the
padded weights are exactly 0 either way).

q4 decode runs on int8 activations with one scale per group (as llama.cpp's K-quants × Q8_K):
with x = d_g · x_q in group g, Σ q·x = Σ_g d_g Σ q·x_q sums a whole group in integers
(`dot_q4_i8`: u4 × i8 `vpmaddubsw` or `vpdpbusd`, one convert and FMA per group), and the
zero-point term uses the group sums of the quantised activation, zsum[g]. (2B-shaped model, 2
threads: float activations 9.9 tok/s, int8 blocks of 32 16.7-17.9, int8 groups of 128 see
docs/benchmarks.md.) q2/q3 decode run one `row_dot_q{b}`
per row (portable vector IR: per-group products in <8 x float> accumulators, scaled into the row
with one FMA per group, one horizontal sum per row; the affine q1f/q2f/q4f rows reuse them with
f16 scales). q2/q3 prefill keeps float32 activations, dequantises a block of rows once into
scratch and multiplies it with all T tokens (`grouped_prefill`). q4 prefill on x86 (G % 64 == 0)
and AArch64 DotProd (G % 32 == 0) quantises each token per group as decode does and runs one row
against four tokens per pass (`q4_prefill`, `dot_q4_tokens`): one load and nibble split of 32
code bytes (NEON: 16) feeds four tokens' `vpdpbusd` (`sdot`). On a 6912 × 2560 matrix, 128 tokens, that measured 82.6 against 49.6 GMAC/s on one core,
and 161 against 97 on two. The float path is bound by this core's float FMAs. An earlier int8
attempt (one token per pass, one dot call per row) had lost to the float path by 2×.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from lowbit.formats.encodings import Q2, Q3, Q4
from lowbit.runtime.kernels import llvm_ir as lir
from lowbit.runtime.kernels.common import ROW_BLOCK, row_block, row_blocks, rows_times_tokens
from lowbit.runtime.kernels.cpu_features import HAVE_AVX2, HAVE_NEON_DOTPROD, best_dot
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel
from lowbit.runtime.kernels.q8 import q8_activation_ref, quantize_runs_into

f32 = np.float32
i32 = np.int32


@helper
def group_sums(xp, group):
    ng = xp.shape[0] // group
    xs = np.empty(ng, dtype=np.float32)
    for g in range(ng):
        xg = xp[g * group : (g + 1) * group]
        s = f32(0.0)
        for k in range(group):
            s += xg[k]
        xs[g] = s
    return xs


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
        arrays = ((codes, types.uint8), (x, types.int8), (d, types.float32), (scales, types.uint8))
        if not lir.vectors(*arrays) or not isinstance(group, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            b = builder
            ca, xa, da, sa = lir.arrays(context, b, sig, args, 4)
            g_len = context.cast(b, args[4], sig.args[4], types.int64)
            g64 = b.sdiv(g_len, lir.const(64))
            half = b.sdiv(g_len, lir.const(2))
            chunks = b.mul(b.extract_value(sa.shape, 0), g64)
            maddubs, fma = lir.maddubs(b), lir.fma(b)
            dpbusd = lir.dpbusd(b) if vnni else None
            zero_f = ir.Constant(lir.V8F32, None)
            zero_i = ir.Constant(lir.V8I32, None)

            def body(i, carried):
                g, c, acc_a, acc_b, acc_f = carried  # group and chunk within it: no division per chunk
                v = lir.load(b, ca.data, b.mul(i, lir.const(32)))
                lo = b.and_(v, lir.splat(lir.I8, 32, 15))
                hi = b.and_(b.lshr(v, lir.splat(lir.I8, 32, 4)), lir.splat(lir.I8, 32, 15))
                x_off = b.add(b.mul(g, g_len), b.mul(c, lir.const(32)))
                x_lo = lir.load(b, xa.data, x_off)
                x_hi = lir.load(b, xa.data, b.add(x_off, half))
                if vnni:
                    a2 = b.call(dpbusd, [acc_a, b.bitcast(lo, lir.V8I32), b.bitcast(x_lo, lir.V8I32)])
                    b2 = b.call(dpbusd, [acc_b, b.bitcast(hi, lir.V8I32), b.bitcast(x_hi, lir.V8I32)])
                else:
                    pairs = b.add(b.call(maddubs, [lo, x_lo]), b.call(maddubs, [hi, x_hi]))
                    a2 = b.add(acc_a, lir.widen_pairs(b, pairs))
                    b2 = acc_b
                c_inc = b.add(c, lir.const(1))
                wrap = b.icmp_signed("==", c_inc, g64)
                here = b.block
                flush = b.append_basic_block("q4dot.flush")
                cont = b.append_basic_block("q4dot.cont")
                b.cbranch(wrap, flush, cont)

                b.position_at_end(flush)  # the group's last chunk: its integers into the float sum
                sq = b.uitofp(b.load(b.gep(sa.data, [g])), lir.F32)
                scale = b.fmul(sq, b.load(b.gep(da.data, [g])))
                f2 = b.call(fma, [b.sitofp(b.add(a2, b2), lir.V8F32), lir.broadcast(b, scale), acc_f])
                b.branch(cont)

                b.position_at_end(cont)
                f_next = b.phi(lir.V8F32)
                f_next.add_incoming(acc_f, here)
                f_next.add_incoming(f2, flush)
                a_next = b.phi(lir.V8I32)
                a_next.add_incoming(a2, here)
                a_next.add_incoming(zero_i, flush)
                b_next = b.phi(lir.V8I32)
                b_next.add_incoming(b2, here)
                b_next.add_incoming(zero_i, flush)
                c_next = b.select(wrap, lir.const(0), c_inc)
                return [b.add(g, b.zext(wrap, lir.I64)), c_next, a_next, b_next, f_next]

            inits = [lir.const(0), lir.const(0), zero_i, zero_i, zero_f]
            total = lir.loop(b, chunks, 1, inits, body, "q4dot")[4]
            return lir.hsum_f32(b, total)

        return types.float32(codes, x, d, scales, group), codegen

    return dot


_dot_q4_i8_avx2 = _q4_i8_dot(vnni=False)
_dot_q4_i8_vnni = _q4_i8_dot(vnni=True)


@helper
def dot_q4_i8_generic(codes, x, d, scales, group):
    """As _dot_q4_i8_avx2 for any G (a multiple of 32), in plain loops."""
    half = group // 2
    acc = f32(0.0)
    for g in range(scales.shape[0]):
        cg = codes[g * half : (g + 1) * half]
        xg = x[g * group : (g + 1) * group]
        s = i32(0)
        for i in range(half):
            q = i32(cg[i])
            s += (q & 15) * i32(xg[i]) + (q >> 4) * i32(xg[half + i])
        acc += f32(s) * (f32(scales[g]) * d[g])
    return acc


def emit_q4_i8_neon(b, codes, x, d, scales, ngroups, group):
    """AArch64: Σ_g sq_g d_g Σ q·x for one q4 row (G % 32 == 0). Code byte k of a group holds
    the codes of x[gG + k] (low nibble) and x[gG + G/2 + k] (high): 32 code bytes per step,
    four `sdot` into four int32 accumulators (a last 16 bytes when G/2 % 32 == 16), one convert
    and FMA by sq_g·d_g per group."""
    dot, fma4 = lir.sdot(b), lir.fma(b, lir.V4F32)
    half = b.sdiv(group, lir.const(2))
    fifteen, four = lir.splat(lir.I8, 16, 15), lir.splat(lir.I8, 16, 4)
    zero_i = ir.Constant(lir.V4I32, None)

    def group_body(g, accs):
        cbase, xbase = b.mul(g, half), b.mul(g, group)

        def chunk16(o, ia):
            v = lir.load(b, codes, b.add(cbase, o), lir.V16I8)
            xo = b.add(xbase, o)
            lo = b.call(dot, [ia[0], b.and_(v, fifteen), lir.load(b, x, xo, lir.V16I8)])
            hi = b.call(dot, [ia[1], b.lshr(v, four), lir.load(b, x, b.add(xo, half), lir.V16I8)])
            return [lo, hi]

        full = b.mul(b.sdiv(half, lir.const(32)), lir.const(32))
        ia = lir.loop(b, full, 32, [zero_i] * 4,
                      lambda o, a: chunk16(o, a[:2]) + chunk16(b.add(o, lir.const(16)), a[2:]), "q4n")
        ia = lir.when(b, b.icmp_signed("!=", full, half), ia[:2], lambda a: chunk16(full, a), "q4n.last") + ia[2:]
        s = b.fmul(b.uitofp(b.load(b.gep(scales, [g])), lir.F32), b.load(b.gep(d, [g])))
        total = b.add(b.add(ia[0], ia[1]), b.add(ia[2], ia[3]))
        return [b.call(fma4, [b.sitofp(total, lir.V4F32), lir.broadcast(b, s, 4), accs[0]])]

    (acc,) = lir.loop(b, ngroups, 1, [ir.Constant(lir.V4F32, None)], group_body, "q4n.g")
    return lir.hsum_f32(b, acc)


@intrinsic
def _dot_q4_i8_neon(typingctx, codes, x, d, scales, group):
    """As _q4_i8_dot's dots, on AArch64 DotProd, for G % 32 == 0."""
    ok = (
        all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (codes, x, d, scales))
        and codes.dtype == scales.dtype == types.uint8
        and x.dtype == types.int8
        and d.dtype == types.float32
        and isinstance(group, types.Integer)
    )
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        ca, xa, da, sa = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:4], args[:4]))
        g = context.cast(builder, args[4], sig.args[4], types.int64)
        ng = builder.extract_value(sa.shape, 0)
        return emit_q4_i8_neon(builder, ca.data, xa.data, da.data, sa.data, ng, g)

    return types.float32(codes, x, d, scales, group), codegen


_dot_q4_i8_fast = best_dot(None, avx2=_dot_q4_i8_avx2, vnni=_dot_q4_i8_vnni, neon=_dot_q4_i8_neon)
_FAST_GROUPS = 64 if HAVE_AVX2 else 32  # the x86 dot takes two groups of 32 per step, NEON's one
if _dot_q4_i8_fast is not None:

    @helper
    def dot_q4_i8(codes, x, d, scales, group):
        """Σ_g sq_g d_g Σ q·x_q for one q4 row (vector path when G % 64 == 0; NEON: % 32)."""
        if group % _FAST_GROUPS == 0:
            return _dot_q4_i8_fast(codes, x, d, scales, group)
        return dot_q4_i8_generic(codes, x, d, scales, group)

else:  # pragma: no cover - exercised on machines without AVX2 or DotProd
    dot_q4_i8 = dot_q4_i8_generic


# -- q1 / q2 / q3 / q4 rows on float activations: Σ_g sq_g (Σ q·x − z_g xs_g) in portable vector IR
#
# The numba loops reduce each group's partial dot product horizontally (G/2 bytes = two vector
# iterations at G = 128) and spent as long on that as on the work. Here each group's products
# go to <8 x float> accumulators (several, to hide FMA latency) that are scaled into one row
# accumulator with a single fused multiply-add per group; one horizontal sum per row. Plain
# LLVM vector IR (no x86 intrinsics): any target legalises it.


class _Row:
    """Pointers and helpers for one grouped row (codes, padded x, group scales and zeros, xs)."""

    def __init__(self, context, builder, sig, args):
        self.b = builder
        arr = lir.arrays(context, builder, sig, args, 5)
        self.codes, self.x, self.scales, self.zeros, self.xs = (a.data for a in arr)
        self.ng = builder.extract_value(arr[2].shape, 0)
        self.group = args[5]
        self.fma8 = lir.fma(builder, lir.V8F32)
        self.fma4 = lir.fma(builder, lir.V4F32)

    def codes_i32(self, offset: ir.Value, n: int) -> ir.Value:
        """n bytes of codes at offset, zero-extended to <n x i32>."""
        v = lir.load(self.b, self.codes, offset, ir.VectorType(lir.I8, n))
        return self.b.zext(v, ir.VectorType(lir.I32, n))

    def xvec(self, offset: ir.Value, n: int) -> ir.Value:
        return lir.load(self.b, self.x, offset, ir.VectorType(lir.F32, n), align=4)

    def field(self, v: ir.Value, shift: int, mask: int | None, n: int) -> ir.Value:
        """((v >> shift) & mask) as <n x float>."""
        if shift:
            v = self.b.lshr(v, lir.splat(lir.I32, n, shift))
        if mask is not None:
            v = self.b.and_(v, lir.splat(lir.I32, n, mask))
        return self.b.sitofp(v, ir.VectorType(lir.F32, n))

    def fma(self, a, x, acc):
        return self.b.call(self.fma8 if a.type.count == 8 else self.fma4, [a, x, acc])

    def loop(self, count: ir.Value, step: int, inits: list[ir.Value], body) -> list[ir.Value]:
        """for j in range(0, count, step): accs = body(j, accs); count > 0, a multiple of step."""
        return lir.loop(self.b, count, step, inits, body, "g", guard=False)


def _zeros8() -> ir.Constant:
    return ir.Constant(lir.V8F32, None)


def _widen(b, v4: ir.Value) -> ir.Value:
    """<4 x float> -> <8 x float>, zero in the upper four lanes."""
    zero4 = ir.Constant(lir.V4F32, None)
    return b.shuffle_vector(v4, zero4, ir.Constant(ir.VectorType(lir.I32, 8), list(range(8))))


def _group_q4(row: _Row, cbase, xbase):
    b = row.b
    h = b.udiv(row.group, lir.const(2))

    def body(j, acc):
        out = list(acc)
        for u in range(2):
            jj = b.add(j, lir.const(8 * u))
            v = row.codes_i32(b.add(cbase, jj), 8)
            out[2 * u] = row.fma(row.field(v, 0, 15, 8), row.xvec(b.add(xbase, jj), 8), out[2 * u])
            out[2 * u + 1] = row.fma(
                row.field(v, 4, None, 8), row.xvec(b.add(b.add(xbase, h), jj), 8), out[2 * u + 1]
            )
        return out

    return lir.tree_sum(b, row.loop(h, 16, [_zeros8()] * 4, body))


def _low2(row: _Row, cbase, xbase):
    """The 2-bit streams of a group (q2, and q3's low plane): G/4 bytes, stream k ↔ x[k·G/4 + j]."""
    b = row.b
    m = b.udiv(row.group, lir.const(4))

    def body(j, acc):
        v = row.codes_i32(b.add(cbase, j), 8)
        out = []
        for k in range(4):
            xo = b.add(b.add(xbase, b.mul(m, lir.const(k))), j)
            out.append(
                row.fma(row.field(v, 2 * k, 3 if k < 3 else None, 8), row.xvec(xo, 8), acc[k])
            )
        return out

    return lir.tree_sum(b, row.loop(m, 8, [_zeros8()] * 4, body))


def _group_q2(row: _Row, cbase, xbase):
    return _low2(row, cbase, xbase)


def _bits(row: _Row, cbase, xbase):
    """One bit plane of a group: G/8 bytes, bit k of byte j ↔ x[k·G/8 + j]; Σ bit·x (<4 x float>)."""
    b = row.b
    e = b.udiv(row.group, lir.const(8))
    zero4 = ir.Constant(lir.V4F32, None)

    def body(j, acc):
        v = row.codes_i32(b.add(cbase, j), 4)
        out = list(acc)
        for k in range(8):
            xo = b.add(b.add(xbase, b.mul(e, lir.const(k))), j)
            out[k] = row.fma(row.field(v, k, 1, 4), row.xvec(xo, 4), out[k])
        return out

    return lir.tree_sum(b, row.loop(e, 4, [zero4] * 8, body))


def _group_q3(row: _Row, cbase, xbase):
    b = row.b
    low = _low2(row, cbase, xbase)
    hbase = b.add(cbase, b.udiv(row.group, lir.const(4)))  # high plane after the G/4 low bytes
    hi8 = _widen(b, _bits(row, hbase, xbase))
    return row.fma(lir.splat(lir.F32, 8, 4.0), hi8, low)


def _group_q1(row: _Row, cbase, xbase):
    """One bit per weight (q1f)."""
    return _widen(row.b, _bits(row, cbase, xbase))


def _build_grouped(context, builder, sig, args, group_dot) -> ir.Value:
    b = builder
    row = _Row(context, builder, sig, args)
    f16_scales = sig.args[2].dtype == types.uint16
    per = b.udiv(b.mul(row.group, lir.const(row_bits[group_dot])), lir.const(8))

    def body(g, carried):
        acc, zs = carried
        d = group_dot(row, b.mul(g, per), b.mul(g, row.group))
        if f16_scales:  # q1f/q2f/q4f: f16 group scales (raw bits)
            s = b.fpext(b.bitcast(b.load(b.gep(row.scales, [g])), ir.HalfType()), lir.F32)
        else:
            s = b.uitofp(b.load(b.gep(row.scales, [g])), lir.F32)
        z = b.uitofp(b.load(b.gep(row.zeros, [g])), lir.F32)
        xsg = b.load(b.gep(row.xs, [g]))
        return [row.fma(lir.broadcast(b, s), d, acc), b.fadd(zs, b.fmul(b.fmul(s, z), xsg))]

    acc_f, zs_f = lir.loop(b, row.ng, 1, [_zeros8(), ir.Constant(lir.F32, 0.0)], body, "rows")
    lanes = [b.extract_element(acc_f, ir.Constant(lir.I32, i)) for i in range(8)]
    return b.fsub(lir.tree_sum(b, lanes), zs_f)


row_bits = {_group_q4: 4, _group_q3: 3, _group_q2: 2, _group_q1: 1}


def _grouped_intrinsic(group_dot, name: str):
    def typer(typingctx, codes, x, scales, zeros, xs, group):
        arrays = ((codes, types.uint8), (x, types.float32), (zeros, types.uint8), (xs, types.float32))
        # u8 integer scales, or f16 bits (q1f/q2f/q4f)
        scales_ok = lir.vectors((scales, types.uint8)) or lir.vectors((scales, types.uint16))
        if not lir.vectors(*arrays) or not scales_ok or not isinstance(group, types.Integer):
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


# -- q4 on int8 activations ----------------------------------------------------------------


@helper
def quantize_groups(x, xq, d, zsum, group):
    """x float32 [n] -> int8 with one scale per group (xq [ng·G], zero-filled by the caller;
    d [ng]) and zsum[g] = d_g Σ_{k in g} x_q[k], the group sums of what the rows see."""
    quantize_runs_into(x, xq, d, group)
    for g in range(zsum.shape[0]):
        s = i32(0)
        for k in range(g * group, (g + 1) * group):
            s += i32(xq[k])
        zsum[g] = d[g] * f32(s)


@helper
def zero_term(scales, zeros, zsum):
    """Σ_g sq_g · z_g · zsum_g: the zero points' share of one q4 row's sum."""
    zt = f32(0.0)
    for g in range(scales.shape[0]):
        zt += f32(scales[g]) * f32(zeros[g]) * zsum[g]
    return zt


@helper
def q4_row(codes, xq, d, zsum, scales, zeros, group):
    """Σ_g sq_g (d_g Σ q·x_q − z_g · zsum_g) for one row (times row_scale by the caller)."""
    return dot_q4_i8(codes, xq, d, scales, group) - zero_term(scales, zeros, zsum)


# -- prefill -------------------------------------------------------------------------------


@helper
def _unpack_row(bits, c, sc, zr, rs, group, dst):
    """Dequantise one row into dst [ng·G] float32."""
    ng = sc.shape[0]
    per = group * bits // 8
    for g in range(ng):
        step = rs * f32(sc[g])
        z = i32(zr[g])
        cg = c[g * per : (g + 1) * per]
        dg = dst[g * group : (g + 1) * group]
        if bits == 4:
            h = group // 2
            d0 = dg[:h]
            d1 = dg[h:]
            for j in range(h):
                b = i32(cg[j])
                d0[j] = step * f32(i32((b & 15) - z))
                d1[j] = step * f32(i32((b >> 4) - z))
        else:
            m = group // 4
            if bits == 3:
                hg = cg[m:]
                e = group // 8
                for k in range(8):
                    dk = dg[k * e : (k + 1) * e]
                    for j in range(e):
                        dk[j] = f32(i32(((hg[j] >> k) & 1) << 2))
            else:
                for j in range(group):
                    dg[j] = f32(0.0)
            for k in range(4):
                dk = dg[k * m : (k + 1) * m]
                for j in range(m):
                    q = dk[j] + f32(i32((cg[j] >> (2 * k)) & 3))
                    dk[j] = step * (q - f32(z))


@helper
def _dequantised_prefill(x, codes, scales, zeros, row_scale, bits, group, y):
    out, ng = scales.shape
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        scratch = np.empty((ROW_BLOCK, ng * group), dtype=np.float32)
        for i in range(nr):
            r = r0 + i
            rs = f16_to_f32(row_scale[r])
            _unpack_row(bits, codes[r], scales[r], zeros[r], rs, group, scratch[i])
        rows_times_tokens(scratch, nr, x, y, r0)


@kernel
def grouped_prefill(x, codes, scales, zeros, row_scale, bits, group, y):
    """x f32 [T, in]; codes u8 [out, ng·G·b/8]; scales, zeros u8 [out, ng]; row_scale u16 [out]
    (f16 bits); bits b ∈ {2, 3, 4}; group G; y f32 [T, out]: float32 activations times a block of
    rows dequantised once into scratch."""
    _dequantised_prefill(x, codes, scales, zeros, row_scale, bits, group, y)


# -- q4 prefill on int8 activations: one row against four tokens per pass ------------------------
#
# The float path above is bound by float FMAs (about 50 GMAC/s a core here, at 128 tokens).
# With each token quantised per group as in decode, a group's products sum in integers:
# `vpdpbusd` does 32 u4 × i8 products where a float FMA does 8, and one load and nibble split
# of 32 code bytes feeds all four tokens. What is left per (row, token, group) is one convert
# and one FMA by sq·d.


def emit_q4_tokens(b, form, codes, x, x_row, d, zsum, t_all, scales, zeros, ngroups, group, t0):
    """The four-token tile on raw pointers, for one instruction set: "avx2" (`vpmaddubsw`),
    "vnni" (`vpdpbusd`) or "neon" (AArch64 DotProd `sdot`): <4 x float> of Σ_g sq[g] ·
    (d[g, t0+u] · Σ_{k in g} q_k · x[t0+u, k] − z[g] · zsum[g, t0+u]) for u < 4, x int8 rows of
    x_row bytes, d and zsum [ng, t_all] token-minor. x86 takes 32 code bytes a step (G % 64 ==
    0), NEON 16 (G % 32 == 0); scales, zero term and sums are the same IR at both widths."""
    neon, vnni = form == "neon", form == "vnni"
    width = 16 if neon else 32  # code bytes a step
    lanes = width // 4  # i32 / f32 lanes of one accumulator
    vi8, vi32, vf32 = ir.VectorType(lir.I8, width), ir.VectorType(lir.I32, lanes), ir.VectorType(lir.F32, lanes)
    half = b.sdiv(group, lir.const(2))
    xs = [b.gep(x, [b.mul(b.add(t0, lir.const(u)), x_row)]) for u in range(Q4_TOKENS)]
    d0, z0 = b.gep(d, [t0]), b.gep(zsum, [t0])
    fma, fma4 = lir.fma(b, vf32), lir.fma(b, lir.V4F32)
    int_dot = lir.sdot(b) if neon else lir.dpbusd(b) if vnni else lir.maddubs(b)
    per = 1 if form == "avx2" else 2  # int32 accumulators per token: low- and high-nibble chains
    fifteen, four = lir.splat(lir.I8, width, 15), lir.splat(lir.I8, width, 4)

    def group_body(g, accs):
        faccs, zacc = accs[:Q4_TOKENS], accs[Q4_TOKENS]
        cbase, xbase = b.mul(g, half), b.mul(g, group)

        def chunk(c, iaccs):
            v = lir.load(b, codes, b.add(cbase, c), vi8)
            lo = b.and_(v, fifteen)
            hi = b.lshr(v, four) if neon else b.and_(b.lshr(v, four), fifteen)
            nxt = list(iaccs)
            for u in range(Q4_TOKENS):
                x_lo = lir.load(b, xs[u], b.add(xbase, c), vi8)
                x_hi = lir.load(b, xs[u], b.add(b.add(xbase, half), c), vi8)
                if neon:
                    nxt[2 * u] = b.call(int_dot, [nxt[2 * u], lo, x_lo])
                    nxt[2 * u + 1] = b.call(int_dot, [nxt[2 * u + 1], hi, x_hi])
                elif vnni:
                    nxt[2 * u] = b.call(int_dot, [nxt[2 * u], b.bitcast(lo, vi32), b.bitcast(x_lo, vi32)])
                    nxt[2 * u + 1] = b.call(int_dot, [nxt[2 * u + 1], b.bitcast(hi, vi32), b.bitcast(x_hi, vi32)])
                else:
                    pairs = b.add(b.call(int_dot, [lo, x_lo]), b.call(int_dot, [hi, x_hi]))
                    nxt[u] = b.add(nxt[u], lir.widen_pairs(b, pairs))
            return nxt

        ia = lir.loop(b, half, width, [ir.Constant(vi32, None)] * (Q4_TOKENS * per), chunk, "q4t.c", guard=False)
        sq = b.uitofp(b.load(b.gep(scales, [g])), lir.F32)
        sz = b.fmul(sq, b.uitofp(b.load(b.gep(zeros, [g])), lir.F32))
        at = b.mul(g, t_all)
        scales4 = b.fmul(lir.broadcast(b, sq, 4), lir.load(b, d0, at, lir.V4F32, align=4))
        out = []
        for u in range(Q4_TOKENS):
            ints = ia[u] if per == 1 else b.add(ia[2 * u], ia[2 * u + 1])
            lane = b.shuffle_vector(scales4, scales4, ir.Constant(ir.VectorType(lir.I32, lanes), [u] * lanes))
            out.append(b.call(fma, [b.sitofp(ints, vf32), lane, faccs[u]]))
        zsum4 = lir.load(b, z0, at, lir.V4F32, align=4)
        return out + [b.call(fma4, [lir.broadcast(b, sz, 4), zsum4, zacc])]

    inits = [ir.Constant(vf32, None)] * Q4_TOKENS + [ir.Constant(lir.V4F32, None)]
    accs = lir.loop(b, ngroups, 1, inits, group_body, "q4t.g")
    sums = ir.Constant(lir.V4F32, None)
    for u in range(Q4_TOKENS):
        sums = b.insert_element(sums, lir.hsum_f32(b, accs[u]), ir.Constant(lir.I32, u))
    return b.fsub(sums, accs[Q4_TOKENS])


def _q4_tokens_dot(form: str):
    @intrinsic
    def dot(typingctx, codes, xq, d, zsum, scales, zeros, group, t):
        """`emit_q4_tokens` for one q4 row (G % INT8_PREFILL_GROUPS == 0) against tokens t..t+3
        (t + 4 <= T): xq int8 [T, ng·G], d and zsum float32 [ng, T] (token-minor, so that one
        load serves four tokens). Per token the integer sums, the float accumulation and the
        zero-point sum run as in `q4_row`."""
        two_d = all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in (xq, d, zsum))
        if not (lir.vectors((codes, types.uint8), (scales, types.uint8), (zeros, types.uint8)) and two_d
                and xq.dtype == types.int8 and d.dtype == zsum.dtype == types.float32
                and isinstance(group, types.Integer) and isinstance(t, types.Integer)):
            return None
        ret = types.UniTuple(types.float32, Q4_TOKENS)

        def codegen(context, builder, sig, args):
            b = builder
            ca, xa, da, za, sa, zra = (context.make_array(ty)(context, b, a) for ty, a in zip(sig.args[:6], args[:6]))
            g_len = context.cast(b, args[6], sig.args[6], types.int64)
            t0 = context.cast(b, args[7], sig.args[7], types.int64)
            sums = emit_q4_tokens(b, form, ca.data, xa.data, b.extract_value(xa.shape, 1), da.data, za.data,
                                  b.extract_value(da.shape, 1), sa.data, zra.data, b.extract_value(sa.shape, 0),
                                  g_len, t0)
            return context.make_tuple(b, ret, [b.extract_element(sums, ir.Constant(lir.I32, u)) for u in range(Q4_TOKENS)])

        return ret(codes, xq, d, zsum, scales, zeros, group, t), codegen

    return dot


Q4_TOKENS = 4  # tokens per pass of the q4 prefill tile
_dot_q4_tokens_avx2 = _q4_tokens_dot("avx2")
_dot_q4_tokens_vnni = _q4_tokens_dot("vnni")
_dot_q4_tokens_neon = _q4_tokens_dot("neon")


@helper
def _q4_row_generic(codes, xq, d, zsum, scales, zeros, group):
    return dot_q4_i8_generic(codes, xq, d, scales, group) - zero_term(scales, zeros, zsum)


@helper
def dot_q4_tokens_generic(codes, xq, d, zsum, scales, zeros, group, t):
    """As _q4_tokens_dot's dots, in plain loops: q4_row's sum for each of four tokens."""
    return (_q4_row_generic(codes, xq[t], d[:, t], zsum[:, t], scales, zeros, group),
            _q4_row_generic(codes, xq[t + 1], d[:, t + 1], zsum[:, t + 1], scales, zeros, group),
            _q4_row_generic(codes, xq[t + 2], d[:, t + 2], zsum[:, t + 2], scales, zeros, group),
            _q4_row_generic(codes, xq[t + 3], d[:, t + 3], zsum[:, t + 3], scales, zeros, group))


dot_q4_tokens = best_dot(dot_q4_tokens_generic, avx2=_dot_q4_tokens_avx2, vnni=_dot_q4_tokens_vnni,
                         neon=_dot_q4_tokens_neon)
INT8_PREFILL = HAVE_AVX2 or HAVE_NEON_DOTPROD  # elsewhere q4 prefill keeps float activations
INT8_PREFILL_GROUPS = _FAST_GROUPS  # a tile step takes 32 code bytes on x86 (G % 64), 16 on NEON (G % 32)


@helper
def int8_prefill_for(group):
    """Whether q4 prefill with this G runs on int8 activations."""
    return INT8_PREFILL and group % INT8_PREFILL_GROUPS == 0


@helper
def _int8_prefill(x, codes, scales, zeros, row_scale, group, y):
    t_count, n = x.shape
    out, ng = scales.shape
    t4 = (t_count + Q4_TOKENS - 1) // Q4_TOKENS * Q4_TOKENS  # zero tokens after T: the same 4-token code for all
    xq = np.zeros((t4, ng * group), dtype=np.int8)
    d = np.zeros((ng, t4), dtype=np.float32)  # token-minor: the tile loads four tokens' scales at once
    zsum = np.zeros((ng, t4), dtype=np.float32)
    for t in prange(t_count):
        dt = np.empty(ng, dtype=np.float32)
        zt = np.empty(ng, dtype=np.float32)
        quantize_groups(x[t], xq[t], dt, zt, group)
        for g in range(ng):
            d[g, t] = dt[g]
            zsum[g, t] = zt[g]
    # the layers pass at most `prompt_chunk(in)` tokens a call, so xq (a quarter of their float
    # bytes) stays in L2 across every row block without a token loop of its own
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        for t in range(0, t4, Q4_TOKENS):
            for r in range(r0, r0 + nr):
                rs = f16_to_f32(row_scale[r])
                a0, a1, a2, a3 = dot_q4_tokens(codes[r], xq, d, zsum, scales[r], zeros[r], group, t)
                y[t, r] = a0 * rs
                if t + 1 < t_count:
                    y[t + 1, r] = a1 * rs
                if t + 2 < t_count:
                    y[t + 2, r] = a2 * rs
                if t + 3 < t_count:
                    y[t + 3, r] = a3 * rs


@kernel
def q4_prefill(x, codes, scales, zeros, row_scale, bits, group, y):
    """grouped_prefill's arguments (bits = 4): where `int8_prefill_for(G)`, each token quantised
    per group as in decode and four tokens per pass of each row (`dot_q4_tokens`); elsewhere the
    float path. 2B-shaped (2560 → 6912), 2 threads: see docs/benchmarks.md."""
    if int8_prefill_for(group):
        _int8_prefill(x, codes, scales, zeros, row_scale, group, y)
    else:
        _dequantised_prefill(x, codes, scales, zeros, row_scale, bits, group, y)


def q4_activation_ref(x: np.ndarray, group: int) -> np.ndarray:
    """What the q4 kernels multiply: int8 with one scale per group for one token (decode) and,
    where `int8_prefill_for(G)`, for several; float32 otherwise."""
    x = np.asarray(x, np.float32)
    if x.shape[0] == 1 or (INT8_PREFILL and group % INT8_PREFILL_GROUPS == 0):
        return q8_activation_ref(x, group)
    return x.astype(np.float64)


def q4_ref(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, row_scale: np.ndarray,
    group: int, n_in: int,
) -> np.ndarray:
    """q4 as the kernels run it: the dequantised weights times `q4_activation_ref(x, G)`."""
    parts = {"codes": codes, "scales": scales, "zeros": zeros, "row_scale": row_scale.view(np.float16)}
    w = Q4.dequantize(parts, (codes.shape[0], n_in), {"group_size": group})
    return (q4_activation_ref(x, group) @ w.astype(np.float64).T).astype(np.float32)


def grouped_ref(
    x: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    row_scale: np.ndarray,
    bits: int,
    group: int,
    n_in: int,
) -> np.ndarray:
    """x [T, in] -> [T, out] through the encoding's own dequantize()."""
    enc = {2: Q2, 3: Q3, 4: Q4}[bits]
    parts = {
        "codes": codes,
        "scales": scales,
        "zeros": zeros,
        "row_scale": row_scale.view(np.float16),
    }
    w = enc.dequantize(parts, (codes.shape[0], n_in), {"group_size": group})
    return (np.asarray(x, np.float64) @ w.astype(np.float64).T).astype(np.float32)


def entry_ref(x: np.ndarray, entry) -> np.ndarray:
    """x [T, in] -> [T, out] for a q2/q3/q4 tensor entry, as the kernels run it (q4: `q4_ref`)."""
    p, group, n_in = entry.parts, int(entry.params["group_size"]), int(entry.shape[1])
    args = (p["codes"], p["scales"], p["zeros"], p["row_scale"])
    if entry.encoding == "q4":
        return q4_ref(x, *args, group, n_in)
    return grouped_ref(x, *args, int(entry.encoding[1]), group, n_in)
