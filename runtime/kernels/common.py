"""Building blocks the kernels share: activation padding and the float prefill micro-kernel.

Prefill kernels unpack a block of `ROW_BLOCK` weight rows once into per-thread scratch and then
multiply it with every token; the micro-kernel (`rows_times_tokens`) does that second step four
rows and four tokens at a time.
"""

from __future__ import annotations

import numpy as np

from lowbit.runtime.kernels.jit import helper

ROW_BLOCK = 16  # rows unpacked together by one prefill task


@helper
def row_blocks(out):
    """How many ROW_BLOCK-row tasks cover `out` rows (the prange of a prefill kernel)."""
    return (out + ROW_BLOCK - 1) // ROW_BLOCK


@helper
def row_block(b, out):
    """(first row, row count) of task b: ROW_BLOCK rows, fewer in the last."""
    r0 = b * ROW_BLOCK
    return r0, min(ROW_BLOCK, out - r0)


@helper
def pad_vector(x, n_p):
    """x [n] float32 -> new float32 [n_p] with zeros after n."""
    xp = np.zeros(n_p, dtype=np.float32)
    n = x.shape[0]
    for k in range(n):
        xp[k] = x[k]
    return xp


CHUNK_FLOATS = 131072  # 512 KB of activations: the tokens one pass of a row block runs over
PROMPT_FLOATS = 327680  # 1.25 MB of activations: the tokens one prefill call takes (`prompt_chunk`)


def prompt_chunk(n: int) -> int:
    """Tokens per prefill kernel call for inputs of n (a multiple of 4, at least 4): the layers
    split longer prompts. Each call's activations stay in L2 while every row block runs over
    them. A 512-token prompt of width 2560 (5 MB) otherwise came from L3 once for each block
    of 16 rows. Measured on q8 G = 32, 2560 × 2560, 512 tokens: 41.4 → 46.7 GMAC/s on one core,
    84.9 → 99.7 on two. Rows are re-dequantised once per call, about 4 % of the multiply work."""
    return max(4, PROMPT_FLOATS // n // 4 * 4)


@helper
def token_chunk(n):
    """Tokens per pass for rows of n: as many as fit CHUNK_FLOATS, a multiple of 4, at least 4."""
    return max(4, CHUNK_FLOATS // n // 4 * 4)


@helper
def rows_times_tokens(w, nr, x, y, r0):
    """y[t, r0 + i] = w[i, :n] · x[t, :n] for i < nr; w float32 [R, >= n], x float32 [T, n].

    Tokens go in chunks of `token_chunk(n)`. The chunk's activations (≤ 512 KB) stay in L2 while
    every row of the block runs over them. Run over all 512 tokens at once, a 2560-wide prompt's
    5 MB came from L3 once for every four rows: 2B-shaped q4 prefill read 12.6 tok/s at pp512
    against 17.1 at pp128 (1 thread, 2 MB L2). Chunk edges are multiples of 4, so each token's
    result is the same bits as without chunks."""
    t_count, n = x.shape
    step = token_chunk(n)
    for t0 in range(0, t_count, step):
        t1 = min(t_count, t0 + step)
        _rows_times_token_chunk(w, nr, x[t0:t1], y[t0:t1], r0)


@helper
def _rows_times_token_chunk(w, nr, x, y, r0):
    """rows_times_tokens over one chunk. Four rows × four tokens per pass (sixteen accumulators):
    each weight vector loaded feeds four FMAs and each activation vector four. Measured on a
    6912 × 2560 q4 matrix, 128 tokens, 2 threads: 34 ms with four rows × two tokens, 25 ms with
    × four (27 ms when compiled for Haswell's 16 vector registers)."""
    t_count, n = x.shape
    full = t_count - t_count % 4
    # The last T mod 4 tokens run through the same four-token code on a zero-padded copy, so a
    # token's result never depends on where it falls in the batch (the same bits alone or not).
    pad = np.zeros((4, n if full < t_count else 0), dtype=np.float32)
    for tt in range(full, t_count):
        pad[tt - full] = x[tt]
    i = 0
    while i + 4 <= nr:
        w0 = w[i]
        w1 = w[i + 1]
        w2 = w[i + 2]
        w3 = w[i + 3]
        for t in range(0, t_count, 4):
            src = x if t < full else pad
            s0 = t if t < full else 0
            xa = src[s0]
            xb = src[s0 + 1]
            xc = src[s0 + 2]
            xd = src[s0 + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            b0 = b1 = b2 = b3 = np.float32(0.0)
            c0 = c1 = c2 = c3 = np.float32(0.0)
            d0 = d1 = d2 = d3 = np.float32(0.0)
            for k in range(n):
                u0 = w0[k]
                u1 = w1[k]
                u2 = w2[k]
                u3 = w3[k]
                va = xa[k]
                vb = xb[k]
                vc = xc[k]
                vd = xd[k]
                a0 += u0 * va
                a1 += u1 * va
                a2 += u2 * va
                a3 += u3 * va
                b0 += u0 * vb
                b1 += u1 * vb
                b2 += u2 * vb
                b3 += u3 * vb
                c0 += u0 * vc
                c1 += u1 * vc
                c2 += u2 * vc
                c3 += u3 * vc
                d0 += u0 * vd
                d1 += u1 * vd
                d2 += u2 * vd
                d3 += u3 * vd
            for tt, s0_, s1, s2, s3 in ((t, a0, a1, a2, a3), (t + 1, b0, b1, b2, b3),
                                        (t + 2, c0, c1, c2, c3), (t + 3, d0, d1, d2, d3)):
                if tt < t_count:
                    y[tt, r0 + i] = s0_
                    y[tt, r0 + i + 1] = s1
                    y[tt, r0 + i + 2] = s2
                    y[tt, r0 + i + 3] = s3
        i += 4
    while i < nr:
        wi = w[i]
        for t in range(t_count):
            xt = x[t]
            s = np.float32(0.0)
            for k in range(n):
                s += wi[k] * xt[k]
            y[t, r0 + i] = s
        i += 1
