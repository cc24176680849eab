"""Phi-3, Phi-3.5 and Phi-4-mini (`Phi3ForCausalLM`).

Llama's block with fused projections: `qkv_proj` (q, k and v rows stacked) and `gate_up_proj`
(gate rows, then up rows). They are split at conversion into q/k/v and gate/up: each row of the
fused matrix is a row of one part, so splitting loses nothing, every encoding and the recipe's
per-tensor rules see the usual names, and the runtime keeps one block layout (its fused decode
already runs q/k/v, and gate/up, in one parallel region each, so fusion would buy no speed).

RoPE may rotate only the first `partial_rotary_factor` of each head (Phi-4-mini: 0.75), and may
be LongRoPE (`rope_scaling.rope_type: longrope`: short and long per-frequency factors, chosen by
the context length the runtime allocates, and an attention factor on cos/sin). Embeddings are
tied on Phi-4-mini. A sliding window, when set, applies to every layer.
"""

from __future__ import annotations

import math
from typing import Any

from lowbit.convert.models.base import (
    ModelSpec,
    Source,
    Tensors,
    llama_config,
    llama_names,
    llama_optional,
)
from lowbit.errors import UnsupportedModel

ARCHITECTURES = ("Phi3ForCausalLM",)
MODEL_TYPES = ("phi3",)


def longrope(hf: dict[str, Any], scaling: dict[str, Any], head_dim: int, rot_dim: int) -> dict[str, Any]:
    """LongRoPE parameters with transformers' defaults made explicit (factor from the context
    lengths, attention factor from the factor), so the file does not depend on them."""
    orig = scaling.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings")
    if not orig:
        raise UnsupportedModel("longrope RoPE scaling needs original_max_position_embeddings")
    orig = int(orig)
    factor = scaling.get("factor") or int(hf.get("max_position_embeddings", orig)) / orig
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    out = {"rope_type": "longrope", "original_max_position_embeddings": orig, "factor": float(factor),
           "attention_factor": float(attention)}
    for key in ("short_factor", "long_factor"):
        values = [float(v) for v in scaling.get(key) or []]
        if len(values) != rot_dim // 2:
            raise UnsupportedModel(f"longrope {key} has {len(values)} values, expected {rot_dim // 2} (rotary dims / 2)")
        out[key] = values
    return out


def spec(hf: dict[str, Any], source_arch: str) -> ModelSpec:
    hf = dict(hf)
    raw = hf.get("rope_scaling") or {}
    if raw.get("type") == "su" or raw.get("rope_type") == "su":  # LongRoPE's first name
        hf["rope_scaling"] = {**raw, "rope_type": "longrope", "type": "longrope"}
    config = llama_config(hf, source_arch)
    params = hf.get("rope_parameters") or {}
    factor = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    if not 0.0 < factor <= 1.0:
        raise UnsupportedModel(f"partial_rotary_factor {factor} is not in (0, 1]")
    rot_dim = int(config["head_dim"] * factor)
    if rot_dim % 2:
        raise UnsupportedModel(f"partial_rotary_factor {factor} gives an odd rotary dimension {rot_dim}")
    config["partial_rotary_factor"] = factor
    scaling = config["rope_scaling"]
    if scaling is not None and scaling["rope_type"] == "longrope":
        config["rope_scaling"] = longrope(hf, scaling, config["head_dim"], rot_dim)
    return ModelSpec("llama", source_arch, config, None, tensors=phi3_tensors(config))


def phi3_tensors(cfg: dict[str, Any]) -> Tensors:
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    inter = cfg["intermediate_size"]

    def split(name: str, shape: list[int]) -> list[tuple[str, Source]]:
        if name.endswith(".self_attn.qkv_proj.weight"):
            if shape[0] != q + 2 * kv:
                raise UnsupportedModel(f"{name} has {shape[0]} rows, expected {q + 2 * kv} (q + k + v)")
            p = name[: -len("qkv_proj.weight")]
            return [(p + "q_proj.weight", Source(name, (0, q))), (p + "k_proj.weight", Source(name, (q, q + kv))),
                    (p + "v_proj.weight", Source(name, (q + kv, q + 2 * kv)))]
        if name.endswith(".mlp.gate_up_proj.weight"):
            if shape[0] != 2 * inter:
                raise UnsupportedModel(f"{name} has {shape[0]} rows, expected {2 * inter} (gate + up)")
            p = name[: -len("gate_up_proj.weight")]
            return [(p + "gate_proj.weight", Source(name, (0, inter))), (p + "up_proj.weight", Source(name, (inter, 2 * inter)))]
        return [(name, Source(name))]

    return Tensors(llama_names(cfg), llama_optional, split)
