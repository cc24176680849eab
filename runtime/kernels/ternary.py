"""Ternary weights with BitNet int8 activations: `ternary` (2-bit codes, SPEC.md 2.4) and
`ternary-1.6` (5 trits per byte, base 3, SPEC.md 2.5).

Activations (per token, BitNet b1.58):

    s   = 127 / max(max|x|, 1e-5)
    x_q = clamp(round_half_even(x · s), -128, 127)

computed once per call by `quantize_activation` (int8, zero-padded to a multiple of
640 = lcm(128, 160), so one quantised activation serves every ternary matrix with the same input:
q/k/v, gate/up, in either layout).

Weights are unsigned codes c = t + 1 ∈ {0, 1, 2}; with Σ t·x = Σ c·x − Σ x the integer inner
product needs no sign handling:

    y[t, r] = (Σ_k c[r, k] x_q[t, k] − Σ_k x_q[t, k]) · (scale[r] / s[t])

Layouts are whole-row streams: byte k of a row holds the trits at k + j·Q (j = 0..3 for
`ternary`, bits 2j..2j+1; j = 0..4 for `ternary-1.6`, digit j of the base-3 byte), so stream j is
a run of consecutive bytes against the contiguous slice x_q[jQ:(j+1)Q]. The row dot products are
`dot_ternary` / `dot_ternary_1p6` below: x86 vector IR (`llvm_ir.stream_dot`: `vpmaddubsw`, or
`vpdpbusd` with VNNI), which made the 2-bit kernel 4-5× faster than numba's loops (17 → 77
GMAC/s on one core at 2560×6912, where two threads then saturate memory); elsewhere
`dot_ternary_generic` / `dot_ternary_1p6_generic`, int16 run sums widened to int32 (~16 GMAC/s
per core), which are also the twins the tests hold the IR to. The base-3 digits take four vector
divisions per 32 code bytes; on AVX-512 VBMI (`_dot_ternary_1p6_vbmi`) two 256-entry table lookups
(`vpermi2b`) per 64 code bytes give them instead, and the 1.6-bit dot then runs 130-175 GMAC/s on
one Zen 5 core at 6912×2560 against the division form's 56 (the 2-bit dot: ~150). In code the base-3 encoding is
`ternary_1p6` / `TERNARY_1P6` throughout (its name in the file: `ternary-1.6`).

Prefill keeps a block of packed rows hot in L1 and runs every token over it; the codes are
unpacked in registers (7 shifts/masks per 128 weights), which measured cheaper than writing the
unpacked codes to scratch and reading 4× the bytes back. On x86 a row meets TOKENS tokens per
pass (`dot_ternary_tokens` / `dot_ternary_1p6_tokens`: one load and unpack of each 32 code bytes
feeds every token's `vpdpbusd` / `vpmaddubsw`, so unpacking costs a quarter per token); the last
T mod TOKENS tokens run the one-token dot. The dots are exact integers, so a token's result is the
same bits whichever pass it falls in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from lowbit.formats.encodings import TERNARY, TERNARY_1P6
from lowbit.runtime.kernels import llvm_ir as lir
from lowbit.runtime.kernels.cpu_features import (
    HAVE_AVX2,
    HAVE_AVX512_VBMI,
    HAVE_VNNI,
    best_dot,
)
from lowbit.runtime.kernels.jit import exact, helper, kernel

ACT_PAD = 640  # lcm(128, 160): quantised activations fit both ternary layouts
ROW_BLOCK = 16  # packed rows a prefill task keeps in L1 while every token runs over them

f32 = np.float32
i8 = np.int8
i16 = np.int16
i32 = np.int32

# -- row dots: Σ_k c[k]·x[k] over one row's code streams ---------------------------------------
#
# dot_ternary(codes, x): Q = len(codes) bytes (Q % 32 == 0), byte k holds four 2-bit codes
# c ∈ {0, 1, 2} (bits 2j..2j+1 ↔ x[k + jQ]); dot_ternary_1p6(codes, x): digit j of the base-3
# byte k ↔ x[k + jQ]. x is int8 [>= 4Q or 5Q]. Per 32 code bytes the streams are unpacked with
# shifts and masks (or udiv/urem by 3), one `vpmaddubsw` per stream (pairs: |c·x| <= 256, a 4- or
# 5-stream sum <= 2560 fits int16).


def _unpack2(builder, c):
    n = c.type.count  # 32 bytes (AVX2) or 16 (NEON)
    three = lir.splat(lir.I8, n, 3)
    return [
        builder.and_(c, three),
        builder.and_(builder.lshr(c, lir.splat(lir.I8, n, 2)), three),
        builder.and_(builder.lshr(c, lir.splat(lir.I8, n, 4)), three),
        builder.lshr(c, lir.splat(lir.I8, n, 6)),
    ]


def _mask2(builder, c):
    """The four 2-bit fields of each byte masked in place (c & 3 << 2j): `vpdpbusd` takes them
    as they are (u8 ≤ 192) and the sums are shifted down by 2j once per row, which saves the
    three shifts of `_unpack2` (8 vector ops per 32 code bytes instead of 10)."""
    return [builder.and_(c, lir.splat(lir.I8, c.type.count, 3 << (2 * j))) for j in range(4)]


MASK_SHIFTS = (0, 2, 4, 6)


def _unpack3(builder, c):
    three = lir.splat(lir.I8, c.type.count, 3)
    digits = []
    for _ in range(4):
        nxt = builder.udiv(c, three)
        digits.append(builder.sub(c, builder.mul(nxt, three)))
        c = nxt
    digits.append(c)
    return digits


def _ternary_dot(streams: int, unpack, vnni: bool, shifts=None):
    @intrinsic
    def dot(typingctx, codes, x):
        if not lir.codes_and_int8(codes, x):
            return None

        def codegen(context, builder, sig, args):
            return lir.stream_dot(context, builder, sig, args, streams, unpack, vnni=vnni, shifts=shifts)

        return types.int32(codes, x), codegen

    return dot


_dot_ternary_avx2 = _ternary_dot(4, _unpack2, vnni=False)
_dot_ternary_1p6_avx2 = _ternary_dot(5, _unpack3, vnni=False)
_dot_ternary_vnni = _ternary_dot(4, _mask2, vnni=True, shifts=MASK_SHIFTS)
_dot_ternary_1p6_vnni = _ternary_dot(5, _unpack3, vnni=True)


# ternary-1.6 on AVX-512 VBMI: a byte's five base-3 digits come from two 256-entry tables (vpermi2b),
# not from four vector divisions: BASE3_FIELDS[v] holds digits 0..3 as 2-bit fields (bits 2j..2j+1,
# the `ternary` layout, masked in place as `_mask2` does), BASE3_TOP[v] digit 4. Bytes >= 243 never
# occur in a valid file; the tables give them what `dot_ternary_1p6_generic` computes (b // 81 = 3).
BASE3_FIELDS = [sum(((v // 3**j) % 3) << (2 * j) for j in range(4)) for v in range(256)]
BASE3_TOP = [v // 81 for v in range(256)]
_STEP = 64


def _base3_digits(builder, c, in_place: bool):
    """The five digit vectors of 64 base-3 code bytes (<64 x i8>): digits 0..3 masked in place
    (digit j times 4^j: one `and` each, the caller shifts its sums back) or shifted down to 0..2
    (`vpsrlw` + `and`, worth it when several tokens share them), digit 4 as it is."""
    fields = lir.lookup256(builder, BASE3_FIELDS, c)
    digits = []
    for j in range(4):
        f = fields if in_place or j == 0 else builder.lshr(fields, lir.splat(lir.I8, 64, 2 * j))
        digits.append(builder.and_(f, lir.splat(lir.I8, 64, 3 << (2 * j) if in_place else 3)))
    digits.append(lir.lookup256(builder, BASE3_TOP, c))
    return digits


BASE3_SHIFTS = (0, 2, 4, 6, 0)  # digit j's field offset in place (digit 4: its own table)


def _stream_dots_512(builder, codes, q, bases, in_place: bool):
    """Σ_j Σ_k digit_j(codes[k]) · x_u[k + jQ] of base-3 codes for each activation row pointer x_u
    in `bases`: one 512-bit `vpdpbusd` per digit and row; a last 32 bytes (Q % 64 == 32) run as
    one zero-extended step. In place (one row): each digit has its own accumulator, its sum
    shifted back once; otherwise two accumulators a row. One i32 a row."""
    dp = lir.dpbusd512(builder)
    full = builder.and_(q, lir.const(-_STEP))
    per = len(BASE3_SHIFTS) if in_place else 2

    def step(i, accs, load):
        digits = _base3_digits(builder, load(codes, i), in_place)
        out = list(accs)
        for u, base in enumerate(bases):
            for j, dig in enumerate(digits):
                xs = load(base, builder.add(i, builder.mul(q, lir.const(j))))
                a = u * per + j % per
                out[a] = builder.call(dp, [out[a], builder.bitcast(dig, lir.V16I32), builder.bitcast(xs, lir.V16I32)])
        return out

    def load64(ptr, off):
        return lir.load(builder, ptr, off, lir.V64I8)

    def load32(ptr, off):
        return lir.widen_to_64(builder, lir.load(builder, ptr, off))

    zero = ir.Constant(lir.V16I32, None)
    accs = lir.loop(builder, full, _STEP, [zero] * (per * len(bases)), lambda i, a: step(i, a, load64), "t512")
    accs = lir.when(builder, builder.icmp_signed("<", full, q), accs, lambda a: step(full, a, load32), "t512_tail")
    sums = []
    for u in range(len(bases)):
        total = None
        for j in range(per):
            a = accs[u * per + j]
            if in_place and BASE3_SHIFTS[j]:
                a = builder.ashr(a, lir.splat(lir.I32, 16, BASE3_SHIFTS[j]))
            total = a if total is None else builder.add(total, a)
        sums.append(lir.hsum_i32(builder, total))
    return sums


@intrinsic
def _dot_ternary_1p6_vbmi(typingctx, codes, x):
    """dot_ternary_1p6 on AVX-512 VBMI (table lookups, not divisions, for the digits)."""
    if not lir.codes_and_int8(codes, x):
        return None

    def codegen(context, builder, sig, args):
        ca, xa = lir.arrays(context, builder, sig, args)
        return _stream_dots_512(builder, ca.data, builder.extract_value(ca.shape, 0), [xa.data], True)[0]

    return types.int32(codes, x), codegen


TOKENS = 4  # tokens per pass of the prefill tile


def _token_tile_args(codes, xq, t) -> bool:
    """A token tile's arguments: codes uint8 [Q], xq int8 [T, n_p] C-contiguous, t an integer."""
    return (lir.vectors((codes, types.uint8)) and isinstance(xq, types.Array) and xq.ndim == 2
            and xq.layout == "C" and xq.dtype == types.int8 and isinstance(t, types.Integer))


def _token_rows(context, builder, sig, args):
    """(codes array, Q, pointers to xq rows t .. t + TOKENS - 1) of a token tile's arguments."""
    ca, xa = lir.arrays(context, builder, sig, args, 2)
    t0 = context.cast(builder, args[2], sig.args[2], types.int64)
    row = builder.extract_value(xa.strides, 0)  # bytes per token row (int8)
    bases = [builder.gep(xa.data, [builder.mul(builder.add(t0, lir.const(u)), row)]) for u in range(TOKENS)]
    return ca, builder.extract_value(ca.shape, 0), bases


def _tokens_dot(streams: int, unpack, vnni: bool):
    """(Σ_k c[k]·x[t+u, k] for u < TOKENS) of one row against TOKENS rows of x (int8 [T, n_p],
    C-contiguous, t + TOKENS <= T): stream_dot's loop with the unpacked codes shared."""

    @intrinsic
    def dot(typingctx, codes, xq, t):
        if not _token_tile_args(codes, xq, t):
            return None
        ret = types.UniTuple(types.int32, TOKENS)

        def codegen(context, builder, sig, args):
            ca, q, bases = _token_rows(context, builder, sig, args)
            pmaddubsw = lir.maddubs(builder)
            vpdpbusd = lir.dpbusd(builder) if vnni else None
            per = 2 if vnni else 1  # accumulators per token: two dependent vpdpbusd chains

            def body(i, accs):
                c = unpack(builder, lir.load(builder, ca.data, i))
                nxt = list(accs)
                for u in range(TOKENS):
                    xs = [lir.load(builder, bases[u], builder.add(i, builder.mul(q, lir.const(j)))) for j in range(streams)]
                    if vnni:
                        for j in range(streams):
                            a = u * per + j % per
                            nxt[a] = builder.call(vpdpbusd, [nxt[a], builder.bitcast(c[j], lir.V8I32),
                                                             builder.bitcast(xs[j], lir.V8I32)])
                    else:
                        pairs = None
                        for j in range(streams):
                            pr = builder.call(pmaddubsw, [c[j], xs[j]])
                            pairs = pr if pairs is None else builder.add(pairs, pr)
                        nxt[u] = builder.add(nxt[u], lir.widen_pairs(builder, pairs))
                return nxt

            accs = lir.loop(builder, q, 32, [ir.Constant(lir.V8I32, None)] * (TOKENS * per), body, "tdot4")
            sums = []
            for u in range(TOKENS):
                total = accs[u * per]
                for k in range(1, per):
                    total = builder.add(total, accs[u * per + k])
                sums.append(lir.hsum_i32(builder, total))
            return context.make_tuple(builder, ret, sums)

        return ret(codes, xq, t), codegen

    return dot


_dot_ternary_tokens = _tokens_dot(4, _unpack2, vnni=HAVE_VNNI)
_dot_ternary_1p6_tokens = _tokens_dot(5, _unpack3, vnni=HAVE_VNNI)


@intrinsic
def _dot_ternary_1p6_tokens_vbmi(typingctx, codes, xq, t):
    """dot_ternary_1p6_tokens on AVX-512 VBMI: each 64 code bytes' digits are looked up once and
    feed every token's 512-bit `vpdpbusd`. (The same loop on ternary's 2-bit fields was tried and
    dropped: in alternating `lowbit bench` processes, 2B-4T, pp128, one thread, it read 78-96
    tok/s against the 256-bit tile's steady 90-92.)"""
    if not _token_tile_args(codes, xq, t):
        return None
    ret = types.UniTuple(types.int32, TOKENS)

    def codegen(context, builder, sig, args):
        ca, q, bases = _token_rows(context, builder, sig, args)
        return context.make_tuple(builder, ret, _stream_dots_512(builder, ca.data, q, bases, False))

    return ret(codes, xq, t), codegen


# AArch64 (DotProd): one `sdot` per stream and 16 code bytes; the base-3 digits by a vector
# divide by 3, which LLVM makes a multiply-high (`umull`/`umull2` + shift) per digit.
def emit_ternary_neon(builder, codes, x, q):
    return lir.neon_stream_dot(builder, codes, x, q, q, 4, _unpack2)


def emit_ternary_1p6_neon(builder, codes, x, q):
    return lir.neon_stream_dot(builder, codes, x, q, q, 5, _unpack3)


def _neon_ternary_dot(emit):
    @intrinsic
    def dot(typingctx, codes, x):
        if not lir.codes_and_int8(codes, x):
            return None

        def codegen(context, builder, sig, args):
            ca = context.make_array(sig.args[0])(context, builder, args[0])
            xa = context.make_array(sig.args[1])(context, builder, args[1])
            return emit(builder, ca.data, xa.data, builder.extract_value(ca.shape, 0))

        return types.int32(codes, x), codegen

    return dot


_dot_ternary_neon = _neon_ternary_dot(emit_ternary_neon)
_dot_ternary_1p6_neon = _neon_ternary_dot(emit_ternary_1p6_neon)

_RUN = 32


@helper
def dot_ternary_generic(codes, x):
    """dot_ternary in plain loops: int16 sums over runs of 32 bytes, widened to int32."""
    q = codes.shape[0]
    acc = i32(0)
    for o in range(0, q, _RUN):
        c = codes[o : o + _RUN]
        x0 = x[o : o + _RUN]
        x1 = x[q + o : q + o + _RUN]
        x2 = x[2 * q + o : 2 * q + o + _RUN]
        x3 = x[3 * q + o : 3 * q + o + _RUN]
        s = i16(0)
        for k in range(_RUN):
            u = i16(c[k])
            s = i16(
                s
                + (u & 3) * x0[k]
                + ((u >> 2) & 3) * x1[k]
                + ((u >> 4) & 3) * x2[k]
                + (u >> 6) * x3[k]
            )
        acc = i32(acc + s)
    return acc


@helper
def dot_ternary_1p6_generic(codes, x):
    """dot_ternary_1p6 in plain loops (runs of 16 bytes: 5 streams × 16 × 256 < 2^15)."""
    q = codes.shape[0]
    acc = i32(0)
    for o in range(0, q, 16):
        c = codes[o : o + 16]
        x0 = x[o : o + 16]
        x1 = x[q + o : q + o + 16]
        x2 = x[2 * q + o : 2 * q + o + 16]
        x3 = x[3 * q + o : 3 * q + o + 16]
        x4 = x[4 * q + o : 4 * q + o + 16]
        s = i16(0)
        for k in range(16):
            b = c[k]
            s = i16(
                s
                + i16(b % 3) * x0[k]
                + i16((b // 3) % 3) * x1[k]
                + i16((b // 9) % 3) * x2[k]
                + i16((b // 27) % 3) * x3[k]
                + i16(b // 81) * x4[k]
            )
        acc = i32(acc + s)
    return acc


dot_ternary = best_dot(dot_ternary_generic, avx2=_dot_ternary_avx2, vnni=_dot_ternary_vnni, neon=_dot_ternary_neon)
dot_ternary_1p6 = _dot_ternary_1p6_vbmi if HAVE_AVX512_VBMI else best_dot(
    dot_ternary_1p6_generic, avx2=_dot_ternary_1p6_avx2, vnni=_dot_ternary_1p6_vnni, neon=_dot_ternary_1p6_neon)


@helper
def dot_ternary_tokens_generic(codes, xq, t):
    """dot_ternary_tokens as TOKENS one-token dots (the twin the tests hold the IR to)."""
    return (dot_ternary(codes, xq[t]), dot_ternary(codes, xq[t + 1]),
            dot_ternary(codes, xq[t + 2]), dot_ternary(codes, xq[t + 3]))


@helper
def dot_ternary_1p6_tokens_generic(codes, xq, t):
    return (dot_ternary_1p6(codes, xq[t]), dot_ternary_1p6(codes, xq[t + 1]),
            dot_ternary_1p6(codes, xq[t + 2]), dot_ternary_1p6(codes, xq[t + 3]))


if HAVE_AVX2:
    dot_ternary_tokens = _dot_ternary_tokens
    dot_ternary_1p6_tokens = _dot_ternary_1p6_tokens_vbmi if HAVE_AVX512_VBMI else _dot_ternary_1p6_tokens
else:  # pragma: no cover - elsewhere TOKENS one-token dots (NEON's included)
    dot_ternary_tokens = dot_ternary_tokens_generic
    dot_ternary_1p6_tokens = dot_ternary_1p6_tokens_generic


class QuantizedActivation(NamedTuple):
    """int8-valued activations of T tokens, reusable for several matrices with the same input."""

    xq: np.ndarray  # int8 [T, n_p], zero after n
    xsum: np.ndarray  # int32 [T], Σ_k xq[t, k]
    s: np.ndarray  # float32 [T], the quantisation scale 127 / max|x|
    n: int  # the unpadded input length


@exact
def quantize_into(row, dst):
    """Quantise one token row into dst (int8, zero-filled, len >= len(row)); (Σ x_q, s)."""
    n = row.shape[0]
    m = f32(0.0)
    for k in range(n):
        a = abs(row[k])
        if a > m:
            m = a
    st = f32(127.0) / max(m, f32(1e-5))
    tot = 0
    for k in range(n):
        v = np.rint(row[k] * st)
        v = min(max(v, f32(-128.0)), f32(127.0))
        q = i8(v)
        dst[k] = q
        tot += q
    return i32(tot), st


@exact
def quantize_tokens(x, n_p):
    """Every row of x (float32 [T, n]) quantised: (x_q int8 [T, n_p] zero-padded, Σ x_q, s)."""
    t_count = x.shape[0]
    xq = np.zeros((t_count, n_p), dtype=np.int8)
    xsum = np.empty(t_count, dtype=np.int32)
    scale = np.empty(t_count, dtype=np.float32)
    for t in range(t_count):
        xsum[t], scale[t] = quantize_into(x[t], xq[t])
    return xq, xsum, scale


def quantize_activation(x: np.ndarray) -> QuantizedActivation:
    """x float32 [T, in] (C-contiguous) -> QuantizedActivation."""
    n = x.shape[1]
    n_p = -(-n // ACT_PAD) * ACT_PAD
    xq, xsum, s = quantize_tokens(x, n_p)
    return QuantizedActivation(xq, xsum, s, n)


def quantize_activation_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy: (x_q int8 [T, in], s float32 [T])."""
    x = np.asarray(x, dtype=np.float32)
    s = np.float32(127.0) / np.maximum(np.abs(x).max(axis=-1), np.float32(1e-5))
    xq = np.clip(np.round(x * s[:, None]), -128, 127).astype(np.int8)
    return xq, s.astype(np.float32)


@helper
def _row_scale(scale, r):
    return scale[r] if scale.shape[0] > 1 else scale[0]


@helper
def _inverse(s):
    inv = np.empty(s.shape[0], dtype=np.float32)
    for t in range(s.shape[0]):
        inv[t] = f32(1.0) / s[t]
    return inv


@helper
def _put(y, t, r, dot, xsum, sc, inv):
    y[t, r] = f32(dot - xsum[t]) * (sc * inv[t])


@helper
def _prefill(xq, xsum, s, codes, scale, y, base3):
    """Both layouts' prefill (`base3` a constant of the caller, folded after inlining): TOKENS
    tokens per pass over a row, then the rest one by one."""
    out = codes.shape[0]
    t_count = xq.shape[0]
    full = t_count - t_count % TOKENS
    inv = _inverse(s)
    nblocks = (out + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(nblocks):
        r0 = b * ROW_BLOCK
        r1 = min(out, r0 + ROW_BLOCK)
        for t in range(0, full, TOKENS):
            for r in range(r0, r1):
                sc = _row_scale(scale, r)
                if base3:
                    d0, d1, d2, d3 = dot_ternary_1p6_tokens(codes[r], xq, t)
                else:
                    d0, d1, d2, d3 = dot_ternary_tokens(codes[r], xq, t)
                _put(y, t, r, d0, xsum, sc, inv)
                _put(y, t + 1, r, d1, xsum, sc, inv)
                _put(y, t + 2, r, d2, xsum, sc, inv)
                _put(y, t + 3, r, d3, xsum, sc, inv)
        for t in range(full, t_count):
            x = xq[t]
            for r in range(r0, r1):
                acc = dot_ternary_1p6(codes[r], x) if base3 else dot_ternary(codes[r], x)
                _put(y, t, r, acc, xsum, _row_scale(scale, r), inv)


@kernel
def ternary_prefill(xq, xsum, s, codes, scale, y):
    """T tokens: xq int8 [T, >= in_p] (C-contiguous), xsum int32 [T], s f32 [T]; codes u8 [out, Q];
    scale f32 [1] or [out]; y f32 [T, out]."""
    _prefill(xq, xsum, s, codes, scale, y, False)


@kernel
def ternary_1p6_prefill(xq, xsum, s, codes, scale, y):
    """As ternary_prefill for base-3 codes."""
    _prefill(xq, xsum, s, codes, scale, y, True)


# -- numpy reference ------------------------------------------------------------------------


def ternary_ref(
    x: np.ndarray, codes: np.ndarray, scale: np.ndarray, n_in: int, encoding: str = "ternary"
) -> np.ndarray:
    """x float32 [T, in] -> [T, out]: the same activation quantisation, then the dequantised
    trits (via the encoding's dequantize() with unit scale) @ x_q in exact integers, × scale / s."""
    enc = {"ternary": TERNARY, "ternary-1.6": TERNARY_1P6}[encoding]
    mode = "tensor" if scale.size == 1 else "row"
    unit = np.ones_like(scale, dtype=np.float32)
    trits = enc.dequantize(
        {"codes": codes, "scale": unit}, (codes.shape[0], n_in), {"scale_mode": mode}
    )
    xq, s = quantize_activation_ref(x)
    acc = xq.astype(np.int64) @ trits.astype(np.int64).T  # exact
    ws = np.broadcast_to(np.asarray(scale, np.float32).reshape(1, -1), acc.shape)
    return acc.astype(np.float32) * (ws / s[:, None])


def entry_ref(x: np.ndarray, entry) -> np.ndarray:
    """x [T, in] -> [T, out] for a ternary tensor entry (`.encoding, .shape, .parts`)."""
    return ternary_ref(x, entry.parts["codes"], entry.parts["scale"], int(entry.shape[1]), entry.encoding)
