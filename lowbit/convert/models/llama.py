"""Llama, Mistral and Qwen2 (and SmolLM2, Llama 3.x: Llama with tied embeddings / llama3 RoPE).

The base decoder every other family extends: RMSNorm, SwiGLU, GQA, RoPE. Qwen2 adds q/k/v
biases (always) and a sliding window only when `use_sliding_window`; Mistral slides on every
layer. A Llama config carrying a BitNet quantization_config (Falcon3-*-1.58bit, HF1BitLLM) or
1bitLLM's `weight_bits` is ternary: see `models.bitnet`.
"""

from __future__ import annotations

from typing import Any

from lowbit.convert.models import bitnet
from lowbit.convert.models.base import GGUFArch, ModelSpec, llama_config, llama_tensors

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
MODEL_TYPES = ("llama", "mistral", "qwen2")
# Qwen2 uses NeoX-style RoPE in llama.cpp (the HF rotate-half order), so its converter
# (Qwen2Model in convert_hf_to_gguf.py, not a LlamaModel subclass) leaves Q/K untouched.
GGUF = {
    "llama": GGUFArch("LlamaForCausalLM", "llama", permuted_qk=True,
                      config=lambda meta, cfg: cfg.update(mlp_bias=False)),
    "qwen2": GGUFArch("Qwen2ForCausalLM", "qwen2", permuted_qk=False,
                      config=lambda meta, cfg: cfg.update(use_sliding_window=False)),
}


def spec(hf: dict[str, Any], source_arch: str) -> ModelSpec:
    config = llama_config(hf, source_arch)
    if source_arch == "Qwen2ForCausalLM":
        config["attention_bias"] = True
        if not hf.get("use_sliding_window", False):
            config["sliding_window"] = None
    if bitnet.is_ternary(hf):
        return bitnet.ternary_spec(hf, source_arch, config)
    return ModelSpec("llama", source_arch, config, None, tensors=llama_tensors(config))
