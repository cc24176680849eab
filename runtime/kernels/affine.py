"""q1f / q2f / q4f: grouped codes with f16 group scales and optional f16 minimums (SPEC.md 2.7),
the exact grids of GGUF's Q1_0, Q2_0 / TQ2_0, Q4_0 / Q4_1.

    Ŵ[r, i] = s[r, g] · (v[r, i] − zero) + m[r, g]      (v = q, or 2q − 1 for b = 1)
    y[r]    = Σ_g s[r, g] · (Σ_{i in g} v_i x_i − zero · xs[g]) + m[r, g] · xs[g]

with the activation's group sums xs[g] = Σ_{i in g} x_i computed once per token and shared by
every row. Decode of q4f G = 32 (Q4_0 / Q4_1) and q1f G = 128 (Q1_0) quantises the activation
to int8 per group, as llama.cpp runs these types (`int8_decode`; `affine_row_i8`, `q1f_row_i8`);
the other grids keep it in float32 (equal to the dequantised weights times x, which the GGUF
keep tests hold them to) and walk each group's streams over consecutive bytes
against contiguous slices of x, as the q2/q4 kernels do (b = 4: low nibbles vs x[0:G/2], high
vs x[G/2:G]; b = 2: stream k = bits 2k..2k+1 vs x[k·G/4 ..]; b = 1: bit k of byte j vs
x[k·G/8 + j]). Prefill dequantises a block of rows once into scratch and multiplies it with
every token (`common.rows_times_tokens`), as the other prefill kernels do.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from lowbit.formats.encodings.affine import Q1F, Q2F, Q4F
from lowbit.runtime.kernels import llvm_ir as lir
from lowbit.runtime.kernels.common import ROW_BLOCK, row_block, row_blocks, rows_times_tokens
from lowbit.runtime.kernels.cpu_features import best_dot
from lowbit.runtime.kernels.grouped import row_dot_q1, row_dot_q2, row_dot_q4
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel
from lowbit.runtime.kernels.onebit import _unpack1
from lowbit.runtime.kernels.q8 import decode_activation_ref

f32 = np.float32
i32 = np.int32

# -- q4f with G = 32 (GGUF Q4_0 / Q4_1) × int8 activations -------------------------------------


def _q4f_i8_dot(vnni: bool):
    @intrinsic
    def dot(typingctx, codes, x, sd):
        """Σ_g sd[g] · Σ_{k in g} q_k · x_k for one q4f row with G = 32 and an even
        number of groups. Two groups' 32 code bytes are one load; x is int8 quantised per block of
        32 and *pair-permuted* (`permute_pairs`: per 64 values [0:16, 32:48, 16:32, 48:64])
        so that the low nibbles of both groups meet one contiguous 32-byte x vector and the high
        nibbles the next. `vpmaddubsw` + `vpmaddwd` (VNNI: `vpdpbusd`) leave lanes 0-3 with the
        first group's sums and 4-7 with the second's: one convert and one FMA by the two groups'
        scale products per 64 weights (sd[g] = s_g · d_g, computed by the caller in one vector loop)."""
        if not lir.vectors((codes, types.uint8), (x, types.int8), (sd, types.float32)):
            return None

        def codegen(context, b, sig, args):
            ca, xa, sa = lir.arrays(context, b, sig, args)
            chunks = b.sdiv(b.extract_value(sa.shape, 0), lir.const(2))
            maddubs, fma = lir.maddubs(b), lir.fma(b)
            dpbusd = lir.dpbusd(b) if vnni else None
            v2 = ir.VectorType(lir.F32, 2)
            lanes = ir.Constant(ir.VectorType(lir.I32, 8), [0, 0, 0, 0, 1, 1, 1, 1])

            def body(i, carried):
                (acc,) = carried
                v = lir.load(b, ca.data, b.mul(i, lir.const(32)))
                lo = b.and_(v, lir.splat(lir.I8, 32, 15))
                hi = b.and_(b.lshr(v, lir.splat(lir.I8, 32, 4)), lir.splat(lir.I8, 32, 15))
                x_off = b.mul(i, lir.const(64))
                x_lo = lir.load(b, xa.data, x_off)
                x_hi = lir.load(b, xa.data, b.add(x_off, lir.const(32)))
                if vnni:
                    zero_i = ir.Constant(lir.V8I32, None)
                    ints = b.call(dpbusd, [zero_i, b.bitcast(lo, lir.V8I32), b.bitcast(x_lo, lir.V8I32)])
                    ints = b.call(dpbusd, [ints, b.bitcast(hi, lir.V8I32), b.bitcast(x_hi, lir.V8I32)])
                else:
                    pairs = b.add(b.call(maddubs, [lo, x_lo]), b.call(maddubs, [hi, x_hi]))
                    ints = lir.widen_pairs(b, pairs)
                pair = lir.load(b, sa.data, b.mul(i, lir.const(2)), v2, align=4)
                sv = b.shuffle_vector(pair, ir.Constant(v2, ir.Undefined), lanes)
                return [b.call(fma, [b.sitofp(ints, lir.V8F32), sv, acc])]

            (total,) = lir.loop(b, chunks, 1, [ir.Constant(lir.V8F32, None)], body, "q4fdot")
            return lir.hsum_f32(b, total)

        return types.float32(codes, x, sd), codegen

    return dot


@helper
def dot_q4f32_i8_generic(codes, x, sd):
    """As _q4f_i8_dot in plain loops (x pair-permuted the same way; any number of groups: an odd
    last group's x is not permuted, as `permute_pairs` leaves it)."""
    acc = f32(0.0)
    ng = sd.shape[0]
    for g in range(ng):
        cg = codes[g * 16 : (g + 1) * 16]
        c, second = g // 2, g % 2
        s = i32(0)
        for j in range(16):
            q = i32(cg[j])
            if g == ng - 1 and ng % 2 == 1:  # unpaired: natural order
                lo_x = x[g * 32 + j]
                hi_x = x[g * 32 + 16 + j]
            else:
                lo_x = x[c * 64 + second * 16 + j]
                hi_x = x[c * 64 + 32 + second * 16 + j]
            s += (q & 15) * i32(lo_x) + (q >> 4) * i32(hi_x)
        acc += f32(s) * sd[g]
    return acc


_dot_q4f_avx2 = _q4f_i8_dot(vnni=False)
_dot_q4f_vnni = _q4f_i8_dot(vnni=True)

def emit_q4f_i8_neon(b, codes, x, sd, ngroups):
    """AArch64: Σ_g sd_g Σ q·x for one q4f G = 32 row, an even group count, x pair-permuted
    (`permute_pairs`): group 2c's 16 code bytes meet xp[64c ..] (low nibbles) and xp[64c + 32 ..]
    (high), group 2c + 1's xp[64c + 16 ..] and xp[64c + 48 ..]. Two `sdot` per group, one
    convert and FMA by sd_g each, the two groups into two accumulators."""
    dot, fma4 = lir.sdot(b), lir.fma(b, lir.V4F32)
    fifteen, four = lir.splat(lir.I8, 16, 15), lir.splat(lir.I8, 16, 4)

    def body(c, accs):
        out = list(accs)
        for h in range(2):
            g = b.add(c, lir.const(h))
            v = lir.load(b, codes, b.mul(g, lir.const(16)), lir.V16I8)
            xo = b.add(b.mul(c, lir.const(32)), lir.const(16 * h))
            ints = b.call(dot, [ir.Constant(lir.V4I32, None), b.and_(v, fifteen), lir.load(b, x, xo, lir.V16I8)])
            ints = b.call(dot, [ints, b.lshr(v, four), lir.load(b, x, b.add(xo, lir.const(32)), lir.V16I8)])
            s = lir.broadcast(b, b.load(b.gep(sd, [g])), 4)
            out[h] = b.call(fma4, [b.sitofp(ints, lir.V4F32), s, out[h]])
        return out

    zero = ir.Constant(lir.V4F32, None)
    a0, a1 = lir.loop(b, ngroups, 2, [zero, zero], body, "q4fn")
    return lir.hsum_f32(b, b.fadd(a0, a1))


@intrinsic
def _dot_q4f_neon(typingctx, codes, x, sd):
    """As _q4f_i8_dot's dots, on AArch64 DotProd (an even number of groups)."""
    ok = (
        all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (codes, x, sd))
        and codes.dtype == types.uint8
        and x.dtype == types.int8
        and sd.dtype == types.float32
    )
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        ca, xa, sa = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args, args))
        return emit_q4f_i8_neon(builder, ca.data, xa.data, sa.data, builder.extract_value(sa.shape, 0))

    return types.float32(codes, x, sd), codegen


_dot_q4f_fast = best_dot(None, avx2=_dot_q4f_avx2, vnni=_dot_q4f_vnni, neon=_dot_q4f_neon)
if _dot_q4f_fast is not None:

    @helper
    def dot_q4f32_i8(codes, x, sd):
        """Σ_g sd_g Σ q·x_q for one q4f G = 32 row (vector path for an even group count)."""
        if sd.shape[0] % 2 == 0:
            return _dot_q4f_fast(codes, x, sd)
        return dot_q4f32_i8_generic(codes, x, sd)

else:  # pragma: no cover - exercised on machines without AVX2 or DotProd
    dot_q4f32_i8 = dot_q4f32_i8_generic


# -- q1f with G = 128 (GGUF Q1_0) × int8 activations ------------------------------------------
# A group's 16 code bytes hold bit k of byte j = q[j + 16k] (SPEC 2.7): OneBit's sign-plane order
# within the group (stride 16), so `onebit._unpack1` turns two groups' 32 bytes into eight 0/1
# byte vectors, bit k of both groups against one contiguous x vector once x is permuted per
# 256 values as xp[32k + 16h + j] = x[128h + 16k + j] (`permute_q1f`). No repacking at convert
# time: this order costs one permutation of x per token, shared by every row.


def _q1f_i8_row(vnni: bool):
    @intrinsic
    def row(typingctx, codes, x, scales, d, zsum):
        """Σ_g s_g · (2 d_g Σ_{i in g} q_i x_i − zsum_g) for one q1f G = 128 row (GGUF Q1_0,
        Ŵ = s_g (2q − 1)) on int8 activations: scales u16 [ng] (f16 bits), x int8
        quantised per group (d [ng] its scales, zsum [ng] = d_g Σ_g x_q) and `permute_q1f`-ed.
        Per two groups one 32-byte code load, eight 0/1 bit vectors × eight x vectors
        (`vpmaddubsw`, ≤ 8 · 2 · 127 per i16 lane, then `vpmaddwd`; VNNI: four chains of two
        `vpdpbusd`), lanes 0-3 the first group's sums and 4-7 the second's; the two f16 scales
        convert as one pair, one FMA by 2 s·d per 256 weights and one (2-wide) for s·zsum. An
        odd last group runs once more with 16-byte loads widened by zeros."""
        ok = lir.vectors(
            (codes, types.uint8), (x, types.int8), (scales, types.uint16), (d, types.float32),
            (zsum, types.float32),
        )
        if not ok:
            return None

        def codegen(context, builder, sig, args):
            b = builder
            ca, xa, sa, da, za = lir.arrays(context, b, sig, args)
            pairs_n = b.sdiv(b.extract_value(sa.shape, 0), lir.const(2))
            maddubs, maddwd, fma = lir.maddubs(b), lir.maddwd(b), lir.fma(b)
            dpbusd = lir.dpbusd(b) if vnni else None
            v2 = ir.VectorType(lir.F32, 2)
            fma2 = lir.fma(b, v2)
            lanes = ir.Constant(ir.VectorType(lir.I32, 8), [0, 0, 0, 0, 1, 1, 1, 1])

            def ints_of(planes, xs):
                if vnni:
                    zero = ir.Constant(lir.V8I32, None)
                    chains = []
                    for k in range(0, 8, 2):
                        c = b.call(dpbusd, [zero, b.bitcast(planes[k], lir.V8I32), b.bitcast(xs[k], lir.V8I32)])
                        c = b.call(dpbusd, [c, b.bitcast(planes[k + 1], lir.V8I32), b.bitcast(xs[k + 1], lir.V8I32)])
                        chains.append(c)
                    return b.add(b.add(chains[0], chains[1]), b.add(chains[2], chains[3]))
                p = [b.call(maddubs, [planes[k], xs[k]]) for k in range(8)]
                sums = b.add(b.add(b.add(p[0], p[1]), b.add(p[2], p[3])), b.add(b.add(p[4], p[5]), b.add(p[6], p[7])))
                return b.call(maddwd, [sums, lir.splat(lir.I16, 16, 1)])

            def body(i, carried):
                acc, corr = carried
                planes = _unpack1(b, lir.load(b, ca.data, b.mul(i, lir.const(32))))
                x_off = b.mul(i, lir.const(256))
                xs = [lir.load(b, xa.data, b.add(x_off, lir.const(32 * k))) for k in range(8)]
                ints = ints_of(planes, xs)
                g = b.mul(i, lir.const(2))
                s_bits = lir.load(b, sa.data, g, ir.VectorType(lir.I16, 2), align=2)
                s2 = b.fpext(b.bitcast(s_bits, ir.VectorType(ir.HalfType(), 2)), v2)
                sd = b.fmul(s2, lir.load(b, da.data, g, v2, align=4))
                sv = b.shuffle_vector(sd, ir.Constant(v2, ir.Undefined), lanes)
                acc = b.call(fma, [b.sitofp(ints, lir.V8F32), sv, acc])
                corr = b.call(fma2, [s2, lir.load(b, za.data, g, v2, align=4), corr])
                return [acc, corr]

            def last_group(carried):
                """An odd last group, in natural order: its 16-byte loads widened with zeros."""
                acc, corr = carried
                g = b.mul(pairs_n, lir.const(2))
                zero16 = ir.Constant(lir.V16I8, None)
                widen = ir.Constant(ir.VectorType(lir.I32, 32), list(range(32)))

                def load32(ptr, off):
                    return b.shuffle_vector(lir.load(b, ptr, off, lir.V16I8), zero16, widen)

                planes = _unpack1(b, load32(ca.data, b.mul(g, lir.const(16))))
                x_off = b.mul(g, lir.const(128))
                xs = [load32(xa.data, b.add(x_off, lir.const(16 * k))) for k in range(8)]
                ints = ints_of(planes, xs)  # lanes 4-7 zero
                s = b.fpext(b.bitcast(b.load(b.gep(sa.data, [g])), ir.HalfType()), lir.F32)
                sd = lir.broadcast(b, b.fmul(s, b.load(b.gep(da.data, [g]))))
                acc = b.call(fma, [b.sitofp(ints, lir.V8F32), sd, acc])
                sz = b.fmul(s, b.load(b.gep(za.data, [g])))
                corr = b.fadd(corr, b.insert_element(ir.Constant(v2, None), sz, ir.Constant(lir.I32, 0)))
                return [acc, corr]

            zeros = [ir.Constant(lir.V8F32, None), ir.Constant(v2, None)]
            carried = lir.loop(b, pairs_n, 1, zeros, body, "q1frow")
            odd = b.icmp_signed("!=", b.srem(b.extract_value(sa.shape, 0), lir.const(2)), lir.const(0))
            acc, corr = lir.when(b, odd, carried, last_group, "q1flast")
            two = ir.Constant(lir.F32, 2.0)
            return b.fsub(b.fmul(two, lir.hsum_f32(b, acc)), lir.hsum_f32(b, corr))

        return types.float32(codes, x, scales, d, zsum), codegen

    return row


_q1f_row_avx2 = _q1f_i8_row(vnni=False)
_q1f_row_vnni = _q1f_i8_row(vnni=True)


@helper
def q1f_x_index(g, ng, i):
    """Where `permute_q1f` puts x[128g + i] (0 ≤ i < 128) of a row of ng groups."""
    if g == ng - 1 and ng % 2 == 1:  # an unpaired last group stays in natural order
        return g * 128 + i
    return (g // 2) * 256 + 32 * (i // 16) + 16 * (g % 2) + i % 16


@helper
def permute_q1f(xq):
    """x [ng·128] in the order `q1f_row_i8` reads two q1f groups in (see q1f_x_index)."""
    n = xq.shape[0]
    out = xq.copy()  # (an unpaired last group stays)
    for c in range(n // 256):
        for k in range(8):
            for h in range(2):
                dst = 256 * c + 32 * k + 16 * h
                src = 256 * c + 128 * h + 16 * k
                for j in range(16):
                    out[dst + j] = xq[src + j]
    return out


@helper
def q1f_row_i8_generic(codes, x, scales, d, zsum):
    """The portable twin of `q1f_row_i8`, in plain loops (x permuted by `permute_q1f`)."""
    ng = scales.shape[0]
    acc = f32(0.0)
    for g in range(ng):
        s = i32(0)
        for j in range(16):
            c = i32(codes[g * 16 + j])
            for k in range(8):
                s += ((c >> k) & 1) * i32(x[q1f_x_index(g, ng, j + 16 * k)])
        acc += f16_to_f32(scales[g]) * (f32(2.0) * d[g] * f32(s) - zsum[g])
    return acc


q1f_row_i8 = best_dot(q1f_row_i8_generic, avx2=_q1f_row_avx2, vnni=_q1f_row_vnni)  # ARM64: the loops


@helper
def _group_dot(cg, xg, bits, group):
    """Σ v·x over one group (v = code, or the bit for b = 1; the caller maps 2q − 1)."""
    s = f32(0.0)
    if bits == 4:
        h = group // 2
        for j in range(h):  # low nibbles: the group's first half, high nibbles: its second
            b = i32(cg[j])
            s += f32(b & 15) * xg[j] + f32(b >> 4) * xg[h + j]
    elif bits == 2:
        m = group // 4
        for k in range(4):
            xk = xg[k * m : (k + 1) * m]
            for j in range(m):
                s += f32((i32(cg[j]) >> (2 * k)) & 3) * xk[j]
    else:
        e = group // 8
        for k in range(8):
            xk = xg[k * e : (k + 1) * e]
            for j in range(e):
                s += f32((i32(cg[j]) >> k) & 1) * xk[j]
    return s


@helper
def affine_row(codes, x, xs, scales, mins, has_min, bits, zero, group, no_zeros):
    """y for one row: codes u8 [in·b/8], x f32 [in], xs f32 [ng] (group sums), scales / mins u16
    [ng] (f16 bits), no_zeros u8 [ng] of zeros. The products run in the q2/q4 kernels' vector
    IR (`grouped.row_dot_q{b}`, here with f16 scales): Σ_g s_g Σ v·x; the zero point and the
    minimums add Σ_g (m_g − s_g·zero') xs_g (zero' = zero, or 1 for b = 1's 2q − 1)."""
    if bits == 4:
        acc = row_dot_q4(codes, x, scales, no_zeros, xs, group)
    elif bits == 2:
        acc = row_dot_q2(codes, x, scales, no_zeros, xs, group)
    else:
        acc = f32(2.0) * row_dot_q1(codes, x, scales, no_zeros, xs, group)
    z = f32(zero + (1 if bits == 1 else 0))
    corr = f32(0.0)
    for g in range(scales.shape[0]):
        c = -z * f16_to_f32(scales[g])
        if has_min:
            c += f16_to_f32(mins[g])
        corr += c * xs[g]
    return acc + corr


@helper
def int8_decode(bits, group):
    """q4f with G = 32 (GGUF's Q4_0 / Q4_1) and q1f with G = 128 (Q1_0) decode on int8
    activations, one scale per group, as llama.cpp runs these types on int8 (Q8_0) activations:
    2.6× the float path's speed on 6912×2560 for q4f, ~8× for q1f."""
    return (bits == 4 and group == 32) or (bits == 1 and group == 128)


@helper
def permute_for_decode(xq, bits):
    """The int8 activation in the order the bits' int8 dot reads it."""
    return permute_q1f(xq) if bits == 1 else permute_pairs(xq)


@helper
def permute_pairs(xq):
    """Per 64 values [0:16, 32:48, 16:32, 48:64]: the order `dot_q4f32_i8` reads two q4f
    groups of 32 in (an odd last group stays as it is)."""
    n = xq.shape[0]
    out = xq.copy()
    for c in range(n // 64):
        b = c * 64
        for j in range(16):
            out[b + 16 + j] = xq[b + 32 + j]
            out[b + 32 + j] = xq[b + 16 + j]
    return out


@helper
def affine_row_i8(codes, xq, d, zsum, scales, mins, has_min, zero, sd):
    """One q4f G = 32 row on int8 activations: xq pair-permuted, d [ng] the block scales, zsum
    [ng] = d_g Σ_{k in g} x_q[k]; sd [ng] scratch for the products s_g · d_g. One vector loop
    over the groups makes sd and the zero-point / minimum term Σ_g (m_g − z s_g) zsum_g."""
    z = f32(zero)
    corr = f32(0.0)
    for g in range(scales.shape[0]):
        s = f16_to_f32(scales[g])
        sd[g] = s * d[g]
        corr -= z * s * zsum[g]
    # without minimums `mins` is empty: a loop of length 0, not a branch. Branching on has_min
    # around two loops kept LLVM from vectorising either: 66 against 12 ns a 576-wide row
    for g in range(mins.shape[0] if has_min else 0):
        corr += f16_to_f32(mins[g]) * zsum[g]
    return dot_q4f32_i8(codes, xq, sd) + corr


@helper
def affine_row_loops(codes, x, xs, scales, mins, has_min, bits, zero, group):
    """As affine_row in plain loops (the form the vector IR replaced; kept for the tests)."""
    per = group * bits // 8
    acc = f32(0.0)
    z = f32(zero)
    for g in range(scales.shape[0]):
        s = _group_dot(codes[g * per : (g + 1) * per], x[g * group : (g + 1) * group], bits, group)
        if bits == 1:
            s = f32(2.0) * s - xs[g]
        acc += f16_to_f32(scales[g]) * (s - z * xs[g])
        if has_min:
            acc += f16_to_f32(mins[g]) * xs[g]
    return acc


@helper
def _dequantize_row(c, sc, mn, has_min, bits, zero, group, dst):
    """One row of Ŵ into dst f32 [in]."""
    per = group * bits // 8
    for g in range(sc.shape[0]):
        s = f16_to_f32(sc[g])
        m = f16_to_f32(mn[g]) if has_min else f32(0.0)
        cg = c[g * per : (g + 1) * per]
        dg = dst[g * group : (g + 1) * group]
        if bits == 4:
            h = group // 2
            for j in range(h):
                b = i32(cg[j])
                dg[j] = s * f32((b & 15) - zero) + m
                dg[h + j] = s * f32((b >> 4) - zero) + m
        elif bits == 2:
            q = group // 4
            for k in range(4):
                for j in range(q):
                    dg[k * q + j] = s * f32(((i32(cg[j]) >> (2 * k)) & 3) - zero) + m
        else:
            e = group // 8
            for k in range(8):
                for j in range(e):
                    dg[k * e + j] = s * f32(2 * ((i32(cg[j]) >> k) & 1) - 1) + m


@helper
def _dequantize_q1f128_row(c, sc, dst):
    """One q1f G = 128 row (no minimums) into dst f32 [in]: per group ±s selected by each bit,
    over loops of constant length that LLVM vectorises (2× the general `_dequantize_row`)."""
    for g in range(sc.shape[0]):
        s = f16_to_f32(sc[g])
        cg = c[g * 16 : (g + 1) * 16]
        dg = dst[g * 128 : (g + 1) * 128]
        for k in range(8):
            for j in range(16):
                dg[16 * k + j] = s if (cg[j] >> k) & 1 else -s


@kernel
def affine_prefill(x, codes, scales, mins, bits, zero, group, y):
    """x f32 [T, in]; codes u8 [out, in·b/8]; scales u16 [out, ng]; mins u16 [out, ng] or
    [out, 0] (no minimums); y f32 [T, out]."""
    out, ng = scales.shape
    has_min = mins.shape[1] > 0
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        scratch = np.empty((ROW_BLOCK, ng * group), dtype=np.float32)
        for i in range(nr):
            r = r0 + i
            if bits == 1 and group == 128 and not has_min:  # GGUF Q1_0
                _dequantize_q1f128_row(codes[r], scales[r], scratch[i])
            else:
                _dequantize_row(codes[r], scales[r], mins[r], has_min, bits, zero, group, scratch[i])
        rows_times_tokens(scratch, nr, x, y, r0)


# -- numpy reference ------------------------------------------------------------------------


def affine_ref(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, mins: np.ndarray | None, bits: int,
    zero: int, group: int,
) -> np.ndarray:
    """x [T, in] -> [T, out] through the encoding's own dequantize(), in float64: float32
    activations, except the `int8_decode` grids' decode (T = 1: q4f G = 32, q1f G = 128),
    which quantises them to int8 per group."""
    enc = {1: Q1F, 2: Q2F, 4: Q4F}[bits]
    parts = {"codes": codes, "scales": scales.view(np.float16)}
    if mins is not None:
        parts["mins"] = mins.view(np.float16)
    n_in = codes.shape[1] * 8 // bits
    params = {"group_size": group, "zero": zero, "has_min": mins is not None}
    w = enc.dequantize(parts, (codes.shape[0], n_in), params)
    if int8_decode(bits, group):
        xa = decode_activation_ref(x, group)
    else:
        xa = np.asarray(x, np.float64)
    return (xa @ w.astype(np.float64).T).astype(np.float32)


def entry_ref(x: np.ndarray, entry) -> np.ndarray:
    """x [T, in] -> [T, out] for a q1f/q2f/q4f tensor entry (`.encoding, .parts, .params`)."""
    p, params = entry.parts, entry.params
    return affine_ref(
        x, p["codes"], p["scales"], p.get("mins"), int(entry.encoding[1]), int(params["zero"]),
        int(params["group_size"]),
    )
