"""One validation of a model, at load, before any kernel runs: the config's values, and the
config against every tensor's shape and encoding.

The kernels trust what they are given: the fused decode step writes heads × head_dim floats into
a buffer sized from q_proj's rows, pads an input to a weight's group count, indexes KV heads by
h // (heads / kv_heads). The reader has already checked each tensor on its own (its parts match
its encoding, SPEC.md 5); what is left is agreement between tensors and config, and that is what
this module checks. Everything is data: `CONFIG_RULES` bounds the config values, `TENSOR_ROLES`
says which tensors a model has and their shapes from ModelArgs, so a new feature adds rows here.

Every refusal is one InvalidModel line naming the field and the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.runtime.config import INT_LIMIT, ModelArgs
from lowbit.runtime.errors import InvalidModel

MAX_POSITIONS = 1 << 28  # max_position_embeddings at most (10M-token models exist; 2^40 is a lie)
MAX_LAYERS = 1 << 12
DENSE = ("f32", "f16", "bf16")
ACTIVATIONS = ("silu", "relu2", "gelu_tanh")  # model.ACTIVATIONS / decode_step.ACTIVATIONS


# -- config values -------------------------------------------------------------------------------

Rule = Callable[[Any, ModelArgs], str | None]  # -> what is wrong, or None


def _at_least(n: int) -> Rule:
    return lambda v, a: None if v >= n else f"must be at least {n}"


def _between(lo: int, hi: int) -> Rule:
    return lambda v, a: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def _token_id(v: Any, a: ModelArgs) -> str | None:
    ids = v if isinstance(v, list) else [v]
    bad = [i for i in ids if i is not None and not 0 <= i < a.vocab_size]
    return None if not bad else f"holds token id {bad[0]}, outside the vocabulary of {a.vocab_size}"


def _head_dim(v: int, a: ModelArgs) -> str | None:
    if v < 2 or v % 2:
        return "must be an even number ≥ 2 (RoPE rotates pairs)"
    if v * a.num_attention_heads >= INT_LIMIT:
        return f"times num_attention_heads ({a.num_attention_heads}) is too large"
    return None


def _kv_heads(v: int, a: ModelArgs) -> str | None:
    if v < 1:
        return "must be at least 1"
    if a.num_attention_heads % v:
        return f"must divide num_attention_heads ({a.num_attention_heads})"
    return None


def _window(v: Any, a: ModelArgs) -> str | None:
    return None if v is None or v >= 1 else "must be at least 1 (or null for none)"


def _positive_or_null(v: Any, a: ModelArgs) -> str | None:
    return None if v is None or v > 0 else "must be positive (or null for none)"


LAYER_TYPES = ("sliding_attention", "full_attention")


def _layer_types(v: Any, a: ModelArgs) -> str | None:
    if v is None:
        return None
    if len(v) != a.num_hidden_layers:
        return f"must name one type per layer ({a.num_hidden_layers}), it names {len(v)}"
    bad = [t for t in v if t not in LAYER_TYPES]
    return None if not bad else f"holds {bad[0]!r} (supported: {', '.join(LAYER_TYPES)})"


def _partial_rotary(v: float, a: ModelArgs) -> str | None:
    if not 0 < v <= 1:
        return "must be in (0, 1]"
    rot = a.rotary_dim
    return None if rot >= 2 and rot % 2 == 0 else f"gives {rot} rotary dims of head_dim {a.head_dim} (must be even, ≥ 2)"


def _down_proj_hadamard(v: bool, a: ModelArgs) -> str | None:
    from lowbit.runtime.kernels.hadamard import MAX_ODD_BLOCK, split_size

    m = split_size(a.intermediate_size)[1]
    if v and m > MAX_ODD_BLOCK:
        return (f"needs intermediate_size ({a.intermediate_size}) = 2^k × an odd factor ≤ {MAX_ODD_BLOCK}, "
                f"its odd factor is {m}")
    return None


def _optional_between(lo: int, hi: int) -> Rule:
    return lambda v, a: None if v is None or lo <= v <= hi else f"must be between {lo} and {hi} (or null)"


def _rope_scaling(v: Any, a: ModelArgs) -> str | None:
    if v is None:
        return None
    from lowbit.runtime.rope import ROPE_TYPES, inverse_frequencies

    kind = v.get("rope_type", v.get("type", "default"))
    if kind not in ROPE_TYPES:
        return f"type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
    for key, x in v.items():
        if key not in ("rope_type", "type") and not isinstance(x, (int, float, str, type(None), list)):
            return f"field {key!r} has the wrong type ({type(x).__name__})"
    try:
        with np.errstate(all="ignore"):
            rot = a.rotary_dim if 2 <= a.rotary_dim < 1 << 16 else 2
            # LongRoPE picks its short or long factors by the context: check both
            inv = np.concatenate([inverse_frequencies(rot, a.rope_theta, v, n) for n in (1, a.max_position_embeddings)])
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, KeyError) as e:
        return f"is invalid ({type(e).__name__})"
    if not np.all(np.isfinite(inv)) or not np.all(inv > 0):
        return "gives non-finite or non-positive frequencies"
    return None


CONFIG_RULES: dict[str, Rule] = {
    "hidden_size": _at_least(1),
    "intermediate_size": _at_least(1),
    "num_hidden_layers": _between(1, MAX_LAYERS),
    "num_attention_heads": _at_least(1),
    "num_key_value_heads": _kv_heads,
    "vocab_size": _at_least(1),
    "head_dim": _head_dim,
    "rms_norm_eps": lambda v, a: None if 0 <= v <= 1 else "must be between 0 and 1",
    "rope_theta": lambda v, a: None if v > 0 else "must be positive",
    "rope_scaling": _rope_scaling,
    "max_position_embeddings": _between(1, MAX_POSITIONS),
    "sliding_window": _window,
    "hidden_act": lambda v, a: None if v in ACTIVATIONS else f"{v!r} is not supported (supported: {', '.join(ACTIVATIONS)})",
    "bos_token_id": _token_id,
    "eos_token_id": _token_id,
    "activation_bits": _optional_between(1, 16),
    "embedding_multiplier": lambda v, a: None if v > 0 else "must be positive",
    "query_pre_attn_scalar": _positive_or_null,
    "attn_logit_softcapping": _positive_or_null,
    "final_logit_softcapping": _positive_or_null,
    "layer_types": _layer_types,
    "rope_local_base_freq": _positive_or_null,
    "linear_norm_eps": _positive_or_null,
    "partial_rotary_factor": _partial_rotary,
    "down_proj_hadamard": _down_proj_hadamard,
}


def check_config(config: Any) -> ModelArgs:
    """ModelArgs from a file's metadata.config: types coerced (ModelArgs.from_dict), then every
    value in range. Order matters: the first rules (sizes, heads) are what later ones divide by."""
    args = ModelArgs.from_dict(config)
    for name, rule in CONFIG_RULES.items():
        value = getattr(args, name, None)
        problem = rule(value, args)
        if problem:
            raise InvalidModel(f"config field {name!r} {problem} (it is {_short(value)})")
    return args


# -- tensors -------------------------------------------------------------------------------------

Shape = Callable[[ModelArgs], tuple[int, ...]]


@dataclass(frozen=True)
class Role:
    """One tensor a model may hold: its name ({i} = layer index), its shape from the config, and
    what reads it: `linear` (any encoding with a kernel), `embedding` (row lookup, any encoding)
    or `vector` (norm weights and biases: 1-D, dense)."""

    name: str
    shape: Shape
    kind: str
    required: Callable[[ModelArgs], bool] = lambda a: True
    feature: str | None = None  # a ModelArgs flag: the tensor exists exactly when it is true


def _q(a: ModelArgs) -> int:
    return a.num_attention_heads * a.head_dim


def _kv(a: ModelArgs) -> int:
    return a.num_key_value_heads * a.head_dim


_OPTIONAL = lambda a: False  # noqa: E731
_L = "model.layers.{i}."

TENSOR_ROLES: tuple[Role, ...] = (
    Role("model.embed_tokens.weight", lambda a: (a.vocab_size, a.hidden_size), "embedding"),
    Role("model.norm.weight", lambda a: (a.hidden_size,), "vector"),
    Role("lm_head.weight", lambda a: (a.vocab_size, a.hidden_size), "linear", lambda a: not a.tie_word_embeddings),
    Role(_L + "input_layernorm.weight", lambda a: (a.hidden_size,), "vector"),
    Role(_L + "post_attention_layernorm.weight", lambda a: (a.hidden_size,), "vector"),
    Role(_L + "self_attn.q_proj.weight", lambda a: (_q(a), a.hidden_size), "linear"),
    Role(_L + "self_attn.k_proj.weight", lambda a: (_kv(a), a.hidden_size), "linear"),
    Role(_L + "self_attn.v_proj.weight", lambda a: (_kv(a), a.hidden_size), "linear"),
    Role(_L + "self_attn.o_proj.weight", lambda a: (a.hidden_size, _q(a)), "linear"),
    Role(_L + "self_attn.q_proj.bias", lambda a: (_q(a),), "vector", _OPTIONAL),
    Role(_L + "self_attn.k_proj.bias", lambda a: (_kv(a),), "vector", _OPTIONAL),
    Role(_L + "self_attn.v_proj.bias", lambda a: (_kv(a),), "vector", _OPTIONAL),
    Role(_L + "self_attn.o_proj.bias", lambda a: (a.hidden_size,), "vector", _OPTIONAL),
    Role(_L + "self_attn.attn_sub_norm.weight", lambda a: (_q(a),), "vector", _OPTIONAL),
    Role(_L + "self_attn.q_norm.weight", lambda a: (a.head_dim,), "vector", feature="qk_norm"),
    Role(_L + "self_attn.k_norm.weight", lambda a: (a.head_dim,), "vector", feature="qk_norm"),
    Role(_L + "attn_output_norm.weight", lambda a: (a.hidden_size,), "vector", feature="attn_output_norm"),
    Role(_L + "mlp_output_norm.weight", lambda a: (a.hidden_size,), "vector", feature="mlp_output_norm"),
    Role(_L + "mlp.gate_proj.weight", lambda a: (a.intermediate_size, a.hidden_size), "linear"),
    Role(_L + "mlp.up_proj.weight", lambda a: (a.intermediate_size, a.hidden_size), "linear"),
    Role(_L + "mlp.down_proj.weight", lambda a: (a.hidden_size, a.intermediate_size), "linear"),
    Role(_L + "mlp.gate_proj.bias", lambda a: (a.intermediate_size,), "vector", _OPTIONAL),
    Role(_L + "mlp.up_proj.bias", lambda a: (a.intermediate_size,), "vector", _OPTIONAL),
    Role(_L + "mlp.down_proj.bias", lambda a: (a.hidden_size,), "vector", _OPTIONAL),
    Role(_L + "mlp.ffn_sub_norm.weight", lambda a: (a.intermediate_size,), "vector", _OPTIONAL),
    # Falcon-E (use_rms_norm): each linear's own input norm, [in_features]
    *(Role(_L + f"{m}.input_norm.weight", shape, "vector", feature="linear_norm_eps") for m, shape in (
        ("self_attn.q_proj", lambda a: (a.hidden_size,)), ("self_attn.k_proj", lambda a: (a.hidden_size,)),
        ("self_attn.v_proj", lambda a: (a.hidden_size,)), ("self_attn.o_proj", lambda a: (_q(a),)),
        ("mlp.gate_proj", lambda a: (a.hidden_size,)), ("mlp.up_proj", lambda a: (a.hidden_size,)),
        ("mlp.down_proj", lambda a: (a.intermediate_size,)))),
)


def expected_tensors(args: ModelArgs) -> dict[str, tuple[Role, tuple[int, ...]]]:
    """Every tensor name this config may have -> (its role, its shape)."""
    out: dict[str, tuple[Role, tuple[int, ...]]] = {}
    for role in TENSOR_ROLES:
        layers = range(args.num_hidden_layers) if "{i}" in role.name else (None,)
        shape = role.shape(args)
        for i in layers:
            out[role.name.format(i=i)] = (role, shape)
    return out


def _field(entry: Any, key: str) -> Any:
    return entry[key] if isinstance(entry, Mapping) else getattr(entry, key)


def check_tensors(args: ModelArgs, tensors: Mapping[str, Any]) -> None:
    """Every tensor the model reads exists with the shape the config implies and an encoding its
    reader can take; no tensor the model would ignore. `tensors` maps names to TensorEntry /
    EncodedTensor objects or to header records (dicts with `shape` and `encoding`)."""
    from lowbit.formats.encodings import ENCODINGS

    expected = expected_tensors(args)
    for name, (role, shape) in expected.items():
        entry = tensors.get(name)
        if role.feature is not None:
            wanted = bool(getattr(args, role.feature))
            if entry is not None and not wanted:
                raise InvalidModel(f"tensor {name} is present but config field {role.feature!r} is false")
            if entry is None and wanted:
                raise InvalidModel(f"tensor {name} is missing (config field {role.feature!r} is true)")
        if entry is None:
            if role.feature is None and role.required(args):
                raise InvalidModel(f"tensor {name} is missing")
            continue
        have = tuple(int(d) for d in _field(entry, "shape"))
        encoding = _field(entry, "encoding")  # None: a source tensor, not encoded yet
        if encoding is not None and encoding not in ENCODINGS:
            raise InvalidModel(f"tensor {name} has unknown encoding {encoding!r}")
        if role.kind == "vector" and encoding is not None and encoding not in DENSE:
            raise InvalidModel(f"tensor {name} must be stored dense ({'/'.join(DENSE)}), not {encoding}")
        if have != shape:
            raise InvalidModel(f"tensor {name} has shape {list(have)}, the config implies {list(shape)} "
                               f"({_explain(name, shape, args)})")
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise InvalidModel(f"tensor {unknown[0]} is not part of this model "
                           f"(a newer model, or num_hidden_layers {args.num_hidden_layers} is wrong?)")


def _explain(name: str, shape: tuple[int, ...], a: ModelArgs) -> str:
    """Which config fields a role's shape comes from, for the message."""
    if any(p in name for p in ("q_proj", "o_proj", "attn_sub_norm")):
        return f"num_attention_heads {a.num_attention_heads} × head_dim {a.head_dim}, hidden_size {a.hidden_size}"
    if any(p in name for p in ("k_proj", "v_proj")):
        return f"num_key_value_heads {a.num_key_value_heads} × head_dim {a.head_dim}, hidden_size {a.hidden_size}"
    if "mlp." in name:
        return f"intermediate_size {a.intermediate_size}, hidden_size {a.hidden_size}"
    if "embed" in name or "lm_head" in name:
        return f"vocab_size {a.vocab_size}, hidden_size {a.hidden_size}"
    return f"hidden_size {a.hidden_size}"


# -- tokenizer -----------------------------------------------------------------------------------

TOKENIZER_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "blob": (str,),
    "chat_template": (str, dict, type(None)),
    "bos_token": (str, type(None)),
    "eos_token": (str, type(None)),
    "pad_token": (str, type(None)),
    "unk_token": (str, type(None)),
    "add_bos_token": (bool, type(None)),
    "add_eos_token": (bool, type(None)),
    "special_tokens": (list, type(None)),
}


def check_tokenizer_metadata(meta: Any, blob_names: list[str]) -> dict[str, Any]:
    """metadata.tokenizer: an object with fields of the SPEC.md 3.2 types, naming a blob the file
    has (defaults as the loader applies them)."""
    if not isinstance(meta, dict):
        raise InvalidModel(f"metadata field 'tokenizer' must be an object, got {type(meta).__name__}")
    for key, types_ in TOKENIZER_FIELDS.items():
        if key in meta and not isinstance(meta[key], types_):
            raise InvalidModel(f"tokenizer field {key!r} has the wrong type ({type(meta[key]).__name__})")
    template = meta.get("chat_template")
    if isinstance(template, dict) and not all(isinstance(k, str) and isinstance(v, str) for k, v in template.items()):
        raise InvalidModel("tokenizer field 'chat_template' must map names to template strings")
    if not all(isinstance(s, str) for s in meta.get("special_tokens") or []):
        raise InvalidModel("tokenizer field 'special_tokens' must be a list of strings")
    blob = meta.get("blob", "tokenizer.json")
    if blob not in blob_names:
        raise InvalidModel(f"tokenizer field 'blob' names {blob!r}, which the file does not hold")
    return meta


def check_tokenizer(args: ModelArgs, tokenizer: Any) -> None:
    """Every id the tokenizer can produce has a row in the embedding (and the logits)."""
    n = tokenizer_id_count(tokenizer)
    if n > args.vocab_size:
        raise InvalidModel(f"the tokenizer has ids up to {n - 1}, but config field 'vocab_size' is "
                           f"{args.vocab_size} (tensor model.embed_tokens.weight has {args.vocab_size} rows)")


def tokenizer_id_count(tokenizer: Any) -> int:
    """1 + the largest id the tokenizer can emit (added tokens included)."""
    n = int(tokenizer.vocab_size)
    backend = getattr(tokenizer, "_backend", None)
    if tokenizer.kind == "tokenizers" and backend is not None:
        vocab = backend.get_vocab(with_added_tokens=True)
        if vocab:
            n = max(n, 1 + max(vocab.values()))
    return n


# -- generation defaults -------------------------------------------------------------------------

GENERATION_FIELDS: dict[str, tuple[type, ...]] = {
    "temperature": (int, float), "top_p": (int, float), "top_k": (int,), "min_p": (int, float),
    "repetition_penalty": (int, float), "max_new_tokens": (int,), "do_sample": (bool,),
}


def check_generation(meta: Any) -> dict[str, Any]:
    """metadata.generation: an object whose sampling defaults are numbers (they reach
    SamplingParams' comparisons); unknown keys are kept and ignored."""
    if not isinstance(meta, dict):
        raise InvalidModel(f"metadata field 'generation' must be an object, got {type(meta).__name__}")
    for key, types_ in GENERATION_FIELDS.items():
        v = meta.get(key)
        if v is None:
            continue
        if (isinstance(v, bool) and bool not in types_) or not isinstance(v, types_) or (
            isinstance(v, float) and not math.isfinite(v)
        ):
            raise InvalidModel(f"generation field {key!r} has the wrong type or value ({_short(v)})")
    return meta


def check_context(args: ModelArgs, context_length: Any) -> None:
    """A caller's context_length: a positive integer (above the model's limit it is clamped to it)."""
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
        raise InvalidModel(f"context_length must be an integer, got {type(context_length).__name__}")
    if context_length < 1:
        raise InvalidModel(f"context_length must be at least 1, got {context_length}")


def _short(value: Any, limit: int = 40) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
