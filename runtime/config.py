"""ModelArgs: the hyper-parameters a .lowbit file's metadata.config holds (SPEC.md 3.1).

`from_dict` coerces every value to the type its field declares, driven by the annotations (so a
new field gets the same treatment): a config is data from a stranger, and a wrong Python type
would reach numba as a new argument type (a new 35-second specialisation of the decode step, or
a wrong result). Widening an int to a float field is accepted; anything else of the wrong kind
(a bool for an int, a float for an int, a string for a number) is refused with InvalidModel.
Value ranges and the agreement with the tensors are checked by `runtime.validate`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lowbit.runtime.errors import InvalidModel

INT_LIMIT = 1 << 31  # no config integer is this large; int64 (what numba sees) stays far away


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
    down_proj_hadamard: bool = False  # down_proj's input through the online Hadamard transform (--rotate)

    def __post_init__(self) -> None:
        if not self.head_dim and self.num_attention_heads > 0:
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
    def from_dict(cls, params: Any) -> ModelArgs:
        """Build from a config dict, ignoring keys this version does not know; every known value
        is coerced to its declared type or refused (InvalidModel naming the field)."""
        if not isinstance(params, dict):
            raise InvalidModel(f"config must be an object, got {type(params).__name__}")
        hints = _field_types(cls)
        values = {k: coerce(k, v, hints[k]) for k, v in params.items() if k in hints}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise InvalidModel(f"config lacks field {missing[0]!r}")
        return cls(**values)


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """value as the exact Python type `annotation` declares (int, float, bool, str, X | None,
    list[X], dict[str, Any]); InvalidModel naming the field if it is of another kind."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(name, value, option)
            except InvalidModel as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else InvalidModel(
            f"config field {name!r} has the wrong type ({_kind(value)}: {_short(value)})"
        )
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list):
            if item is not int:
                raise InvalidModel(f"config field {name!r} must be a list, got {_kind(value)}")
            value = [value]  # HF writes a lone token id for a one-element id list
        return [coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise InvalidModel(f"config field {name!r} must be an object, got {_kind(value)}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise InvalidModel(f"config field {name!r} must be true or false, got {_kind(value)}: {_short(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidModel(f"config field {name!r} must be an integer, got {_kind(value)}: {_short(value)}")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise InvalidModel(f"config field {name!r} is out of range ({_short(value)})")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidModel(f"config field {name!r} must be a number, got {_kind(value)}: {_short(value)}")
        try:
            f = float(value)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise InvalidModel(f"config field {name!r} must be a finite number, got {_short(value)}")
        return f
    if annotation is str:
        if not isinstance(value, str):
            raise InvalidModel(f"config field {name!r} must be a string, got {_kind(value)}")
        return value
    return value


def _short(value: Any, limit: int = 40) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return " ".join(text.split())
