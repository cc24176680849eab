"""The decoder: Llama family (Llama, Mistral, Qwen2, SmolLM2) and BitNet b1.58 in one class.

Differences between them are data, not branches: q/k/v biases and BitNet's sub-norms are used
when their tensors exist, the MLP activation comes from the config, and ternary layers quantise
their own activations to int8 inside their kernels. Activations and accumulation are float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.formats import LowbitReader, TensorEntry
from lowbit.runtime.config import ModelArgs
from lowbit.runtime.linear import make_linear
from lowbit.runtime.rope import RotaryEmbedding


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
    q_proj: object
    k_proj: object
    v_proj: object
    o_proj: object
    sub_norm: np.ndarray | None


@dataclass
class MLP:
    gate_proj: object
    up_proj: object
    down_proj: object
    sub_norm: np.ndarray | None


@dataclass
class Block:
    input_norm: np.ndarray
    attn: Attention
    post_norm: np.ndarray
    mlp: MLP


class Transformer:
    """Weights of one model, read from an open LowbitReader; stateless between calls."""

    def __init__(self, reader: LowbitReader, args: ModelArgs) -> None:
        self.args = args
        self.reader = reader

        def dense(name: str) -> np.ndarray:
            return np.ascontiguousarray(reader[name].dequantize(), dtype=np.float32)

        def optional(name: str) -> np.ndarray | None:
            return dense(name) if name in reader else None

        def linear(prefix: str) -> object:
            return make_linear(reader[prefix + ".weight"], optional(prefix + ".bias"))

        self.embed: TensorEntry = reader["model.embed_tokens.weight"]
        self.blocks: list[Block] = []
        for i in range(args.num_hidden_layers):
            p = f"model.layers.{i}."
            attn = Attention(
                *(linear(p + f"self_attn.{x}_proj") for x in "qkvo"),
                sub_norm=optional(p + "self_attn.attn_sub_norm.weight"),
            )
            mlp = MLP(
                *(linear(p + f"mlp.{x}_proj") for x in ("gate", "up", "down")),
                sub_norm=optional(p + "mlp.ffn_sub_norm.weight"),
            )
            self.blocks.append(
                Block(dense(p + "input_layernorm.weight"), attn, dense(p + "post_attention_layernorm.weight"), mlp)
            )
        self.norm = dense("model.norm.weight")
        head = "lm_head.weight" if "lm_head.weight" in reader else "model.embed_tokens.weight"
        self.lm_head = make_linear(reader[head])
        self.act = ACTIVATIONS[args.hidden_act]
        self.rope = RotaryEmbedding(
            args.head_dim, args.max_position_embeddings, args.rope_theta, args.rope_scaling
        )

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.embed.dequantize(rows=np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def attention(self, block: Block, x: np.ndarray, cache: KVCache, layer: int, start: int) -> np.ndarray:
        a = self.args
        t = x.shape[0]
        h, kvh, d = a.num_attention_heads, a.num_key_value_heads, a.head_dim
        q = block.attn.q_proj(x).reshape(t, h, d)
        k = block.attn.k_proj(x).reshape(t, kvh, d)
        v = block.attn.v_proj(x).reshape(t, kvh, d)
        q = self.rope.apply(q, start)
        k = self.rope.apply(k, start)
        end = start + t
        cache.keys[layer, :, start:end] = k.transpose(1, 0, 2)
        cache.values[layer, :, start:end] = v.transpose(1, 0, 2)
        keys = cache.keys[layer, :, :end]  # [kvh, L, d]
        values = cache.values[layer, :, :end]
        rep = h // kvh
        qg = q.reshape(t, kvh, rep, d).transpose(1, 2, 0, 3).reshape(kvh, rep * t, d)
        scores = qg @ keys.transpose(0, 2, 1) / np.sqrt(d)  # [kvh, rep*t, L]
        qpos = np.tile(np.arange(start, end), rep)[:, None]
        kpos = np.arange(end)[None, :]
        mask = kpos > qpos
        if a.sliding_window:
            mask |= kpos <= qpos - a.sliding_window
        scores = np.where(mask[None], -np.inf, scores)
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out = scores @ values  # [kvh, rep*t, d]
        out = out.reshape(kvh, rep, t, d).transpose(2, 0, 1, 3).reshape(t, h * d)
        if block.attn.sub_norm is not None:
            out = rms_norm(out, block.attn.sub_norm, a.rms_norm_eps)
        return block.attn.o_proj(np.ascontiguousarray(out, dtype=np.float32))

    def mlp(self, block: Block, x: np.ndarray) -> np.ndarray:
        hidden = self.act(block.mlp.gate_proj(x)) * block.mlp.up_proj(x)
        if block.mlp.sub_norm is not None:
            hidden = rms_norm(hidden, block.mlp.sub_norm, self.args.rms_norm_eps)
        return block.mlp.down_proj(np.ascontiguousarray(hidden, dtype=np.float32))

    def forward(self, ids: np.ndarray, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run ids [T] at positions cache.length.. and return logits [T or 1, vocab]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        start, t = cache.length, len(ids)
        if start + t > cache.context_length:
            raise ValueError(f"context length {cache.context_length} exceeded ({start} + {t} tokens)")
        eps = self.args.rms_norm_eps
        x = self.embed_tokens(ids)
        for i, block in enumerate(self.blocks):
            x = x + self.attention(block, rms_norm(x, block.input_norm, eps).astype(np.float32), cache, i, start)
            x = x + self.mlp(block, rms_norm(x, block.post_norm, eps).astype(np.float32))
        cache.length = start + t
        if not all_logits:
            x = x[-1:]
        return self.lm_head(np.ascontiguousarray(rms_norm(x, self.norm, eps), dtype=np.float32))
