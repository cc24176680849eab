"""A GGUF file (llama.cpp's format) read as if it were a Hugging Face checkpoint.

GGUF holds everything lowbit needs, in llama.cpp's own shape: hyper-parameters as `{arch}.*` keys,
the tokenizer as token/merge/score arrays, and Q/K rows interleaved for llama.cpp's RoPE. This
module translates each piece to its Hugging Face form (config.json, tokenizer.json and friends,
`model.layers.{i}...` tensors in rotate-half row order), so that everything downstream sees one
kind of checkpoint. Tensors are dequantised one at a time, so memory stays at one fp32 tensor.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.convert.models.base import GGUFArch
from lowbit.errors import ConversionError, UnsupportedModel

log = logging.getLogger(__name__)

# llama.cpp token types (gguf.TokenType); spelled out so importing this module needs no gguf.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _architectures() -> dict[str, GGUFArch]:
    """llama.cpp architecture name -> how to read it, from each model module's `GGUF`."""
    from lowbit.convert.models import MODULES

    return {name: arch for m in MODULES for name, arch in getattr(m, "GGUF", {}).items()}


ARCHITECTURES = _architectures()

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's form of Llama-3 rope scaling; folded into config


def hf_tensor_name(gguf_name: str, extra: Mapping[str, str] | None = None) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None when llama.cpp's name is not one we know;
    `extra`: the architecture's block tensors beyond (or instead of) Llama's."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    block = {**_BLOCK_TENSORS, **(extra or {})}
    if m and m.group(2) in block:
        return f"model.layers.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation of a Q or K weight (or bias).

    HF -> GGUF did `w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)`: within each head, rows
    [x0..x(d/2-1), y0..y(d/2-1)] (rotate-half pairs) became [x0, y0, x1, y1, ...]. The inverse
    reads the rows as (n_head, d/2, 2) and swaps back.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConversionError(
            f"cannot undo the Q/K permutation: {rows} rows is not a multiple of 2 x {n_head} heads"
        )
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open_reader(path: Path) -> Any:
    from lowbit.convert.gguf_quants import open_reader

    try:
        return open_reader(path)
    except (ValueError, IndexError, TypeError, OSError) as e:
        # gguf-py lets a truncated or foreign file surface as raw numpy errors
        raise ConversionError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {e})"
        ) from None


class GGUFCheckpoint:
    """Config, tokenizer files and float32 tensors (HF names, HF shapes) from one .gguf file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.source_id = str(self.path)
        self.revision: str | None = None
        self._reader = _open_reader(self.path)
        self._cache: dict[str, Any] = {}
        self.gguf_architecture = str(self.meta("general.architecture", ""))
        if self.gguf_architecture not in ARCHITECTURES:
            raise UnsupportedModel(
                f"{self.path.name}: GGUF architecture {self.gguf_architecture!r} is not supported "
                f"(supported: {', '.join(ARCHITECTURES)})"
            )
        self.arch = ARCHITECTURES[self.gguf_architecture]
        try:
            self._tensors = self._map_tensors()
            self.config = self._build_config()
            self.generation_config = self._build_generation_config()
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, IndexError, KeyError) as e:
            # hostile metadata (a head count of 0, a string where a number goes, ...)
            raise ConversionError(
                f"{self.path.name}: malformed GGUF metadata ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
            ) from None

    # -- metadata ---------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        """A metadata value as a Python value (str, int, float, bool or list), cached."""
        if key not in self._cache:
            field = self._reader.fields.get(key)
            try:
                self._cache[key] = default if field is None else field.contents()
            except (UnicodeDecodeError, ValueError, IndexError, TypeError) as e:
                raise ConversionError(
                    f"{self.path.name}: GGUF metadata {key} cannot be read ({type(e).__name__})"
                ) from None
        value = self._cache[key]
        return default if value is None else value

    def _arch_meta(self, key: str, default: Any = None) -> Any:
        return self.meta(f"{self.gguf_architecture}.{key}", default)

    def _required(self, key: str) -> Any:
        value = self._arch_meta(key)
        if value is None:
            raise ConversionError(
                f"{self.path.name}: GGUF metadata {self.gguf_architecture}.{key} is missing"
            )
        return value

    # -- tensors ----------------------------------------------------------------------------
    def _map_tensors(self) -> dict[str, Any]:
        mapped: dict[str, Any] = {}
        for t in self._reader.tensors:
            if t.name == _ROPE_FREQS:
                continue
            name = hf_tensor_name(t.name, self.arch.block_tensors)
            if name is None:
                raise UnsupportedModel(
                    f"{self.path.name}: GGUF tensor {t.name!r} has no Llama-style counterpart "
                    f"(architecture {self.gguf_architecture}; MoE and multimodal GGUFs are not supported)"
                )
            mapped[name] = t
        if "model.embed_tokens.weight" not in mapped:
            raise ConversionError(f"{self.path.name}: no token_embd.weight tensor")
        return mapped

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """HF shape ([out, in]) without reading data: GGUF lists dimensions innermost first."""
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def get(self, name: str) -> np.ndarray:
        """One tensor as a writable float32 array, dequantised, in HF row order."""
        from lowbit.convert.gguf_quants import dequantize

        t = self._tensors[name]
        w = dequantize(t, f"{self.path.name}: ")
        # a copy: never hand out (read-only) views of the memory map
        w = np.array(w, dtype=np.float32).reshape(self.shape(name))
        if self.arch.norm_shift and name.endswith("norm.weight"):  # Gemma: llama.cpp stores 1 + w
            w -= np.float32(self.arch.norm_shift)
        return np.ascontiguousarray(self.hf_rows(name, w))

    def gguf_tensor(self, name: str) -> Any:
        """The gguf-py ReaderTensor behind an HF name (raw blocks, for lossless re-packing)."""
        return self._tensors[name]

    def hf_rows(self, name: str, w: np.ndarray) -> np.ndarray:
        """Rows of a tensor (values or raw block rows) in HF order: Q/K un-permuted."""
        if self.arch.permuted_qk:
            if ".self_attn.q_proj." in name:
                return unpermute_qk(w, self.config["num_attention_heads"])
            if ".self_attn.k_proj." in name:
                return unpermute_qk(w, self.config["num_key_value_heads"])
        return w

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(HF name, float32 array), one at a time, in file order."""
        for name in self._tensors:
            yield name, self.get(name)

    def file_hashes(self) -> dict[str, str]:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return {self.path.name: h.hexdigest()}

    # -- config -----------------------------------------------------------------------------
    def _head_counts(self) -> tuple[int, int]:
        heads = _one_per_model(self._required("attention.head_count"), "attention.head_count")
        kv = self._arch_meta("attention.head_count_kv")
        return heads, heads if kv is None else _one_per_model(kv, "attention.head_count_kv")

    def _build_config(self) -> dict[str, Any]:
        hidden = int(self._required("embedding_length"))
        heads, kv_heads = self._head_counts()
        head_dim = int(self._arch_meta("attention.key_length") or hidden // heads)
        rope_dim = self._arch_meta("rope.dimension_count")
        if rope_dim is not None and int(rope_dim) != head_dim:
            raise UnsupportedModel(
                f"{self.path.name}: partial RoPE ({rope_dim} of {head_dim} dims) is not supported"
            )
        vocab = self.shape("model.embed_tokens.weight")[0]
        theta = _f32(self._arch_meta("rope.freq_base", 10000.0))
        bos, eos_ids, pad = self._special_ids()
        cfg: dict[str, Any] = {
            "architectures": [self.arch.hf_class],
            "model_type": self.arch.model_type,
            "hidden_size": hidden,
            "intermediate_size": int(self._required("feed_forward_length")),
            "num_hidden_layers": int(self._required("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "vocab_size": vocab,
            "rms_norm_eps": _f32(self._arch_meta("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": theta,
            "rope_scaling": self._rope_scaling(theta, head_dim),
            "max_position_embeddings": int(self._arch_meta("context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "attention_bias": "model.layers.0.self_attn.q_proj.bias" in self._tensors,
            "hidden_act": "silu",
            "bos_token_id": bos,
            "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
            "pad_token_id": pad,
            "torch_dtype": "float32",
        }
        if self.arch.config is not None:
            self.arch.config(self._arch_meta, cfg)
        return cfg

    def _special_ids(self) -> tuple[int | None, list[int], int | None]:
        """BOS, every end-of-generation id (EOS, then EOT/EOM when the file names them), PAD."""
        bos = self.meta("tokenizer.ggml.bos_token_id")
        eos: list[int] = []
        for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
            v = self.meta(f"tokenizer.ggml.{key}")
            if v is not None and int(v) not in eos:
                eos.append(int(v))
        pad = self.meta("tokenizer.ggml.padding_token_id")
        return (None if bos is None else int(bos)), eos, (None if pad is None else int(pad))

    def _rope_scaling(self, theta: float, head_dim: int) -> dict[str, Any] | None:
        freqs = next((t for t in self._reader.tensors if t.name == _ROPE_FREQS), None)
        if freqs is not None:
            return llama3_rope_scaling(np.asarray(freqs.data, dtype=np.float64), theta, head_dim)
        kind = self._arch_meta("rope.scaling.type")
        factor = self._arch_meta("rope.scaling.factor")
        if kind is None and self._arch_meta("rope.scale_linear") is not None:
            # files older than rope.scaling.type
            kind, factor = "linear", self._arch_meta("rope.scale_linear")
        if kind in (None, "none") or factor in (None, 1.0):
            return None
        if kind == "linear":
            return {"rope_type": "linear", "factor": float(factor)}
        if kind == "yarn":
            orig = self._arch_meta("rope.scaling.original_context_length")
            return {
                "rope_type": "yarn",
                "factor": float(factor),
                "original_max_position_embeddings": orig,
            }
        raise UnsupportedModel(
            f"{self.path.name}: RoPE scaling type {kind!r} is not supported (linear, yarn, llama3)"
        )

    def _build_generation_config(self) -> dict[str, Any]:
        return {
            k: self.config[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if self.config[k] is not None
        }

    # -- tokenizer --------------------------------------------------------------------------
    @functools.cached_property
    def tokenizer_files(self) -> dict[str, bytes]:
        """tokenizer.json, tokenizer_config.json and special_tokens_map.json, built from metadata."""
        return build_tokenizer_files(
            self.meta, self.config["max_position_embeddings"], self.path.name
        )


def _f32(value: Any) -> float:
    """A float32 metadata value as the decimal it was written from (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _one_per_model(value: Any, key: str) -> int:
    """A hyper-parameter that some GGUFs store per layer; lowbit needs it uniform."""
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise UnsupportedModel(f"per-layer {key} ({sorted(set(value))}) is not supported")
        value = value[0]
    return int(value)


def llama3_rope_scaling(factors: np.ndarray, theta: float, head_dim: int) -> dict[str, Any] | None:
    """Recover HF's `rope_type: llama3` parameters from llama.cpp's rope_freqs tensor.

    llama.cpp stores the per-frequency divisors, not the parameters. Only the wavelength
    thresholds orig/low and orig/high matter, so we fix low = 1 (as Meta does), try Meta's
    published settings, then fit the rest, and accept a candidate only if it reproduces the
    tensor.
    """
    factors = np.asarray(factors, dtype=np.float64)
    if np.allclose(factors, 1.0):
        return None
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor = float(factors.max())
    if wavelen.shape == factors.shape:
        for low, high, orig in _llama3_candidates(factors, wavelen, factor):
            if np.allclose(
                _llama3_factors(wavelen, factor, low, high, orig), factors, rtol=1e-4, atol=0
            ):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": orig,
                }
    raise UnsupportedModel(
        "the GGUF's rope_freqs tensor matches no Llama-3 RoPE scaling; not supported"
    )


def _llama3_candidates(
    factors: np.ndarray, wavelen: np.ndarray, factor: float
) -> Iterator[tuple[float, float, int]]:
    yield from ((1.0, 4.0, orig) for orig in (8192, 4096, 16384, 32768, 131072))
    mid = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    # between the thresholds: smooth = (orig / wavelen - low) / (high - low), linear in 1/wavelen
    smooth = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
    inv = 1 / wavelen[mid]
    if mid.sum() >= 2:
        slope, intercept = np.polyfit(inv, smooth, 1)
        if intercept < 0:
            yield 1.0, round(float(1 - 1 / intercept), 6), int(round(-slope / intercept))
    for s, i in zip(smooth, inv, strict=True):
        yield 1.0, 4.0, int(round((3 * s + 1) / i))
    if not mid.any():  # any threshold between the last unscaled and the first scaled wavelength
        lo = 4 * wavelen[factors <= 1 + 1e-6].max(initial=0.0)
        hi = wavelen[factors > 1 + 1e-6].min(initial=np.inf)
        if lo < hi and np.isfinite(hi):
            yield 1.0, 4.0, int(round(math.sqrt(max(lo, 1.0) * hi)))


def _llama3_factors(
    wavelen: np.ndarray, factor: float, low: float, high: float, orig: int
) -> np.ndarray:
    """llama.cpp's rope_freqs for HF's llama3 parameters (convert_hf_to_gguf.py's recipe)."""
    smooth = (orig / wavelen - low) / (high - low)
    with np.errstate(divide="ignore"):
        mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < orig / high, 1.0, np.where(wavelen > orig / low, factor, mid))


# -- tokenizer ------------------------------------------------------------------------------
# Split regexes llama.cpp applies for each `tokenizer.ggml.pre` (llama-vocab.cpp), in the form the
# upstream tokenizer.json files use them.
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_RE = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _PreTokenizer:
    """How a byte-level vocabulary splits text before BPE.

    kind: "gpt2" (ByteLevel's own GPT-2 regex), "digits" (every digit alone, then the GPT-2
    regex) or "split" (`regex`, then ByteLevel without its regex). ignore_merges is llama.cpp's
    tokenizer_ignore_merges (a whole word found in the vocabulary wins); nfc: Qwen2's
    tokenizer.json normalises to NFC first.
    """

    kind: str
    regex: str | None = None
    ignore_merges: bool = False
    nfc: bool = False


_GPT2 = _PreTokenizer("gpt2")
_DIGITS = _PreTokenizer("digits")
_LLAMA3 = _PreTokenizer("split", _LLAMA3_RE, ignore_merges=True)
PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "trillion"), _GPT2),
    # llama.cpp: "\p{N}" first, then the GPT-2 regex; tokenizer.json: Digits(individual) + ByteLevel
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), _DIGITS
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"), _LLAMA3
    ),
    "qwen2": _PreTokenizer("split", _QWEN2_RE, nfc=True),
    **dict.fromkeys(("deepseek-r1-qwen", "stablelm2"), _PreTokenizer("split", _QWEN2_RE)),
    "tekken": _PreTokenizer("split", _TEKKEN_RE, ignore_merges=True),
}


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the spelling of byte-level BPE tokens)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_vocab(tokens: list[str]) -> dict[str, int]:
    """token -> id, re-spelling in GPT-2's byte alphabet any token stored as raw text."""
    table = _byte_alphabet()
    alphabet = set(table.values())
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        key = tok if set(tok) <= alphabet else "".join(table[b] for b in tok.encode("utf-8"))
        vocab.setdefault(key, i)
    return vocab


def _byte_level_model(meta: Any, tokens: list[str], pre: _PreTokenizer) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) for m in meta("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(_byte_level_vocab(tokens), merges, ignore_merges=pre.ignore_merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre.kind != "split")
    if pre.kind == "gpt2":
        tok.pre_tokenizer = byte_level
    elif pre.kind == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        split = pre_tokenizers.Split(Regex(pre.regex), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    if pre.nfc:
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to llama.cpp's SentencePiece tokenizer.

    llama.cpp (like SentencePiece BPE) repeatedly joins the adjacent pair whose concatenation is
    the highest-scoring vocabulary piece; ranking every (left, right) split of every piece by
    that piece's score gives the same order to a BPE model.
    """
    ids = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    ranked = []
    for piece, i in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, ids[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_model(meta: Any, tokens: list[str], types: list[int]) -> Any:
    """llama.cpp's SPM vocabulary as a BPE tokenizer.json with byte fallback (as HF's Llama has)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = [float(s) for s in meta("tokenizer.ggml.scores", [0.0] * len(tokens))]
    unk_id = next(
        (i for i, t in enumerate(types) if t == UNKNOWN), meta("tokenizer.ggml.unknown_token_id")
    )
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}  # first id wins for duplicates
    model = models.BPE(
        vocab,
        _spm_merges(tokens, scores, types),
        unk_token=None if unk_id is None else tokens[int(unk_id)],
        fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(model)
    prefix = bool(meta("tokenizer.ggml.add_space_prefix", True))
    # llama.cpp prefixes a space to each run of text after a special token: the legacy HF normaliser
    steps = [normalizers.Prepend("▁")] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence([*dec, decoders.Strip(" ", 1, 0)] if prefix else dec)
    return tok


def _add_special_tokens(tok: Any, tokens: list[str], types: list[int]) -> dict[int, dict[str, Any]]:
    """Control/unknown tokens become special added tokens and user-defined ones plain added
    tokens, so that they match whole in text. Returns transformers' `added_tokens_decoder`."""
    from tokenizers import AddedToken

    added: dict[int, AddedToken] = {}
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind not in (CONTROL, UNKNOWN, USER_DEFINED):
            continue
        if tok.token_to_id(text) != i:
            # its text is not its vocabulary spelling (llama.cpp stores some as raw text); adding it
            # would append a new id past the model's vocabulary, so leave it to the BPE model
            log.debug("GGUF token %d %r is not added as a whole-match token", i, text)
            continue
        added[i] = AddedToken(text, normalized=False, special=kind != USER_DEFINED)
    tok.add_special_tokens([t for t in added.values() if t.special])
    tok.add_tokens([t for t in added.values() if not t.special])
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {i: {f: getattr(t, f) for f in fields} for i, t in added.items()}


def _post_processor(
    tok: Any, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool
) -> None:
    """BOS/EOS insertion lives in tokenizer.json's post-processor: transformers 5 and our runtime
    take it from there, not from tokenizer_config.json's add_bos_token."""
    from tokenizers import processors

    first = [bos] if add_bos and bos else []
    last = [eos] if add_eos and eos else []
    if not first and not last:
        return
    single = " ".join([*first, "$A:0", *last])
    pair = " ".join([*first, "$A:0", *last, *first, "$B:1", *last])
    ids = [(t, tok.token_to_id(t)) for t in dict.fromkeys(first + last)]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)


def build_tokenizer_files(meta: Any, max_length: int, where: str = "GGUF") -> dict[str, bytes]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json from GGUF metadata.

    `meta(key, default)` returns a metadata value. Supported: `gpt2` (byte-level BPE, with the
    pre-tokenizer that `tokenizer.ggml.pre` names) and `llama` (SentencePiece, rebuilt as BPE
    with byte fallback, which is what llama.cpp runs).
    """
    model = meta("tokenizer.ggml.model")
    tokens = [str(t) for t in meta("tokenizer.ggml.tokens", [])]
    if not tokens:
        raise ConversionError(f"{where}: no tokenizer.ggml.tokens in the GGUF metadata")
    types = [int(t) for t in meta("tokenizer.ggml.token_type", [NORMAL] * len(tokens))]
    if model == "gpt2":
        pre_name = meta("tokenizer.ggml.pre")
        if pre_name in (None, "default"):
            log.warning("%s: no tokenizer.ggml.pre; assuming GPT-2's pre-tokenizer", where)
            pre_name = "gpt-2"
        if pre_name not in PRE_TOKENIZERS:
            raise UnsupportedModel(
                f"{where}: GGUF pre-tokenizer {pre_name!r} is not supported "
                f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})"
            )
        tok = _byte_level_model(meta, tokens, PRE_TOKENIZERS[pre_name])
        add_bos_default = False
    elif model == "llama":
        tok = _sentencepiece_model(meta, tokens, types)
        # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise
        add_bos_default = True
    else:
        raise UnsupportedModel(
            f"{where}: tokenizer.ggml.model {model!r} is not supported (supported: gpt2, llama)"
        )
    added = _add_special_tokens(tok, tokens, types)
    specials = [t["content"] for t in added.values() if t["special"]]

    def token(key: str) -> str | None:
        i = meta(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    unk, pad = token("unknown_token_id"), token("padding_token_id")
    add_bos = bool(meta("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(meta("tokenizer.ggml.add_eos_token", False))
    _post_processor(tok, bos, eos, add_bos, add_eos)
    special_map = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    special_map = {k: v for k, v in special_map.items() if v is not None}
    extra = [s for s in specials if s not in special_map.values()]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "additional_special_tokens": extra,
        "model_max_length": int(max_length),
        "clean_up_tokenization_spaces": False,
        "chat_template": meta("tokenizer.chat_template"),
        "added_tokens_decoder": {str(i): t for i, t in added.items()},
    }
    return {
        "tokenizer.json": tok.to_str().encode("utf-8"),
        "tokenizer_config.json": _json_bytes(config),
        "special_tokens_map.json": _json_bytes({**special_map, "additional_special_tokens": extra}),
    }


def _json_bytes(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
