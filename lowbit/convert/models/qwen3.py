"""Qwen3 (dense): Llama plus a per-head RMSNorm on q and k (`q_norm`, `k_norm`, weight [head_dim])
before RoPE, an explicit `head_dim` (not hidden / heads), tied or untied embeddings, and no
q/k/v biases. Sliding windows apply to layers from `max_window_layers` on when
`use_sliding_window` (`layer_types` in transformers 5). PrismML's Bonsai models are Qwen3.
"""

from __future__ import annotations

from typing import Any

from lowbit.convert.models.base import GGUFArch, ModelSpec, layer_types, llama_config, llama_tensors

ARCHITECTURES = ("Qwen3ForCausalLM",)
MODEL_TYPES = ("qwen3",)
GGUF = {
    "qwen3": GGUFArch("Qwen3ForCausalLM", "qwen3", permuted_qk=False,
                      block_tensors={"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
                      config=lambda meta, cfg: cfg.update(use_sliding_window=False, attention_bias=False)),
}


def qk_norm_names(cfg: dict[str, Any]) -> set[str]:
    return {f"model.layers.{i}.self_attn.{x}_norm.weight" for i in range(cfg["num_hidden_layers"]) for x in "qk"}


def spec(hf: dict[str, Any], source_arch: str) -> ModelSpec:
    config = llama_config(hf, source_arch)
    config["qk_norm"] = True
    n = config["num_hidden_layers"]
    if hf.get("use_sliding_window", False) and config["sliding_window"]:
        start = int(hf.get("max_window_layers", n))
        config["layer_types"] = layer_types(hf, n, lambda i: i >= start)
        if all(t == "sliding_attention" for t in config["layer_types"]):
            config["layer_types"] = None
    else:
        config["sliding_window"] = None
    tensors = llama_tensors(config)
    tensors.required |= qk_norm_names(config)
    return ModelSpec("llama", source_arch, config, None, tensors=tensors)
