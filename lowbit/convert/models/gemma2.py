"""Gemma 2: a Llama-style decoder with Gemma's differences, all config or tensors here:

- embeddings multiplied by sqrt(hidden_size) (`embedding_multiplier`);
- RMSNorm of the form x·(1 + w): stored as (1 + w), so the runtime's RMSNorm is unchanged;
- four norms per block: before attention, on the attention output (`attn_output_norm`), before
  the MLP and on the MLP output (`mlp_output_norm`); the final norm too is (1 + w);
- GeGLU with tanh-approximated GELU (`hidden_act: gelu_tanh`);
- attention scale `query_pre_attn_scalar`^-0.5 instead of head_dim^-0.5;
- tanh soft-capping of attention logits and of the final logits;
- sliding-window and global layers interleaved (`layer_types`; Gemma 2: even layers slide).

Gemma's names: HF `post_attention_layernorm` is the attention-output norm and
`pre_feedforward_layernorm` the pre-MLP norm; lowbit keeps Llama's meaning for
`post_attention_layernorm` (the norm before the MLP) and stores the two output norms under
`attn_output_norm` / `mlp_output_norm`.
"""

from __future__ import annotations

from typing import Any

from lowbit.convert.models.base import (
    GGUFArch,
    ModelSpec,
    Source,
    Tensors,
    layer_types,
    llama_config,
    llama_names,
    llama_optional,
)
from lowbit.errors import UnsupportedModel

ARCHITECTURES = ("Gemma2ForCausalLM",)
MODEL_TYPES = ("gemma2",)
GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")
# HF Gemma block norm -> lowbit name
NORMS = {
    "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "attn_output_norm",
    "pre_feedforward_layernorm": "post_attention_layernorm",
    "post_feedforward_layernorm": "mlp_output_norm",
}
# llama.cpp's Gemma block tensor names -> HF's (gguf_source)
GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
GGUF_NORM_SHIFT = 1.0  # llama.cpp stores Gemma's norms as 1 + w


def gemma_config(hf: dict[str, Any], source_arch: str, sliding: Any) -> dict[str, Any]:
    """The config Gemma 2 and 3 share; `sliding(i)` says which layers slide when the config has
    no `layer_types`."""
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in GELU_TANH:
        raise UnsupportedModel(f"hidden_activation {act!r} is not supported for Gemma (supported: gelu_pytorch_tanh)")
    if hf.get("use_bidirectional_attention"):
        raise UnsupportedModel("use_bidirectional_attention (EmbeddingGemma) is not supported: lowbit runs causal LMs")
    config = llama_config({**hf, "hidden_act": "silu", "tie_word_embeddings": hf.get("tie_word_embeddings", True)},
                          source_arch)
    config["hidden_act"] = "gelu_tanh"
    config["embedding_multiplier"] = float(config["hidden_size"]) ** 0.5
    config["attn_output_norm"] = True
    config["mlp_output_norm"] = True
    config["query_pre_attn_scalar"] = float(hf.get("query_pre_attn_scalar") or config["head_dim"])
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = hf.get(key)
        config[key] = float(value) if value else None
    if config["sliding_window"]:
        config["layer_types"] = layer_types(hf, config["num_hidden_layers"], sliding)
    return config


def gemma_tensors(cfg: dict[str, Any], qk_norm: bool, prefix_map: Any = None) -> Tensors:
    names = llama_names(cfg)
    for i in range(cfg["num_hidden_layers"]):
        names |= {f"model.layers.{i}.attn_output_norm.weight", f"model.layers.{i}.mlp_output_norm.weight"}
        if qk_norm:
            names |= {f"model.layers.{i}.self_attn.{x}_norm.weight" for x in "qk"}

    def map_name(name: str, shape: list[int]) -> list[tuple[str, Source]]:
        hf = prefix_map(name) if prefix_map is not None else name
        if hf is None:
            return []
        parts = hf.split(".")
        if len(parts) == 5 and parts[0] == "model" and parts[1] == "layers" and parts[3] in NORMS:
            return [(f"model.layers.{parts[2]}.{NORMS[parts[3]]}.weight", Source(name, add=1.0))]
        if hf.endswith("norm.weight"):  # model.norm, q_norm, k_norm
            return [(hf, Source(name, add=1.0))]
        return [(hf, Source(name))]

    return Tensors(names, llama_optional, map_name)


def spec(hf: dict[str, Any], source_arch: str) -> ModelSpec:
    config = gemma_config(hf, source_arch, lambda i: i % 2 == 0)
    return ModelSpec("llama", source_arch, config, None, tensors=gemma_tensors(config, qk_norm=False))


def gguf_config(meta: Any, cfg: dict[str, Any]) -> None:
    """Gemma 2's HF config keys from llama.cpp's metadata and its hard-coded constants: even
    layers slide; attention scale head_dim^-1/2 (hidden/heads for the 27B model, 46 layers)."""
    n_layers = cfg["num_hidden_layers"]
    gemma_gguf_config(meta, cfg, ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)],
                      big_layers=46)


def gemma_gguf_config(meta: Any, cfg: dict[str, Any], types: list[str], big_layers: int, **extra: Any) -> None:
    """What llama.cpp assumes of every Gemma: GeGLU, the attention scale head_dim^-1/2 (or
    hidden/heads for the 27B model, the one with `big_layers` layers), its sliding window and caps."""
    scalar = cfg["hidden_size"] // cfg["num_attention_heads"] if cfg["num_hidden_layers"] == big_layers else cfg["head_dim"]
    cfg.update(
        hidden_activation="gelu_pytorch_tanh",
        hidden_act="gelu_pytorch_tanh",
        query_pre_attn_scalar=scalar,
        sliding_window=int(meta("attention.sliding_window", 4096)),
        layer_types=types,
        **extra,
        final_logit_softcapping=meta("final_logit_softcapping"),
        attn_logit_softcapping=meta("attn_logit_softcapping"),
        attention_bias=False,
    )


GGUF = {"gemma2": GGUFArch("Gemma2ForCausalLM", "gemma2", permuted_qk=False, block_tensors=GGUF_BLOCK,
                           norm_shift=GGUF_NORM_SHIFT, config=gguf_config)}
