"""`--method keep`: GGUF tensors re-packed into the lowbit encoding that holds their grid exactly.

A GGUF download is already quantised; dequantising and quantising it again adds a second
rounding error. Where a lowbit encoding has the same grid the raw blocks are re-packed instead,
so that lowbit's dequantised weights equal gguf's bit for bit:

    F32 / F16 / BF16   -> f32 / f16 / bf16
    Q8_0               -> q8, group 32
    Q5_0               -> q8, group 32 (codes q − 16: exact, at 8.5 bits/weight instead of 5.5)
    Q4_K               -> q4k (its super-block grid, SPEC 2.8)
    Q4_0 / Q4_1        -> q4f, group 32 (zero 8 / with f16 minimums)
    Q2_0               -> q2f, group 64 (zero 1)
    Q1_0               -> q1f, group 128 (±d)
    TQ1_0 / TQ2_0      -> ternary with one scale per tensor or per row when the block scales
                          allow it, else q2f, group 256 (zero 1)
    I2_S               -> ternary, tensor scale

Everything else (Q5_1, Q2_K/Q3_K/Q5_K/Q6_K, IQ codebooks) returns None and is re-quantised:
linear layers of types with more than 5 bits per weight (Q5_1, Q5_K, Q6_K) as q8 g32 (a second
rounding to 4 bits would cost them more than the bytes saved), of 4-5 bit types (IQ4_*) as q4
g32, the rest by the recipe's default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.convert import gguf_quants as gq
from lowbit.convert.sources import check_weight
from lowbit.errors import ConversionError
from lowbit.formats.encodings import EncodedTensor
from lowbit.formats.encodings.affine import Q1F, Q2F, Q4F
from lowbit.formats.encodings.dense import BF16, F16, F32
from lowbit.formats.encodings.kquant import Q4K
from lowbit.formats.encodings.q8 import Q8
from lowbit.formats.encodings.ternary import TERNARY

KEPT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q4_K", "Q2_0", "Q1_0", "TQ1_0", "TQ2_0", "I2_S")


def _blocks(raw: np.ndarray, nbytes: int) -> np.ndarray:
    return raw.reshape(raw.shape[0], -1, nbytes)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The f16 field at byte `at` of every block: [rows, nb]."""
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0]


def _q4_codes(blocks: np.ndarray, at: int) -> np.ndarray:
    """Q4_0/Q4_1 nibbles (16 bytes from `at`): weight j < 16 in the low nibble of byte j, weight
    j ≥ 16 in the high nibble of byte j − 16."""
    qs = blocks[..., at : at + 16]
    return np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(blocks.shape[0], -1)


def _q5_0_codes(blocks: np.ndarray) -> np.ndarray:
    """Q5_0 codes 0..31: the Q4_0 nibbles (from byte 6) plus bit j of the u32 at byte 2 as bit 4
    of weight j."""
    qh = np.ascontiguousarray(blocks[..., 2:6]).view("<u4")  # [rows, nb, 1]
    high = (qh >> np.arange(32, dtype=np.uint32)) & 1  # [rows, nb, 32]
    low = np.concatenate([blocks[..., 6:22] & 15, blocks[..., 6:22] >> 4], axis=-1)
    return (low | (high.astype(np.uint8) << 4)).reshape(blocks.shape[0], -1)


def _q4_k(blocks: np.ndarray) -> EncodedTensor:
    """Q4_K super-blocks (144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit sub-scales and
    sub-minimums for 8 groups of 32, 128 bytes of nibbles) -> q4k. Sub-block j < 4: scale =
    s[j] & 63, min = s[j + 4] & 63; j ≥ 4: the low nibble (scale) or high nibble (min) of
    s[j + 4], with the top two bits of s[j − 4] (scale) or s[j] (min) as bits 4-5. Nibbles: each
    64 weights are 32 bytes, the first group in the low nibbles, the second in the high ones."""
    rows, nb = blocks.shape[:2]
    s = blocks[..., 4:16].astype(np.uint8)
    sc = np.empty((rows, nb, 8), np.uint8)
    mn = np.empty((rows, nb, 8), np.uint8)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    qs = blocks[..., 16:144].reshape(rows, nb, 4, 1, 32)
    q = np.concatenate([qs & 15, qs >> 4], axis=3).reshape(rows, -1)
    return Q4K.pack(q, sc.reshape(rows, -1), mn.reshape(rows, -1), _f16(blocks, 0), _f16(blocks, 2))


def _unit_trits(t: Any, raw: np.ndarray, scale_at: int, nbytes: int) -> np.ndarray:
    """TQ1_0 / TQ2_0 trits: the blocks dequantised (by gguf-py) with every scale set to 1."""
    import gguf.quants

    unit = _blocks(raw, nbytes).copy()
    unit[..., scale_at : scale_at + 2] = np.array([1.0], np.float16).view(np.uint8)
    w = gguf.quants.dequantize(unit.reshape(raw.shape[0], -1), t.tensor_type)
    return np.asarray(w, np.float32).reshape(raw.shape[0], -1).astype(np.int8)


def _ternary(trits: np.ndarray, d: np.ndarray) -> EncodedTensor:
    """Trits with one f16 scale per 256-weight block: ternary with a tensor or row scale when the
    scales allow it (the fast BitNet kernels), else q2f."""
    df = d.astype(np.float32)
    if np.array_equal(df, np.broadcast_to(df[:1, :1], df.shape)):
        return TERNARY.pack(trits, df[:1, 0])
    if np.array_equal(df, np.broadcast_to(df[:, :1], df.shape)):
        return TERNARY.pack(trits, df[:, 0])
    return Q2F.pack((trits + 1).astype(np.uint8), d, 256, zero=1)


def keep_tensor(ckpt: Any, name: str) -> tuple[EncodedTensor | None, str]:
    """(the exact lowbit form of one GGUF matrix or None, its GGML type name)."""
    t = ckpt.gguf_tensor(name)
    if t is None:  # not a GGUF tensor as stored (e.g. a norm with a constant added)
        return None, "derived"
    kind = gq.type_name(t.tensor_type)
    shape = ckpt.shape(name)
    if kind in ("F32", "F16", "BF16"):
        w = ckpt.get(name)
        check_weight(name, w)
        if len(shape) != 2:  # norms and biases: float32, as every recipe stores them
            return F32.pack(w), kind
        return {"F32": F32, "F16": F16, "BF16": BF16}[kind].pack(w), kind
    if len(shape) != 2 or kind not in KEPT_TYPES:
        return None, kind
    encoded = _repack(ckpt, name, t, kind)
    if encoded is not None:
        for part, a in encoded.parts.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise ConversionError(f"tensor {name} ({kind}) has NaN or Inf block {part}")
    return encoded, kind


def _repack(ckpt: Any, name: str, t: Any, kind: str) -> EncodedTensor | None:
    raw = ckpt.hf_rows(name, gq.raw_rows(t))
    rows = raw.shape[0]
    if kind == "Q8_0":
        b = _blocks(raw, 34)
        codes = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(rows, -1)
        return Q8.pack(codes, _f16(b, 0), 32)
    if kind == "Q5_0":
        b = _blocks(raw, 22)
        return Q8.pack(_q5_0_codes(b).astype(np.int8) - 16, _f16(b, 0), 32)
    if kind == "Q4_K":
        return _q4_k(_blocks(raw, 144))
    if kind == "Q4_0":
        b = _blocks(raw, 18)
        return Q4F.pack(_q4_codes(b, 2), _f16(b, 0), 32, zero=8)
    if kind == "Q4_1":
        b = _blocks(raw, 20)
        return Q4F.pack(_q4_codes(b, 4), _f16(b, 0), 32, mins=_f16(b, 2))
    if kind == "Q2_0":
        q, d = gq.q2_0_fields(raw)
        return Q2F.pack(q, d, 64, zero=1)
    if kind == "Q1_0":
        bits, d = gq.q1_0_fields(raw)
        return Q1F.pack(bits, d, 128)
    if kind == "TQ2_0":
        d = _f16(_blocks(raw, 66), 64)
        trits = _unit_trits(t, raw, 64, 66)
        if (trits > 1).any():  # code 3 (+2d): not a trit, but q2f holds it
            return Q2F.pack((trits + 1).astype(np.uint8), d, 256, zero=1)
        return _ternary(trits, d)
    if kind == "TQ1_0":
        return _ternary(_unit_trits(t, raw, 52, 54), _f16(_blocks(raw, 54), 52))
    # I2_S: code 3 (+2·scale) has no ternary form; re-quantised
    q = gq.i2s_codes(raw)
    if (q == 3).any():
        return None
    return TERNARY.pack(q.astype(np.int8) - 1, np.array([gq.i2s_scale(t)], np.float32))


def fallback(kind: str) -> tuple[str, dict[str, Any]] | None:
    """The encoding a re-quantised linear layer of GGML type `kind` gets under keep: q8 g32 above
    5 bits per weight, else None (the recipe's default)."""
    import gguf

    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    except KeyError:
        return None
    if 8 * size / block > 5.0:
        return "q8", {"group_size": 32}
    # 4-5 bit grids with a scale per 32 weights (IQ4_NL / IQ4_XS): q4 at G = 32 follows them far
    # closer than the default G = 128
    return ("q4", {"group_size": 32}) if 8 * size / block > 4.0 else None
