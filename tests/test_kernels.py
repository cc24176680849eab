"""Every kernel against its numpy reference (built on the encodings' own dequantize()).

Ragged shapes (out = 1, in = 1, 577, 5460, 8640; groups 32/64/128), decode (T = 1) and prefill
(T = 3, 17), 1 and 2 threads, read-only weights as a memory-mapped file gives them. Metamorphic
checks: prefill == stacked decode, 1 thread == 2 threads (bit for bit: rows never share work).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from kernel_cases import onebit_row

from lowbit.formats.encodings import ENCODINGS
from lowbit.formats.encodings.affine import unpack_codes
from lowbit.runtime.kernels import dense, grouped, onebit, q8, ternary
from lowbit.runtime.kernels.matvec import matvec
from lowbit.runtime.linear import make_descriptor

SHAPES = [(1, 1), (1, 577), (7, 1), (33, 577), (19, 5460), (5, 8640), (64, 128)]
TOKENS = (1, 3, 17)
THREADS = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})


def readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype == np.float16:
        a = a.view(np.uint16)
    a = a.view()
    a.flags.writeable = False
    return a


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(abs(hash(tuple(str(k) for k in key))) % 2**32)


def activations(rng: np.random.Generator, t: int, n: int) -> np.ndarray:
    x = rng.standard_normal((t, n)).astype(np.float32)
    x[:, rng.integers(0, n)] *= 8  # an outlier channel, as real activations have
    return x


def decoder(encoding: str, names: tuple[str, ...], group_arg: int | None = None):
    """The generic `matvec` with a descriptor of the encoding's parts, called like the old
    per-encoding decode kernels: decode(x, *parts[, bits], [group], y)."""

    def decode(x, *args):
        *parts, y = args
        group = parts[group_arg] if group_arg is not None else 0
        matvec(make_descriptor(encoding, dict(zip(names, parts)), group), x, y)

    return decode


f32_decode = decoder("f32", ("data",))
f16_decode = decoder("f16", ("data",))
bf16_decode = decoder("bf16", ("data",))
q8_decode = decoder("q8", ("codes", "scales"), group_arg=2)
onebit_decode = decoder("onebit", ("signs", "g", "h"))
GROUPED_DECODE = {
    b: decoder(f"q{b}", ("codes", "scales", "zeros", "row_scale"), group_arg=5) for b in (2, 3, 4)
}


GROUPED_PREFILL = {2: grouped.grouped_prefill, 3: grouped.grouped_prefill, 4: grouped.q4_prefill}


def grouped_decode(x, codes, scales, zeros, row_scale, bits, group, y):
    GROUPED_DECODE[bits](x, codes, scales, zeros, row_scale, bits, group, y)


def run(decode, prefill, x: np.ndarray, args: tuple, out: int) -> np.ndarray:
    """The decode kernel for T == 1, else the prefill kernel."""
    y = np.full((x.shape[0], out), np.nan, dtype=np.float32)
    if x.shape[0] == 1:
        decode(x[0], *args, y[0])
    else:
        prefill(x, *args, y)
    return y


def assert_close(
    y: np.ndarray, ref: np.ndarray, w: np.ndarray, x: np.ndarray, rtol: float = 1e-5
) -> None:
    """float32 tolerance: rtol of max|ref|, plus a float32 summation bound from Σ|w||x|."""
    mag = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T
    atol = rtol * np.abs(ref).max() + 1e-6 * mag.max() + 1e-30
    np.testing.assert_allclose(y, ref, rtol=0, atol=atol)


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}thr")
def threads(request):
    old = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(old)


# -- dense --------------------------------------------------------------------------------


DENSE = {
    "f32": (f32_decode, dense.f32_prefill, dense.f32_ref),
    "f16": (f16_decode, dense.f16_prefill, dense.f16_ref),
    "bf16": (bf16_decode, dense.bf16_prefill, dense.bf16_ref),
}


@pytest.mark.parametrize("encoding", list(DENSE))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dense(encoding, shape, threads):
    rng = rng_for(encoding, shape)
    entry = ENCODINGS[encoding].pack(rng.standard_normal(shape).astype(np.float32))
    w = readonly(entry.parts["data"])
    decode, prefill, ref = DENSE[encoding]
    for t in TOKENS:
        x = activations(rng, t, shape[1])
        y = run(decode, prefill, x, (w,), shape[0])
        assert_close(y, ref(x, w), entry.dequantize(), x)


def test_f16_conversion_special_values():
    """Subnormals, ±0, ±inf and NaN convert exactly as numpy's float16 -> float32."""
    vals = np.array(
        [0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504, -65504, np.inf, -np.inf, 1.0, -2.5], np.float16
    )
    w16 = np.zeros((len(vals), len(vals)), np.float16)
    w16[np.arange(len(vals)), np.arange(len(vals))] = vals
    w = readonly(w16)
    x = np.ones(len(vals), np.float32)
    y = np.empty(len(vals), np.float32)
    f16_decode(x, w, y)
    np.testing.assert_array_equal(y, vals.astype(np.float32))
    wn = readonly(np.full((1, 1), np.nan, np.float16))
    y1 = np.empty(1, np.float32)
    f16_decode(np.ones(1, np.float32), wn, y1)
    assert np.isnan(y1[0])


# -- q8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [0, 32, 128])
@pytest.mark.parametrize("shape", SHAPES + [(9, 1536)], ids=str)  # 1536: whole spans (int8 prefill on VNNI)
def test_q8(shape, group_size, threads):
    rng = rng_for("q8", shape, group_size)
    out, n = shape
    ng = -(-n // (group_size or n))
    entry = ENCODINGS["q8"].pack(
        rng.integers(-127, 128, shape).astype(np.int8),
        (rng.random((out, ng)) * 0.02).astype(np.float16),
        group_size,
    )
    codes, scales = readonly(entry.parts["codes"]), readonly(entry.parts["scales"])
    group = group_size or n
    for t in TOKENS:
        x = activations(rng, t, n)
        y = run(q8_decode, q8.q8_prefill, x, (codes, scales, group), out)
        assert_close(y, q8.q8_ref(x, codes, scales, group_size), entry.dequantize(), x)


# -- q2 / q3 / q4 -------------------------------------------------------------------------


def grouped_entry(rng, bits: int, shape: tuple[int, int], group: int):
    out, n = shape
    ng = -(-n // group)
    return ENCODINGS[f"q{bits}"].pack(
        rng.integers(0, 2**bits, shape),
        rng.integers(0, 256, (out, ng)),
        rng.integers(0, 2**bits, (out, ng)),
        (rng.random(out) * 0.01 + 1e-3).astype(np.float16),
        group,
    )


def grouped_magnitudes(entry, group: int) -> np.ndarray:
    """|row_scale · sq| · (q + z): the size of the terms the kernel sums (Σ q·x and z·Σx are
    formed separately, so an all-zero row still carries rounding of that size)."""
    n = entry.shape[1]
    q = ENCODINGS[entry.encoding].unpack(entry.parts, entry.shape, entry.params).astype(np.float64)
    per_group = lambda a: np.repeat(a.astype(np.float64), group, axis=1)[:, :n]  # noqa: E731
    step = entry.parts["row_scale"].astype(np.float64)[:, None] * per_group(entry.parts["scales"])
    return step * (q + per_group(entry.parts["zeros"]))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_grouped(shape, bits, group, threads):
    rng = rng_for("grouped", shape, bits, group)
    entry = grouped_entry(rng, bits, shape, group)
    p = {k: readonly(v) for k, v in entry.parts.items()}
    args = (p["codes"], p["scales"], p["zeros"], p["row_scale"], bits, group)
    for t in TOKENS:
        x = activations(rng, t, shape[1])
        y = run(grouped_decode, GROUPED_PREFILL[bits], x, args, shape[0])
        ref = grouped.grouped_ref(x, *args, shape[1])
        if bits == 4:  # int8 activations, one scale per group (prefill too where int8_prefill_for(G))
            ref = grouped.q4_ref(x, *args[:4], group, shape[1])
        assert_close(y, ref, grouped_magnitudes(entry, group), x)


# -- ternary ------------------------------------------------------------------------------


TERNARY = {"ternary": ternary.ternary_prefill, "ternary-1.6": ternary.ternary_1p6_prefill}


def ternary_entry(rng, encoding: str, shape: tuple[int, int], mode: str):
    scale = (
        np.float32([0.37]) if mode == "tensor" else (rng.random(shape[0]) + 0.5).astype(np.float32)
    )
    return ENCODINGS[encoding].pack(rng.integers(-1, 2, shape), scale)


def run_ternary(
    encoding: str, x: np.ndarray, codes: np.ndarray, scale: np.ndarray, n: int
) -> np.ndarray:
    prefill = TERNARY[encoding]
    qa = ternary.quantize_activation(x)
    y = np.full((x.shape[0], codes.shape[0]), np.nan, dtype=np.float32)
    prefill(qa.xq, qa.xsum, qa.s, codes, scale, y)
    if x.shape[0] == 1:  # matvec quantises inside: the same integers (float steps to 1 ulp)
        fused = np.full(codes.shape[0], np.nan, dtype=np.float32)
        desc = make_descriptor(encoding, {"codes": codes, "scale": scale})
        matvec(desc, x[0], fused)
        np.testing.assert_allclose(fused, y[0], rtol=3e-7, atol=1e-30)
    return y


@pytest.mark.parametrize("mode", ["tensor", "row"])
@pytest.mark.parametrize("encoding", list(TERNARY))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ternary(shape, encoding, mode, threads):
    """Integer path exact: one unit of the integer sum is ~1e-4 of max|y| here, the tolerance
    (float32 rounding of the final scale) is 2e-6 per element."""
    rng = rng_for(encoding, shape, mode)
    entry = ternary_entry(rng, encoding, shape, mode)
    codes, scale = readonly(entry.parts["codes"]), readonly(entry.parts["scale"])
    for t in TOKENS:
        x = activations(rng, t, shape[1])
        y = run_ternary(encoding, x, codes, scale, shape[1])
        ref = ternary.ternary_ref(x, codes, scale, shape[1], encoding)
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max() + 1e-30)


def test_ternary_integer_sums_exact():
    """With unit scales and x already on the int8 grid (max|x| = 127 so s = 1), y is the exact
    integer Σ t·x_q."""
    rng = np.random.default_rng(5)
    for encoding in TERNARY:
        for out, n in [(9, 577), (4, 8640), (3, 1)]:
            trits = rng.integers(-1, 2, (out, n))
            entry = ENCODINGS[encoding].pack(trits, np.ones(1, np.float32))
            codes, scale = readonly(entry.parts["codes"]), readonly(entry.parts["scale"])
            x = rng.integers(-128, 128, (3, n)).astype(np.float32)
            x[:, 0] = 127.0
            np.clip(x, -127, 127, out=x)
            want = (x.astype(np.int64) @ trits.T).astype(np.float32)
            for t in (1, 3):
                y = run_ternary(encoding, x[:t], codes, scale, n)
                np.testing.assert_array_equal(y, want[:t])


def test_quantize_activation_matches_numpy():
    x = np.array(
        [[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -127.0], [0.0] * 7, [1e-7, -3e-7, 0, 0, 0, 0, 2e-7]],
        np.float32,
    )
    rng = np.random.default_rng(2)
    for xx in (x, activations(rng, 5, 577), activations(rng, 2, 8640) * 1e-3):
        qa = ternary.quantize_activation(xx)
        want, s = ternary.quantize_activation_ref(xx)
        n = xx.shape[1]
        assert qa.xq.shape[1] % ternary.ACT_PAD == 0 and qa.n == n
        np.testing.assert_array_equal(qa.xq[:, :n], want)
        assert not qa.xq[:, n:].any()
        np.testing.assert_array_equal(qa.s, s)
        np.testing.assert_array_equal(qa.xsum, want.astype(np.int64).sum(axis=1))
    np.testing.assert_array_equal(
        ternary.quantize_activation(x).xq[0, :7], [127, 0, 2, 2, 0, -2, -127]
    )


# -- onebit -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_onebit(shape, threads):
    rng = rng_for("onebit", shape)
    out, n = shape
    entry = ENCODINGS["onebit"].pack(
        rng.standard_normal(shape),
        (rng.random(n) + 0.1).astype(np.float16),
        (rng.random(out) + 0.1).astype(np.float16),
    )
    p = {k: readonly(v) for k, v in entry.parts.items()}
    args = (p["signs"], p["g"], p["h"])
    for t in TOKENS:
        x = activations(rng, t, n)
        y = run(onebit_decode, onebit.onebit_prefill, x, args, out)
        assert_close(y, onebit.onebit_ref(x, *args), entry.dequantize(), x)


# -- metamorphic: prefill == stacked decode, 1 thread == 2 threads --------------------------


def all_kernels(rng, shape):
    """(name, decode(x) -> y [out], prefill(x) -> y [T, out]) for every encoding."""
    out, n = shape
    w = rng.standard_normal(shape).astype(np.float32)
    for name, (dec, pre, _) in DENSE.items():
        d = readonly(ENCODINGS[name].pack(w).parts["data"])
        yield (
            name,
            (lambda x, dec=dec, d=d: run(dec, None, x, (d,), out)),
            (lambda x, pre=pre, d=d: run(None, pre, x, (d,), out)),
        )
    e = ENCODINGS["q8"].pack(
        rng.integers(-127, 128, shape).astype(np.int8), np.ones((out, -(-n // 32)), np.float16), 32
    )
    a = (readonly(e.parts["codes"]), readonly(e.parts["scales"]), 32)
    yield (
        "q8",
        (lambda x: run(q8_decode, None, x, a, out)),
        (lambda x: run(None, q8.q8_prefill, x, a, out)),
    )
    for bits in (2, 3, 4):
        p = {k: readonly(v) for k, v in grouped_entry(rng, bits, shape, 64).parts.items()}
        g = (p["codes"], p["scales"], p["zeros"], p["row_scale"], bits, 64)
        yield (
            f"q{bits}",
            (lambda x, g=g: run(grouped_decode, None, x, g, out)),
            (lambda x, g=g, bits=bits: run(None, GROUPED_PREFILL[bits], x, g, out)),
        )
    for enc in TERNARY:
        e = ternary_entry(rng, enc, shape, "row")
        c, s = readonly(e.parts["codes"]), readonly(e.parts["scale"])
        f = lambda x, enc=enc, c=c, s=s: run_ternary(enc, x, c, s, n)  # noqa: E731
        yield enc, f, f
    e = ENCODINGS["onebit"].pack(w, np.ones(n, np.float16), np.ones(out, np.float16))
    b = tuple(readonly(e.parts[k]) for k in ("signs", "g", "h"))
    yield (
        "onebit",
        (lambda x: run(onebit_decode, None, x, b, out)),
        (lambda x: run(None, onebit.onebit_prefill, x, b, out)),
    )


@pytest.mark.parametrize("shape", [(33, 577), (6, 5460)], ids=str)
def test_prefill_equals_stacked_decode(shape):
    rng = np.random.default_rng(11)
    x = activations(rng, 17, shape[1])
    for name, decode, prefill in all_kernels(rng, shape):
        stacked = np.concatenate([decode(x[t : t + 1]) for t in range(x.shape[0])])
        y = prefill(x)
        # q8 decode multiplies int8 blocks of 32 (≤ 1/254 of a block's max off), onebit
        # int8 per token (of the whole token's max: coarse next to the ×8 outlier channel),
        # their prefill float32 activations: equal up to that rounding. q4 prefill quantises
        # each token per group as decode does (where int8_prefill_for(G)): the same integers, float
        # sums in another order. Decode itself is held exactly to its int8 reference in
        # test_q8 / test_grouped / test_onebit.
        rounding = {"q8": 2e-2, "q4": 2e-6 if grouped.int8_prefill_for(64) else 2e-2, "onebit": 1e-1}
        tol = rounding.get(name, 2e-6) * np.abs(stacked).max()
        np.testing.assert_allclose(y, stacked, rtol=0, atol=tol, err_msg=name)


def test_float_prefill_in_token_chunks_is_the_same_bits_per_token():
    """The float micro-kernel runs prompts in L2-sized token chunks (24 tokens at 5460 columns):
    53 tokens span three chunks and a padded tail; every token's row is the bits it gets alone
    (a prefill of one token pads to four), and the whole agrees with numpy."""
    from lowbit.runtime.kernels.common import token_chunk

    rng = np.random.default_rng(13)
    out, n, t = 21, 5460, 53
    assert token_chunk(n) == 24 and t > 2 * token_chunk(n)
    w = readonly(rng.standard_normal((out, n)).astype(np.float32))
    x = activations(rng, t, n)
    y = np.full((t, out), np.nan, dtype=np.float32)
    dense.f32_prefill(x, w, y)
    for i in range(t):
        alone = np.full((1, out), np.nan, dtype=np.float32)
        dense.f32_prefill(np.ascontiguousarray(x[i : i + 1]), w, alone)
        np.testing.assert_array_equal(y[i], alone[0], err_msg=f"token {i}")
    assert_close(y, dense.f32_ref(x, w), w, x)


@pytest.mark.skipif(len(THREADS) < 2, reason="one CPU")
def test_threads_bit_identical():
    rng = np.random.default_rng(12)
    x = activations(rng, 5, 577)
    old = numba.get_num_threads()
    try:
        for name, decode, prefill in all_kernels(rng, (37, 577)):
            results = []
            for nt in (1, 2):
                numba.set_num_threads(nt)
                results.append((decode(x[:1]), prefill(x)))
            np.testing.assert_array_equal(results[0][0], results[1][0], err_msg=name)
            np.testing.assert_array_equal(results[0][1], results[1][1], err_msg=name)
    finally:
        numba.set_num_threads(old)


def _simd_variants() -> list[str]:
    from lowbit.runtime.kernels.cpu_features import HAVE_AVX2, HAVE_AVX512_VBMI, HAVE_VNNI

    return (["avx2"] if HAVE_AVX2 else []) + (["vnni"] if HAVE_VNNI else []) + (["vbmi"] if HAVE_AVX512_VBMI else [])


@pytest.mark.parametrize("variant", _simd_variants() or ["selected"])
def test_simd_dots_match_portable_loops(variant):
    """Every vector dot product this CPU can run (AVX2 vpmaddubsw, VNNI vpdpbusd, VBMI vpermi2b) equals the
    portable numba loops, whichever one the runtime selected: ternary and ternary-1.6, OneBit,
    q4 on int8 activations and q8 (q4f: test_affine_dots_match_portable_loops)."""
    from numba import njit

    # q8 has no VNNI dot: a VNNI CPU runs the AVX2 one, so "vnni" checks it again
    pick = {
        "avx2": (ternary._dot_ternary_avx2, ternary._dot_ternary_1p6_avx2, onebit._dot_b1_avx2, grouped._dot_q4_i8_avx2, q8._dot_q8_avx2),
        "vnni": (ternary._dot_ternary_vnni, ternary._dot_ternary_1p6_vnni, onebit._dot_b1_vnni, grouped._dot_q4_i8_vnni, q8._dot_q8_avx2),
        # ternary-1.6's digits by table lookups (the others as under VNNI)
        "vbmi": (ternary._dot_ternary_vnni, ternary._dot_ternary_1p6_vbmi, onebit._dot_b1_vnni, grouped._dot_q4_i8_vnni, q8._dot_q8_avx2),
    }.get(variant)
    t2, t3, b1, q4, q8_dot = pick or (ternary.dot_ternary, ternary.dot_ternary_1p6, onebit._dot_b1_row, grouped.dot_q4_i8_generic, q8.dot_q8)

    @njit
    def run(codes2, codes3, x, codes1, x1, q1, tail, c4, d, sq, group):
        return t2(codes2, x), t3(codes3, x), b1(codes1, x1, q1, tail), q4(c4, x, d, sq, group)

    @njit
    def run_q8(codes, x, d):
        return q8_dot(codes, x, d)

    rng = np.random.default_rng(13)
    for q in (32, 64, 1728):
        x = rng.integers(-128, 128, 8 * q).astype(np.int8)
        x[:8] = -128
        c2 = rng.integers(0, 3, (4, q)).astype(np.uint8)
        codes2 = (c2[0] | c2[1] << 2 | c2[2] << 4 | c2[3] << 6).astype(np.uint8)
        codes3 = rng.integers(0, 243, q).astype(np.uint8)
        want2 = int(sum(c2[j].astype(np.int64) @ x[j * q : (j + 1) * q] for j in range(4)))
        digits = [(codes3.astype(np.int64) // 3**j) % 3 for j in range(5)]
        want3 = int(sum(digits[j] @ x[j * q : (j + 1) * q] for j in range(5)))
        # onebit rows of any length: the last q1 % 32 bytes run from a zero-padded tail buffer
        q1 = q + 8 if q < 1000 else q
        codes1, x1, tail, want1 = onebit_row(rng, q1)
        group = 128 if q % 64 == 0 else 64
        n = 2 * q // group * group  # q4 row of n inputs: n / 2 code bytes
        c4 = rng.integers(0, 256, n // 2).astype(np.uint8)
        d = rng.random(n // group).astype(np.float32)
        sq = rng.integers(1, 256, n // group).astype(np.uint8)
        got = run(codes2, codes3, x, codes1, x1, q1, tail, c4, d, sq, group)
        assert got[0] == want2 == ternary.dot_ternary_generic(codes2, x)
        assert got[1] == want3 == ternary.dot_ternary_1p6_generic(codes3, x)
        assert got[2] == want1 == onebit.dot_b1_generic(codes1, x1, q1, tail)
        want4 = grouped.dot_q4_i8_generic(c4, x, d, sq, group)
        np.testing.assert_allclose(got[3], want4, rtol=1e-5)
        # q8 rows of an even and an odd number of 32-blocks (the AVX2 loop runs blocks in pairs);
        # codes span all of int8, activations ±127 as the quantizer makes them
        for nb in (q // 4, q // 4 - 1):
            c8 = rng.integers(-128, 128, 32 * nb).astype(np.int8)
            c8[:8] = -128
            x8 = rng.integers(-127, 128, 32 * nb).astype(np.int8)
            x8[8:16] = -127
            d8 = rng.random(nb).astype(np.float32)
            terms = d8.astype(np.float64) * (c8.astype(np.int64) * x8).reshape(nb, 32).sum(1)
            got8 = run_q8(c8, x8, d8)
            want8 = q8.dot_q8_generic(c8, x8, d8)
            tol = 1e-5 * float(np.abs(terms).sum())
            np.testing.assert_allclose(got8, terms.sum(), rtol=0, atol=tol)
            np.testing.assert_allclose(got8, want8, rtol=0, atol=tol)


@pytest.mark.parametrize("variant", _simd_variants() or ["selected"])
def test_affine_dots_match_portable_loops(variant):
    """q4f's and q1f's int8 dots (GGUF Q4_0 / Q4_1 / Q1_0 decode: AVX2 vpmaddubsw, VNNI
    vpdpbusd) equal their portable loops, and q1f's loops a numpy sum over the encoding's own
    unpacked bits; the float vector-IR rows (`grouped.row_dot_q1/q2/q4` with f16 scales) equal
    `affine_row_loops`."""
    from numba import njit

    from lowbit.runtime.kernels import affine

    q4f = {"avx2": affine._dot_q4f_avx2, "vnni": affine._dot_q4f_vnni}.get(variant, affine.dot_q4f32_i8)

    @njit
    def run(codes, x, sd):
        return q4f(codes, x, sd)

    rng = np.random.default_rng(14)
    for ng in (2, 8, 54):  # q4f G = 32 rows: 16 code bytes per group, an even group count
        codes = rng.integers(0, 256, 16 * ng).astype(np.uint8)
        x = rng.integers(-127, 128, 32 * ng).astype(np.int8)
        sd = rng.random(ng).astype(np.float32)
        want = affine.dot_q4f32_i8_generic(codes, x, sd)
        got = run(codes, x, sd)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * 15 * 127 * 32 * float(sd.sum()))
    q1f = {"avx2": affine._q1f_row_avx2, "vnni": affine._q1f_row_vnni}.get(variant, affine.q1f_row_i8)

    @njit
    def run1(codes, x, scales, d, zs):
        return q1f(codes, x, scales, d, zs)

    @njit
    def run_selected(codes, x, scales, d, zs):
        return affine.q1f_row_i8(codes, x, scales, d, zs)

    for ng in (1, 2, 5, 20, 54):  # q1f G = 128 (GGUF Q1_0): 16 code bytes per group
        codes = rng.integers(0, 256, 16 * ng).astype(np.uint8)
        x = rng.integers(-127, 128, 128 * ng).astype(np.int8)
        s = (rng.random(ng) * 0.1).astype(np.float16)
        d = rng.random(ng).astype(np.float32)
        zs = d * x.reshape(ng, 128).sum(1).astype(np.float32)
        v = 2 * unpack_codes(codes[None], 1, 128)[0].astype(np.int64) - 1  # the encoding's own bits
        want = float((v * x).reshape(ng, 128).sum(1) @ (s.astype(np.float64) * d))
        xp = affine.permute_q1f(x)
        assert sorted(affine.q1f_x_index(g, ng, i) for g in range(ng) for i in range(128)) == list(range(128 * ng))
        tol = 1e-6 * 127 * 128 * float((s.astype(np.float32) * d).sum())
        args = (codes, xp, s.view(np.uint16), d, zs)
        np.testing.assert_allclose(affine.q1f_row_i8_generic(*args), want, rtol=0, atol=tol)
        np.testing.assert_allclose(run1(*args), want, rtol=0, atol=tol, err_msg=f"q1f {variant} ng={ng}")
        np.testing.assert_allclose(run_selected(*args), want, rtol=0, atol=tol)
    for bits, group in ((1, 128), (2, 64), (4, 32), (4, 128)):
        ng = 6
        n = ng * group
        codes = rng.integers(0, 256, n * bits // 8).astype(np.uint8)
        x = rng.standard_normal(n).astype(np.float32)
        xs = x.reshape(ng, group).sum(1).astype(np.float32)
        scales = (rng.random(ng) * 0.1).astype(np.float16).view(np.uint16)
        mins = (rng.standard_normal(ng) * 0.01).astype(np.float16).view(np.uint16)
        zero = 0 if bits == 1 else 1 << (bits - 1)
        for has_min in (False, True):
            no_zeros = np.zeros(ng, np.uint8)
            got = affine.affine_row(codes, x, xs, scales, mins, has_min, bits, zero, group, no_zeros)
            want = affine.affine_row_loops(codes, x, xs, scales, mins, has_min, bits, zero, group)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"q{bits}f G{group}")


def test_one_signature_per_kernel():
    """Consistent argument types (read-only weights, float32 activations) compile each kernel
    once; runs last in this file."""
    for mod in (dense, q8, grouped, ternary, onebit):
        for name, f in vars(mod).items():
            sigs = getattr(f, "signatures", None)
            if sigs is not None and getattr(f, "targetoptions", {}).get("parallel"):
                assert len(sigs) <= 1, f"{mod.__name__}.{name}: {sigs}"
