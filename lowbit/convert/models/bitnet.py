"""BitNet b1.58 (`BitNetForCausalLM`), and the ternary side of Llama checkpoints that carry a
BitNet `quantization_config` (HF1BitLLM, Falcon3-*-1.58bit, Falcon-E) or 1bitLLM's `weight_bits`.

Blocks are Llama's plus two sub-norms (before o_proj and before down_proj) and relu²; weights are
ternary, packed (uint8 codes + weight_scale) or latent (absmean at conversion).
"""

from __future__ import annotations

from typing import Any

from lowbit.convert.models.base import (
    GGUFArch,
    ModelSpec,
    Source,
    is_linear_weight,
    llama_config,
    llama_tensors,
)
from lowbit.errors import UnsupportedModel

ARCHITECTURES = ("BitNetForCausalLM",)
MODEL_TYPES = ("bitnet",)
# llama.cpp's `bitnet`: NeoX RoPE (no Q/K permutation), the two sub-norms, embeddings tied as its
# lm_head, SiLU unless `bitnet.hidden_act` says otherwise (BitNet 2B-4T: relu2)
GGUF = {
    "bitnet": GGUFArch("BitNetForCausalLM", "bitnet", permuted_qk=False,
                       block_tensors={"attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm"},
                       config=lambda meta, cfg: cfg.update(hidden_act=meta("hidden_act", "silu"), tie_word_embeddings=True)),
}
# 1bitLLM's names for BitNet's sub-norms -> the transformers BitNet names we store
RENAMES = {
    ".self_attn.inner_attn_ln.": ".self_attn.attn_sub_norm.",
    ".mlp.ffn_layernorm.": ".mlp.ffn_sub_norm.",
}


def quantization(hf: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's BitNet quantization_config ({} when unquantised), validated."""
    qcfg = hf.get("quantization_config") or {}
    if qcfg and qcfg.get("quant_method") != "bitnet":
        raise UnsupportedModel(
            f"quantization_config.quant_method {qcfg.get('quant_method')!r} is not supported "
            "(only unquantised checkpoints and quant_method 'bitnet')"
        )
    return qcfg


def ternary_spec(hf: dict[str, Any], source_arch: str, config: dict[str, Any]) -> ModelSpec:
    """A Llama-style config made ternary: BitNet's activation bits, packed or latent weights."""
    qcfg = quantization(hf)
    config["activation_bits"] = 8
    tensors = llama_tensors(config)
    tensors.map = canonical
    if qcfg.get("use_rms_norm"):  # Falcon-E: an RMSNorm on each BitLinear's input, before quantising it
        config["linear_norm_eps"] = float(qcfg.get("rms_norm_eps") or 1e-6)
        tensors.required |= {n[: -len("weight")] + "input_norm.weight" for n in tensors.required if is_linear_weight(n)}
        tensors.map = linear_norms
    # "online": latent weights that transformers ternarises at load (absmean), as lowbit does
    packed = bool(qcfg) and qcfg.get("quantization_mode", "offline") != "online"
    return ModelSpec(
        architecture="bitnet",
        source_architecture=source_arch,
        config=config,
        ternary_weights="packed" if packed else "latent",
        weight_scale_divides=qcfg.get("linear_class", "bitlinear") == "bitlinear",
        tensors=tensors,
    )


def is_ternary(hf: dict[str, Any]) -> bool:
    return bool(quantization(hf)) or hf.get("weight_bits") == 1


def canonical(name: str, shape: list[int]) -> list[tuple[str, Source]]:
    """1bitLLM's sub-norm names -> ours; every other tensor keeps its name."""
    new = name
    for old, repl in RENAMES.items():
        new = new.replace(old, repl)
    return [(new, Source(name))]


def linear_norms(name: str, shape: list[int]) -> list[tuple[str, Source]]:
    """use_rms_norm: each BitLinear's `rms_norm.weight` becomes `input_norm.weight` (ones when a
    checkpoint leaves it out, as transformers then initialises it)."""
    if name.endswith(".rms_norm.weight"):
        return []
    out = canonical(name, shape)
    if is_linear_weight(name):
        out.append((name[: -len("weight")] + "input_norm.weight", Source(name[: -len("weight")] + "rms_norm.weight",
                                                                        ones=int(shape[-1]))))
    return out


def spec(hf: dict[str, Any], source_arch: str) -> ModelSpec:
    return ternary_spec(hf, source_arch, llama_config(hf, source_arch, default_act="relu2"))
