"""Hostile .lowbit files for tests/test_hostile_files.py, and the worker process that runs them.

Every file is written by the project's own LowbitWriter (so it is checksum-valid and passes the
reader's structural checks unless a case edits the header on purpose, which then recomputes the
CRC): a tiny model whose config or tensors have been made to disagree. The worker loads each file
and, if it loads, runs it (1-token fused decode, 4-token prefill, a decode step after it, a chat
render), printing one JSON line before and after each job, so a crash names its file.

    python tests/hostile_models.py < jobs.json     # jobs: [{"name":..., "path":...} | {"fuzz": [seed, k]}]
"""

from __future__ import annotations

import copy
import json
import struct
import sys
import tempfile
import traceback
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import COMMON  # noqa: E402  (the tiny shape every test model shares)

BASE_CONFIG: dict[str, Any] = dict(
    COMMON,
    head_dim=16,
    rope_theta=10000.0,
    rope_scaling=None,
    tie_word_embeddings=False,
    attention_bias=False,
    sliding_window=None,
    hidden_act="silu",
    eos_token_id=[2],
    source_architecture="LlamaForCausalLM",
)

# encodings per role for the variants (q2 down_proj: 176 inputs are padded to 192 by its kernel)
VARIANTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "mixed": {
        "q_proj": ("q4", {"group_size": 32}), "k_proj": ("q8", {"group_size": 32}),
        "v_proj": ("ternary", {"scale_mode": "row"}), "o_proj": ("q2", {"group_size": 32}),
        "gate_proj": ("onebit", {"layernorm": False}), "up_proj": ("q3", {"group_size": 64}),
        "down_proj": ("q2", {"group_size": 32}), "embed": ("q8", {"group_size": 0}),
        "lm_head": ("f16", {}),
    },
    "q4": {r: ("q4", {"group_size": 32}) for r in
           ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")}
    | {"embed": ("q8", {"group_size": 32})},
    "ternary": {r: ("ternary-1.6", {"scale_mode": "tensor"}) for r in
                ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    | {"embed": ("bf16", {}), "lm_head": ("q8", {"group_size": 64})},
}

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@lru_cache(maxsize=1)
def tokenizer_blob() -> bytes:
    from tiny_models import tokenizer_json

    return tokenizer_json().encode()


def tokenizer_meta() -> dict[str, Any]:
    from tiny_models import CHATML

    return {
        "kind": "tokenizers", "blob": "tokenizer.json", "chat_template": CHATML,
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
        "pad_token": None, "add_bos_token": None, "add_eos_token": None,
        "special_tokens": ["<unk>", "<|im_start|>", "<|im_end|>"],
    }


def role_of(name: str) -> str:
    for r in LINEARS:
        if f".{r}." in name:
            return r
    return "embed" if "embed_tokens" in name else "lm_head" if name.startswith("lm_head") else "norm"


def shapes(cfg: dict[str, Any], bitnet: bool = False) -> dict[str, tuple[int, ...]]:
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
        if bitnet:
            out |= {p + "self_attn.attn_sub_norm.weight": (q,), p + "mlp.ffn_sub_norm.weight": (inter,)}
        if cfg.get("attention_bias"):
            out |= {p + f"self_attn.{x}_proj.bias": (q if x == "q" else kv,) for x in "qkv"}
    return out


def encode(name: str, shape: tuple[int, ...], variant: str, seed: int = 0, encoding: str | None = None):
    """A random tensor of `shape` in the variant's encoding for its role (norms/biases f32)."""
    from lowbit.quant import quantize

    rng = np.random.default_rng(zlib.crc32(repr((name, shape, seed)).encode()))
    role = role_of(name)
    if len(shape) == 1 or name.endswith(".bias"):
        base = 0.1 if name.endswith(".bias") else 1.0
        w = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return quantize(w, encoding or "f32", {})
    enc, params = VARIANTS[variant].get(role, ("f32", {}))
    if encoding is not None:
        enc, params = encoding, {"q8": {"group_size": 0}, "q4": {"group_size": 32}, "q3": {"group_size": 32},
                                 "q2": {"group_size": 32}, "ternary": {"scale_mode": "row"},
                                 "ternary-1.6": {"scale_mode": "row"}, "onebit": {"layernorm": False}}.get(encoding, {})
    w = (0.08 * rng.standard_normal(shape)).astype(np.float32)
    return quantize(w, enc, params)


@lru_cache(maxsize=8)
def _base_tensors(variant: str) -> dict[str, Any]:
    cfg = base_config(variant)
    return {n: encode(n, s, variant) for n, s in shapes(cfg, bitnet=variant == "ternary").items()}


def base_config(variant: str = "mixed") -> dict[str, Any]:
    cfg = copy.deepcopy(BASE_CONFIG)
    if variant == "ternary":
        cfg |= {"hidden_act": "relu2", "tie_word_embeddings": False, "activation_bits": 8,
                "source_architecture": "BitNetForCausalLM", "sliding_window": 24}
    return cfg


class Model:
    """An editable model: config, metadata, tensors (name -> EncodedTensor), blobs."""

    def __init__(self, variant: str = "mixed") -> None:
        self.variant = variant
        self.config = base_config(variant)
        self.tokenizer = tokenizer_meta()
        self.tensors = dict(_base_tensors(variant))
        self.blobs = {"tokenizer.json": tokenizer_blob()}
        self.extra_meta: dict[str, Any] = {}

    def reshape(self, name: str, shape: tuple[int, ...], encoding: str | None = None) -> Model:
        self.tensors[name] = encode(name, tuple(shape), self.variant, seed=1, encoding=encoding)
        return self

    def metadata(self) -> dict[str, Any]:
        return {"architecture": "llama", "config": self.config, "tokenizer": self.tokenizer,
                "generation": {}, **self.extra_meta}

    def write(self, path: Path) -> Path:
        from lowbit.formats import LowbitWriter

        with LowbitWriter(path, self.metadata()) as w:
            for name, data in self.blobs.items():
                w.add_blob(name, data)
            for name, t in self.tensors.items():
                w.add_tensor(name, t)
        return path


def rewrite_header(path: Path, edit, raw_text: bool = False) -> Path:
    """Apply edit(header dict or raw bytes) to a written file's header and rebuild the prefix (CRC,
    lengths, data offset), keeping the data section: the result is checksum-valid."""
    raw = path.read_bytes()
    _magic, major, minor, _crc, hlen, doff = struct.unpack("<8sHHIQQ", raw[:32])
    header = raw[32 : 32 + hlen]
    data = raw[doff:]
    new = edit(bytes(header) if raw_text else json.loads(header))
    new = new if isinstance(new, bytes) else json.dumps(new).encode()
    new_off = -(-(32 + len(new)) // 64) * 64
    prefix = struct.pack("<8sHHIQQ", raw[:8], major, minor, zlib.crc32(new), len(new), new_off)
    path.write_bytes(prefix + new + b"\0" * (new_off - 32 - len(new)) + data)
    return path


# -- fuzz ---------------------------------------------------------------------------------------

INTERESTING = [0, 1, -1, 2, 3, 7, 63, 64, 65, 255, 256, 383, 384, 385, 1 << 16, 1 << 24, 1 << 31,
               (1 << 31) - 1, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, 1 << 64, -(1 << 63),
               0.5, 1.0, 64.0, -0.0, 1e-30, 1e30, 1e308, True, False, None, "", "64", "silu",
               [], [1], [384], {}, {"rope_type": "llama3", "factor": 0}]


def fuzz_model(seed: int, k: int, workdir: Path) -> Path:
    """Mutation k of seed: 1-3 random edits of config, tensors or header (digits, types)."""
    rng = np.random.default_rng([seed, k])
    m = Model(("mixed", "q4", "ternary")[int(rng.integers(3))])
    header_edits = []
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(6))
        if kind == 0:  # a config value
            key = str(rng.choice(sorted(m.config)))
            cur = m.config[key]
            choices = list(INTERESTING)
            if isinstance(cur, int) and not isinstance(cur, bool):
                choices += [cur + 1, cur - 1, cur * 2, cur // 2, -cur]
            m.config[key] = choices[int(rng.integers(len(choices)))]
        elif kind == 1:  # a tensor dimension
            name = str(rng.choice(sorted(m.tensors)))
            shape = list(m.tensors[name].shape)
            d = int(rng.integers(len(shape)))
            shape[d] = max(1, int(rng.choice([shape[d] + 1, shape[d] - 1, shape[d] * 2, shape[d] // 2, 1, 300])))
            m.reshape(name, tuple(shape))
        elif kind == 2:  # drop or duplicate-under-another-name a tensor
            name = str(rng.choice(sorted(m.tensors)))
            t = m.tensors.pop(name)
            if rng.integers(2):
                m.tensors[name.replace("layers.0", "layers.1").replace("layers.1.", "layers.7.")] = t
        elif kind == 3:  # re-encode a tensor
            name = str(rng.choice(sorted(m.tensors)))
            enc = str(rng.choice(["f32", "f16", "bf16", "q8", "q4", "q3", "q2", "ternary", "ternary-1.6", "onebit"]))
            shape = m.tensors[name].shape
            if len(shape) == 1 and enc not in ("f32", "f16", "bf16"):
                shape = (1, shape[0])
            m.reshape(name, shape, encoding=enc)
        elif kind == 4:  # tokenizer metadata
            key = str(rng.choice(sorted(m.tokenizer)))
            m.tokenizer[key] = INTERESTING[int(rng.integers(len(INTERESTING)))]
        else:  # a digit of the header text
            header_edits.append(int(rng.integers(1 << 30)))
    path = m.write(workdir / f"fuzz-{seed}-{k}.lowbit")
    for r in header_edits:
        def flip(h, r=r):
            text = bytearray(h)
            digits = [i for i, c in enumerate(text) if 48 <= c <= 57]
            i = digits[r % len(digits)]
            text[i] = 48 + (r >> 8) % 10
            return bytes(text)
        rewrite_header(path, flip, raw_text=True)
    return path


# -- the worker ---------------------------------------------------------------------------------


def _own_errors() -> tuple[type[BaseException], ...]:
    from lowbit.errors import LowbitError
    from lowbit.formats.errors import FormatError

    return (LowbitError, FormatError)


def run_file(path: Path) -> dict[str, Any]:
    """Load and run one file: {"outcome": "ok"} or {"outcome": "refused", "stage", "error", "message"}."""
    import lowbit

    own = _own_errors()
    stage = "load"
    try:
        lm = lowbit.load(path, threads=1)
        try:
            stage = "logits1"
            lm.logits([1])
            stage = "logits4"
            lm.logits([1, 5, 9, 13])
            stage = "decode"
            lm.prefill([1, 5, 9, 13])
            lm.decode(20)
            stage = "chat"
            lm.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
        finally:
            lm.close()
    except own as e:
        return {"outcome": "refused", "stage": stage, "error": type(e).__name__, "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - reported as a failure by the test
        return {"outcome": "unexpected", "stage": stage, "error": type(e).__name__,
                "message": traceback.format_exc()[-2000:]}
    return {"outcome": "ok", "stage": "done"}


def main() -> None:
    import os

    jobs = json.load(sys.stdin)
    # the protocol gets its own copy of stdout; anything else printing (libraries) goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def say(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    workdir = Path(tempfile.mkdtemp(prefix="lowbit-fuzz-"))
    for job in jobs:
        name = job["name"]
        say({"start": name})
        if "fuzz" in job:
            try:
                path = fuzz_model(*job["fuzz"], workdir)
            except _own_errors() as e:  # the writer refused to write it: nothing to load
                say({"done": name, "outcome": "unwritable", "error": type(e).__name__})
                continue
        else:
            path = Path(job["path"])
        result = run_file(path)
        if "fuzz" in job:
            path.unlink(missing_ok=True)
        say({"done": name, **result})


if __name__ == "__main__":
    main()
