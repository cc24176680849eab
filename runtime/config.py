"""ModelArgs: the hyper-parameters a .lowbit file's metadata.config holds (SPEC.md 3.1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelArgs:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    activation_bits: int | None = None
    source_architecture: str = ""
    # model features beyond Llama's (SPEC.md 3.1, 3.3); the defaults are Llama's behaviour
    qk_norm: bool = False  # RMSNorm per head on q and k before RoPE (Qwen3, Gemma 3)
    attn_output_norm: bool = False  # RMSNorm on the attention output before the residual add (Gemma)
    mlp_output_norm: bool = False  # RMSNorm on the MLP output before the residual add (Gemma)
    embedding_multiplier: float = 1.0  # embeddings times this (Gemma: sqrt(hidden_size))
    query_pre_attn_scalar: float | None = None  # attention scale is its -1/2 power (Gemma), else head_dim's
    attn_logit_softcapping: float | None = None  # scores -> c·tanh(scores / c) (Gemma 2)
    final_logit_softcapping: float | None = None  # logits -> c·tanh(logits / c) (Gemma 2)
    layer_types: list[str] | None = None  # per layer "sliding_attention" / "full_attention"; None: all alike
    rope_local_base_freq: float | None = None  # RoPE base of sliding layers, unscaled (Gemma 3)
    partial_rotary_factor: float = 1.0  # RoPE on the first head_dim × this dims of each head (Phi)
    linear_norm_eps: float | None = None  # eps of the RMSNorm on each linear's input (Falcon-E's use_rms_norm)

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]

    def is_sliding(self, layer: int) -> bool:
        """Whether this layer attends through the sliding window."""
        if not self.sliding_window:
            return False
        return self.layer_types is None or self.layer_types[layer] == "sliding_attention"

    def layer_window(self, layer: int) -> int:
        """The layer's sliding window in positions, 0 for full attention."""
        return int(self.sliding_window) if self.is_sliding(layer) else 0

    def uses_local_rope(self, layer: int) -> bool:
        return self.rope_local_base_freq is not None and self.is_sliding(layer)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def attention_scale(self) -> float:
        return float((self.query_pre_attn_scalar or self.head_dim) ** -0.5)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> ModelArgs:
        """Build from a config dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})
