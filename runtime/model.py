"""The decoder: every family lowbit converts (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, BitNet
b1.58, Falcon-E) in one class.

Differences between them are data, not branches: q/k/v biases, BitNet's sub-norms, q/k norms,
Gemma's output norms and per-linear input norms are used when their tensors exist; the MLP
activation, attention scale and soft-capping, per-layer sliding window and RoPE table, partial
RoPE and the embedding multiplier come from the config (ModelArgs); ternary layers quantise their
own activations to int8 inside their kernels. Activations and accumulation are float32.

`block_forward` is the one block forward: prefill and batched steps run it, calibration runs it
with its own linears (`load_block`'s `make` hook; lowbit.quant.calibrate), and the fused decode
step (kernels.decode_step) is its fast twin, held to it by tests for every feature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import numba
import numpy as np

from lowbit.formats import LowbitReader, TensorEntry
from lowbit.runtime.config import ModelArgs
from lowbit.runtime.decode_table import build_decode_table
from lowbit.runtime.errors import LowbitError
from lowbit.runtime.features import check_features
from lowbit.runtime.kernels import pointwise
from lowbit.runtime.kernels.decode_step import decode_layers
from lowbit.runtime.kernels.hadamard import hadamard_rows, no_block, odd_block, split_size
from lowbit.runtime.kv_cache import KVCache, Segment, Segments
from lowbit.runtime.linear import Linear, make_linear
from lowbit.runtime.rope import RotaryEmbedding
from lowbit.runtime.validate import check_tensors
from lowbit.runtime.workspace import FRESH, FreshArrays, Workspace


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """RMSNorm over the last axis (rows in parallel: `pointwise.rms_norm_rows`), into `out` if
    given (float32, x's size)."""
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    out = np.empty_like(rows) if out is None else out.reshape(rows.shape)
    pointwise.rms_norm_rows(rows, np.ascontiguousarray(weight, dtype=np.float32), float(eps), out)
    return out.reshape(x.shape)


def gated_activation(act: str, gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """act(gate) ⊙ up for [T, n] (tokens in parallel: `pointwise.activate_rows`), into `out` if
    given (gate itself may be `out`: each element is read before it is written)."""
    gate = np.ascontiguousarray(gate, dtype=np.float32)
    out = np.empty_like(gate) if out is None else out
    pointwise.activate_rows(gate, np.ascontiguousarray(up, dtype=np.float32), pointwise.ACTIVATIONS[act], out)
    return out


def softcap(x: np.ndarray, cap: float | None) -> np.ndarray:
    """c·tanh(x / c) (Gemma 2's soft-capping), or x unchanged."""
    if not cap:
        return x
    return (np.tanh(x / np.float32(cap)) * np.float32(cap)).astype(np.float32)


@dataclass
class Attention:
    q_proj: Any
    k_proj: Any
    v_proj: Any
    o_proj: Any
    sub_norm: np.ndarray | None
    q_norm: np.ndarray | None = None  # [head_dim], per head before RoPE (Qwen3, Gemma 3)
    k_norm: np.ndarray | None = None


@dataclass
class MLP:
    gate_proj: Any
    up_proj: Any
    down_proj: Any
    sub_norm: np.ndarray | None


@dataclass
class Block:
    input_norm: np.ndarray
    attn: Attention
    post_norm: np.ndarray
    mlp: MLP
    attn_output_norm: np.ndarray | None = None  # on the attention output (Gemma)
    mlp_output_norm: np.ndarray | None = None  # on the MLP output (Gemma)


def attention_forward(
    args: ModelArgs, rope: RotaryEmbedding, attn: Attention, x: np.ndarray, cache: KVCache | Segments, layer: int,
    start: int, ws: Workspace | FreshArrays = FRESH,
) -> np.ndarray:
    """Grouped-query attention of x [T, hidden] at positions start.., writing K/V into the cache
    (or, for Segments, each sequence's tokens at its own positions into its own cache). The
    projections land in `ws`'s buffers; the result is ws's "o" buffer."""
    t = x.shape[0]
    h, kvh, d = args.num_attention_heads, args.num_key_value_heads, args.head_dim
    q = _project(attn.q_proj, x, ws, "q").reshape(t, h, d)
    k = _project(attn.k_proj, x, ws, "k").reshape(t, kvh, d)
    if attn.q_norm is not None:
        q = rms_norm(q, attn.q_norm, args.rms_norm_eps)
        k = rms_norm(k, attn.k_norm, args.rms_norm_eps)
    v = _project(attn.v_proj, x, ws, "v").reshape(t, kvh, d)
    # RoPE, the cache write and attention, per sequence when `cache` holds several (Segments)
    out = cache.attend(layer, rope, q, k, v, start, args.layer_window(layer), args.attention_scale,
                       args.attn_logit_softcapping or 0.0)
    if attn.sub_norm is not None:
        out = rms_norm(out, attn.sub_norm, args.rms_norm_eps)
    return _project(attn.o_proj, np.ascontiguousarray(out, dtype=np.float32), ws, "o")


def mlp_forward(args: ModelArgs, mlp: MLP, x: np.ndarray, ws: Workspace | FreshArrays = FRESH) -> np.ndarray:
    gate = _project(mlp.gate_proj, x, ws, "gate")
    hidden = gated_activation(args.hidden_act, gate, _project(mlp.up_proj, x, ws, "up"), out=gate)
    if mlp.sub_norm is not None:
        hidden = rms_norm(hidden, mlp.sub_norm, args.rms_norm_eps, out=hidden)
    if args.down_proj_hadamard:  # the rotation folded into down_proj's columns (--rotate)
        hidden = hadamard_rows(hidden)
    return _project(mlp.down_proj, np.ascontiguousarray(hidden, dtype=np.float32), ws, "down")


def block_forward(
    args: ModelArgs, rope: RotaryEmbedding, block: Block, x: np.ndarray, cache: KVCache | Segments, layer: int,
    start: int, ws: Workspace | FreshArrays = FRESH,
) -> np.ndarray:
    """One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(.)). With a Workspace the
    activations live in its buffers and x [T, hidden] (float32, C-contiguous, owned by the
    caller) is updated in place and returned."""
    eps = args.rms_norm_eps
    inplace = not isinstance(ws, FreshArrays)
    h = attention_forward(args, rope, block.attn, _norm(x, block.input_norm, eps, ws), cache, layer, start, ws)
    if block.attn_output_norm is not None:
        h = rms_norm(h, block.attn_output_norm, eps, out=h)
    x = _residual(x, h, inplace)
    h = mlp_forward(args, block.mlp, _norm(x, block.post_norm, eps, ws), ws)
    if block.mlp_output_norm is not None:
        h = rms_norm(h, block.mlp_output_norm, eps, out=h)
    return _residual(x, h, inplace)


def _residual(x: np.ndarray, h: np.ndarray, inplace: bool) -> np.ndarray:
    if inplace:
        x += h
        return x
    return x + h


def _project(linear: Any, x: np.ndarray, ws: Workspace | FreshArrays, role: str) -> np.ndarray:
    """linear(x) [T, out], into ws's `role` buffer when there is one and the layer is the
    runtime's (calibration's and the tests' stand-ins return arrays of their own)."""
    if isinstance(ws, FreshArrays) or not _writes_into(linear):
        return linear(x)
    return linear(x, out=ws.take(role, x.shape[0], linear.out_features))


def _writes_into(linear: Any) -> bool:
    """Whether linear is a runtime Linear, or wraps one (NormedLinear, PerToken)."""
    while isinstance(linear, (NormedLinear, PerToken)):
        linear = linear.linear
    return isinstance(linear, Linear)


def _norm(x: np.ndarray, weight: np.ndarray, eps: float, ws: Workspace | FreshArrays = FRESH) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return rms_norm(x, weight, eps, out=ws.take("norm", *x.shape))


Lookup = Callable[[str], Any]  # tensor name -> TensorEntry / EncodedTensor, or None if absent
# (weight name, its lookup entry, bias) -> the layer x [T, in] -> [T, out]; None: make_linear.
# Calibration passes its own, which quantises the weight on the inputs of its first call.
MakeLinear = Callable[[str, Any, np.ndarray | None], Any]


class NormedLinear:
    """A linear layer whose input is RMS-normalised by its own weight first (Falcon-E's BitLinear
    with use_rms_norm: the norm precedes the int8 activation quantisation)."""

    def __init__(self, linear: Any, input_norm: np.ndarray, eps: float) -> None:
        self.linear, self.input_norm, self.eps = linear, input_norm, eps
        self.descriptor = getattr(linear, "descriptor", None)
        self.out_features = getattr(linear, "out_features", None)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = _norm(x, self.input_norm, self.eps)
        return self.linear(x) if out is None else self.linear(x, out=out)


def _dense(lookup: Lookup, name: str) -> np.ndarray | None:
    entry = lookup(name)
    return None if entry is None else np.ascontiguousarray(entry.dequantize(), dtype=np.float32)


def _linear(lookup: Lookup, prefix: str, norm_eps: float | None = None, make: MakeLinear | None = None) -> Any:
    entry = lookup(prefix + ".weight")
    if entry is None:
        raise KeyError(f"missing tensor {prefix}.weight")
    bias = _dense(lookup, prefix + ".bias")
    linear = make_linear(entry, bias) if make is None else make(prefix + ".weight", entry, bias)
    norm = _dense(lookup, prefix + ".input_norm.weight") if norm_eps is not None else None
    return linear if norm is None else NormedLinear(linear, norm, norm_eps)


def load_attention(lookup: Lookup, i: int, norm_eps: float | None = None, make: MakeLinear | None = None) -> Attention:
    p = f"model.layers.{i}.self_attn."
    return Attention(*(_linear(lookup, p + f"{x}_proj", norm_eps, make) for x in "qkvo"), sub_norm=_dense(lookup, p + "attn_sub_norm.weight"),
                     q_norm=_dense(lookup, p + "q_norm.weight"), k_norm=_dense(lookup, p + "k_norm.weight"))


def load_mlp(lookup: Lookup, i: int, norm_eps: float | None = None, make: MakeLinear | None = None) -> MLP:
    p = f"model.layers.{i}.mlp."
    return MLP(*(_linear(lookup, p + f"{x}_proj", norm_eps, make) for x in ("gate", "up", "down")), sub_norm=_dense(lookup, p + "ffn_sub_norm.weight"))


def load_block(lookup: Lookup, i: int, norm_eps: float | None = None, make: MakeLinear | None = None) -> Block:
    """Layer i from its tensors; `make` builds each linear layer (default: make_linear)."""
    p = f"model.layers.{i}."
    return Block(
        _dense(lookup, p + "input_layernorm.weight"),
        load_attention(lookup, i, norm_eps, make),
        _dense(lookup, p + "post_attention_layernorm.weight"),
        load_mlp(lookup, i, norm_eps, make),
        _dense(lookup, p + "attn_output_norm.weight"),
        _dense(lookup, p + "mlp_output_norm.weight"),
    )


def rope_tables(args: ModelArgs, context_length: int | None = None) -> tuple[list[RotaryEmbedding], list[RotaryEmbedding]]:
    """The model's RoPE tables (the global one, then sliding layers' own if any) and each layer's."""
    p, rot = args.max_position_embeddings, args.rotary_dim
    ropes = [RotaryEmbedding(args.head_dim, p, args.rope_theta, args.rope_scaling, rot, context_length)]
    if args.rope_local_base_freq is not None:  # sliding layers' own, unscaled RoPE (Gemma 3)
        ropes.append(RotaryEmbedding(args.head_dim, p, args.rope_local_base_freq, None, rot, context_length))
    return ropes, [ropes[int(args.uses_local_rope(i))] for i in range(args.num_hidden_layers)]


def embed(args: ModelArgs, table: Any, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of the embedding table (a TensorEntry / EncodedTensor) as float32 [T, hidden],
    times the embedding multiplier (Gemma)."""
    x = np.ascontiguousarray(table.dequantize(rows=np.asarray(ids, dtype=np.int64)), dtype=np.float32)
    if args.embedding_multiplier != 1.0:
        x *= np.float32(args.embedding_multiplier)
    return x


class Transformer:
    """Weights of one model, read from an open LowbitReader; stateless between calls."""

    def __init__(self, reader: LowbitReader, args: ModelArgs, context_length: int | None = None) -> None:
        check_features(reader.metadata)
        check_tensors(args, reader.tensors)  # before any kernel: they trust these shapes
        self.args = args
        self.reader = reader
        lookup = reader.tensors.get
        self.embed: TensorEntry = reader["model.embed_tokens.weight"]
        self.blocks: list[Block] = [load_block(lookup, i, args.linear_norm_eps) for i in range(args.num_hidden_layers)]
        self.norm = _dense(lookup, "model.norm.weight")
        self.lm_head = make_linear(lookup("lm_head.weight") or self.embed)
        self.ropes, self.layer_ropes = rope_tables(args, context_length)
        self.rope = self.ropes[0]
        self._stack_ropes()
        self.layer_info = np.array(
            [(args.layer_window(i), int(args.uses_local_rope(i))) for i in range(args.num_hidden_layers)], dtype=np.int64
        ).reshape(-1, 2)
        self.decode_table = build_decode_table(self.blocks, reader.buffer)
        self.down_block = odd_block(split_size(args.intermediate_size)[1]) if args.down_proj_hadamard else no_block()
        self.fused_decode = self.decode_table is not None  # False: decode runs block_forward
        self.workspace = Workspace()  # the prompt forwards' activations (runtime.workspace)

    def decode_step(self, x: np.ndarray, cache: KVCache, pos: int) -> None:
        """x [hidden] at position pos through every layer, in place (kernels.decode_step)."""
        a = self.args
        decode_layers(x, *self.decode_table, cache.keys, cache.values, cache.key_scales, cache.value_scales,
                      self.rope_cos, self.rope_sin, self.layer_info,
                      pos, a.num_attention_heads, a.rms_norm_eps, pointwise.ACTIVATIONS[a.hidden_act], a.attention_scale,
                      a.attn_logit_softcapping or 0.0, a.rotary_dim, a.linear_norm_eps or 0.0, self.down_block,
                      numba.get_num_threads())

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ids, a writable array of the caller's (the blocks update it in place)."""
        x = embed(self.args, self.embed, ids)
        return x if x.flags.writeable and x.flags.owndata else x.copy()

    def forward(self, ids: np.ndarray, cache: KVCache, first: int | None = None) -> np.ndarray:
        """Run ids [T] at positions cache.length.. and return logits [1, vocab] of the last, or
        with `first` [T - first, vocab] of ids[first:] (the head runs on those rows only)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        start, t = cache.length, len(ids)
        cache.check_room(t)
        self._check_ids(ids, start + t)
        x = self.embed_tokens(ids)
        if t == 1 and self.fused_decode:
            self.decode_step(x[0], cache, start)
        else:
            for i, block in enumerate(self.blocks):
                x = block_forward(self.args, self.layer_ropes[i], block, x, cache, i, start, self.workspace)
        cache.advance(ids)
        x = x[-1:] if first is None else x[first:]
        return softcap(self.lm_head(_norm(x, self.norm, self.args.rms_norm_eps)), self.args.final_logit_softcapping)

    def _check_ids(self, ids: np.ndarray, end: int) -> None:
        """Token ids index the embedding unchecked: refuse any outside the vocabulary; RoPE
        tables grow to cover positions up to `end`."""
        if len(ids) and (ids.min() < 0 or ids.max() >= self.args.vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise LowbitError(f"token id {bad} is outside the model's vocabulary of {self.args.vocab_size}")
        if end > self.rope.positions:
            for rope in self.ropes:
                rope.ensure(end)
            self._stack_ropes()

    def _stack_ropes(self) -> None:
        """The decode step's cos/sin [tables, P, rot/2]: the global table, then the local one."""
        self.rope_cos = np.ascontiguousarray(np.stack([r.cos for r in self.ropes]))
        self.rope_sin = np.ascontiguousarray(np.stack([r.sin for r in self.ropes]))

    def forward_batch(self, segments: list[Segment]) -> np.ndarray:
        """Several sequences in one pass: logits [S, vocab] of each segment's last token.

        The linear layers run once over all the stacked tokens: decode segments' tokens through
        the decode kernel applied to each token (`Linear.rows`), prompt segments' through the
        prefill kernels (`Linear.tiles`); the logits always through the decode kernel. Either
        way every weight row read serves every sequence, and each token's result is exactly what
        it would be alone: outputs never depend on the company a sequence keeps (the server's
        batching relies on this, bit for bit). Not re-entrant: callers hold the model's lock."""
        for seg in segments:
            if seg.start != seg.cache.length or not seg.ids:
                raise ValueError("a segment must continue its cache with at least one token")
            seg.cache.check_room(len(seg.ids))
        batch = Segments(segments)
        ids = np.concatenate([np.asarray(s.ids, dtype=np.int64) for s in segments])
        self._check_ids(ids, max(s.start + len(s.ids) for s in segments))
        x = self.embed_tokens(ids)
        blocks, head = self._per_token()
        self._split.set(np.concatenate([np.full(len(s.ids), s.prompt) for s in segments]))
        for i, block in enumerate(blocks):
            x = block_forward(self.args, self.layer_ropes[i], block, x, batch, i, 0, self.workspace)
        for seg in segments:
            seg.cache.advance(seg.ids, prompt=seg.prompt)
        last = np.ascontiguousarray(x[batch.bounds[1:] - 1])
        return softcap(head(_norm(last, self.norm, self.args.rms_norm_eps)), self.args.final_logit_softcapping)

    def _per_token(self) -> tuple[list[Block], PerToken]:
        """The blocks with every Linear wrapped in PerToken (built once; weights shared)."""
        if getattr(self, "_per_token_blocks", None) is None:
            self._split = RowSplit()
            self._per_token_blocks = [_wrap_linears(b, self._split) for b in self.blocks]
            self._per_token_head = PerToken(self.lm_head, RowSplit())  # logits: decode kernel
        return self._per_token_blocks, self._per_token_head


class RowSplit:
    """Which rows of the current batched forward belong to prompt segments."""

    def __init__(self) -> None:
        self.set(np.zeros(0, dtype=bool))

    def set(self, prompt_rows: np.ndarray) -> None:
        self.prompt = np.flatnonzero(prompt_rows)
        self.decode = np.flatnonzero(~prompt_rows)


class PerToken:
    """A Linear that runs the decode kernel on decode rows (`Linear.rows`) and the prefill
    kernels on prompt rows (`Linear.tiles`), as `split` says."""

    def __init__(self, linear: Linear, split: RowSplit) -> None:
        self.linear, self.split = linear, split
        self.out_features = linear.out_features

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        p, d = self.split.prompt, self.split.decode
        y = np.empty((x.shape[0], self.out_features), dtype=np.float32) if out is None else out
        if not p.size:
            y[:] = self.linear.rows(x)
            return y
        if not d.size:
            y[:] = self.linear.tiles(x)
            return y
        y[d] = self.linear.rows(x[d])
        y[p] = self.linear.tiles(x[p])
        return y


def _wrap_linears(obj: Any, split: RowSplit) -> Any:
    """A copy of a Block / Attention / MLP dataclass with its Linear fields wrapped in PerToken."""
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Linear):
            changes[f.name] = PerToken(value, split)
        elif is_dataclass(value):
            changes[f.name] = _wrap_linears(value, split)
    return replace(obj, **changes)
