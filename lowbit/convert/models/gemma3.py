"""Gemma 3 text (`Gemma3ForCausalLM`, and the language model of `Gemma3ForConditionalGeneration`).

Gemma 2's block (see `models.gemma2`) plus per-head q/k norms (Gemma's (1 + w) form) and
without soft-capping by default; five sliding layers per global one (`layer_types`, or
`sliding_window_pattern`), the sliding ones with their own RoPE base (`rope_local_base_freq`,
unscaled) and the global ones with `rope_theta` and `rope_scaling`.
"""

from __future__ import annotations

from typing import Any

from lowbit.convert.models.base import GGUFArch, ModelSpec, rope
from lowbit.convert.models.gemma2 import (
    GGUF_BLOCK,
    GGUF_NORM_SHIFT,
    gemma_config,
    gemma_gguf_config,
    gemma_tensors,
)
from lowbit.errors import UnsupportedModel

ARCHITECTURES = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
MODEL_TYPES = ("gemma3_text", "gemma3")
DROPPED = ("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector.")


def text_tower(name: str) -> str | None:
    """A Gemma3ForConditionalGeneration tensor's name in the text model, None for vision tensors."""
    if name.startswith(DROPPED):
        return None
    for old, new in (("model.language_model.", "model."), ("language_model.model.", "model."),
                     ("language_model.lm_head.", "lm_head.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def spec(hf: dict[str, Any], source_arch: str) -> ModelSpec:
    if "text_config" in hf:  # the multimodal checkpoint: convert its language model
        hf = {**hf["text_config"], "tie_word_embeddings": hf.get("tie_word_embeddings", True)}
    pattern = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
    config = gemma_config(hf, source_arch, lambda i: bool((i + 1) % pattern))
    config["qk_norm"] = True
    theta, scaling = rope(hf, "full_attention")
    local_theta, local_scaling = rope(hf, "sliding_attention")
    if "rope_local_base_freq" in hf:
        local_theta = float(hf["rope_local_base_freq"])
    elif not isinstance((hf.get("rope_parameters") or {}).get("sliding_attention"), dict):
        local_theta = 10000.0  # transformers' default for Gemma 3's local layers
    elif local_scaling is not None:
        raise UnsupportedModel("RoPE scaling on Gemma 3's sliding layers is not supported")
    config["rope_theta"], config["rope_scaling"] = theta, scaling
    config["rope_local_base_freq"] = local_theta
    return ModelSpec("llama", source_arch, config, None, tensors=gemma_tensors(config, True, text_tower))


def gguf_config(meta: Any, cfg: dict[str, Any]) -> None:
    """Gemma 3's HF config keys from llama.cpp's metadata and the constants llama.cpp hard-codes
    for it (llama-model.cpp): every 6th layer global, local RoPE base 10000, attention scale
    head_dim^-1/2 (hidden/heads for the 27B model, the one with 62 layers)."""
    n_layers = cfg["num_hidden_layers"]
    pattern = meta("attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):  # per layer: True where the layer slides
        types = ["sliding_attention" if bool(p) else "full_attention" for p in pattern]
    else:
        types = ["sliding_attention" if (i + 1) % int(pattern) else "full_attention" for i in range(n_layers)]
    gemma_gguf_config(meta, cfg, types, big_layers=62, rope_local_base_freq=10000.0)


GGUF = {"gemma3": GGUFArch("Gemma3ForCausalLM", "gemma3_text", permuted_qk=False, block_tensors=GGUF_BLOCK,
                           norm_shift=GGUF_NORM_SHIFT, config=gguf_config)}
