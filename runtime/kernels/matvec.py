"""One matrix-vector product for every encoding, driven by a uniform *packed-linear descriptor*.

Decode (one token) is where Python overhead hurts: a 135M-parameter model runs ~200 small
products per token. Giving every encoding the same numba type lets one compiled function run a
whole decode step (`kernels.decode_step`) over a typed list of layers, whatever mix of encodings
a file holds, and lets the per-layer products share parallel regions (q/k/v, gate/up).

A descriptor is the tuple

    (kind, a, b, c, d, bias, group, flags)      read as desc[KIND], desc[A], ..., desc[FLAGS]

(a plain tuple, not a NamedTuple: numba's parfor lowering rejects named tuples built inside the
fused decode step) with a..d read-only C-contiguous uint8 [rows, bytes] arrays (the encoding's parts viewed as
bytes; 1-D parts as [1, bytes]), bias float32 [out] or [0], and two ints:

    kind          a       b            c        d           group   flags
    F32/F16/BF16  data    -            -        -           -       -
    Q8            codes   scales f16   -        -           G       -
    Q2/Q3/Q4      codes   scales u8    zeros    row_scale   G       -
    TERNARY/TERNARY_1P6         codes   -            -        scale f32   -       -
    ONEBIT        signs   g f16        h f16    -           -       1 = LayerNorm
    AFFINE        codes   scales f16   mins f16 -           G       bits | zero << 8
                                       (or empty: no minimums)
    KQ4           codes   sub_scales   sub_mins super f16   32      -

`prepare(desc, x)` builds what the rows need from the float32 input once (padded copy, int8
quantisation of x (per token, per block of 32 for q8, per group for q4 / q4f / q1f / q4k) or of g ⊙ x, group sums); `rows_into(desc, act, y, r0, r1)` computes outputs r0..r1-1
with the encoding's row kernel (`ternary`, `grouped`, `onebit`, …); `finish(desc, y)` adds the
bias and applies OneBit's LayerNorm. Which kind and which parts an encoding has is the runtime's
encoding registry (`lowbit.runtime.linear.REGISTRY`); each row kernel's numpy reference sits in
its encoding's module.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.runtime.kernels.affine import (
    affine_row,
    affine_row_i8,
    int8_decode,
    permute_for_decode,
    q1f_row_i8,
)
from lowbit.runtime.kernels.common import pad_vector
from lowbit.runtime.kernels.grouped import (
    group_sums,
    q4_row,
    quantize_groups,
    row_dot_q2,
    row_dot_q3,
)
from lowbit.runtime.kernels.jit import HELPER, bf16_to_f32, f16_to_f32, kernel, prefetch_row
from lowbit.runtime.kernels.kquant import q4k_row_i8
from lowbit.runtime.kernels.onebit import PAD, scaled_input
from lowbit.runtime.kernels.onebit import row_value as onebit_row
from lowbit.runtime.kernels.q8 import BLOCK, q8_row, q8_row_blocks, quantize_blocks_into
from lowbit.runtime.kernels.ternary import dot_ternary, dot_ternary_1p6, quantize_into

F32, F16, BF16, Q8, Q2, Q3, Q4, TERNARY, TERNARY_1P6, ONEBIT, AFFINE, KQ4 = range(12)  # desc[KIND]
KIND, A, B, C, D, BIAS, GROUP, FLAGS = range(8)  # a descriptor's fields
ROWS_PER_TASK = 64  # output rows one parallel task computes (one kind branch per task): each
# task's call and dispatch cost ~100 ns; 16 rows a task measured 149 / 173 / 251 tok/s decode on
# SmolLM2 q8 / q4 / ternary at one Zen 5 thread, 64 rows 175 / 207 / 293 (2 threads: 221 / 252 /
# 355 against 258 / 306 / 424)
MAX_TASKS = 64  # parallel tasks of one matvec call at most
PREFETCH_BYTES = 8192  # how far ahead of the row being computed its successors are prefetched
# (rows are adjacent in the file). One row after another is one sequential stream, and one core's
# hardware prefetcher keeps too few lines in flight for it: on the Zen 5 VM, 1 thread, decode
# tok/s of the 2B-shaped files with 2560 → 8192 bytes: ternary 32.0 → 35.0, q4 17.8 → 19.0,
# q8 11.5 → 11.8 (alternating runs; 16384 lost at 2 threads). An earlier machine had measured
# 4 rows ahead right for 576-byte head rows but a 43 % loss on q4's 3456-byte down_proj rows.

LAYERNORM_EPS = 1e-5

f32 = np.float32
i64 = np.int64

# Not inlined: each is compiled once and called from every place that needs it, which keeps the
# fused decode step's compile time reasonable (LLVM still inlines where it pays).
ROW = {k: v for k, v in HELPER.items() if k != "inline"}
row_fn = njit(**ROW)


@row_fn
def rows_ahead(a):
    """Rows to prefetch ahead for weight rows a [rows, bytes]: about PREFETCH_BYTES, at least one."""
    return max(1, PREFETCH_BYTES // max(1, a.shape[1]))


@row_fn
def prepare(desc, x):
    """What the rows of this matrix need from input x (float32 [in]):
    (xf f32 padded input, xq int8 input, xs f32 group sums or block scales, zs f32 q4 group
    sums of the quantised input, off Σ x_q, inv 1/s)."""
    kind, a, b, group = desc[KIND], desc[A], desc[B], desc[GROUP]
    xf = x
    xq = np.empty(0, dtype=np.int8)
    xs = np.empty(0, dtype=np.float32)
    off = i64(0)
    inv = f32(1.0)
    zs = np.empty(0, dtype=np.float32)
    if kind == Q8:
        nb = (x.shape[0] + BLOCK - 1) // BLOCK
        xq = np.zeros(nb * BLOCK, dtype=np.int8)
        xs = np.empty(nb, dtype=np.float32)
        quantize_blocks_into(x, xq, xs)
    elif kind == Q4:
        ng = b.shape[1]
        xq = np.zeros(ng * group, dtype=np.int8)
        xs = np.empty(ng, dtype=np.float32)
        zs = np.empty(ng, dtype=np.float32)
        quantize_groups(x, xq, xs, zs, group)
    elif kind == Q2 or kind == Q3:
        xf = pad_vector(x, b.shape[1] * group)
        xs = group_sums(xf, group)
    elif kind == AFFINE or kind == KQ4:
        bits = 4 if kind == KQ4 else desc[FLAGS] & 255
        if int8_decode(bits, group):  # int8 per group, permuted for the dot
            ng = x.shape[0] // group
            xq0 = np.zeros(ng * group, dtype=np.int8)
            xs = np.empty(ng, dtype=np.float32)
            zs = np.empty(ng, dtype=np.float32)
            quantize_groups(x, xq0, xs, zs, group)
            xq = permute_for_decode(xq0, bits)
        else:
            xs = group_sums(x, group)
    elif kind == TERNARY or kind == TERNARY_1P6:
        per = 4 if kind == TERNARY else 5
        xq = np.zeros(a.shape[1] * per, dtype=np.int8)
        o, st = quantize_into(x, xq)
        off = i64(o)
        inv = f32(1.0) / st
    elif kind == ONEBIT:
        xq, o, inv = scaled_input(x, b[0].view(np.uint16), a.shape[1] * 8)
        off = i64(o)
    return xf, xq, xs, zs, off, inv


@row_fn
def shares_input(p, q):
    """True when matrix q needs exactly what prepare() built for matrix p from the same input (one
    quantisation of a layer's input for q/k/v and for gate/up): the same kind, group and row
    layout. OneBit quantises g ⊙ x, which is per matrix, so never."""
    return (
        p[KIND] == q[KIND] and p[KIND] != ONEBIT and p[GROUP] == q[GROUP]
        and p[A].shape[1] == q[A].shape[1] and p[B].shape[1] == q[B].shape[1]
    )


# One compiled function per kind: with every kind's loop inside rows_into itself, the q8 head
# of the 2B-shaped model (128256 × 2560) took 10.1 ms a token at one Zen 5 thread, in a function
# of its own 8.2 ms (LLVM optimised the rows' loop worse inside the one large function).


def _ternary_row_loop(dot):
    """The row loop of a ternary layout with its own dot: one compiled loop per layout, so that
    the base-3 VBMI dot's lookup tables stay in registers across its rows."""

    @row_fn
    def rows(a, d, xq, off, inv, y, r0, r1):
        ahead = rows_ahead(a)
        scale = d[0].view(np.float32)
        per_row = scale.shape[0] > 1
        for r in range(r0, r1):
            prefetch_row(a, r + ahead)
            acc = dot(a[r], xq)
            s = scale[r] if per_row else scale[0]
            y[r] = f32(acc - off) * (s * inv)

    return rows


_ternary_rows = _ternary_row_loop(dot_ternary)
_ternary_1p6_rows = _ternary_row_loop(dot_ternary_1p6)


@row_fn
def _q4_rows(a, b, c, d, xq, xs, zs, group, y, r0, r1):
    ahead = rows_ahead(a)
    rs = d[0].view(np.uint16)
    for r in range(r0, r1):
        prefetch_row(a, r + ahead)
        y[r] = q4_row(a[r], xq, xs, zs, b[r], c[r], group) * f16_to_f32(rs[r])


def _float_grouped_row_loop(row_dot):
    """The row loop of q3 / q2 (float activations, grouped codes) with its own row dot."""

    @row_fn
    def rows(a, b, c, d, xf, xs, group, y, r0, r1):
        ahead = rows_ahead(a)
        rs = d[0].view(np.uint16)
        for r in range(r0, r1):
            prefetch_row(a, r + ahead)
            y[r] = row_dot(a[r], xf, b[r], c[r], xs, group) * f16_to_f32(rs[r])

    return rows


_q3_rows = _float_grouped_row_loop(row_dot_q3)
_q2_rows = _float_grouped_row_loop(row_dot_q2)


@row_fn
def _onebit_rows(a, c, xq, off, inv, y, r0, r1):
    ahead = rows_ahead(a)
    h = c[0].view(np.uint16)
    tail = np.zeros(PAD, dtype=np.uint8)
    for r in range(r0, r1):
        prefetch_row(a, r + ahead)
        y[r] = onebit_row(a[r], xq, off, f16_to_f32(h[r]), inv, tail)


@row_fn
def _q1f_rows(a, b, xq, xs, zs, y, r0, r1):
    """q1f, G = 128, on int8 activations."""
    ahead = rows_ahead(a)
    sc = b.view(np.uint16)
    for r in range(r0, r1):
        prefetch_row(a, r + ahead)
        y[r] = q1f_row_i8(a[r], xq, sc[r], xs, zs)


@row_fn
def _affine_rows(a, b, c, xf, xq, xs, zs, group, flags, y, r0, r1):
    ahead = rows_ahead(a)
    sc = b.view(np.uint16)
    mn = c.view(np.uint16)
    has_min = mn.shape[1] > 0
    step = 1 if has_min else 0  # row r's minimums: mn[r], or the one empty row
    # one loop per form: a branch between the two inlined row kernels inside one loop kept
    # LLVM from vectorising either (SmolLM2's 1536 x 576 gate_proj: see affine_row_i8)
    if xq.shape[0] > 0:
        sd = np.empty(sc.shape[1], dtype=np.float32)
        for r in range(r0, r1):
            prefetch_row(a, r + ahead)
            y[r] = affine_row_i8(a[r], xq, xs, zs, sc[r], mn[r * step], has_min, flags >> 8, sd)
    else:
        no_zeros = np.zeros(sc.shape[1], dtype=np.uint8)
        for r in range(r0, r1):
            prefetch_row(a, r + ahead)
            y[r] = affine_row(a[r], xf, xs, sc[r], mn[r * step], has_min, flags & 255, flags >> 8, group,
                              no_zeros)


@row_fn
def _kq4_rows(a, b, c, d, xq, xs, zs, y, r0, r1):
    ahead = rows_ahead(a)
    sup = d.view(np.uint16)
    sd = np.empty(b.shape[1], dtype=np.float32)
    for r in range(r0, r1):
        prefetch_row(a, r + ahead)
        y[r] = q4k_row_i8(a[r], xq, xs, zs, b[r], c[r], sup[r], sd)


@row_fn
def _q8_rows(a, b, xq, xs, group, y, r0, r1):
    ahead = rows_ahead(a)
    codes = a.view(np.int8)  # whole-array views: a view per row cost ~10 ns × 49152 rows
    scales = b.view(np.uint16)
    if group == BLOCK and codes.shape[1] % BLOCK == 0:  # GGUF Q8_0's grid
        sd = np.empty(scales.shape[1], dtype=np.float32)
        for r in range(r0, r1):
            prefetch_row(a, r + ahead)
            y[r] = q8_row_blocks(codes[r], xq, xs, scales[r], sd)
    else:
        for r in range(r0, r1):
            prefetch_row(a, r + ahead)
            y[r] = q8_row(codes[r], xq, xs, scales[r], group)


@row_fn
def _f32_rows(a, xf, y, r0, r1):
    ahead = rows_ahead(a)
    w2 = a.view(np.float32)
    for r in range(r0, r1):
        prefetch_row(a, r + ahead)
        w = w2[r]
        s = f32(0.0)
        for k in range(w.shape[0]):
            s += w[k] * xf[k]
        y[r] = s


@row_fn
def _half_rows(a, xf, bf16, y, r0, r1):
    """F16 or BF16 (raw u16 bits); LLVM unswitches the loop on `bf16`."""
    ahead = rows_ahead(a)
    w2 = a.view(np.uint16)
    for r in range(r0, r1):
        prefetch_row(a, r + ahead)
        w = w2[r]
        s = f32(0.0)
        for k in range(w.shape[0]):
            v = bf16_to_f32(w[k]) if bf16 else f16_to_f32(w[k])
            s += v * xf[k]
        y[r] = s


@row_fn
def rows_into(desc, act, y, r0, r1):
    """y[r] for r in r0..r1-1 (y float32 [out]): the kind's own row loop."""
    kind, a, b, c, d, group = desc[KIND], desc[A], desc[B], desc[C], desc[D], desc[GROUP]
    xf, xq, xs, zs, off, inv = act
    if kind == TERNARY:
        _ternary_rows(a, d, xq, off, inv, y, r0, r1)
    elif kind == TERNARY_1P6:
        _ternary_1p6_rows(a, d, xq, off, inv, y, r0, r1)
    elif kind == Q4:
        _q4_rows(a, b, c, d, xq, xs, zs, group, y, r0, r1)
    elif kind == Q3:
        _q3_rows(a, b, c, d, xf, xs, group, y, r0, r1)
    elif kind == Q2:
        _q2_rows(a, b, c, d, xf, xs, group, y, r0, r1)
    elif kind == ONEBIT:
        _onebit_rows(a, c, xq, off, inv, y, r0, r1)
    elif kind == AFFINE and xq.shape[0] > 0 and desc[FLAGS] & 255 == 1:  # q1f G = 128, int8
        _q1f_rows(a, b, xq, xs, zs, y, r0, r1)
    elif kind == AFFINE:
        _affine_rows(a, b, c, xf, xq, xs, zs, group, desc[FLAGS], y, r0, r1)
    elif kind == KQ4:
        _kq4_rows(a, b, c, d, xq, xs, zs, y, r0, r1)
    elif kind == Q8:
        _q8_rows(a, b, xq, xs, group, y, r0, r1)
    elif kind == F32:
        _f32_rows(a, xf, y, r0, r1)
    else:
        _half_rows(a, xf, kind == BF16, y, r0, r1)


@row_fn
def finish(desc, y):
    """Bias, and OneBit's parameter-free LayerNorm (applied before the bias), in place."""
    bias = desc[BIAS]
    if desc[KIND] == ONEBIT and desc[FLAGS] & 1:
        layer_norm(y)
    if bias.shape[0]:
        for r in range(y.shape[0]):
            y[r] += bias[r]


@row_fn
def layer_norm(y):
    """(y − mean) / sqrt(var + eps) in place for one row, statistics in float64."""
    n = y.shape[0]
    m = 0.0
    for r in range(n):
        m += y[r]
    mean = f32(m / n)
    v = 0.0
    for r in range(n):
        y[r] -= mean
        v += float(y[r]) * float(y[r])
    scale = f32(1.0 / np.sqrt(v / n + LAYERNORM_EPS))
    for r in range(n):
        y[r] *= scale


@row_fn
def task_count(out):
    return (out + ROWS_PER_TASK - 1) // ROWS_PER_TASK


@kernel
def matvec(desc, x, y):
    """y [out] = W x for one token (x float32 [in]), bias and LayerNorm included. Large matrices
    (the lm_head) run in at most MAX_TASKS contiguous row ranges: long sequential streams per
    thread measured faster than thousands of 16-row tasks."""
    act = prepare(desc, x)
    out = y.shape[0]
    step = max(ROWS_PER_TASK, (out + MAX_TASKS - 1) // MAX_TASKS)
    for t in prange((out + step - 1) // step):
        r0 = t * step
        rows_into(desc, act, y, r0, min(out, r0 + step))
    finish(desc, y)


@kernel
def matvec_rows(desc, x, y):
    """y [B, out]: W x[b] for B tokens (x float32 [B, in]), each row bit for bit what `matvec`
    gives that token alone (the same prepare / rows_into / finish), while every block of
    ROWS_PER_TASK weight rows is fetched from memory once and used by all B tokens."""
    n_tok = x.shape[0]
    acts = [prepare(desc, x[0])]
    for b in range(1, n_tok):
        acts.append(prepare(desc, x[b]))
    out = y.shape[1]
    step = max(ROWS_PER_TASK, (out + MAX_TASKS - 1) // MAX_TASKS)
    for t in prange((out + step - 1) // step):
        end = min(out, t * step + step)
        for r0 in range(t * step, end, ROWS_PER_TASK):
            r1 = min(end, r0 + ROWS_PER_TASK)
            for b in range(n_tok):
                rows_into(desc, acts[b], y[b], r0, r1)
    for b in range(n_tok):
        finish(desc, y[b])


# -- building descriptors ----------------------------------------------------------------------


def _bytes2d(a: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous uint8 view: [rows, bytes] for 2-D parts, [1, bytes] for 1-D."""
    a = np.ascontiguousarray(a)
    if a.ndim != 2:
        a = a.reshape(1, -1)
    v = a.view(np.uint8)
    v.flags.writeable = False
    return v


_EMPTY = _bytes2d(np.zeros((1, 0), np.uint8))
_NO_BIAS = np.zeros(0, np.float32)
_NO_BIAS.flags.writeable = False


def make_descriptor(
    kind: int, part_names: tuple[str | None, ...], parts: dict[str, np.ndarray], group: int = 0,
    layernorm: bool = False, bias: np.ndarray | None = None, flags: int = 0,
) -> tuple:
    """The descriptor of one linear layer: `parts` named by `part_names` become a..d (absent
    names and None: empty); the registry row of the encoding gives kind and part_names."""
    arrays = [_bytes2d(parts[n]) if n in parts else _EMPTY for n in part_names]
    arrays += [_EMPTY] * (4 - len(arrays))
    if bias is None:
        b = _NO_BIAS
    else:
        b = np.ascontiguousarray(bias, dtype=np.float32).copy()
        b.flags.writeable = False
    return (kind, *arrays, b, int(group), int(bool(layernorm)) | int(flags))
