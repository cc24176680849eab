"""What every architecture module shares: the ModelSpec it returns, Llama's config translation
and tensor names, RoPE parsing, and the checkpoint view that presents a source in lowbit's names.

An architecture module (one per family, in the spirit of mlx-lm's `models/<name>.py`) defines:

- `ARCHITECTURES` (HF class names) and `MODEL_TYPES` (config.json `model_type`s) it converts;
- `config(hf, source_arch) -> dict`: lowbit's config (SPEC.md 3.1) from the HF config.json;
- `tensors(config) -> Tensors`: required and optional lowbit tensor names, and how lowbit names
  map onto the checkpoint's (renames, row slices of fused tensors, norm offsets);
- optionally `GGUF`: llama.cpp's name for the architecture and its tensor names and metadata.

The runtime has one model; what differs is data in its config plus optional tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowbit.errors import UnsupportedModel
from lowbit.runtime.rope import ROPE_TYPES

LINEAR_RE = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".weight_scale")
# the lowbit release that first ran each model feature (SPEC.md 3.3); files list what they need
FEATURE_VERSIONS = dict.fromkeys((  # (a later release adds its own: | {"name": "0.3.0"})
    "qk_norm", "attn_output_norm", "mlp_output_norm", "gelu_tanh", "embedding_multiplier",
    "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "layer_types",
    "local_rope", "partial_rotary", "longrope", "linear_input_norm", "down_proj_hadamard",
), "0.2.0")


def is_linear_weight(name: str) -> bool:
    return LINEAR_RE.match(name) is not None


@dataclass
class Source:
    """Where a lowbit tensor comes from: a checkpoint tensor, optionally a row range of it (a
    fused projection) and a constant added to it (Gemma's norms store w for x·(1+w))."""

    name: str
    rows: tuple[int, int] | None = None
    add: float = 0.0
    ones: int = 0  # when `name` is absent from the checkpoint: a vector of this many ones


def identity(name: str, shape: list[int]) -> list[tuple[str, Source]]:
    return [(name, Source(name))]


@dataclass
class Tensors:
    """A model's lowbit tensor names: required, optional, and `map`: for one checkpoint tensor
    (name, shape), the lowbit tensors made from it (none, itself, renamed or its parts)."""

    required: set[str]
    optional: Callable[[str], bool]
    map: Callable[[str, list[int]], list[tuple[str, Source]]] = identity


@dataclass
class ModelSpec:
    """What the converter needs to know about a checkpoint beyond its tensors."""

    architecture: str  # "llama" or "bitnet" (SPEC.md 3)
    source_architecture: str
    config: dict[str, Any]  # SPEC.md 3.1
    ternary_weights: str | None  # None, "packed" (uint8 codes + weight_scale) or "latent" (absmean)
    weight_scale_divides: bool = False  # BitLinear stores 1/mean|W|: output divided by weight_scale
    tensors: Tensors | None = None

    @property
    def features(self) -> list[str]:
        return required_features(self.config)


def required_features(cfg: dict[str, Any], names: set[str] | None = None) -> list[str]:
    """The model features (FEATURE_VERSIONS) a lowbit config needs from the runtime."""
    out = []
    if cfg.get("qk_norm"):
        out.append("qk_norm")
    if cfg.get("attn_output_norm"):
        out.append("attn_output_norm")
    if cfg.get("mlp_output_norm"):
        out.append("mlp_output_norm")
    if cfg.get("hidden_act") == "gelu_tanh":
        out.append("gelu_tanh")
    if cfg.get("embedding_multiplier", 1.0) != 1.0:
        out.append("embedding_multiplier")
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "layer_types"):
        if cfg.get(key) is not None:
            out.append(key)
    if cfg.get("rope_local_base_freq") is not None:
        out.append("local_rope")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        out.append("partial_rotary")
    if (cfg.get("rope_scaling") or {}).get("rope_type") == "longrope":
        out.append("longrope")
    if cfg.get("linear_norm_eps") is not None:
        out.append("linear_input_norm")
    if cfg.get("down_proj_hadamard"):
        out.append("down_proj_hadamard")
    return out


def rope(hf: dict[str, Any], layer_type: str = "full_attention") -> tuple[float, dict[str, Any] | None]:
    """rope_theta and rope_scaling from either the v4 keys or v5's `rope_parameters` (which may be
    one dict per layer type, as Gemma 3's is)."""
    params = hf.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in params.values()):
        params = params.get(layer_type) or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if scaling is not None:
        scaling = dict(scaling)
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise UnsupportedModel(f"rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        scaling["rope_type"] = kind
        scaling.pop("type", None)
        if kind == "default":
            scaling = None
    return float(theta), scaling


def llama_config(hf: dict[str, Any], source_arch: str, default_act: str = "silu") -> dict[str, Any]:
    """lowbit's config for a Llama-style decoder (the fields every family shares)."""
    hidden = int(hf["hidden_size"])
    heads = int(hf["num_attention_heads"])
    theta, scaling = rope(hf)
    eos = hf.get("eos_token_id")
    eos_list = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    act = hf.get("hidden_act", default_act)
    if act not in ("silu", "relu2"):
        raise UnsupportedModel(f"hidden_act {act!r} is not supported (supported: silu, relu2)")
    sliding = hf.get("sliding_window")
    return {
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
        "attention_bias": bool(hf.get("attention_bias", False)),
        "sliding_window": int(sliding) if sliding else None,
        "hidden_act": act,
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": eos_list,
        "source_architecture": source_arch,
    }


def llama_names(cfg: dict[str, Any]) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
    return names


def llama_optional(name: str) -> bool:
    """Tensors a Llama-style model may or may not have: biases, BitNet sub-norms, an untied lm_head."""
    return (
        name.endswith((".q_proj.bias", ".k_proj.bias", ".v_proj.bias", ".o_proj.bias"))
        or name.endswith((".attn_sub_norm.weight", ".ffn_sub_norm.weight"))
        or name == "lm_head.weight"
    )


def llama_tensors(cfg: dict[str, Any]) -> Tensors:
    return Tensors(llama_names(cfg), llama_optional)


def layer_types(hf: dict[str, Any], n_layers: int, default: Callable[[int], bool] | None) -> list[str] | None:
    """HF `layer_types` ("sliding_attention" / "full_attention" per layer), from the config or,
    for configs older than that key, from `default(i)` (True: sliding)."""
    types = hf.get("layer_types")
    if types is None and default is not None:
        types = ["sliding_attention" if default(i) else "full_attention" for i in range(n_layers)]
    if types is None:
        return None
    types = [str(t) for t in types]
    bad = sorted(set(types) - {"sliding_attention", "full_attention"})
    if bad:
        raise UnsupportedModel(f"layer type {bad[0]!r} is not supported (supported: sliding_attention, full_attention)")
    if len(types) != n_layers:
        raise UnsupportedModel(f"layer_types lists {len(types)} layers for {n_layers} layers")
    return types


class CheckpointView:
    """A source checkpoint seen in lowbit's tensor names and shapes: fused tensors split into
    their parts, renamed tensors under lowbit's name, norm offsets applied. Everything the
    converter reads goes through this, so it needs no architecture branches."""

    def __init__(self, ckpt: Any, tensors: Tensors) -> None:
        self.ckpt = ckpt
        self._sources: dict[str, Source] = {}
        for n in ckpt.tensor_names():
            keep = n.endswith(SKIPPED_SUFFIXES)  # BitNet's weight_scale is looked up by name
            for new, src in [(n, Source(n))] if keep else tensors.map(n, list(ckpt.shape(n))):
                self._sources[new] = src
        for attr in ("config", "generation_config", "tokenizer_files", "source_id", "revision", "path"):
            if hasattr(ckpt, attr):
                setattr(self, attr, getattr(ckpt, attr))
        if hasattr(ckpt, "file_hashes"):
            self.file_hashes = ckpt.file_hashes
        if hasattr(ckpt, "rows"):
            self.rows = self._rows
            self.dtype = lambda name: ckpt.dtype(self._sources[name].name) if self._sources[name].name in ckpt else "F32"
        if hasattr(ckpt, "gguf_tensor"):  # GGUF: raw blocks for `--method keep` (convert/keep.py)
            self.gguf_tensor = self._gguf_tensor
            self.hf_rows = self._hf_rows

    def tensor_names(self) -> list[str]:
        return list(self._sources)

    def __contains__(self, name: str) -> bool:
        return name in self._sources

    def shape(self, name: str) -> list[int]:
        s = self._sources[name]
        if s.ones and s.name not in self.ckpt:
            return [s.ones]
        shape = list(self.ckpt.shape(s.name))
        if s.rows is not None:
            shape[0] = s.rows[1] - s.rows[0]
        return shape

    def get(self, name: str) -> np.ndarray:
        s = self._sources[name]
        if s.ones and s.name not in self.ckpt:
            return np.ones(s.ones, dtype=np.float32)
        w = self.ckpt.get(s.name)
        if s.rows is not None:
            w = np.ascontiguousarray(w[s.rows[0] : s.rows[1]])
        if s.add:
            w = np.asarray(w, dtype=np.float32) + np.float32(s.add)
        return w

    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        s = self._sources[name]
        off = 0 if s.rows is None else s.rows[0]
        w = self.ckpt.rows(s.name, off + start, off + stop)
        return w + np.float32(s.add) if s.add else w

    def _gguf_tensor(self, name: str) -> Any:
        """The GGUF tensor behind a lowbit name, or None when the values are not its blocks
        as stored (a constant added, or ones made up for an absent tensor)."""
        s = self._sources[name]
        if s.name not in self.ckpt or (s.add and len(self.shape(name)) == 2):
            return None
        return self.ckpt.gguf_tensor(s.name)

    def _hf_rows(self, name: str, w: np.ndarray) -> np.ndarray:
        """Rows (values or raw blocks) of the whole source tensor -> this lowbit tensor's rows."""
        s = self._sources[name]
        w = self.ckpt.hf_rows(s.name, w)
        return w if s.rows is None else np.ascontiguousarray(w[s.rows[0] : s.rows[1]])

    def release(self, name: str) -> None:
        if hasattr(self.ckpt, "release") and self._sources[name].name in self.ckpt:
            self.ckpt.release(self._sources[name].name)

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._sources:
            yield name, self.get(name)


@dataclass(frozen=True)
class GGUFArch:
    """How llama.cpp writes one architecture: its HF class and model_type, whether Q/K rows are
    permuted for llama.cpp's non-NeoX RoPE, block tensor names beyond Llama's (llama.cpp name ->
    HF name), a constant llama.cpp adds to every norm weight (Gemma: 1), and a hook that adds the
    architecture's HF config keys from the `{arch}.*` metadata (`meta(key, default)`)."""

    hf_class: str
    model_type: str
    permuted_qk: bool
    block_tensors: dict[str, str] = field(default_factory=dict)
    norm_shift: float = 0.0
    config: Callable[[Callable[[str, Any], Any], dict[str, Any]], None] | None = None
