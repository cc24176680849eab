"""q8: symmetric int8 codes with one f16 scale per group of G weights, or per row (SPEC.md 2.2).

Decode (one token) multiplies int8 activations in blocks of 32 (llama.cpp's Q8_0 × Q8_0 dot
product). Prefill does the same on x86 VNNI where in % 256 == 0, four tokens a pass of each row
on spans of eight blocks (`q8_prefill`, `dot_q8_tokens`: 2560 × 6912, 128 tokens, one Zen 5
core, 60.7 → 124.8 GMAC/s); elsewhere it keeps float32 activations and reuses each dequantised
row block for all tokens. Activations, per block b of 32 (zero-padded to whole blocks):

    d[b] = max|x_b| / 127,    x_q = rint(x · 127 / max|x_b|)      (0 for an all-zero block)

    y[r] = Σ_g scale[r, g] · Σ_{b in g} d[b] · Σ_{k in b} code[r, k] · x_q[k]

so the inner product is integer (`dot_q8` below: |c| × sign(x, c) in `vpmaddubsw` on AVX2,
`dot_q8_generic`'s plain loops elsewhere and as its tested twin), with one
convert and one FMA per 32 weights. Measured on the 2B-shaped model's 128256×2560 head at 2
threads: 16.4 → 13.1 ms per token. The activation error per block is ≤ d/2 (KL against float activations on
SmolLM2's head: ~6e-4, against ~5e-3 for one scale per token). G is the effective group length
(`group_size`, a multiple of 32, or `in` when group_size is 0); the last group of a row may be
short (codes are not padded). Scales arrive as raw f16 bits (u16).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from lowbit.formats.encodings import Q8
from lowbit.runtime.kernels import llvm_ir as lir
from lowbit.runtime.kernels.common import ROW_BLOCK, row_block, row_blocks, rows_times_tokens
from lowbit.runtime.kernels.cpu_features import HAVE_VNNI, best_dot
from lowbit.runtime.kernels.jit import exact, f16_to_f32, helper, kernel

BLOCK = 32
f32 = np.float32
i32 = np.int32

# -- the block dot: q8 codes × int8 activations in blocks of 32 (llama.cpp's Q8_0 × Q8_0) -------


@intrinsic
def _dot_q8_avx2(typingctx, codes, x, d):
    """Σ_b d[b] · Σ_{k<32} codes[32b+k] · x[32b+k] over len(codes) // 32 blocks (float32):
    |c| × sign(x, c) in `vpmaddubsw` (pairs ≤ 2·128·127), `vpmaddwd` to int32, then one
    convert and one FMA by the block's activation scale per 32 weights."""
    if not lir.vectors((codes, types.int8), (x, types.int8), (d, types.float32)):
        return None

    def codegen(context, b, sig, args):
        ca, xa, da = lir.arrays(context, b, sig, args)
        nb = b.sdiv(b.extract_value(ca.shape, 0), lir.const(32))
        maddubs = lir.maddubs(b)
        psign, absb, fma = lir.psign_b(b), lir.abs_v32i8(b), lir.fma(b)

        def block(i, acc):
            off = b.mul(i, lir.const(32))
            c = lir.load(b, ca.data, off)
            sx = b.call(psign, [lir.load(b, xa.data, off), c])
            pairs = b.call(maddubs, [b.call(absb, [c, ir.Constant(lir.I1, 0)]), sx])
            ints = lir.widen_pairs(b, pairs)
            scale = lir.broadcast(b, b.load(b.gep(da.data, [i])))
            return b.call(fma, [b.sitofp(ints, lir.V8F32), scale, acc])

        # two blocks per step into two accumulators: the FMA chain's latency, not the loads,
        # bounds a single accumulator (measured 123 → 103 cycles per 576-byte row streamed from memory)
        zero = ir.Constant(lir.V8F32, None)
        pairs_n = b.sdiv(nb, lir.const(2))

        def body(i, accs):
            two_i = b.mul(i, lir.const(2))
            return [block(two_i, accs[0]), block(b.add(two_i, lir.const(1)), accs[1])]

        s0, s1 = lir.loop(b, pairs_n, 1, [zero, zero], body, "q8dot")
        total = b.fadd(s0, s1)
        odd = b.icmp_signed("!=", b.mul(pairs_n, lir.const(2)), nb)
        here = b.block
        odd_bb = b.append_basic_block("q8dot.odd")
        end_bb = b.append_basic_block("q8dot.end")
        b.cbranch(odd, odd_bb, end_bb)
        b.position_at_end(odd_bb)
        last = block(b.sub(nb, lir.const(1)), total)
        b.branch(end_bb)
        b.position_at_end(end_bb)
        res = b.phi(lir.V8F32)
        res.add_incoming(total, here)
        res.add_incoming(last, odd_bb)
        return lir.hsum_f32(b, res)

    return types.float32(codes, x, d), codegen


@helper
def dot_q8_generic(codes, x, d):
    """As _dot_q8_avx2, in plain loops."""
    acc = f32(0.0)
    for blk in range(codes.shape[0] // BLOCK):
        s = i32(0)
        for k in range(blk * BLOCK, (blk + 1) * BLOCK):
            s += i32(codes[k]) * i32(x[k])
        acc += f32(s) * d[blk]
    return acc


def emit_q8_neon(b, codes, x, d, nblocks):
    """AArch64: Σ_b d[b] Σ_{k<32} codes·x, two `sdot` per block (any int8 codes and
    activations: the products sum exactly in int32), one convert and FMA by d[b]; two blocks
    per step into two float accumulators (the FMA chain's latency), an odd last block after."""
    dot, fma4 = lir.sdot(b), lir.fma(b, lir.V4F32)
    zero_i = ir.Constant(lir.V4I32, None)

    def block(blk, acc):
        off = b.mul(blk, lir.const(BLOCK))
        ints = zero_i
        for h in (0, 16):
            o = b.add(off, lir.const(h))
            ints = b.call(dot, [ints, lir.load(b, codes, o, lir.V16I8), lir.load(b, x, o, lir.V16I8)])
        scale = lir.broadcast(b, b.load(b.gep(d, [blk])), 4)
        return b.call(fma4, [b.sitofp(ints, lir.V4F32), scale, acc])

    def body(s, accs):
        return [block(s, accs[0]), block(b.add(s, lir.const(1)), accs[1])]

    zero = ir.Constant(lir.V4F32, None)
    pairs = b.mul(b.sdiv(nblocks, lir.const(2)), lir.const(2))
    a0, a1 = lir.loop(b, pairs, 2, [zero, zero], body, "q8n")
    total = b.fadd(a0, a1)
    odd = b.icmp_signed("!=", pairs, nblocks)
    (total,) = lir.when(b, odd, [total], lambda acc: [block(pairs, acc[0])], "q8n.odd")
    return lir.hsum_f32(b, total)


def emit_q8_2x2_neon(b, w0, w1, x0, x1, d, nblocks):
    """i8mm: the four q8 dots of rows (w0, w1) × activations (x0, x1) as <4 x float>
    [r0·x0, r0·x1, r1·x0, r1·x1], block b scaled by d[4b .. 4b + 4] in that order. Per 16 bytes
    the two rows' and two activations' 8-byte halves are paired (`zip1`/`zip2` of 64-bit lanes)
    into `smmla`, which adds the 2×2 products: four `smmla` per block of 32 where `sdot` needs
    eight, so it pays where two activation vectors meet the same rows (prefill)."""
    mm, fma4 = lir.smmla(b), lir.fma(b, lir.V4F32)
    v2i64 = ir.VectorType(lir.I64, 2)

    def pair(p, q, second):
        idx = ir.Constant(ir.VectorType(lir.I32, 2), [1, 3] if second else [0, 2])
        return b.bitcast(b.shuffle_vector(b.bitcast(p, v2i64), b.bitcast(q, v2i64), idx), lir.V16I8)

    def body(blk, accs):
        off = b.mul(blk, lir.const(BLOCK))
        ints = ir.Constant(lir.V4I32, None)
        for h in (0, 16):
            o = b.add(off, lir.const(h))
            r0, r1, t0, t1 = (lir.load(b, p, o, lir.V16I8) for p in (w0, w1, x0, x1))
            for second in (False, True):
                ints = b.call(mm, [ints, pair(r0, r1, second), pair(t0, t1, second)])
        scales = lir.load(b, d, b.mul(blk, lir.const(4)), lir.V4F32, align=4)
        return [b.call(fma4, [b.sitofp(ints, lir.V4F32), scales, accs[0]])]

    (acc,) = lir.loop(b, nblocks, 1, [ir.Constant(lir.V4F32, None)], body, "q8mm")
    return acc


def _int8_arrays(*arrays) -> bool:
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.int8
               for a in arrays)


@intrinsic
def _dot_q8_neon(typingctx, codes, x, d):
    """As _dot_q8_avx2, on AArch64 DotProd."""
    f32_1d = isinstance(d, types.Array) and d.ndim == 1 and d.layout == "C" and d.dtype == types.float32
    if not (_int8_arrays(codes, x) and f32_1d):
        return None

    def codegen(context, builder, sig, args):
        ca, xa, da = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args, args))
        nb = builder.sdiv(builder.extract_value(ca.shape, 0), lir.const(BLOCK))
        return emit_q8_neon(builder, ca.data, xa.data, da.data, nb)

    return types.float32(codes, x, d), codegen


@intrinsic
def dot_q8_2x2(typingctx, w0, w1, x0, x1, d):
    """i8mm (HAVE_I8MM only): (r0·x0, r0·x1, r1·x0, r1·x1) over len(w0) // 32 blocks of rows w0,
    w1 and activations x0, x1 (int8), block b's four products scaled by d[4b : 4b + 4]."""
    f32_1d = isinstance(d, types.Array) and d.ndim == 1 and d.layout == "C" and d.dtype == types.float32
    if not (_int8_arrays(w0, w1, x0, x1) and f32_1d):
        return None
    ret = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        arrs = [context.make_array(t)(context, builder, a) for t, a in zip(sig.args, args)]
        nb = builder.sdiv(builder.extract_value(arrs[0].shape, 0), lir.const(BLOCK))
        acc = emit_q8_2x2_neon(builder, *(a.data for a in arrs), nb)
        lanes = [builder.extract_element(acc, ir.Constant(lir.I32, k)) for k in range(4)]
        return context.make_tuple(builder, ret, lanes)

    return ret(w0, w1, x0, x1, d), codegen


dot_q8 = best_dot(dot_q8_generic, avx2=_dot_q8_avx2, neon=_dot_q8_neon)


@exact
def quantize_runs_into(x, xq, d, run):
    """x float32 [n] -> xq int8 [>= run·nb] (zero-filled by the caller), d float32 [nb]: one scale
    per run of `run` values (q8: blocks of 32; q4: its groups)."""
    n = x.shape[0]
    for b in range(d.shape[0]):
        lo = b * run
        hi = min(n, lo + run)
        m = f32(0.0)
        for k in range(lo, hi):
            m = max(m, abs(x[k]))
        d[b] = m / f32(127.0)
        inv = f32(127.0) / m if m > f32(0.0) else f32(0.0)
        for k in range(lo, hi):
            xq[k] = np.int8(min(max(np.rint(x[k] * inv), f32(-127.0)), f32(127.0)))


@exact
def quantize_blocks_into(x, xq, d):
    """x float32 [n] -> xq int8 [>= 32·nb] (zero-filled by the caller), d float32 [nb]."""
    quantize_runs_into(x, xq, d, BLOCK)


@helper
def q8_row_blocks(codes, xq, d, scales, sd):
    """One row with G = 32 (GGUF Q8_0, in a multiple of 32): the weight and activation scales of
    each block multiplied first (sd [nb] scratch, one vector loop), then one `dot_q8` over the
    row, as llama.cpp's Q8_0 × Q8_0: measured 4-5× q8_row's group-by-group calls on 2560×6912."""
    for b in range(sd.shape[0]):
        sd[b] = d[b] * f16_to_f32(scales[b])
    return dot_q8(codes, xq, sd)


@helper
def q8_row(codes, xq, d, scales, group):
    """One row: codes int8 [in], xq int8 [>= in], d float32 [nb], scales u16 [ng]."""
    n = codes.shape[0]
    acc = f32(0.0)
    for g in range(scales.shape[0]):
        lo = g * group
        m = min(group, n - lo)
        full = m // BLOCK * BLOCK
        b0 = lo // BLOCK
        v = dot_q8(codes[lo : lo + full], xq[lo : lo + full], d[b0 : b0 + full // BLOCK])
        if full < m:  # the row's last, partial block
            s = i32(0)
            for k in range(lo + full, lo + m):
                s += i32(codes[k]) * i32(xq[k])
            v += f32(s) * d[(lo + full) // BLOCK]
        acc += f16_to_f32(scales[g]) * v
    return acc


# -- prefill on int8 activations: a block a lane, four tokens a pass --------------------------
#
# The float path below is bound by float FMAs (four per 32 weights and token). With each token
# quantised in blocks of 32 as decode does, a block's 32 products sum in integers, but the
# scales change every block: with one block per `vpdpbusd` its eight lanes would need a
# convert and an FMA per block and token, as many float operations as the float path. So the
# tile works on spans of eight blocks (256 weights) transposed by dwords: vector k holds bytes
# 4k..4k+3 of each of the eight blocks, and eight `vpdpbusd` leave block j's whole sum in lane
# j. The weights are transposed once per span and row (24 shuffles) for all four tokens; the
# activations are stored transposed once per token. Per span and token what is left is one
# convert, one multiply (weight by activation scales, eight blocks at once) and one FMA.
# `vpdpbusd` multiplies u8 by i8: the codes go in as c + 128 (`xor 0x80`), and the token's
# 128 · Σ_{k in b} x_q[k] per block comes off the integers.

SPAN = 8 * BLOCK  # weights per transposed step: eight blocks
Q8_TOKENS = 4  # tokens per pass of the tile


def _transpose_dwords(b, rows: list) -> list:
    """8 × <8 x i32> -> 8 × <8 x i32>: out[k] lane j = rows[j] lane k (unpack 32, unpack 64, then
    128-bit halves: three shuffle stages)."""

    def shuf(p, q, idx):
        return b.shuffle_vector(p, q, ir.Constant(ir.VectorType(lir.I32, 8), idx))

    lo = [shuf(rows[2 * p], rows[2 * p + 1], [0, 8, 1, 9, 4, 12, 5, 13]) for p in range(4)]
    hi = [shuf(rows[2 * p], rows[2 * p + 1], [2, 10, 3, 11, 6, 14, 7, 15]) for p in range(4)]
    quads = []  # quads[h][m]: dword m (and m + 4 in the upper half) of rows 4h..4h+3
    for h in range(2):
        a, c = lo[2 * h], lo[2 * h + 1]
        e, f = hi[2 * h], hi[2 * h + 1]
        quads.append([shuf(a, c, [0, 1, 8, 9, 4, 5, 12, 13]), shuf(a, c, [2, 3, 10, 11, 6, 7, 14, 15]),
                      shuf(e, f, [0, 1, 8, 9, 4, 5, 12, 13]), shuf(e, f, [2, 3, 10, 11, 6, 7, 14, 15])])
    out = [shuf(quads[0][m], quads[1][m], [0, 1, 2, 3, 8, 9, 10, 11]) for m in range(4)]
    return out + [shuf(quads[0][m], quads[1][m], [4, 5, 6, 7, 12, 13, 14, 15]) for m in range(4)]


def emit_q8_tokens(b, codes, xt, x_row, ad, corr, nb_row, ws, nspans, t0):
    """The four-token tile on raw pointers: <4 x float> of Σ_b ws[b] · ad[t0+u, b] · Σ_{k in b}
    code[k] · x_q[t0+u, k] for u < 4, over nspans spans of 256 weights. xt int8 rows of x_row
    bytes hold each token's x_q transposed per span (`transpose_spans_into`); ad (activation
    scales) and corr (128 · Σ x_q per block) are [T, nb] rows of nb_row; ws the row's weight
    scale per block."""
    dot, fma = lir.dpbusd(b), lir.fma(b)
    flip = lir.splat(lir.I8, 32, -128)
    xs = [b.gep(xt, [b.mul(b.add(t0, lir.const(u)), x_row)]) for u in range(Q8_TOKENS)]
    rows = [b.mul(b.add(t0, lir.const(u)), nb_row) for u in range(Q8_TOKENS)]

    def span(s, faccs):
        base = b.mul(s, lir.const(SPAN))
        blk = b.mul(s, lir.const(8))
        w = [b.bitcast(b.xor(lir.load(b, codes, b.add(base, lir.const(32 * k))), flip), lir.V8I32)
             for k in range(8)]
        wt = _transpose_dwords(b, w)
        sw = lir.load(b, ws, blk, lir.V8F32, align=4)
        out = []
        for u in range(Q8_TOKENS):
            ints = ir.Constant(lir.V8I32, None)
            for k in range(8):
                xv = b.bitcast(lir.load(b, xs[u], b.add(base, lir.const(32 * k))), lir.V8I32)
                ints = b.call(dot, [ints, wt[k], xv])
            at = b.add(rows[u], blk)
            ints = b.sub(ints, lir.load(b, corr, at, lir.V8I32, align=4))
            scale = b.fmul(sw, lir.load(b, ad, at, lir.V8F32, align=4))
            out.append(b.call(fma, [b.sitofp(ints, lir.V8F32), scale, faccs[u]]))
        return out

    accs = lir.loop(b, nspans, 1, [ir.Constant(lir.V8F32, None)] * Q8_TOKENS, span, "q8t")
    sums = ir.Constant(lir.V4F32, None)
    for u in range(Q8_TOKENS):
        sums = b.insert_element(sums, lir.hsum_f32(b, accs[u]), ir.Constant(lir.I32, u))
    return sums


@intrinsic
def _dot_q8_tokens_vnni(typingctx, codes, xt, ad, corr, ws, t):
    """`emit_q8_tokens` for one q8 row (in % 256 == 0) against tokens t..t+3 (t + 4 <= T): xt
    int8 [T, in] (transposed spans), ad float32 / corr int32 [T, in / 32], ws float32 [in / 32]."""
    two_d = all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in (xt, ad, corr))
    if not (lir.vectors((codes, types.int8), (ws, types.float32)) and two_d and xt.dtype == types.int8
            and ad.dtype == types.float32 and corr.dtype == types.int32 and isinstance(t, types.Integer)):
        return None
    ret = types.UniTuple(types.float32, Q8_TOKENS)

    def codegen(context, builder, sig, args):
        b = builder
        ca, xa, da, za, wa = (context.make_array(ty)(context, b, a) for ty, a in zip(sig.args[:5], args[:5]))
        t0 = context.cast(b, args[5], sig.args[5], types.int64)
        nspans = b.sdiv(b.extract_value(ca.shape, 0), lir.const(SPAN))
        sums = emit_q8_tokens(b, ca.data, xa.data, b.extract_value(xa.shape, 1), da.data, za.data,
                              b.extract_value(da.shape, 1), wa.data, nspans, t0)
        return context.make_tuple(b, ret, [b.extract_element(sums, ir.Constant(lir.I32, u)) for u in range(Q8_TOKENS)])

    return ret(codes, xt, ad, corr, ws, t), codegen


@helper
def _q8_span_row_generic(codes, xt, ad, ws, t):
    """One token of the tile in plain loops (signed products: no offset, no correction)."""
    acc = f32(0.0)
    for s in range(codes.shape[0] // SPAN):
        base = s * SPAN
        for j in range(8):
            ints = i32(0)
            for k in range(8):
                for i in range(4):
                    ints += i32(codes[base + 32 * j + 4 * k + i]) * i32(xt[t, base + 32 * k + 4 * j + i])
            acc += f32(ints) * (ws[8 * s + j] * ad[t, 8 * s + j])
    return acc


@helper
def dot_q8_tokens_generic(codes, xt, ad, corr, ws, t):
    """As _dot_q8_tokens_vnni's sums, in plain loops."""
    return (_q8_span_row_generic(codes, xt, ad, ws, t), _q8_span_row_generic(codes, xt, ad, ws, t + 1),
            _q8_span_row_generic(codes, xt, ad, ws, t + 2), _q8_span_row_generic(codes, xt, ad, ws, t + 3))


dot_q8_tokens = best_dot(dot_q8_tokens_generic, vnni=_dot_q8_tokens_vnni)


@helper
def int8_prefill_for(n):
    """Whether q8 prefill of inputs of n runs on int8 activations (VNNI, whole spans)."""
    return HAVE_VNNI and n % SPAN == 0


@helper
def transpose_spans_into(xq, xt, corr):
    """One token: xq int8 [n] (n % 256 == 0) -> xt [n] with span s's dword k of block j at
    s·256 + 32k + 4j, and corr [n / 32] = 128 · Σ of each block's codes."""
    for s in range(xq.shape[0] // SPAN):
        base = s * SPAN
        for j in range(8):
            total = i32(0)
            for k in range(8):
                for i in range(4):
                    v = xq[base + 32 * j + 4 * k + i]
                    xt[base + 32 * k + 4 * j + i] = v
                    total += i32(v)
            corr[8 * s + j] = total * i32(128)


@helper
def _int8_prefill(x, codes, scales, group, y):
    t_count, n = x.shape
    out = codes.shape[0]
    nb = n // BLOCK
    t4 = (t_count + Q8_TOKENS - 1) // Q8_TOKENS * Q8_TOKENS  # zero tokens after T: the same tile for all
    xt = np.zeros((t4, n), dtype=np.int8)
    ad = np.zeros((t4, nb), dtype=np.float32)
    corr = np.zeros((t4, nb), dtype=np.int32)
    for t in prange(t_count):
        xq = np.empty(n, dtype=np.int8)
        quantize_blocks_into(x[t], xq, ad[t])
        transpose_spans_into(xq, xt[t], corr[t])
    for blk in prange(row_blocks(out)):
        r0, nr = row_block(blk, out)
        ws = np.empty((ROW_BLOCK, nb), dtype=np.float32)  # each block's weight scale, per row
        for i in range(nr):
            for b in range(nb):
                ws[i, b] = f16_to_f32(scales[r0 + i, b * BLOCK // group])
        for t in range(0, t4, Q8_TOKENS):
            for i in range(nr):
                a0, a1, a2, a3 = dot_q8_tokens(codes[r0 + i], xt, ad, corr, ws[i], t)
                y[t, r0 + i] = a0
                if t + 1 < t_count:
                    y[t + 1, r0 + i] = a1
                if t + 2 < t_count:
                    y[t + 2, r0 + i] = a2
                if t + 3 < t_count:
                    y[t + 3, r0 + i] = a3


@kernel
def q8_prefill(x, codes, scales, group, y):
    """x f32 [T, in], codes i8 [out, in], scales u16 [out, ng], y f32 [T, out]. Where
    `int8_prefill_for(in)`, each token quantised in blocks of 32 as decode does and four tokens
    a pass of each row (`dot_q8_tokens`); elsewhere float32 activations, a block of rows
    dequantised once into scratch and multiplied with every token."""
    if int8_prefill_for(codes.shape[1]):
        _int8_prefill(x, codes, scales, group, y)
    else:
        _float_prefill(x, codes, scales, group, y)


@helper
def _float_prefill(x, codes, scales, group, y):
    out, n = codes.shape
    ng = scales.shape[1]
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        scratch = np.empty((ROW_BLOCK, n), dtype=np.float32)
        for i in range(nr):
            c = codes[r0 + i]
            sc = scales[r0 + i]
            dst = scratch[i]
            for g in range(ng):
                lo = g * group
                m = min(group, n - lo)
                s = f16_to_f32(sc[g])
                cg = c[lo : lo + m]
                dg = dst[lo : lo + m]
                for k in range(m):
                    dg[k] = s * f32(cg[k])
        rows_times_tokens(scratch, nr, x, y, r0)


# -- numpy references -------------------------------------------------------------------------


def q8_activation_ref(x: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """x float32 [T, n] -> the activation the kernels multiply, d[b] · x_q, as float64 (one
    scale per run of `block` values: q8's 32, q4's group)."""
    x = np.asarray(x, np.float32)
    t, n = x.shape
    nb = -(-n // block)
    xb = np.zeros((t, nb * block), np.float32)
    xb[:, :n] = x
    xb = xb.reshape(t, nb, block)
    m = np.abs(xb).max(axis=-1, keepdims=True)
    d = m / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(m > 0, np.float32(127.0) / m, np.float32(0.0)).astype(np.float32)
    xq = np.clip(np.rint(xb * inv), -127, 127)
    return (xq.astype(np.float64) * d.astype(np.float64)).reshape(t, -1)[:, :n]


def decode_activation_ref(x: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """What q8/q4 kernels multiply: int8 runs of `block` for one token (decode), float32 for
    several."""
    x = np.asarray(x, np.float32)
    return q8_activation_ref(x, block) if x.shape[0] == 1 else x.astype(np.float64)


def q8_kernel_activation_ref(x: np.ndarray) -> np.ndarray:
    """What the q8 kernels multiply: int8 blocks of 32 for one token (decode) and, where
    `int8_prefill_for(in)`, for several; float32 otherwise."""
    x = np.asarray(x, np.float32)
    return q8_activation_ref(x) if x.shape[0] == 1 or int8_prefill_for(x.shape[1]) else x.astype(np.float64)


def q8_ref(x: np.ndarray, codes: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """x [T, in] -> [T, out]; scales as f16 (or their u16 bits); group_size as in params."""
    parts = {"codes": codes, "scales": scales.view(np.float16)}
    w = Q8.dequantize(parts, codes.shape, {"group_size": group_size})
    return (q8_kernel_activation_ref(x) @ w.astype(np.float64).T).astype(np.float32)


def entry_ref(x: np.ndarray, entry) -> np.ndarray:
    """x [T, in] -> [T, out] for a q8 tensor entry (`.parts, .params`)."""
    return q8_ref(x, entry.parts["codes"], entry.parts["scales"], int(entry.params["group_size"]))
