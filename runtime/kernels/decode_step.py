"""A whole decode step (one token through every layer) in one numba call.

At 135M parameters a token is ~200 small matrix products; run one Python call at a time, their
dispatch and the numpy glue between them cost more than the arithmetic (profiled: ~270 µs per
SmolLM2 layer against ~70 µs of kernel work). Here the layer loop, RMSNorm, RoPE, the KV-cache
write (in the cache's stored form), attention, the MLP activation and the residual adds all run inside numba, and each layer
opens five parallel regions: q/k/v together, attention heads, o, gate/up together, down. The
layer input is quantised once for q/k/v and once for gate/up when their encodings agree.

Layers arrive as an int64 table of array specs into two byte buffers (the mapped file and a small
side arena; `runtime.decode_table` builds them), from which `_descriptor` rebuilds each linear's
`matvec` descriptor as views, so every mix of encodings shares one compiled function with plain
argument types (cached by numba, no compilation at start-up). Gemma's output norms, q/k norms, soft-capping, per-layer windows and RoPE tables, partial RoPE and
GeGLU are data here too (empty norms, zero caps), so every family shares the one kernel. The
layer-by-layer Python forward
(`model.block_forward`) stays the reference the tests hold this to.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from lowbit.runtime.kernels import matvec as mv
from lowbit.runtime.kernels import table_layout as tl
from lowbit.runtime.kernels.attention import attend_heads, visible
from lowbit.runtime.kernels.hadamard import transform
from lowbit.runtime.kernels.jit import helper, kernel
from lowbit.runtime.kernels.kv_store import store
from lowbit.runtime.kernels.matvec import (
    ROWS_PER_TASK,
    finish,
    prepare,
    rows_into,
    shares_input,
    task_count,
)
from lowbit.runtime.kernels.pointwise import activate, head_norm, rms_norm, rope

f32 = np.float32


@helper
def _view(file, side, entry, j):
    """uint8 [rows, bytes] view of the array whose spec starts at entry[j]."""
    src = file if entry[j] == 0 else side
    off = entry[j + 1]
    rows = entry[j + 2]
    row_bytes = entry[j + 3]
    return src[off : off + rows * row_bytes].reshape((rows, row_bytes))


@helper
def _norm(file, side, entry):
    return _view(file, side, entry, tl.NORM)[0].view(np.float32)


@helper
def _descriptor(file, side, entry):
    """The matvec descriptor (kind, a, b, c, d, bias, group, flags) of one table entry."""
    bias = _view(file, side, entry, tl.BIAS)[0].view(np.float32)
    return (
        entry[tl.KIND], _view(file, side, entry, tl.A), _view(file, side, entry, tl.B),
        _view(file, side, entry, tl.C), _view(file, side, entry, tl.D), bias, entry[tl.GROUP], entry[tl.FLAGS],
    )  # fmt: skip


@helper
def _input_norm(file, side, entry):
    """The linear's own input-norm weight (empty when it has none)."""
    return _view(file, side, entry, tl.IN_NORM)[0].view(np.float32)


@helper
def _inp(x, norm, eps):
    """x, or x RMS-normed by a linear's own input norm."""
    if norm.shape[0]:
        return rms_norm(x, norm, eps)
    return x


@helper
def _rows(desc, act, y, task):
    r0 = task * ROWS_PER_TASK
    rows_into(desc, act, y, r0, min(y.shape[0], r0 + ROWS_PER_TASK))


@helper
def _project_add(desc, inp, x, out_norm, eps, in_norm, lin_eps):
    """x += W inp, RMS-normed by out_norm first when it is not empty (o_proj, down_proj: the
    residual adds); inlined, so its prange is one of the caller's parallel regions."""
    act = prepare(desc, _inp(inp, in_norm, lin_eps))
    out = np.empty(desc[mv.A].shape[0], dtype=np.float32)
    for t in prange(task_count(out.shape[0])):
        _rows(desc, act, out, t)
    finish(desc, out)
    if out_norm.shape[0]:
        out = rms_norm(out, out_norm, eps)
    for i in range(x.shape[0]):
        x[i] += out[i]


@kernel
def decode_layers(x, file, side, table, keys, values, key_scales, value_scales, cos, sin, layer_info, pos, n_heads, eps, act, scale,
                  softcap, rot, lin_eps, down_block, threads):
    """Run x (float32 [hidden], the token's embedding) at position pos through every layer, in
    place; keys/values [layers, KVH, context, D] (f32, f16 bits or q8: `kv_store`) receive this
    position's K and V, key_scales/value_scales [layers, KVH, context] their q8 scales ([.., 0]
    when unscaled). cos/sin
    [tables, P, rot/2]; layer_info [layers, 2]: the layer's sliding window (0: none) and RoPE
    table; scale: the attention scale; softcap > 0 soft-caps attention scores; rot: the rotary
    dims of each head; lin_eps: eps of the linears' own input norms (where the table has them);
    down_block: the odd block of the online Hadamard transform before down_proj ([0, 0]: none);
    threads: numba's thread count (how attention splits its heads into tasks)."""
    kvh = keys.shape[1]
    d = keys.shape[3]
    scale = f32(scale)
    for li in range(table.shape[0]):
        row = table[li]
        first, n_ctx = visible(pos, layer_info[li, 0])
        ri = layer_info[li, 1]
        lq = _descriptor(file, side, row[tl.Q_PROJ])
        lk = _descriptor(file, side, row[tl.K_PROJ])
        lv = _descriptor(file, side, row[tl.V_PROJ])
        lo = _descriptor(file, side, row[tl.O_PROJ])
        lg = _descriptor(file, side, row[tl.GATE_PROJ])
        lu = _descriptor(file, side, row[tl.UP_PROJ])
        ld = _descriptor(file, side, row[tl.DOWN_PROJ])
        attn_sub = _norm(file, side, row[tl.ATTN_SUB_NORM])
        ffn_sub = _norm(file, side, row[tl.MLP_SUB_NORM])
        q_norm = _norm(file, side, row[tl.Q_NORM])
        k_norm = _norm(file, side, row[tl.K_NORM])
        attn_out = _norm(file, side, row[tl.ATTN_OUT_NORM])
        mlp_out = _norm(file, side, row[tl.MLP_OUT_NORM])

        nq = _input_norm(file, side, row[tl.Q_PROJ])
        nk = _input_norm(file, side, row[tl.K_PROJ])
        nv = _input_norm(file, side, row[tl.V_PROJ])
        own = nq.shape[0] + nk.shape[0] + nv.shape[0] > 0  # each linear normalises its own input
        xn = rms_norm(x, _norm(file, side, row[tl.INPUT_NORM]), eps)
        aq = prepare(lq, _inp(xn, nq, lin_eps))
        ak = aq if shares_input(lq, lk) and not own else prepare(lk, _inp(xn, nk, lin_eps))
        av = ak if shares_input(lk, lv) and not own else prepare(lv, _inp(xn, nv, lin_eps))
        q = np.empty(lq[1].shape[0], dtype=np.float32)
        k = np.empty(lk[1].shape[0], dtype=np.float32)
        v = np.empty(lv[1].shape[0], dtype=np.float32)
        tq = task_count(q.shape[0])
        tk = task_count(k.shape[0])
        for t in prange(tq + tk + task_count(v.shape[0])):
            if t < tq:
                _rows(lq, aq, q, t)
            elif t < tq + tk:
                _rows(lk, ak, k, t - tq)
            else:
                _rows(lv, av, v, t - tq - tk)
        finish(lq, q)
        finish(lk, k)
        finish(lv, v)
        if q_norm.shape[0]:
            head_norm(q, n_heads, d, q_norm, eps)
            head_norm(k, kvh, d, k_norm, eps)
        rope(q, n_heads, d, rot, cos[ri, pos], sin[ri, pos])
        rope(k, kvh, d, rot, cos[ri, pos], sin[ri, pos])
        for h in range(kvh):
            store(keys[li, h], key_scales[li, h], pos, k[h * d : (h + 1) * d])
            store(values[li, h], value_scales[li, h], pos, v[h * d : (h + 1) * d])

        att = np.empty(n_heads * d, dtype=np.float32)
        attend_heads(q, keys[li], key_scales[li], values[li], value_scales[li], first, n_ctx, scale, softcap, threads,
                     att)
        if attn_sub.shape[0]:
            att = rms_norm(att, attn_sub, eps)
        _project_add(lo, att, x, attn_out, eps, _input_norm(file, side, row[tl.O_PROJ]), lin_eps)

        ng = _input_norm(file, side, row[tl.GATE_PROJ])
        nu = _input_norm(file, side, row[tl.UP_PROJ])
        own = ng.shape[0] + nu.shape[0] > 0
        xn = rms_norm(x, _norm(file, side, row[tl.POST_NORM]), eps)
        ag = prepare(lg, _inp(xn, ng, lin_eps))
        au = ag if shares_input(lg, lu) and not own else prepare(lu, _inp(xn, nu, lin_eps))
        gate = np.empty(lg[1].shape[0], dtype=np.float32)
        up = np.empty(lu[1].shape[0], dtype=np.float32)
        tg = task_count(gate.shape[0])
        for t in prange(tg + task_count(up.shape[0])):
            if t < tg:
                _rows(lg, ag, gate, t)
            else:
                _rows(lu, au, up, t - tg)
        finish(lg, gate)
        finish(lu, up)
        hidden = activate(gate, up, act)
        if ffn_sub.shape[0]:
            hidden = rms_norm(hidden, ffn_sub, eps)
        if down_block.shape[0]:
            transform(hidden, down_block)
        _project_add(ld, hidden, x, mlp_out, eps, _input_norm(file, side, row[tl.DOWN_PROJ]), lin_eps)

