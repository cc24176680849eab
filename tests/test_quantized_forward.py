"""Every encoding through the whole model: the runtime's kernels give the same logits as a
plain-numpy forward that dequantises the same file (prefill and decode)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import random_ids, save_tiny

import lowbit.runtime.model as model_module
from lowbit.convert.converter import convert
from lowbit.formats.encodings import get_encoding
from lowbit.runtime import load
from lowbit.runtime.kernels.grouped import q4_activation_ref
from lowbit.runtime.kernels.q8 import q8_kernel_activation_ref
from lowbit.runtime.kernels.ternary import quantize_activation_ref

PRESETS = ["f16", "bf16", "q8", "q4", "q3", "q2", "ternary", "ternary-1.6", "onebit"]


class ReferenceLinear:
    """y = x Ŵᵀ with Ŵ dequantised by the format's numpy reference; ternary layers quantise the
    activation per token to int8 first (BitNet semantics); when decoding one token, onebit
    layers do so for g ⊙ x, q8 layers quantise in blocks of 32 and q4 layers per group; onebit optionally
    layer-normalises."""

    def __init__(self, entry, bias=None) -> None:
        self.encoding = entry.encoding
        self.w = entry.dequantize().astype(np.float64)
        self.bias = bias
        self.layernorm = bool(entry.params.get("layernorm", False))
        self.block = entry.params["group_size"] if self.encoding == "q4" else 32
        if self.encoding.startswith("ternary"):
            self.trits = get_encoding(self.encoding).unpack(entry.parts, entry.shape, entry.params).astype(np.float64)
            scale = entry.parts["scale"].astype(np.float64)
            self.scale = scale if scale.size > 1 else scale[0]
        if self.encoding == "onebit":
            self.signs = get_encoding("onebit").unpack(entry.parts, entry.shape, entry.params).astype(np.float64)
            self.g = entry.parts["g"].astype(np.float64)
            self.h = entry.parts["h"].astype(np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # the int8 activations exactly as the kernels make them (float32 x · s, SPEC's quantiser):
        # rounded in float64 instead, an input within an ulp of a half-way point can round the
        # other way, and one flipped code moves a tiny model's later logits by ~1e-2
        x32 = np.asarray(x, np.float32)
        x = x32.astype(np.float64)
        if self.encoding.startswith("ternary"):
            xq, s = quantize_activation_ref(x32)
            y = (xq.astype(np.float64) @ self.trits.T) * self.scale / s[:, None].astype(np.float64)
        elif self.encoding == "onebit" and x.shape[0] == 1:  # decode: int8 g ⊙ x, per token
            xq, s = quantize_activation_ref(x32 * self.g.astype(np.float32))
            y = (xq.astype(np.float64) @ self.signs.T) * self.h / s[:, None].astype(np.float64)
        elif self.encoding == "q8":  # int8 activations per 32 values (prefill too, on VNNI for in % 256 == 0)
            y = q8_kernel_activation_ref(x.astype(np.float32)) @ self.w.T
        elif self.encoding == "q4":  # int8 activations per group (prefill too, on x86 for G % 64 == 0)
            y = q4_activation_ref(x.astype(np.float32), self.block) @ self.w.T
        else:
            y = x @ self.w.T
        if self.layernorm:
            y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
        if self.bias is not None:
            y = y + self.bias
        return y.astype(np.float32)


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    # qwen2: biases too; hidden 96 / MLP 200 make every encoding pad its rows
    return save_tiny("qwen2", tmp_path_factory.mktemp("q") / "qwen2", seed=2, hidden_size=96, intermediate_size=200)


def _logits(path, ids, n_prompt):
    llm = load(path, threads=2, kv_cache="f32")  # encodings at 1e-4; f16 caches: test_kv_cache
    out = [llm.logits(ids[:n_prompt])]
    for tok in ids[n_prompt:]:
        out.append(llm.decode(int(tok))[None])
    return np.concatenate(out)


INT8_ACTIVATIONS = {"q8", "q4", "ternary", "ternary-1.6", "onebit"}


@pytest.mark.parametrize("method", PRESETS)
def test_runtime_equals_numpy_dequantised_forward(tiny_qwen2, tmp_path, method, monkeypatch):
    out = convert(tiny_qwen2, tmp_path / f"{method}.lowbit", method=method)
    ids = random_ids(24, seed=4)
    ours = _logits(out.path, ids, 16)
    monkeypatch.setattr(model_module, "make_linear", ReferenceLinear)
    ref = _logits(out.path, ids, 16)
    err = np.abs(ours - ref).max(axis=1) / np.abs(ref).max()
    assert err[:17].max() <= 1e-4, err  # the prompt and the first decode step
    # later steps: an int8 activation that rounds the other way (float sums in another order)
    # moves that step's K/V by one quantisation step, which the following steps attend to
    assert err.max() <= (3e-2 if method in INT8_ACTIVATIONS else 1e-4), err


def test_onebit_layernorm_flag(tiny_qwen2, tmp_path, monkeypatch):
    """A OneBit-trained model's parameter-free LayerNorm is applied when the file says so."""
    recipe = tmp_path / "ln.toml"
    recipe.write_text('[[rules]]\npattern = "*_proj.weight"\nencoding = "onebit"\nlayernorm = true\n')
    out = convert(tiny_qwen2, tmp_path / "ln.lowbit", recipe=recipe)
    ids = random_ids(12, seed=5)
    ours = _logits(out.path, ids, 8)
    monkeypatch.setattr(model_module, "make_linear", ReferenceLinear)
    ref = _logits(out.path, ids, 8)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    no_ln = convert(tiny_qwen2, tmp_path / "noln.lowbit", method="onebit")
    assert np.abs(_logits(no_ln.path, ids, 8) - ref).max() > 1e-2 * np.abs(ref).max()


def _decode_logits(path, ids, n_prompt, fused):
    llm = load(path, threads=2, kv_cache="f32")  # encodings at 1e-4; f16 caches: test_kv_cache
    llm.prefill(ids[:n_prompt])
    llm.model.fused_decode = fused
    return np.stack([llm.decode(int(tok)) for tok in ids[n_prompt:]])


MIXED = """
[[rules]]
pattern = "*.q_proj.weight"
encoding = "ternary"
[[rules]]
pattern = "*.v_proj.weight"
encoding = "onebit"
layernorm = true
[[rules]]
pattern = "*.down_proj.weight"
encoding = "q3"
group_size = 32
[[rules]]
pattern = "*.up_proj.weight"
encoding = "f32"
"""


@pytest.mark.parametrize("method", [*PRESETS, "mixed"])
def test_fused_decode_step_equals_layer_by_layer(tiny_qwen2, tmp_path, method):
    """kernels.decode_step (one numba call per token) against block_forward (one kernel per
    matrix, numpy glue): biases, RoPE, the KV cache and attention over 8 decode steps; "mixed"
    puts four encodings (and a OneBit LayerNorm) in one layer."""
    if method == "mixed":
        recipe = tmp_path / "mixed.toml"
        recipe.write_text('method = "q4"\n' + MIXED)
        out = convert(tiny_qwen2, tmp_path / "mixed.lowbit", recipe=recipe)
    else:
        out = convert(tiny_qwen2, tmp_path / f"{method}.lowbit", method=method)
    ids = random_ids(24, seed=6)
    fused = _decode_logits(out.path, ids, 16, True)
    layered = _decode_logits(out.path, ids, 16, False)
    err = np.abs(fused - layered).max(axis=1) / np.abs(layered).max()
    assert err[0] <= 1e-5
    # int8 activations (ternary) are discontinuous: a 1-ulp difference in a norm's float sum can
    # move one code by 1 and that step's K/V by ~1e-3, which later steps attend to
    assert err.max() <= (3e-2 if method in ("ternary", "ternary-1.6", "mixed") else 1e-5), err


def test_fused_decode_step_equals_layer_by_layer_bitnet(tmp_path):
    """BitNet b1.58's relu² MLP and attention / FFN sub-norms in the fused decode step against
    block_forward (the other architecture features: tests/test_architectures.py)."""
    folder = save_tiny("bitnet", tmp_path / "bitnet", seed=4)
    out = convert(folder, tmp_path / "bitnet.lowbit", method="f32")  # linear layers: ternary
    llm = load(out.path)
    assert llm.args.hidden_act == "relu2" and llm.model.blocks[0].attn.sub_norm is not None
    assert llm.model.blocks[0].mlp.sub_norm is not None and llm.model.fused_decode
    ids = random_ids(24, seed=6)
    fused = _decode_logits(out.path, ids, 16, True)
    layered = _decode_logits(out.path, ids, 16, False)
    err = np.abs(fused - layered).max(axis=1) / np.abs(layered).max()
    assert err[0] <= 1e-5
    assert err.max() <= 3e-2, err  # int8 activations: see test_fused_decode_step_equals_layer_by_layer
