"""The prefill tiles that run several tokens per pass over a weight row, against their one-token
twins: the ternary 4-token dots (exact integers, so equal bits) over the int8 range's extremes,
and q4's (int8 activations per group) and q8's (per block of 32, spans transposed) 4-token dots
against numpy and their portable loops."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from lowbit.runtime.kernels import grouped, q8, ternary


@njit
def _tokens(codes, xq, t, three):
    if three:
        return ternary.dot_ternary_1p6_tokens(codes, xq, t)
    return ternary.dot_ternary_tokens(codes, xq, t)


@njit
def _generic(codes, xq, t, three):
    if three:
        return ternary.dot_ternary_1p6_tokens_generic(codes, xq, t)
    return ternary.dot_ternary_tokens_generic(codes, xq, t)


@pytest.mark.parametrize("three", [False, True], ids=["ternary", "ternary-1.6"])
@pytest.mark.parametrize("q", [32, 160, 640])
def test_token_tile_dots_equal_one_token_dots(q, three):
    rng = np.random.default_rng(q + three)
    streams = 5 if three else 4
    codes = rng.integers(0, 243 if three else 256, q).astype(np.uint8)
    xq = rng.integers(-128, 128, (7, streams * q + 64)).astype(np.int8)
    xq[2] = -128  # the extremes: int16 pair sums at their largest
    xq[3] = 127
    codes_max = np.full(q, 242 if three else 170, np.uint8)  # every code 2
    for c in (codes, codes_max):
        for t in (0, 2, 3):
            got = _tokens(c, xq, t, three)
            assert got == _generic(c, xq, t, three)
            if three:
                digits = [(c.astype(np.int64) // 3**j) % 3 for j in range(5)]
            else:
                digits = [(c.astype(np.int64) >> (2 * j)) & 3 for j in range(4)]
            want = tuple(int(sum(digits[j] @ xq[t + u, j * q : (j + 1) * q].astype(np.int64) for j in range(streams)))
                         for u in range(4))
            assert got == want


def _token_forms(three: bool) -> list:
    """Every 4-token dot of the encoding this CPU can run: 256-bit (AVX2 / VNNI; ternary-1.6 by
    divisions) and, for ternary-1.6, 512-bit (AVX-512 VBMI table lookups)."""
    from lowbit.runtime.kernels.cpu_features import HAVE_AVX2, HAVE_AVX512_VBMI

    if three:
        return ([ternary._dot_ternary_1p6_tokens] if HAVE_AVX2 else []) + (
            [ternary._dot_ternary_1p6_tokens_vbmi] if HAVE_AVX512_VBMI else [])
    return [ternary._dot_ternary_tokens] if HAVE_AVX2 else []


@pytest.mark.parametrize("three", [False, True], ids=["ternary", "ternary-1.6"])
@pytest.mark.parametrize("q", [32, 64, 160, 1408])
def test_token_dots_every_form(q, three):
    """Each form gives the portable loops' integers for every byte value (ternary-1.6's >= 243
    and ternary's code 3 included: a file is a stranger's), with and without a 32-byte tail."""
    rng = np.random.default_rng(q)
    codes = rng.integers(0, 256, q).astype(np.uint8)
    codes[:16] = np.arange(240, 256)
    xq = rng.integers(-128, 128, (6, 5 * q + 64)).astype(np.int8)
    xq[1] = -128
    for form in _token_forms(three):
        run = njit(lambda c, x, t, f=form: f(c, x, t))
        for t in (0, 1, 2):
            assert run(codes, xq, t) == _generic(codes, xq, t, three)


def test_prefill_rows_do_not_depend_on_the_batch():
    """A token's output is the same bits alone, in the 4-token passes or in the remainder."""
    rng = np.random.default_rng(1)
    from lowbit.formats.encodings import ENCODINGS

    for enc, fn in (("ternary", ternary.ternary_prefill), ("ternary-1.6", ternary.ternary_1p6_prefill)):
        entry = ENCODINGS[enc].pack(rng.integers(-1, 2, (37, 700)), (rng.random(37) + 0.5).astype(np.float32))
        codes, scale = entry.parts["codes"], entry.parts["scale"]
        x = rng.standard_normal((11, 700)).astype(np.float32)
        qa = ternary.quantize_activation(x)
        full = np.empty((11, 37), np.float32)
        fn(qa.xq, qa.xsum, qa.s, codes, scale, full)
        for lo, hi in ((0, 1), (8, 11), (3, 10)):
            part = np.empty((hi - lo, 37), np.float32)
            fn(np.ascontiguousarray(qa.xq[lo:hi]), qa.xsum[lo:hi].copy(), qa.s[lo:hi].copy(), codes, scale, part)
            assert np.array_equal(part, full[lo:hi]), (enc, lo, hi)


def _q4_tile_case(rng, group: int, ng: int, t4: int):
    codes = rng.integers(0, 256, ng * group // 2).astype(np.uint8)
    sq = rng.integers(0, 256, ng).astype(np.uint8)
    zr = rng.integers(0, 16, ng).astype(np.uint8)
    xq = rng.integers(-127, 128, (t4, ng * group)).astype(np.int8)
    xq[1] = -127  # the extremes: with codes 15, the pair sums at their largest
    xq[2] = 127
    d = (rng.random((ng, t4)) * 0.05).astype(np.float32)
    zsum = rng.standard_normal((ng, t4)).astype(np.float32)
    return codes, xq, d, zsum, sq, zr


def _q4_numpy(codes, xq, d, zsum, sq, zr, group, t):
    """Σ_g sq_g (d[g, t] Σ q·xq[t] − z_g zsum[g, t]) in float64, q from the group's nibble streams."""
    ng, half = sq.shape[0], group // 2
    c = codes.reshape(ng, half).astype(np.int64)
    q = np.concatenate([c & 15, c >> 4], axis=1)  # [ng, G]: low nibbles for the first half
    ints = (q * xq[t].reshape(ng, group).astype(np.int64)).sum(axis=1)
    return float((sq.astype(np.float64) * (d[:, t] * ints - zr * zsum[:, t].astype(np.float64))).sum())


def _q4_tile_forms() -> list[tuple[str, int, int]]:
    """(form, G, groups) for each form of the q4 tile this CPU runs: x86's forms take G % 64 == 0,
    NEON's G % 32 == 0 (96: three NEON steps a group); "selected" is dot_q4_tokens itself."""
    from lowbit.runtime.kernels.cpu_features import HAVE_AVX2, HAVE_NEON_DOTPROD, HAVE_VNNI

    steps = {"avx2": 64, "vnni": 64, "neon": 32, "selected": grouped.INT8_PREFILL_GROUPS}
    have = {"avx2": HAVE_AVX2, "vnni": HAVE_VNNI, "neon": HAVE_NEON_DOTPROD, "selected": True}
    shapes = [(32, 1), (32, 7), (64, 1), (64, 9), (96, 2), (128, 20), (256, 3)]
    return [(f, g, n) for f in steps if have[f] for g, n in shapes if g % steps[f] == 0]


@pytest.mark.parametrize("form, group, ng", _q4_tile_forms())
def test_q4_token_tile_dots(form, group, ng):
    """Each of the four sums equals numpy's within float32 rounding and the portable loops'
    (q4_row per token) likewise."""
    dot = {"avx2": grouped._dot_q4_tokens_avx2, "vnni": grouped._dot_q4_tokens_vnni,
           "neon": grouped._dot_q4_tokens_neon, "selected": grouped.dot_q4_tokens}[form]
    run = njit(lambda c, x, d, z, s, zr, g, t: dot(c, x, d, z, s, zr, g, t))
    generic = njit(lambda c, x, d, z, s, zr, g, t: grouped.dot_q4_tokens_generic(c, x, d, z, s, zr, g, t))
    rng = np.random.default_rng(group + ng)
    case = _q4_tile_case(rng, group, ng, 8)
    for codes in (case[0], np.full_like(case[0], 255)):
        args = (codes, *case[1:])
        for t in (0, 3, 4):
            got = run(*args, group, t)
            want = [_q4_numpy(*args, group, t + u) for u in range(4)]
            scale = max(abs(w) for w in want)
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)
            np.testing.assert_allclose(got, generic(*args, group, t), rtol=0, atol=2e-6 * scale)


def test_q4_prefill_rows_do_not_depend_on_the_batch():
    """A token's q4 output is the same bits alone (padded to a 4-token pass) or among others."""
    rng = np.random.default_rng(2)
    from lowbit.formats.encodings import ENCODINGS

    out, n, group = 21, 640, 128
    ng = n // group
    e = ENCODINGS["q4"].pack(rng.integers(0, 16, (out, n)), rng.integers(0, 256, (out, ng)),
                             rng.integers(0, 16, (out, ng)), (rng.random(out) * 0.01 + 1e-3).astype(np.float16), group)
    parts = [e.parts[k].view() for k in ("codes", "scales", "zeros")] + [e.parts["row_scale"].view(np.uint16)]
    for a in parts:
        a.flags.writeable = False  # read-only as the layers pass them: one compiled signature
    args = (*parts, 4, group)
    x = rng.standard_normal((11, n)).astype(np.float32)
    full = np.empty((11, out), np.float32)
    grouped.q4_prefill(x, *args, full)
    for t in range(11):
        alone = np.empty((1, out), np.float32)
        grouped.q4_prefill(np.ascontiguousarray(x[t : t + 1]), *args, alone)
        np.testing.assert_array_equal(full[t], alone[0], err_msg=f"token {t}")


def test_q8_span_transpose():
    """Span s's dword k of block j lands at s·256 + 32k + 4j; corr is 128 · each block's sum."""
    rng = np.random.default_rng(5)
    xq = rng.integers(-127, 128, 3 * 256).astype(np.int8)
    xt = np.empty_like(xq)
    corr = np.empty(3 * 8, np.int32)
    njit(lambda a, b, c: q8.transpose_spans_into(a, b, c))(xq, xt, corr)
    want = xq.reshape(3, 8, 8, 4).transpose(0, 2, 1, 3).reshape(-1)  # [span, block, dword, byte] -> dword-major
    np.testing.assert_array_equal(xt, want)
    np.testing.assert_array_equal(corr, 128 * xq.reshape(-1, 32).astype(np.int64).sum(axis=1))


def _q8_tile_forms() -> list[str]:
    from lowbit.runtime.kernels.cpu_features import HAVE_VNNI

    return ["vnni", "selected"] if HAVE_VNNI else ["selected"]


@pytest.mark.parametrize("spans", [1, 3, 10])
@pytest.mark.parametrize("form", _q8_tile_forms())
def test_q8_token_tile_dots(form, spans):
    """Each of the four sums equals numpy's Σ_b ws·ad·Σ code·x_q within float32 rounding and the
    portable loops' likewise, at the int8 extremes too (codes ±127 against x_q ±127: the u8
    offset's correction at its largest)."""
    dot = {"vnni": q8._dot_q8_tokens_vnni, "selected": q8.dot_q8_tokens}[form]
    run = njit(lambda c, x, a, z, w, t: dot(c, x, a, z, w, t))
    generic = njit(lambda c, x, a, z, w, t: q8.dot_q8_tokens_generic(c, x, a, z, w, t))
    transpose = njit(lambda a, b, c: q8.transpose_spans_into(a, b, c))
    rng = np.random.default_rng(spans)
    n, nb, t_all = spans * 256, spans * 8, 8
    xq = rng.integers(-127, 128, (t_all, n)).astype(np.int8)
    xq[1], xq[2] = -127, 127
    xt, corr = np.empty_like(xq), np.empty((t_all, nb), np.int32)
    for t in range(t_all):
        transpose(xq[t], xt[t], corr[t])
    ad = (rng.random((t_all, nb)) * 0.05).astype(np.float32)
    ws = (rng.random(nb) * 0.02).astype(np.float32)
    for codes in (rng.integers(-127, 128, n).astype(np.int8), np.full(n, 127, np.int8), np.full(n, -127, np.int8)):
        for t in (0, 3, 4):
            got = run(codes, xt, ad, corr, ws, t)
            ints = (codes.reshape(nb, 32).astype(np.int64) * xq[t : t + 4].reshape(4, nb, 32)).sum(axis=2)
            want = (ints * ws.astype(np.float64) * ad[t : t + 4].astype(np.float64)).sum(axis=1)
            tol = 2e-6 * np.abs(ints * ws * ad[t : t + 4]).sum(axis=1).max()
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)
            np.testing.assert_allclose(got, generic(codes, xt, ad, corr, ws, t), rtol=0, atol=tol)


def test_q8_prefill_rows_do_not_depend_on_the_batch():
    """A token's q8 output is the same bits alone (padded to a 4-token pass) or among others."""
    rng = np.random.default_rng(3)
    out, n, group = 21, 768, 32
    codes = rng.integers(-127, 128, (out, n)).astype(np.int8)
    scales = (rng.random((out, n // group)) * 0.02).astype(np.float16).view(np.uint16)
    for a in (codes, scales):
        a.flags.writeable = False  # read-only as the layers pass them: one compiled signature
    x = rng.standard_normal((11, n)).astype(np.float32)
    full = np.empty((11, out), np.float32)
    q8.q8_prefill(x, codes, scales, group, full)
    for t in range(11):
        alone = np.empty((1, out), np.float32)
        q8.q8_prefill(np.ascontiguousarray(x[t : t + 1]), codes, scales, group, alone)
        np.testing.assert_array_equal(full[t], alone[0], err_msg=f"token {t}")
