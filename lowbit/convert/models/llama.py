"""Llama, Mistral and Qwen2 (and SmolLM2, Llama 3.x: Llama with tied embeddings / llama3 RoPE).

The base decoder every other family extends: RMSNorm, SwiGLU, GQA, RoPE. Qwen2 adds q/k/v
biases (always) and a sliding window only when `use_sliding_window`; Mistral slides on every
layer. A Llama config carrying a BitNet quantization_config (Falcon3-*-1.58bit, HF1BitLLM) or
1bitLLM's `weight_bits` is ternary: see `models.bitnet`.
"""

from __future__ import annotations

from typing import Any

from lowbit.convert.models import bitnet
from lowbit.convert.models.base import ModelSpec, llama_config, llama_tensors

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
MODEL_TYPES = ("llama", "mistral", "qwen2")
GGUF = {"llama": ("LlamaForCausalLM", True), "qwen2": ("Qwen2ForCausalLM", False)}  # arch: (class, Q/K permuted)


def spec(hf: dict[str, Any], source_arch: str) -> ModelSpec:
    config = llama_config(hf, source_arch)
    if source_arch == "Qwen2ForCausalLM":
        config["attention_bias"] = True
        if not hf.get("use_sliding_window", False):
            config["sliding_window"] = None
    if bitnet.is_ternary(hf):
        return bitnet.ternary_spec(hf, source_arch, config)
    return ModelSpec("llama", source_arch, config, None, tensors=llama_tensors(config))
