"""Write the committed golden files: tiny .lowbit files, one per encoding family, plus
tests/golden/expected.npz with every tensor's expected dequantised values.

The expected values are computed here from the logical inputs with the SPEC.md formulas, not by
the encodings' dequantize(), so tests/test_golden.py checks the reader against the spec. The files
are written once and committed: a later change to the reader that can no longer read them (or
reads them differently) fails that test. Re-run only when adding files, never to "fix" the test:

    python tools/make_golden_files.py            # writes tests/golden/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lowbit.formats import LowbitWriter
from lowbit.formats.encodings import BF16, F16, F32, ONEBIT, Q2, Q3, Q4, Q8, TERNARY, TERNARY_1P6

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"

TOKENIZER_JSON = json.dumps(
    {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}
)
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def metadata(method: str, quality: dict | None = None) -> dict:
    """SPEC.md section 3 metadata with fixed values (no clock), so the files are reproducible."""
    meta = {
        "architecture": "llama",
        "config": {
            "hidden_size": 64,
            "intermediate_size": 176,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 384,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": None,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": [2],
            "source_architecture": "LlamaForCausalLM",
        },
        "tokenizer": {
            "kind": "tokenizers",
            "blob": "tokenizer.json",
            "chat_template": CHAT_TEMPLATE,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": None,
            "unk_token": None,
            "add_bos_token": True,
            "add_eos_token": False,
            "special_tokens": ["<s>", "</s>"],
        },
        "generation": {"temperature": 0.7, "top_p": 0.9},
        "provenance": {
            "source": "golden/tiny-llama",
            "revision": None,
            "files": {"model.safetensors": "0" * 64},
            "converter": "lowbit 0.1.0",
            "recipe": {"method": method, "embeddings": "f16", "rules": []},
            "created": "2025-01-01T00:00:00+00:00",
        },
    }
    if quality:
        meta["quality"] = quality
    return meta


def f16(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).astype(np.float64)


def bf16_bits(w: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bf16 by comparing the dropped half (finite inputs)."""
    u = w.astype(np.float32).view(np.uint32).astype(np.uint64)
    hi, lo = u >> 16, u & 0xFFFF
    up = (lo > 0x8000) | ((lo == 0x8000) & (hi & 1 == 1))
    return (hi + up).astype(np.uint16)


def dense_file(rng: np.random.Generator) -> tuple[list, dict]:
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((2, 7)).astype(np.float32)
    # bf16 ties (round to even both ways), a value that rounds up into the next binade, and -0
    c = (
        np.array(
            [
                0x3F808000,
                0x3F818000,
                0x3F80FFFF,
                0x3F807FFF,
                0x80000000,
                0x40490FDB,
                0xC2F6E979,
                0x3DCCCCCD,
                0x00012345,
                0x7F7F0000,
                0x3F7FFFFF,
                0xBF800001,
            ],
            dtype=np.uint32,
        )
        .view(np.float32)
        .reshape(4, 3)
    )
    n = (1.0 + 0.1 * rng.standard_normal(5)).astype(np.float32)
    tensors = [
        ("model.layers.0.self_attn.q_proj.weight", F32.pack(a), a),
        (
            "model.layers.0.self_attn.k_proj.weight",
            F16.pack(b),
            b.astype(np.float16).astype(np.float32),
        ),
        (
            "model.layers.0.mlp.up_proj.weight",
            BF16.pack(c),
            (bf16_bits(c).astype(np.uint32) << 16).view(np.float32),
        ),
        ("model.norm.weight", F32.pack(n), n),
        (
            "model.layers.0.input_layernorm.weight",
            BF16.pack(n),
            (bf16_bits(n).astype(np.uint32) << 16).view(np.float32),
        ),
    ]
    return tensors, metadata("f16")


def q8_file(rng: np.random.Generator) -> tuple[list, dict]:
    tensors = []
    for name, (out, n_in), g in (
        ("model.layers.0.self_attn.q_proj.weight", (3, 37), 0),
        ("model.layers.0.self_attn.k_proj.weight", (2, 70), 32),
        ("model.layers.1.mlp.down_proj.weight", (1, 300), 256),
    ):
        codes = rng.integers(-127, 128, size=(out, n_in)).astype(np.int8)
        gs = g or n_in
        ng = -(-n_in // gs)
        scales = rng.uniform(0.001, 0.1, size=(out, ng)).astype(np.float16)
        idx = np.arange(n_in) // gs
        expected = (f16(scales)[:, idx] * codes).astype(np.float32)
        tensors.append((name, Q8.pack(codes, scales, g), expected))
    return tensors, metadata("q8", quality={"ppl": 12.5, "kl": 0.0123, "ctx": 256})


def grouped_file(rng: np.random.Generator) -> tuple[list, dict]:
    tensors = []
    for name, enc, (out, n_in), g in (
        ("model.layers.0.self_attn.q_proj.weight", Q4, (2, 40), 32),
        ("model.layers.0.self_attn.v_proj.weight", Q3, (3, 70), 64),
        ("model.layers.0.mlp.gate_proj.weight", Q2, (2, 130), 128),
        ("model.layers.1.mlp.up_proj.weight", Q4, (1, 1), 128),
        ("model.layers.1.mlp.down_proj.weight", Q3, (1, 32), 32),
    ):
        top = (1 << enc.bits) - 1
        ng = -(-n_in // g)
        q = rng.integers(0, top + 1, size=(out, n_in)).astype(np.uint8)
        sq = rng.integers(0, 256, size=(out, ng)).astype(np.uint8)
        z = rng.integers(0, top + 1, size=(out, ng)).astype(np.uint8)
        rs = rng.uniform(1e-4, 1e-2, size=out).astype(np.float16)
        gi = np.arange(n_in) // g
        expected = (f16(rs)[:, None] * sq[:, gi] * (q.astype(np.float64) - z[:, gi])).astype(
            np.float32
        )
        tensors.append((name, enc.pack(q, sq, z, rs, g), expected))
    return tensors, metadata("q4")


def ternary_file(rng: np.random.Generator) -> tuple[list, dict]:
    tensors = []
    for name, enc, (out, n_in), mode in (
        ("model.layers.0.self_attn.q_proj.weight", TERNARY, (2, 130), "tensor"),
        ("model.layers.0.self_attn.o_proj.weight", TERNARY, (3, 5), "row"),
        ("model.layers.1.mlp.up_proj.weight", TERNARY_1P6, (2, 161), "tensor"),
        ("model.layers.1.mlp.down_proj.weight", TERNARY_1P6, (2, 7), "row"),
    ):
        t = rng.integers(-1, 2, size=(out, n_in)).astype(np.int8)
        s = rng.uniform(0.01, 1.0, size=1 if mode == "tensor" else out).astype(np.float32)
        expected = (t * (s[0] if mode == "tensor" else s[:, None].astype(np.float64))).astype(
            np.float32
        )
        tensors.append((name, enc.pack(t, s), expected))
    return tensors, metadata("ternary")


def onebit_file(rng: np.random.Generator) -> tuple[list, dict]:
    tensors = []
    for name, (out, n_in), ln in (
        ("model.layers.0.self_attn.q_proj.weight", (3, 9), False),
        ("model.layers.0.mlp.gate_proj.weight", (2, 70), True),
    ):
        s = np.where(rng.random((out, n_in)) < 0.5, -1, 1).astype(np.int8)
        g = rng.uniform(0.01, 1.0, size=n_in).astype(np.float16)
        h = rng.uniform(0.01, 1.0, size=out).astype(np.float16)
        expected = (f16(h)[:, None] * s * f16(g)[None, :]).astype(np.float32)
        tensors.append((name, ONEBIT.pack(s, g, h, layernorm=ln), expected))
    return tensors, metadata("onebit")


FILES = {
    "dense": dense_file,
    "q8": q8_file,
    "grouped": grouped_file,
    "ternary": ternary_file,
    "onebit": onebit_file,
}


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    expected: dict[str, np.ndarray] = {}
    for i, (stem, build) in enumerate(FILES.items()):
        tensors, meta = build(np.random.default_rng(1000 + i))
        with LowbitWriter(out / f"{stem}.lowbit", meta) as w:
            w.add_blob("tokenizer.json", TOKENIZER_JSON.encode())
            for name, enc, values in tensors:
                w.add_tensor(name, enc, info={"rel_error": 0.0})
                expected[f"{stem}/{name}"] = values
    np.savez(out / "expected.npz", **expected)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(FILES)} files + expected.npz to {out} ({total} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
