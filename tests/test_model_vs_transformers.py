"""The runtime's f32 forward against Hugging Face transformers (CPU, fp32, eager attention) on
tiny random checkpoints of every supported architecture: a 64-token prompt, then 32 decode steps
through the KV cache, all logits within 1e-3 × max|logit|."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from tiny_models import random_ids, save_tiny

from lowbit.convert.converter import convert
from lowbit.formats import LowbitReader
from lowbit.runtime import load

PROMPT, DECODE = 64, 32


def hf_logits(folder, ids: np.ndarray) -> np.ndarray:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids[None])).logits[0].float().numpy()


def runtime_logits(path, ids: np.ndarray) -> np.ndarray:
    """Prefill PROMPT tokens (all logits), then decode the rest one by one through the cache."""
    llm = load(path, threads=2, kv_cache="f32")  # the model's math at 1e-3; f16 caches: test_kv_cache
    out = [llm.logits(ids[:PROMPT])]
    for tok in ids[PROMPT:]:
        out.append(llm.decode(int(tok))[None])
    return np.concatenate(out)


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    tol = 1e-3 * np.abs(ref).max()
    err = np.abs(ours - ref).max()
    assert err <= tol, f"max |diff| {err:.3g} > {tol:.3g}"
    # and the prediction is the same almost everywhere (a meaningful, not only a numerical, match)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.95


@pytest.mark.parametrize("arch", ["llama", "llama3", "qwen2", "mistral"])
def test_llama_family_matches_transformers(tmp_path, arch):
    folder = save_tiny(arch, tmp_path / arch, seed=3)
    out = convert(folder, tmp_path / "m.lowbit", method="f32")
    ids = random_ids(PROMPT + DECODE, seed=7)
    assert_close(runtime_logits(out.path, ids), hf_logits(folder, ids))


def write_packed_bitnet(src, dst, linear_class: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A BitNet checkpoint as published: uint8 packed ternary codes + weight_scale, with
    quantization_config. Returns the trits and per-tensor scale of each linear layer."""
    from transformers.integrations.bitnet import pack_weights

    dst.mkdir()
    tensors = load_file(src / "model.safetensors")
    truth = {}
    for name in list(tensors):
        if ".self_attn." in name and name.endswith("_proj.weight") or ".mlp." in name and name.endswith("_proj.weight"):
            w = tensors[name]
            gamma = np.float32(np.abs(w).mean())
            trits = np.clip(np.round(w / gamma), -1, 1).astype(np.int8)
            truth[name] = (trits, gamma)
            tensors[name] = pack_weights(torch.tensor(trits.astype(np.float32))).numpy()
            stored = gamma if linear_class == "autobitlinear" else np.float32(1.0) / gamma
            tensors[name[: -len("weight")] + "weight_scale"] = np.array([stored], dtype=np.float32)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (dst / f).write_bytes((src / f).read_bytes())
    return truth


@pytest.mark.parametrize("linear_class", ["bitlinear", "autobitlinear"])
def test_bitnet_matches_transformers_and_converts_losslessly(tmp_path, linear_class):
    import transformers

    latent = save_tiny("bitnet", tmp_path / "latent", seed=5)
    packed = tmp_path / "packed"
    truth = write_packed_bitnet(latent, packed, linear_class)
    # transformers loads it with its own BitNet quantizer, then writes it back (save_pretrained)
    model = transformers.AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32, attn_implementation="eager")
    saved = packed
    if linear_class == "bitlinear":  # (transformers 5 cannot save an autobitlinear model back)
        saved = tmp_path / "saved"
        model.save_pretrained(saved, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (saved / f).write_bytes((packed / f).read_bytes())
    # method f32 keeps embeddings and head unquantised; the linear layers stay ternary (lossless)
    out = convert(saved, tmp_path / "b.lowbit", method="f32")
    with LowbitReader(out.path) as r:
        assert r.metadata["architecture"] == "bitnet"
        assert r.metadata["config"]["hidden_act"] == "relu2"
        for name, (trits, gamma) in truth.items():
            e = r[name]
            assert e.encoding == "ternary"
            from lowbit.formats.encodings import get_encoding

            assert np.array_equal(get_encoding("ternary").unpack(e.parts, e.shape, e.params), trits), name
            assert np.isclose(e.parts["scale"][0], gamma, rtol=1e-6), name
        assert "model.layers.0.self_attn.attn_sub_norm.weight" in r.tensors
        assert "model.layers.1.mlp.ffn_sub_norm.weight" in r.tensors
    ids = random_ids(PROMPT + DECODE, seed=11)
    model.eval()
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].float().numpy()
    assert_close(runtime_logits(out.path, ids), ref)
