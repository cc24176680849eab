#!/usr/bin/env python3
"""Write a random-weight Hugging Face checkpoint with real model shapes, sharded safetensors.

Speed and memory do not depend on weight values, so a synthetic model with BitNet-b1.58-2B
shapes (30 layers, hidden 2560, MLP 6912, 20/5 heads, vocab 128256: 2.4 B parameters) lets us
measure the converter's peak memory and the runtime's speed without downloading anything.

    python tools/make_synthetic_checkpoint.py OUT_DIR [--preset bitnet-2b] [--shard-gb 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

PRESETS = {
    "bitnet-2b": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                      num_attention_heads=20, num_key_value_heads=5, vocab_size=128256),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1000),
}


def layer_shapes(cfg: dict, i: int) -> dict[str, tuple[int, ...]]:
    h, m = cfg["hidden_size"], cfg["intermediate_size"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (h, h),
        p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.v_proj.weight": (kv, h),
        p + "self_attn.o_proj.weight": (h, h),
        p + "post_attention_layernorm.weight": (h,),
        p + "mlp.gate_proj.weight": (m, h),
        p + "mlp.up_proj.weight": (m, h),
        p + "mlp.down_proj.weight": (h, m),
    }


def write_tokenizer(out: Path, vocab_size: int, like: Path | None) -> None:
    if like is not None and (like / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (like / name).is_file():
                shutil.copy(like / name, out / name)
        return
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out / "tokenizer.json"))


def make_checkpoint(out: Path, preset: str = "bitnet-2b", shard_gb: float = 1.0, seed: int = 0,
                    tokenizer_like: Path | None = None) -> Path:
    cfg = dict(PRESETS[preset])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {"model.embed_tokens.weight": (cfg["vocab_size"], cfg["hidden_size"])}
    for i in range(cfg["num_hidden_layers"]):
        tensors.update(layer_shapes(cfg, i))
    tensors["model.norm.weight"] = (cfg["hidden_size"],)
    tensors["lm_head.weight"] = (cfg["vocab_size"], cfg["hidden_size"])
    shard: dict[str, np.ndarray] = {}
    shard_bytes, index, n_shards, total = 0, {}, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, n_shards
        if shard:
            n_shards += 1
            name = f"model-{n_shards:05d}.safetensors"
            save_file(shard, str(out / name))
            index.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    for name, shape in tensors.items():
        if len(shape) == 1:
            arr = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float16)
        else:
            arr = (rng.standard_normal(shape, dtype=np.float32) * (1.0 / np.sqrt(shape[1]))).astype(np.float16)
        shard[name] = arr
        shard_bytes += arr.nbytes
        total += arr.size
        if shard_bytes >= shard_gb * 1e9:
            flush()
    flush()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2 * total}, "weight_map": index}, indent=1)
    )
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", **cfg,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(out, cfg["vocab_size"], tokenizer_like)
    print(f"wrote {out}: {total / 1e9:.2f} B parameters in {n_shards} shards")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="bitnet-2b")
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--tokenizer-like", type=Path, help="copy tokenizer files from this HF folder")
    args = ap.parse_args()
    make_checkpoint(args.out, args.preset, args.shard_gb, tokenizer_like=args.tokenizer_like)


if __name__ == "__main__":
    main()
