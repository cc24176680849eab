"""Every family in lowbit.convert.models against transformers: a tiny random checkpoint written
by save_pretrained (own seed, several layers, GQA, a sliding window shorter than the sequence
where the family has one) converts to f32 and matches transformers' logits within 1e-3 ×
max|logit| over a 64-token prompt and 32 cached decode steps; and for every encoding the fused
decode step equals the numpy forward over the dequantised file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_quantized_forward import INT8_ACTIVATIONS, PRESETS, ReferenceLinear
from tiny_models import COMMON, random_ids, randomise_and_save

import lowbit.runtime.model as model_module
from lowbit.convert.converter import convert
from lowbit.formats import LowbitReader
from lowbit.runtime import load

PROMPT, DECODE = 64, 32
BASE = {**COMMON, "num_hidden_layers": 3}
GEMMA = {**BASE, "head_dim": 16, "sliding_window": 24, "pad_token_id": 0, "hidden_activation": "gelu_pytorch_tanh"}


def phi3_rope(orig: int, factor: float = 0.75, head_dim: int = 16) -> dict:
    half = int(head_dim * factor) // 2
    rng = np.random.default_rng(1)
    return {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": factor,
            "short_factor": [float(v) for v in 1 + rng.random(half)],
            "long_factor": [float(v) for v in 1 + 4 * rng.random(half)],
            "original_max_position_embeddings": orig}


def make_model(family: str):
    import transformers as tf

    if family == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**BASE, head_dim=24, tie_word_embeddings=False))
    if family == "qwen3-tied-sliding":  # sliding window from layer 1 on
        cfg = tf.Qwen3Config(**BASE, head_dim=24, tie_word_embeddings=True, use_sliding_window=True,
                             sliding_window=24, max_window_layers=1)
        return tf.Qwen3ForCausalLM(cfg)
    if family == "gemma2":
        cfg = tf.Gemma2Config(**GEMMA, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
                              final_logit_softcapping=8.0)
        return tf.Gemma2ForCausalLM(cfg)
    if family == "gemma3":
        rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}}
        cfg = tf.Gemma3TextConfig(**{**GEMMA, "num_hidden_layers": 4}, query_pre_attn_scalar=20,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                               "sliding_attention"], rope_parameters=rope)
        return tf.Gemma3ForCausalLM(cfg)
    if family == "phi3":  # Phi-3.5 / Phi-4-mini shape: partial rotary, LongRoPE (long factors), sliding
        cfg = tf.Phi3Config(**BASE, pad_token_id=0, rope_parameters=phi3_rope(32), original_max_position_embeddings=32,
                            sliding_window=24, tie_word_embeddings=False)
        return tf.Phi3ForCausalLM(cfg)
    if family == "phi4-mini":  # tied embeddings, LongRoPE within the original context (short factors)
        cfg = tf.Phi3Config(**BASE, pad_token_id=0, rope_parameters=phi3_rope(128), original_max_position_embeddings=128,
                            tie_word_embeddings=True)
        return tf.Phi3ForCausalLM(cfg)
    if family == "gemma2-gguf":  # what llama.cpp assumes of Gemma 2: scale head_dim^-1/2, even layers slide
        cfg = tf.Gemma2Config(**GEMMA, query_pre_attn_scalar=16, attn_logit_softcapping=3.0, final_logit_softcapping=8.0)
        return tf.Gemma2ForCausalLM(cfg)
    if family == "gemma3-gguf":  # and of Gemma 3: every 6th layer global, local RoPE base 10000
        cfg = tf.Gemma3TextConfig(**{**GEMMA, "num_hidden_layers": 6}, query_pre_attn_scalar=16)
        return tf.Gemma3ForCausalLM(cfg)
    if family == "gemma3-multimodal":  # only its language model is converted
        text = tf.Gemma3TextConfig(**{**GEMMA, "num_hidden_layers": 3}, query_pre_attn_scalar=16,
                                   sliding_window_pattern=2)
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": 28, "patch_size": 14}
        cfg = tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision, mm_tokens_per_image=4,
                              image_token_index=383, boi_token_index=381, eoi_token_index=382)
        return tf.Gemma3ForConditionalGeneration(cfg)
    raise ValueError(family)


CONTEXT = {"phi4-mini": 128}  # the runtime's context picks LongRoPE's short factors
FAMILIES = ["qwen3", "qwen3-tied-sliding", "gemma2", "gemma3", "gemma3-multimodal", "phi3", "phi4-mini",
            "gemma2-gguf", "gemma3-gguf"]


def save(family: str, folder, seed: int):
    torch.manual_seed(seed)
    model = make_model(family).eval()
    return randomise_and_save(model, folder, 0.0 if "gemma" in family else 1.0), model


def runtime_logits(path, ids, context=None, prompt=PROMPT, fused=True) -> np.ndarray:
    """The prompt's logits, then one decode step per further id (fused=False: each step through
    block_forward with the same kernels)."""
    llm = load(path, threads=2, context_length=context, kv_cache="f32")  # f16 caches: test_kv_cache
    llm.model.fused_decode = llm.model.fused_decode and fused
    out = [llm.logits(ids[:prompt])]
    for tok in ids[prompt:]:
        out.append(llm.decode(int(tok))[None])
    return np.concatenate(out)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def get(family):
        if family not in made:
            made[family] = save(family, tmp_path_factory.mktemp(family) / "hf", seed=FAMILIES.index(family) + 20)
        return made[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_transformers(checkpoints, tmp_path, family):
    folder, model = checkpoints(family)
    out = convert(folder, tmp_path / "m.lowbit", method="f32")
    ids = random_ids(PROMPT + DECODE, seed=7)
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].float().numpy()
    ours = runtime_logits(out.path, ids, CONTEXT.get(family))
    tol = 1e-3 * np.abs(ref).max()
    err = np.abs(ours - ref).max()
    assert err <= tol, f"max |diff| {err:.3g} > {tol:.3g}"
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.95


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
@pytest.mark.parametrize("method", PRESETS)
def test_fused_decode_equals_numpy_dequantised_forward(checkpoints, tmp_path, family, method, monkeypatch):
    """The one-call decode step (q/k norms, output norms, GeGLU, soft-capping, per-layer window
    and RoPE table, partial RoPE) against block_forward with the same kernels, and both against
    block_forward over numpy-dequantised weights.

    With int8 activations two forwards whose floats differ by an ulp can round one activation
    code apart and then differ by ~1e-2 in every later logit of these tiny models, so for those
    the exact comparison of the first fused step is against block_forward on the same kernels."""
    folder, _ = checkpoints(family)
    out = convert(folder, tmp_path / f"{method}.lowbit", method=method)
    ids = random_ids(40, seed=4)  # 32 prompt tokens, 8 decode steps: past the 24-token window
    llm = load(out.path, threads=2)
    assert llm.model.fused_decode
    ours = runtime_logits(out.path, ids, prompt=32)
    scale = np.abs(ours).max()
    unfused = runtime_logits(out.path, ids, prompt=32, fused=False)
    assert np.abs(ours - unfused)[:33].max() <= 1e-4 * scale  # the prompt and the first fused decode step
    monkeypatch.setattr(model_module, "make_linear", ReferenceLinear)
    ref_llm = load(out.path, threads=2)
    assert not ref_llm.model.fused_decode
    ref = runtime_logits(out.path, ids, prompt=32)
    err = np.abs(ours - ref).max(axis=1) / np.abs(ref).max()
    if method not in INT8_ACTIVATIONS:
        assert err[:33].max() <= 1e-4, err
    assert err.max() <= (3e-2 if method in INT8_ACTIVATIONS else 1e-4), err


def test_files_record_their_features(checkpoints, tmp_path):
    folder, _ = checkpoints("gemma3")
    out = convert(folder, tmp_path / "g.lowbit", method="f32")
    with LowbitReader(out.path) as r:
        feats = r.metadata["features"]
        cfg = r.metadata["config"]
    assert {"qk_norm", "attn_output_norm", "mlp_output_norm", "gelu_tanh", "local_rope", "layer_types"} <= set(feats)
    assert cfg["layer_types"][2] == "full_attention" and cfg["rope_local_base_freq"] == 10000.0
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


def test_model_type_without_architectures(checkpoints, tmp_path):
    folder, model = checkpoints("qwen3")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["architectures"]
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        out = convert(folder, tmp_path / "m.lowbit", method="f32")
    finally:
        cfg["architectures"] = ["Qwen3ForCausalLM"]
        (folder / "config.json").write_text(json.dumps(cfg))
    with LowbitReader(out.path) as r:
        assert r.metadata["config"]["source_architecture"] == "Qwen3ForCausalLM"
        assert r.metadata["config"]["qk_norm"] is True


def _rewrite_with_features(src, dst, features):
    """A copy of a .lowbit file whose metadata.features is `features` (tensors and blobs as they are)."""
    from lowbit.formats.writer import rewrite

    return rewrite(src, dst, {"features": features})


def test_a_feature_this_runtime_lacks_is_refused(checkpoints, tmp_path):
    import subprocess
    import sys

    from lowbit.runtime.features import UnsupportedFeature

    folder, _ = checkpoints("qwen3")
    out = convert(folder, tmp_path / "m.lowbit", method="f32")
    with LowbitReader(out.path) as r:
        assert r.metadata["features"] == {"qk_norm": "0.2.0"}
    future = _rewrite_with_features(out.path, tmp_path / "future.lowbit", {"qk_norm": "0.2.0", "mixture_of_depths": "9.1.0"})
    with pytest.raises(UnsupportedFeature, match=r"'mixture_of_depths' \(added in lowbit 9.1.0\)"):
        load(future)
    proc = subprocess.run([sys.executable, "-m", "lowbit.cli", "generate", str(future), "-p", "hi", "--max-tokens", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mixture_of_depths" in lines[0] and "9.1.0" in lines[0], proc.stderr
    assert load(out.path).model.fused_decode  # the file as converted loads


def test_unknown_architectures_list_the_supported_ones():
    from lowbit.convert.models import SUPPORTED, model_spec
    from lowbit.errors import UnsupportedModel

    with pytest.raises(UnsupportedModel) as e:
        model_spec({"architectures": ["MambaForCausalLM"], "hidden_size": 8})
    msg = str(e.value)
    assert "\n" not in msg and "'MambaForCausalLM'" in msg
    for arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM", "Gemma2ForCausalLM", "Phi3ForCausalLM", "LlamaForCausalLM"):
        assert arch in SUPPORTED and arch in msg
    with pytest.raises(UnsupportedModel, match="model_type mamba"):
        model_spec({"model_type": "mamba"})


@pytest.mark.parametrize("linear_class", ["bitlinear", "autobitlinear"])
def test_falcon_e_linear_input_norms_match_transformers(tmp_path, linear_class, monkeypatch):
    """Falcon-E / Falcon3-1.58bit: Llama with a packed BitNet quantization_config whose
    use_rms_norm puts an RMSNorm (own weight) on every BitLinear's input before quantising it."""
    import transformers
    from safetensors.numpy import load_file, save_file
    from test_model_vs_transformers import write_packed_bitnet
    from tiny_models import save_tiny

    latent = save_tiny("llama", tmp_path / "latent", seed=31, num_hidden_layers=3)
    packed = tmp_path / "packed"
    write_packed_bitnet(latent, packed, linear_class)
    tensors = load_file(packed / "model.safetensors")
    rng = np.random.default_rng(3)
    for name in [n for n in tensors if n.endswith(".weight_scale")]:
        stem = name[: -len("weight_scale")]
        n_in = tensors[stem + "weight"].shape[1]
        tensors[stem + "rms_norm.weight"] = (1 + 0.3 * rng.standard_normal(n_in)).astype(np.float32)
    save_file(tensors, packed / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((packed / "config.json").read_text())
    cfg["quantization_config"].update(use_rms_norm=True, rms_norm_eps=1e-5)
    (packed / "config.json").write_text(json.dumps(cfg))
    model = transformers.AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32, attn_implementation="eager")
    out = convert(packed, tmp_path / "e.lowbit", method="f32")
    with LowbitReader(out.path) as r:
        assert r.metadata["features"] == {"linear_input_norm": "0.2.0"}
        assert r.metadata["config"]["linear_norm_eps"] == 1e-5
        assert "model.layers.2.mlp.down_proj.input_norm.weight" in r.tensors
    ids = random_ids(PROMPT + DECODE, seed=12)
    with torch.no_grad():
        ref = model.eval()(torch.tensor(ids[None])).logits[0].float().numpy()
    ours = runtime_logits(out.path, ids)
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max(), np.abs(ours - ref).max() / np.abs(ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.95
    assert load(out.path).model.fused_decode
    # the fused decode step's per-linear norms against the numpy forward over the dequantised file
    fused = runtime_logits(out.path, ids[:40], prompt=32)
    with monkeypatch.context() as m:
        m.setattr(model_module, "make_linear", ReferenceLinear)
        assert not load(out.path).model.fused_decode
        numpy_ref = runtime_logits(out.path, ids[:40], prompt=32)
    err = np.abs(fused - numpy_ref).max(axis=1) / np.abs(numpy_ref).max()
    assert err[:33].max() <= 1e-4 and err.max() <= 3e-2, err
    tensors.pop("model.layers.0.self_attn.q_proj.rms_norm.weight")  # left out: transformers' ones
    save_file(tensors, packed / "model.safetensors", metadata={"format": "pt"})
    again = convert(packed, tmp_path / "e2.lowbit", method="f32")
    with LowbitReader(again.path) as r:
        assert np.array_equal(r["model.layers.0.self_attn.q_proj.input_norm.weight"].dequantize(), np.ones(64, np.float32))


GGUF_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
              "self_attn.k_norm": "attn_k_norm"}
GEMMA_GGUF_BLOCK = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                    "post_feedforward_layernorm": "post_ffw_norm"}


def write_gguf(folder, arch: str, dst):
    """The HF checkpoint as llama.cpp's converter writes it (names, Gemma's 1 + w norms, the
    metadata llama.cpp reads), in f32, with a minimal SentencePiece vocabulary."""
    import sys
    from pathlib import Path

    import gguf
    from safetensors.numpy import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from gguf_variants import _spm_vocab

    cfg = json.loads((folder / "config.json").read_text())
    gemma = arch.startswith("gemma")
    w = gguf.GGUFWriter(str(dst), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    rope = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(float((rope.get("full_attention") or rope).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if gemma:
        w.add_sliding_window(cfg["sliding_window"])
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if cfg.get(key):
                w.add_float32(f"{arch}.{key}", cfg[key])
    tokens, scores, types = _spm_vocab(cfg["vocab_size"], 1, 2, 0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    block = {**GGUF_BLOCK, **(GEMMA_GGUF_BLOCK if gemma else {"post_attention_layernorm": "ffn_norm"})}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for name, t in load_file(folder / "model.safetensors").items():
        if name in names:
            out = names[name]
        else:
            _, _, i, *rest = name.split(".")
            out = f"blk.{i}.{block['.'.join(rest[:-1])]}.{rest[-1]}"
        t = t.astype(np.float32)
        if gemma and name.endswith("norm.weight"):
            t = t + np.float32(1.0)
        w.add_tensor(out, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.parametrize(("family", "arch"), [("qwen3", "qwen3"), ("gemma2-gguf", "gemma2"), ("gemma3-gguf", "gemma3")])
def test_gguf_naming_per_architecture(checkpoints, tmp_path, family, arch):
    """Each module's GGUF description (llama.cpp's tensor names, norm offset, the constants
    llama.cpp hard-codes for Gemma) turns llama.cpp's form of the checkpoint back into the model."""
    folder, model = checkpoints(family)
    path = write_gguf(folder, arch, tmp_path / "m.gguf")
    out = convert(path, tmp_path / "m.lowbit", method="f32")
    ids = random_ids(PROMPT + DECODE, seed=8)
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].float().numpy()
    ours = runtime_logits(out.path, ids)
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()
