"""Building blocks the kernels share: activation padding and the float prefill micro-kernel.

Prefill kernels unpack a block of `ROW_BLOCK` weight rows once into per-thread scratch and then
multiply it with every token; the micro-kernel does that second step four rows and two tokens at a
time.
"""

from __future__ import annotations

import numpy as np

from lowbit.runtime.kernels.jit import helper

ROW_BLOCK = 16  # rows unpacked together by one prefill task


@helper
def pad_vector(x, n_p):
    """x [n] float32 -> new float32 [n_p] with zeros after n."""
    xp = np.zeros(n_p, dtype=np.float32)
    n = x.shape[0]
    for k in range(n):
        xp[k] = x[k]
    return xp


@helper
def rows_times_tokens(w, nr, x, y, r0):
    """y[t, r0 + i] = w[i, :n] · x[t, :n] for i < nr; w float32 [R, >= n], x float32 [T, n].

    Four rows × two tokens per pass (eight accumulators): each weight vector loaded feeds two
    FMAs and each activation vector four (measured 1.8× over four rows × one token)."""
    t_count, n = x.shape
    i = 0
    while i + 4 <= nr:
        w0 = w[i]
        w1 = w[i + 1]
        w2 = w[i + 2]
        w3 = w[i + 3]
        t = 0
        while t + 2 <= t_count:
            xa = x[t]
            xb = x[t + 1]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            b0 = np.float32(0.0)
            b1 = np.float32(0.0)
            b2 = np.float32(0.0)
            b3 = np.float32(0.0)
            for k in range(n):
                u = xa[k]
                v = xb[k]
                c0 = w0[k]
                c1 = w1[k]
                c2 = w2[k]
                c3 = w3[k]
                a0 += c0 * u
                a1 += c1 * u
                a2 += c2 * u
                a3 += c3 * u
                b0 += c0 * v
                b1 += c1 * v
                b2 += c2 * v
                b3 += c3 * v
            y[t, r0 + i] = a0
            y[t, r0 + i + 1] = a1
            y[t, r0 + i + 2] = a2
            y[t, r0 + i + 3] = a3
            y[t + 1, r0 + i] = b0
            y[t + 1, r0 + i + 1] = b1
            y[t + 1, r0 + i + 2] = b2
            y[t + 1, r0 + i + 3] = b3
            t += 2
        if t < t_count:
            xa = x[t]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for k in range(n):
                u = xa[k]
                a0 += w0[k] * u
                a1 += w1[k] * u
                a2 += w2[k] * u
                a3 += w3[k] * u
            y[t, r0 + i] = a0
            y[t, r0 + i + 1] = a1
            y[t, r0 + i + 2] = a2
            y[t, r0 + i + 3] = a3
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
