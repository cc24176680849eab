"""Which checkpoints lowbit converts, and how their configs and tensors map onto one model family.

Every supported architecture is a Llama-style decoder; the differences (q/k/v bias, sliding
window, RoPE scaling, BitNet's sub-norms, squared-ReLU and ternary weights) are config fields and
optional tensors, so the runtime has one model and no per-architecture branches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lowbit.errors import UnsupportedModel

LLAMA_LIKE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
SUPPORTED = (*LLAMA_LIKE, "BitNetForCausalLM")
LINEAR_RE = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")

# 1bitLLM's names for BitNet's sub-norms -> the transformers BitNet names we store
RENAMES = {
    ".self_attn.inner_attn_ln.": ".self_attn.attn_sub_norm.",
    ".mlp.ffn_layernorm.": ".mlp.ffn_sub_norm.",
}
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".weight_scale")


@dataclass
class ModelSpec:
    """What the converter needs to know about a checkpoint beyond its tensors."""

    architecture: str  # "llama" or "bitnet"
    source_architecture: str
    config: dict[str, Any]  # SPEC.md 3.1
    ternary_weights: str | None  # None, "packed" (uint8 codes + weight_scale) or "latent" (absmean)
    weight_scale_divides: bool = False  # BitLinear stores 1/mean|W|: output divided by weight_scale


def is_linear_weight(name: str) -> bool:
    return LINEAR_RE.match(name) is not None


def canonical_name(name: str) -> str:
    for old, new in RENAMES.items():
        name = name.replace(old, new)
    return name


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and rope_scaling from either the v4 keys or v5's `rope_parameters`."""
    params = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        scaling = dict(scaling)
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ("default", "llama3", "linear"):
            raise UnsupportedModel(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")
        scaling["rope_type"] = kind
        if kind == "default":
            scaling = None
    return float(theta), scaling


def model_spec(hf: dict[str, Any]) -> ModelSpec:
    """Validate a Hugging Face config.json and translate it to lowbit's config (SPEC.md 3.1)."""
    archs = hf.get("architectures") or []
    source_arch = archs[0] if archs else str(hf.get("model_type", "unknown"))
    if source_arch not in SUPPORTED:
        raise UnsupportedModel(
            f"architecture {source_arch!r} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    qcfg = hf.get("quantization_config") or {}
    if qcfg and qcfg.get("quant_method") != "bitnet":
        raise UnsupportedModel(
            f"quantization_config.quant_method {qcfg.get('quant_method')!r} is not supported "
            "(only unquantised checkpoints and quant_method 'bitnet')"
        )
    if qcfg.get("use_rms_norm"):
        raise UnsupportedModel("quantization_config.use_rms_norm (a norm inside every BitLinear) is not supported yet")
    is_bitnet = source_arch == "BitNetForCausalLM" or bool(qcfg) or hf.get("weight_bits") == 1
    ternary = None
    if qcfg:
        ternary = "packed"
    elif is_bitnet:
        ternary = "latent"
    hidden = int(hf["hidden_size"])
    heads = int(hf["num_attention_heads"])
    theta, scaling = _rope(hf)
    eos = hf.get("eos_token_id")
    eos_list = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    sliding = hf.get("sliding_window")
    if source_arch == "Qwen2ForCausalLM" and not hf.get("use_sliding_window", False):
        sliding = None
    default_act = "relu2" if source_arch == "BitNetForCausalLM" else "silu"
    act = hf.get("hidden_act", default_act)
    if act not in ("silu", "relu2"):
        raise UnsupportedModel(f"hidden_act {act!r} is not supported (supported: silu, relu2)")
    config = {
        "hidden_size": hidden,
        "intermediate_size": int(hf["intermediate_size"]),
        "num_hidden_layers": int(hf["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(hf.get("num_key_value_heads") or heads),
        "head_dim": int(hf.get("head_dim") or hidden // heads),
        "vocab_size": int(hf["vocab_size"]),
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position_embeddings": int(hf.get("max_position_embeddings", 2048)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "attention_bias": source_arch == "Qwen2ForCausalLM" or bool(hf.get("attention_bias", False)),
        "sliding_window": int(sliding) if sliding else None,
        "hidden_act": act,
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": eos_list,
        "source_architecture": source_arch,
    }
    if is_bitnet:
        config["activation_bits"] = 8
    return ModelSpec(
        architecture="bitnet" if is_bitnet else "llama",
        source_architecture=source_arch,
        config=config,
        ternary_weights=ternary,
        weight_scale_divides=qcfg.get("linear_class", "bitlinear") == "bitlinear",
    )
