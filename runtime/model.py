"""The decoder: Llama family (Llama, Mistral, Qwen2, SmolLM2) and BitNet b1.58 in one class.

Differences between them are data, not branches: q/k/v biases and BitNet's sub-norms are used
when their tensors exist, the MLP activation comes from the config, and ternary layers quantise
their own activations to int8 inside their kernels. Activations and accumulation are float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.formats import LowbitReader, TensorEntry
from lowbit.runtime.config import ModelArgs
from lowbit.runtime.decode_table import build_decode_table
from lowbit.runtime.errors import LowbitError
from lowbit.runtime.kernels.attention import attention
from lowbit.runtime.kernels.decode_step import ACTIVATIONS as STEP_ACTIVATIONS
from lowbit.runtime.kernels.decode_step import decode_layers
from lowbit.runtime.linear import make_linear
from lowbit.runtime.rope import RotaryEmbedding
from lowbit.runtime.validate import check_tensors


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def relu2(x: np.ndarray) -> np.ndarray:
    r = np.maximum(x, 0.0)
    return r * r


ACTIVATIONS = {"silu": silu, "relu2": relu2}


class KVCache:
    """Pre-allocated keys and values for every layer: [layers, kv_heads, context, head_dim]."""

    def __init__(self, args: ModelArgs, context_length: int) -> None:
        shape = (args.num_hidden_layers, args.num_key_value_heads, context_length, args.head_dim)
        self.keys = np.zeros(shape, dtype=np.float32)  # calloc: pages become resident as used
        self.values = np.zeros(shape, dtype=np.float32)
        self.context_length = context_length
        self.length = 0

    def reset(self) -> None:
        self.length = 0


@dataclass
class Attention:
    q_proj: Any
    k_proj: Any
    v_proj: Any
    o_proj: Any
    sub_norm: np.ndarray | None


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


def attention_forward(
    args: ModelArgs, rope: RotaryEmbedding, attn: Attention, x: np.ndarray, cache: KVCache, layer: int, start: int
) -> np.ndarray:
    """Grouped-query attention of x [T, hidden] at positions start.., writing K/V into the cache."""
    t = x.shape[0]
    h, kvh, d = args.num_attention_heads, args.num_key_value_heads, args.head_dim
    q = rope.apply(attn.q_proj(x).reshape(t, h, d), start)
    k = rope.apply(attn.k_proj(x).reshape(t, kvh, d), start)
    v = attn.v_proj(x).reshape(t, kvh, d)
    end = start + t
    cache.keys[layer, :, start:end] = k.transpose(1, 0, 2)
    cache.values[layer, :, start:end] = v.transpose(1, 0, 2)
    out = np.empty((t, h * d), dtype=np.float32)
    attention(np.ascontiguousarray(q, dtype=np.float32), cache.keys[layer], cache.values[layer], start,
              args.sliding_window or 0, out)
    if attn.sub_norm is not None:
        out = rms_norm(out, attn.sub_norm, args.rms_norm_eps)
    return attn.o_proj(np.ascontiguousarray(out, dtype=np.float32))


def mlp_forward(args: ModelArgs, mlp: MLP, x: np.ndarray) -> np.ndarray:
    hidden = ACTIVATIONS[args.hidden_act](mlp.gate_proj(x)) * mlp.up_proj(x)
    if mlp.sub_norm is not None:
        hidden = rms_norm(hidden, mlp.sub_norm, args.rms_norm_eps)
    return mlp.down_proj(np.ascontiguousarray(hidden, dtype=np.float32))


def block_forward(
    args: ModelArgs, rope: RotaryEmbedding, block: Block, x: np.ndarray, cache: KVCache, layer: int, start: int
) -> np.ndarray:
    """One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(.))."""
    eps = args.rms_norm_eps
    x = x + attention_forward(args, rope, block.attn, _norm(x, block.input_norm, eps), cache, layer, start)
    return x + mlp_forward(args, block.mlp, _norm(x, block.post_norm, eps))


def _norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return np.ascontiguousarray(rms_norm(x, weight, eps), dtype=np.float32)


Lookup = Callable[[str], Any]  # tensor name -> TensorEntry / EncodedTensor, or None if absent


def _dense(lookup: Lookup, name: str) -> np.ndarray | None:
    entry = lookup(name)
    return None if entry is None else np.ascontiguousarray(entry.dequantize(), dtype=np.float32)


def _linear(lookup: Lookup, prefix: str) -> Any:
    entry = lookup(prefix + ".weight")
    if entry is None:
        raise KeyError(f"missing tensor {prefix}.weight")
    return make_linear(entry, _dense(lookup, prefix + ".bias"))


def load_attention(lookup: Lookup, i: int) -> Attention:
    p = f"model.layers.{i}.self_attn."
    return Attention(*(_linear(lookup, p + f"{x}_proj") for x in "qkvo"), sub_norm=_dense(lookup, p + "attn_sub_norm.weight"))


def load_mlp(lookup: Lookup, i: int) -> MLP:
    p = f"model.layers.{i}.mlp."
    return MLP(*(_linear(lookup, p + f"{x}_proj") for x in ("gate", "up", "down")), sub_norm=_dense(lookup, p + "ffn_sub_norm.weight"))


def load_block(lookup: Lookup, i: int) -> Block:
    p = f"model.layers.{i}."
    return Block(
        _dense(lookup, p + "input_layernorm.weight"),
        load_attention(lookup, i),
        _dense(lookup, p + "post_attention_layernorm.weight"),
        load_mlp(lookup, i),
    )


class Transformer:
    """Weights of one model, read from an open LowbitReader; stateless between calls."""

    def __init__(self, reader: LowbitReader, args: ModelArgs, context_length: int | None = None) -> None:
        check_tensors(args, reader.tensors)  # before any kernel: they trust these shapes
        self.args = args
        self.reader = reader
        lookup = reader.tensors.get
        self.embed: TensorEntry = reader["model.embed_tokens.weight"]
        self.blocks: list[Block] = [load_block(lookup, i) for i in range(args.num_hidden_layers)]
        self.norm = _dense(lookup, "model.norm.weight")
        self.lm_head = make_linear(lookup("lm_head.weight") or self.embed)
        self.rope = RotaryEmbedding(args.head_dim, args.max_position_embeddings, args.rope_theta, args.rope_scaling,
                                    positions=context_length)
        self.decode_table = build_decode_table(self.blocks, reader.buffer)
        self.fused_decode = self.decode_table is not None  # False: decode runs block_forward

    def decode_step(self, x: np.ndarray, cache: KVCache, pos: int) -> None:
        """x [hidden] at position pos through every layer, in place (kernels.decode_step)."""
        a = self.args
        decode_layers(x, *self.decode_table, cache.keys, cache.values, self.rope.cos, self.rope.sin, pos,
                      a.num_attention_heads, a.rms_norm_eps, STEP_ACTIVATIONS[a.hidden_act], a.sliding_window or 0)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.embed.dequantize(rows=np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def forward(self, ids: np.ndarray, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run ids [T] at positions cache.length.. and return logits [T or 1, vocab]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        start, t = cache.length, len(ids)
        if start + t > cache.context_length:
            raise ValueError(f"context length {cache.context_length} exceeded ({start} + {t} tokens)")
        if t and (ids.min() < 0 or ids.max() >= self.args.vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise LowbitError(f"token id {bad} is outside the model's vocabulary of {self.args.vocab_size}")
        self.rope.ensure(start + t)
        x = self.embed_tokens(ids)
        if t == 1 and self.fused_decode:
            self.decode_step(x[0], cache, start)
        else:
            for i, block in enumerate(self.blocks):
                x = block_forward(self.args, self.rope, block, x, cache, i, start)
        cache.length = start + t
        if not all_logits:
            x = x[-1:]
        return self.lm_head(_norm(x, self.norm, self.args.rms_norm_eps))
