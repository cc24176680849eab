"""Every encoding against SPEC.md section 2: pack(logical) → unpack/dequantize equals the spec
formula computed here from the logical inputs; measured bits/weight equals the closed-form
formula written out here; and golden bytes built by hand from the layout text."""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest

from lowbit.formats import LowbitReader, LowbitWriter
from lowbit.formats.encodings import BF16, F16, F32, ONEBIT, Q2, Q3, Q4, Q8, TERNARY, TERNARY_1P6

# odd shapes: one output row; `in` below, above and not a multiple of every group; in = 1
SHAPES = [(1, 577), (3, 1000), (2, 8640), (4, 1), (5, 33)]
GROUPED = {2: Q2, 3: Q3, 4: Q4}


def ceil(a: int, b: int) -> int:
    return -(-a // b)


def measured_bpw(enc) -> Fraction:
    """8 × bytes of all parts / number of weights, from the arrays themselves."""
    nbytes = sum(p.nbytes for p in enc.parts.values())
    return Fraction(8 * nbytes, int(np.prod(enc.shape)))


def spec_bpw(encoding: str, shape: tuple[int, ...], params: dict) -> Fraction:
    """The closed-form bits/weight of SPEC.md section 2, term by term."""
    if encoding in ("f32", "f16", "bf16"):
        return Fraction({"f32": 32, "f16": 16, "bf16": 16}[encoding])
    out, n_in = shape
    if encoding == "q8":
        g = params["group_size"] or n_in
        return 8 + Fraction(16 * ceil(n_in, g), n_in)
    if encoding in ("q2", "q3", "q4"):
        b, g = int(encoding[1]), params["group_size"]
        ng = ceil(n_in, g)
        return Fraction(8 * (ng * (g * b // 8 + 2) + 2), n_in)
    n_scale = 1 if params.get("scale_mode") == "tensor" else out
    if encoding == "ternary":
        in_p = ceil(n_in, 128) * 128
        return Fraction(2 * in_p * out + 32 * n_scale, out * n_in)
    if encoding == "ternary-1.6":
        in_p = ceil(n_in, 160) * 160
        return Fraction(8 * (in_p // 5) * out + 32 * n_scale, out * n_in)
    if encoding == "onebit":
        in_p = ceil(n_in, 64) * 64
        return Fraction(in_p * out + 16 * (n_in + out), out * n_in)
    raise AssertionError(encoding)


def check_bpw(enc) -> None:
    want = spec_bpw(enc.encoding, enc.shape, enc.params)
    assert measured_bpw(enc) == want
    from lowbit.formats.encodings import get_encoding

    assert get_encoding(enc.encoding).bits_per_weight(enc.shape, enc.params) == pytest.approx(
        float(want), rel=1e-12
    )


def f16(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).astype(np.float64)


def bf16_reference(w: np.ndarray) -> np.ndarray:
    """Round f32 → bf16 to nearest, ties to even, by comparing the dropped 16 bits."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    hi, lo = u >> 16, u & 0xFFFF
    up = (lo > 0x8000) | ((lo == 0x8000) & ((hi & 1) == 1))
    return (hi + up).astype(np.uint16)


# -- dense -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES + [(7,), (1,)])
def test_dense_round_trip(shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    # magnitudes 1e-9 .. 1e4: f16 subnormals and underflow included, no f16 overflow
    w = (rng.standard_normal(shape) * 10.0 ** rng.integers(-9, 4, size=shape)).astype(np.float32)

    e = F32.pack(w)
    assert e.parts["data"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(e.dequantize(), w)
    check_bpw(e)

    e = F16.pack(w)
    assert e.parts["data"].dtype == np.dtype("<f2")
    np.testing.assert_array_equal(e.dequantize(), w.astype(np.float16).astype(np.float32))
    check_bpw(e)

    e = BF16.pack(w)
    assert e.parts["data"].dtype == np.dtype("<u2")
    np.testing.assert_array_equal(e.parts["data"], bf16_reference(w))
    want = (bf16_reference(w).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(e.dequantize(), want)
    check_bpw(e)


def test_bf16_rounding_edge_cases():
    bits = np.array(
        [
            0x3F808000,  # tie, even upper half: stays 0x3F80
            0x3F818000,  # tie, odd upper half: rounds up to 0x3F82
            0x3F80FFFF,  # just below the next: rounds up
            0x3F807FFF,  # just below the tie: down
            0x3FFFFFFF,  # carries into the exponent: 0x4000
            0x7F7FFFFF,  # largest finite: rounds to +inf
            0x80000000,  # -0
            0x00000001,  # smallest subnormal: rounds to +0
            0x7F800000,  # +inf
            0xFF800000,  # -inf
        ],
        dtype=np.uint32,
    )
    want = [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x4000, 0x7F80, 0x8000, 0x0000, 0x7F80, 0xFF80]
    got = BF16.pack(bits.view(np.float32)).parts["data"]
    assert [int(x) for x in got] == want
    assert [int(x) for x in bf16_reference(bits.view(np.float32))] == want


def test_bf16_keeps_nan():
    # rounding a NaN with the integer trick would carry it into Inf (0x7F800001) or wrap it to 0
    nans = np.array([0x7F800001, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FC00000], dtype=np.uint32).view(
        np.float32
    )
    out = BF16.pack(nans).dequantize()
    assert np.isnan(out).all()


# -- q8 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [0, 32, 64, 128, 256])
def test_q8_round_trip(shape, group):
    out, n_in = shape
    rng = np.random.default_rng(out * 100003 + n_in + group)
    g = group or n_in
    ng = ceil(n_in, g)
    codes = rng.integers(-127, 128, size=shape).astype(np.int8)
    scales = rng.uniform(1e-4, 2.0, size=(out, ng)).astype(np.float16)
    e = Q8.pack(codes, scales, group)
    np.testing.assert_array_equal(e.parts["codes"], codes)
    np.testing.assert_array_equal(e.parts["scales"], scales)
    want = np.empty(shape, dtype=np.float64)
    for i in range(n_in):
        want[:, i] = f16(scales[:, i // g]) * codes[:, i]
    np.testing.assert_array_equal(e.dequantize(), want.astype(np.float32))
    rows = np.array([out - 1, 0])
    np.testing.assert_array_equal(e.dequantize(rows), want.astype(np.float32)[rows])
    check_bpw(e)


# -- q2 / q3 / q4 ------------------------------------------------------------------------------
def grouped_inputs(rng, shape, bits, group):
    out, n_in = shape
    ng = ceil(n_in, group)
    top = (1 << bits) - 1
    q = rng.integers(0, top + 1, size=shape).astype(np.uint8)
    sq = rng.integers(0, 256, size=(out, ng)).astype(np.uint8)
    z = rng.integers(0, top + 1, size=(out, ng)).astype(np.uint8)
    rs = rng.uniform(1e-5, 1e-1, size=out).astype(np.float16)
    return q, sq, z, rs


def grouped_formula(q, sq, z, rs, group):
    gi = np.arange(q.shape[1]) // group
    return (f16(rs)[:, None] * sq[:, gi] * (q.astype(np.float64) - z[:, gi])).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_grouped_round_trip(shape, bits, group):
    enc = GROUPED[bits]
    rng = np.random.default_rng(shape[0] * 7919 + shape[1] * 31 + bits * 1000 + group)
    q, sq, z, rs = grouped_inputs(rng, shape, bits, group)
    e = enc.pack(q, sq, z, rs, group)
    assert e.params == {"group_size": group}
    np.testing.assert_array_equal(enc.unpack(e.parts, e.shape, e.params), q)
    np.testing.assert_array_equal(e.parts["scales"], sq)
    np.testing.assert_array_equal(e.parts["zeros"], z)
    np.testing.assert_array_equal(e.parts["row_scale"], rs)
    np.testing.assert_array_equal(e.dequantize(), grouped_formula(q, sq, z, rs, group))
    rows = np.array([shape[0] - 1])
    np.testing.assert_array_equal(e.dequantize(rows), grouped_formula(q, sq, z, rs, group)[rows])
    # padding positions of the last group hold q = z, i.e. dequantise to exactly 0
    out, n_in = shape
    padded = enc.unpack(e.parts, (out, ceil(n_in, group) * group), e.params)
    np.testing.assert_array_equal(
        padded[:, n_in:], np.repeat(z[:, -1:], padded.shape[1] - n_in, axis=1)
    )
    check_bpw(e)


# -- ternary / ternary-1.6 ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("enc", [TERNARY, TERNARY_1P6], ids=lambda e: e.name)
@pytest.mark.parametrize("mode", ["tensor", "row"])
def test_ternary_round_trip(shape, enc, mode):
    out, n_in = shape
    rng = np.random.default_rng(out * 31 + n_in + enc.trits_per_byte * 10007 + len(mode))
    t = rng.integers(-1, 2, size=shape).astype(np.int8)
    s = rng.uniform(1e-3, 3.0, size=1 if mode == "tensor" else out).astype(np.float32)
    e = enc.pack(t, s)
    # pack() infers the mode from the scale's size: with one row, [1] is a tensor scale
    assert e.params == {"scale_mode": "tensor" if s.size == 1 else mode}
    np.testing.assert_array_equal(enc.unpack(e.parts, e.shape, e.params), t)
    want = (t * (s[0] if mode == "tensor" else s[:, None].astype(np.float64))).astype(np.float32)
    np.testing.assert_array_equal(e.dequantize(), want)
    rows = np.array([out - 1, 0])
    np.testing.assert_array_equal(e.dequantize(rows), want[rows])
    codes = e.parts["codes"]
    if enc is TERNARY:
        fields = [(codes >> (2 * j)) & 3 for j in range(4)]
        assert all((f != 3).all() for f in fields)  # code 3 never occurs
    else:
        assert int(codes.max()) <= 242
    check_bpw(e)


# -- onebit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layernorm", [False, True])
def test_onebit_round_trip(shape, layernorm):
    out, n_in = shape
    rng = np.random.default_rng(out * 17 + n_in * 3 + layernorm)
    signs = np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
    g = rng.uniform(-2.0, 2.0, size=n_in).astype(np.float16)
    h = rng.uniform(1e-3, 2.0, size=out).astype(np.float16)
    e = ONEBIT.pack(signs, g, h, layernorm=layernorm)
    assert e.params == {"layernorm": layernorm}
    np.testing.assert_array_equal(ONEBIT.unpack(e.parts, e.shape, e.params), signs)
    want = (f16(h)[:, None] * signs * f16(g)[None, :]).astype(np.float32)
    np.testing.assert_array_equal(e.dequantize(), want)
    rows = np.array([out - 1])
    np.testing.assert_array_equal(e.dequantize(rows), want[rows])
    # padding bits are 0 (i.e. -1)
    in_p = ceil(n_in, 64) * 64
    padded = ONEBIT.unpack(e.parts, (out, in_p), e.params)
    assert (padded[:, n_in:] == -1).all()
    check_bpw(e)


# -- bits/weight measured on a written file -----------------------------------------------------
def test_bits_per_weight_of_file_parts(tmp_path):
    rng = np.random.default_rng(5)
    shape = (3, 577)
    tensors = {
        "f16": F16.pack(rng.standard_normal(shape)),
        "bf16": BF16.pack(rng.standard_normal(shape)),
        "q8": Q8.pack(rng.integers(-127, 128, shape), rng.random((3, ceil(577, 64))), 64),
        "ternary": TERNARY.pack(rng.integers(-1, 2, shape), np.ones(3)),
        "ternary-1.6": TERNARY_1P6.pack(rng.integers(-1, 2, shape), np.ones(1)),
        "onebit": ONEBIT.pack(rng.integers(-1, 2, shape), np.ones(577), np.ones(3)),
    }
    for bits, enc in GROUPED.items():
        tensors[enc.name] = enc.pack(*grouped_inputs(rng, shape, bits, 64), 64)
    path = tmp_path / "bpw.lowbit"
    with LowbitWriter(path) as w:
        for name, t in tensors.items():
            w.add_tensor(name, t)
    with LowbitReader(path) as r:
        for name in tensors:
            entry = r[name]
            nbytes = sum(p.nbytes for p in entry.parts.values())
            assert Fraction(8 * nbytes, 3 * 577) == spec_bpw(
                entry.encoding, entry.shape, entry.params
            ), name
            # the record holds the parts plus alignment gaps only
            assert nbytes <= entry.nbytes < nbytes + 64 * len(entry.parts)


# -- golden bytes from the SPEC text -----------------------------------------------------------
def test_golden_q4_group32():
    q = [(5 * i + 3) % 16 for i in range(32)]
    e = Q4.pack(np.array([q], np.uint8), np.array([[200]]), np.array([[7]]), np.array([0.5]), 32)
    # byte j: q[j] in bits 0-3, q[j + 16] in bits 4-7
    want = struct.pack("<16B", *[q[j] | (q[j + 16] << 4) for j in range(16)])
    assert e.parts["codes"].tobytes() == want
    assert e.parts["scales"].tobytes() == struct.pack("<B", 200)
    assert e.parts["zeros"].tobytes() == struct.pack("<B", 7)
    assert e.parts["row_scale"].tobytes() == struct.pack("<e", 0.5)


def test_golden_q4_padding_holds_zero_point():
    # in = 40, G = 32: the second group has 8 codes and 24 padding codes equal to its zero point 9
    q = list(range(16)) * 2 + [15, 0, 1, 2, 3, 4, 5, 6]
    e = Q4.pack(
        np.array([q], np.uint8), np.array([[1, 2]]), np.array([[3, 9]]), np.array([1.0]), 32
    )
    group2 = q[32:] + [9] * 24
    want = bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    want += bytes(group2[j] | (group2[j + 16] << 4) for j in range(16))
    assert e.parts["codes"].tobytes() == want


def test_golden_q2_group32():
    q = [(i * 7 + i // 5) % 4 for i in range(32)]
    e = Q2.pack(np.array([q], np.uint8), np.array([[1]]), np.array([[2]]), np.array([1.0]), 32)
    # byte j holds q[j + k·8] in bits 2k..2k+1
    want = bytes(sum(q[j + 8 * k] << (2 * k) for k in range(4)) for j in range(8))
    assert e.parts["codes"].tobytes() == want


def test_golden_q3_group32():
    q = [(i * 5 + 1) % 8 for i in range(32)]
    e = Q3.pack(np.array([q], np.uint8), np.array([[3]]), np.array([[4]]), np.array([0.25]), 32)
    low = bytes(sum((q[j + 8 * k] & 3) << (2 * k) for k in range(4)) for j in range(8))
    high = bytes(sum(((q[j + 4 * k] >> 2) & 1) << k for k in range(8)) for j in range(4))
    assert len(e.parts["codes"].tobytes()) == 32 * 3 // 8
    assert e.parts["codes"].tobytes() == low + high


def test_golden_q8():
    codes = np.array([[-127, -1, 0, 1, 127]], np.int8)
    e = Q8.pack(codes, np.array([[0.125]]), 0)
    assert e.parts["codes"].tobytes() == struct.pack("<5b", -127, -1, 0, 1, 127)
    assert e.parts["scales"].tobytes() == struct.pack("<e", 0.125)


def test_golden_dense():
    w = np.array([1.0, -2.5, 3.140625], np.float32)
    assert F32.pack(w).parts["data"].tobytes() == struct.pack("<3f", 1.0, -2.5, 3.140625)
    assert F16.pack(w).parts["data"].tobytes() == struct.pack("<3e", 1.0, -2.5, 3.140625)
    # bf16 = upper 16 bits of the f32: 1.0 = 0x3F800000, -2.5 = 0xC0200000, 3.140625 = 0x40490000
    assert BF16.pack(w).parts["data"].tobytes() == struct.pack("<3H", 0x3F80, 0xC020, 0x4049)


def test_golden_ternary_row_of_5():
    t = [1, -1, 0, 1, -1]
    e = TERNARY.pack(np.array([t], np.int8), np.array([0.75], np.float32))
    # in_p = 128, Q = 32: byte k holds t[k + 32j] + 1 in bits 2j..2j+1; padding trits have code 1
    trits = t + [0] * 123
    want = bytes(sum((trits[k + 32 * j] + 1) << (2 * j) for j in range(4)) for k in range(32))
    assert want[5:] == b"\x55" * 27  # sanity of the hand computation: four padding codes 01
    assert e.parts["codes"].tobytes() == want
    assert e.parts["scale"].tobytes() == struct.pack("<f", 0.75)
    assert e.params == {"scale_mode": "tensor"}


def test_golden_ternary_1p6_row_of_5():
    t = [1, -1, 0, 1, -1]
    e = TERNARY_1P6.pack(np.array([t, [0, 0, 0, 0, 1]], np.int8), np.array([0.5, 2.0], np.float32))
    # in_p = 160, Q = 32: byte k = Σ_j (t[k + 32j] + 1)·3^j
    want = b""
    for row in (t, [0, 0, 0, 0, 1]):
        trits = row + [0] * 155
        want += bytes(sum((trits[k + 32 * j] + 1) * 3**j for j in range(5)) for k in range(32))
    assert e.parts["codes"].tobytes() == want
    assert e.parts["scale"].tobytes() == struct.pack("<2f", 0.5, 2.0)
    assert e.params == {"scale_mode": "row"}


def test_golden_onebit_row_of_9():
    s = [1, -1, -1, 1, 1, 1, -1, 1, 1]
    g = [0.5 * (i + 1) for i in range(9)]
    e = ONEBIT.pack(np.array([s], np.int8), np.array(g, np.float16), np.array([1.5], np.float16))
    # in_p = 64, Q = 8: byte k bit j is 1 when S[k + 8j] = +1; padding bits are 0
    padded = s + [-1] * 55
    want = bytes(sum((padded[k + 8 * j] == 1) << j for j in range(8)) for k in range(8))
    assert want[0] == 0b11 and want[1] == 0  # S[0] = S[8] = +1, S[1] = -1
    assert e.parts["signs"].tobytes() == want
    assert e.parts["g"].tobytes() == struct.pack("<9e", *g)
    assert e.parts["h"].tobytes() == struct.pack("<e", 1.5)
