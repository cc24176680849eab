"""OneBit: sign bit-planes with f16 value vectors (SPEC.md 2.6).

    x' = g ⊙ x, then int8 per token as BitNet activations (x_q, s; `ternary.quantize_into`)
    y[r] = h[r] · (2 · Σ_{i: S[r,i]=+1} x_q[i] − Σ_i x_q[i]) / s

Byte k of a row holds bit j = sign of weight k + j·Q, so stream j walks consecutive bytes against
the contiguous slice x_q[jQ:(j+1)Q]; `dot_b1` (below) unpacks 32 bytes into eight 0/1 byte vectors
and runs `vpmaddubsw` on each, or `vpdpbusd` with VNNI (`llvm_ir.stream_dot`, the ternary kernel's
trick with one bit per weight: 256 weights per eight instructions); `dot_b1_generic` is its
portable twin. Quantising the activation costs ~1/127 of max|x'| per element and made
decode ~3× faster than float. Prefill keeps float activations: it dequantises a block of rows
(h · ±1 · g, as the encoding's dequantize()) and runs the float micro-kernel every other float
prefill shares (each dequantised row serves every token, and float keeps calibrated g/h exact:
with int8 prefill the calibrated file lost its edge over SVID in tests/test_quality.py). The parameter-free LayerNorm of
OneBit students is applied by the caller (`matvec.finish`, `linear`). g and h arrive as raw f16
bits (u16).
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from lowbit.formats.encodings import ONEBIT
from lowbit.runtime.kernels import llvm_ir as lir
from lowbit.runtime.kernels.common import ROW_BLOCK, row_block, row_blocks, rows_times_tokens
from lowbit.runtime.kernels.cpu_features import best_dot
from lowbit.runtime.kernels.jit import f16_to_f32, helper, kernel
from lowbit.runtime.kernels.ternary import quantize_activation_ref, quantize_into

f32 = np.float32
i32 = np.int32
PAD = 32  # activation bytes past 8Q that `dot_b1`'s last vector step may read
_RUN = 32

# -- row dot: Σ over set bits of codes of the int8 activations ---------------------------------


def _unpack1(builder, c):
    one = lir.splat(lir.I8, 32, 1)
    return [builder.and_(builder.lshr(c, lir.splat(lir.I8, 32, j)), one) for j in range(8)]


def _onebit_dot(vnni: bool):
    @intrinsic
    def dot(typingctx, codes, x, stride, tail):
        """Σ over set bits of codes; bit j of byte k ↔ x[k + j·stride] (AVX2: the 8 pair sums per
        i16 lane stay ≤ 8 · 2 · 127). The last len(codes) % 32 bytes come from `tail` (see
        dot_b1), in the same loop: one call and one horizontal sum per row."""
        ok = lir.codes_and_int8(codes, x) and lir.codes_and_int8(tail, x)
        if not ok or not isinstance(stride, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            st = context.cast(builder, args[2], sig.args[2], types.int64)
            return lir.stream_dot(context, builder, sig, args, 8, _unpack1, stride=st, vnni=vnni, tail=3)

        return types.int32(codes, x, stride, tail), codegen

    return dot


_dot_b1_avx2 = _onebit_dot(vnni=False)
_dot_b1_vnni = _onebit_dot(vnni=True)


def _masks1(builder, c):
    """Bit j of each byte as a 0 / -1 byte: one `cmtst` per bit (NEON)."""
    n = c.type.count
    zero = lir.splat(lir.I8, n, 0)
    return [
        builder.sext(builder.icmp_unsigned("!=", builder.and_(c, lir.splat(lir.I8, n, 1 << j)), zero), c.type)
        for j in range(8)
    ]


def emit_b1_neon(builder, codes, x, q, stride, tail):
    """AArch64: `sdot` of each bit's 0/-1 mask with its x stream sums -Σ over set bits: negated."""
    return builder.neg(lir.neon_stream_dot(builder, codes, x, q, stride, 8, _masks1, tail=tail))


@intrinsic
def _dot_b1_neon(typingctx, codes, x, stride, tail):
    """As _onebit_dot's dots, on AArch64 DotProd."""
    ok = lir.codes_and_int8(codes, x) and lir.codes_and_int8(tail, x)
    if not ok or not isinstance(stride, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ca = context.make_array(sig.args[0])(context, builder, args[0])
        xa = context.make_array(sig.args[1])(context, builder, args[1])
        ta = context.make_array(sig.args[3])(context, builder, args[3])
        st = context.cast(builder, args[2], sig.args[2], types.int64)
        return emit_b1_neon(builder, ca.data, xa.data, builder.extract_value(ca.shape, 0), st, ta.data)

    return types.int32(codes, x, stride, tail), codegen


@helper
def dot_b1_generic(codes, x, stride, tail):
    """As _dot_b1_avx2, in plain loops (reads the codes directly; `tail` is unused)."""
    acc = i32(0)
    for o in range(0, codes.shape[0], _RUN):
        s = i32(0)
        for k in range(o, min(o + _RUN, codes.shape[0])):
            b = i32(codes[k])
            for j in range(8):
                s += ((b >> j) & 1) * i32(x[k + j * stride])
        acc = i32(acc + s)
    return acc


_dot_b1_row = best_dot(dot_b1_generic, avx2=_dot_b1_avx2, vnni=_dot_b1_vnni, neon=_dot_b1_neon)


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


@helper
def scaled_input(x, g, n_p):
    """x' = g ⊙ x (float32 [n]) quantised per token: (x_q int8 [n_p + PAD] zero-padded, Σ x_q,
    1/s)."""
    n = x.shape[0]
    xg = np.empty(n, dtype=np.float32)
    for k in range(n):
        xg[k] = f16_to_f32(g[k]) * x[k]
    xq = np.zeros(n_p + PAD, dtype=np.int8)
    off, s = quantize_into(xg, xq)
    return xq, off, f32(1.0) / s


@helper
def row_value(signs_row, xq, off, h_r, inv, tail):
    """h · (2 Σ_{bit set} x_q − Σ x_q) / s for one row (tail: `dot_b1` scratch)."""
    return f32(2 * dot_b1(signs_row, xq, tail) - off) * (h_r * inv)


@helper
def _dequantize_row(c, g, h_r, dst, n):
    """One row as the encoding's dequantize() gives it, h_r · (±1) · g[k] (the same f32 rounding),
    into dst f32 [>= n]: bit j of byte k is the sign of weight k + jQ."""
    q = c.shape[0]
    for j in range(8):
        lo = j * q
        if lo >= n:
            break
        m = min(q, n - lo)
        d = dst[lo : lo + m]
        gj = g[lo : lo + m]
        for k in range(m):
            v = h_r if (c[k] >> j) & 1 else -h_r
            d[k] = v * f16_to_f32(gj[k])


@kernel
def onebit_prefill(x, signs, g, h, y):
    """x f32 [T, in]; signs, g, h as onebit_decode; y f32 [T, out]: a block of rows dequantised
    once into scratch, then the shared float micro-kernel (`rows_times_tokens`, four rows × four
    tokens, L2-sized token chunks) as q4/q8 prefill. It replaced a select-and-add loop of four rows
    × two tokens over the 0/1 sign bytes (two vector instructions per weight and token, against
    one FMA here): SmolLM2 onebit pp128 read 0.83 × llama.cpp's there."""
    out = signs.shape[0]
    n = x.shape[1]
    for b in prange(row_blocks(out)):
        r0, nr = row_block(b, out)
        scratch = np.empty((ROW_BLOCK, n), dtype=np.float32)
        for i in range(nr):
            _dequantize_row(signs[r0 + i], g, f16_to_f32(h[r0 + i]), scratch[i], n)
        rows_times_tokens(scratch, nr, x, y, r0)


def onebit_ref(x: np.ndarray, signs: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x [T, in] -> [T, out] (without the optional LayerNorm) as the kernels compute it: for one
    token (decode) g ⊙ x quantised per token to int8 times the encoding's own unpacked signs in
    exact integers; for several (prefill) in float through the encoding's dequantize()."""
    if x.shape[0] != 1:
        parts = {"signs": signs, "g": g.view(np.float16), "h": h.view(np.float16)}
        w = ONEBIT.dequantize(parts, (signs.shape[0], g.shape[0]), {"layernorm": False})
        return (np.asarray(x, np.float64) @ w.astype(np.float64).T).astype(np.float32)
    gf = g.view(np.float16).astype(np.float32)
    xq, s = quantize_activation_ref(np.asarray(x, np.float32) * gf)
    parts = {"signs": signs, "g": g.view(np.float16), "h": h.view(np.float16)}
    shape = (signs.shape[0], g.shape[0])
    sign = ONEBIT.unpack(parts, shape, {"layernorm": False}).astype(np.int64)
    acc = xq.astype(np.int64) @ sign.T
    hf = h.view(np.float16).astype(np.float32)
    return acc.astype(np.float32) * (hf[None, :] / s[:, None])


def entry_ref(x: np.ndarray, entry) -> np.ndarray:
    """x [T, in] -> [T, out] for a onebit tensor entry, its LayerNorm (params.layernorm) included."""
    p = entry.parts
    y = onebit_ref(x, p["signs"], p["g"], p["h"]).astype(np.float64)
    if entry.params.get("layernorm"):
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
    return y.astype(np.float32)
