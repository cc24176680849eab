"""GGUF files of the acceptance shapes, written by the test with random raw blocks: a tiny
Qwen3 (q/k norms per head, NeoX RoPE) as a Q1_0 GGUF, the layout of PrismML's 1-bit Bonsai
models, and a tiny BitNet (llama.cpp's `bitnet`: sub-norms before o_proj and down_proj) as
TQ2_0 and as bitnet.cpp's I2_S. Converted with `--method keep`, lowbit's logits equal a numpy
forward over the dequantised weights, and llama.cpp's on the GGUF itself where llama-cpp-python
knows the type (Q1_0, TQ2_0; not I2_S)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf_synth import BY_NAME, write_tiny_llama
from test_gguf_keep import KeepReference
from test_quantized_forward import _logits

import lowbit.runtime.model as model_module
from lowbit.convert.converter import convert
from lowbit.formats import LowbitReader
from lowbit.runtime import load


def _llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from gguf_variants import open_llama

    llm = open_llama(gguf_path, repack=False, n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return ref


def _numpy_forward_error(path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> np.ndarray:
    """Per position max |lowbit − numpy forward| / max |numpy forward| (10 prompt tokens, then
    4 decode steps)."""
    ids = np.random.default_rng(seed).integers(0, 64, 14)
    ours = _logits(path, ids, 10)
    with monkeypatch.context() as m:
        m.setattr(model_module, "make_linear", KeepReference)
        ref = _logits(path, ids, 10)
    return np.abs(ours - ref).max(axis=1) / np.abs(ref).max()


@pytest.fixture(scope="module")
def bonsai(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bonsai")
    gguf_path = root / "qwen3-q1_0.gguf"
    q1 = BY_NAME["Q1_0"]
    write_tiny_llama(gguf_path, q1, embed_type=q1, arch="qwen3", seed=11)
    return gguf_path, convert(gguf_path, root / "qwen3-q1_0.lowbit", method="keep").path


def test_qwen3_q1_0_is_kept_with_its_norms(bonsai) -> None:
    _, path = bonsai
    with LowbitReader(path) as r:
        assert r.metadata["config"]["qk_norm"] is True
        assert r.tensors["model.layers.1.self_attn.k_norm.weight"].shape == (64,)
        linear = [e for n, e in r.tensors.items() if n.endswith("proj.weight")]
        assert len(linear) == 14 and all(e.encoding == "q1f" and e.info["kept"] for e in linear)


def test_qwen3_q1_0_logits_equal_numpy_forward(bonsai, monkeypatch: pytest.MonkeyPatch) -> None:
    err = _numpy_forward_error(bonsai[1], monkeypatch, 5)
    assert err.max() <= 1e-4, err  # prompt in float, decode on int8 per group of 128 (as KeepReference)


def test_qwen3_q1_0_agrees_with_llama_cpp(bonsai) -> None:
    gguf_path, path = bonsai
    ids = [int(i) for i in np.random.default_rng(2).integers(2, 63, 12)]
    ref = _llama_cpp_logits(gguf_path, ids)
    err = np.abs(load(path).logits(ids) - ref).max() / np.abs(ref).max()
    assert err <= 1e-2, err  # (2e-3 measured: llama.cpp runs Q1_0 on int8 activations)


# name -> (GGML type, one block scale for the whole tensor (BitNet's form) or random ones)
BITNETS = {"TQ2_0-tensor": ("TQ2_0", 0.03125), "TQ2_0-blocks": ("TQ2_0", None), "I2_S": ("I2_S", None)}


@pytest.fixture(scope="module")
def bitnets(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("bitnet")
    out = {}
    for name, (kind, scale) in BITNETS.items():
        gguf_path = root / f"{name}.gguf"
        write_tiny_llama(gguf_path, BY_NAME[kind], arch="bitnet", seed=14, block_scale=scale)
        out[name] = gguf_path, convert(gguf_path, root / f"{name}.lowbit", method="keep").path
    return out


@pytest.mark.parametrize("name", list(BITNETS))
def test_bitnet_is_kept(bitnets, name: str) -> None:
    with LowbitReader(bitnets[name][1]) as r:
        assert r.metadata["architecture"] == "bitnet" and r.metadata["config"]["hidden_act"] == "silu"
        assert r.tensors["model.layers.1.mlp.ffn_sub_norm.weight"].shape == (512,)
        linear = {e.encoding for n, e in r.tensors.items() if n.endswith("proj.weight")}
        assert linear == ({"q2f", "ternary"} if name == "TQ2_0-blocks" else {"ternary"})  # (one block per row: ternary)
        assert all(e.info["kept"] for e in r.tensors.values())


@pytest.mark.parametrize("name", list(BITNETS))
def test_bitnet_logits_equal_numpy_forward(bitnets, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    err = _numpy_forward_error(bitnets[name][1], monkeypatch, 6)
    assert err[:11].max() <= 1e-4, err  # the prompt and the first decode step
    assert err.max() <= 3e-2, err  # then an int8 activation rounded the other way moves K/V (test_quantized_forward)


@pytest.mark.parametrize("name", ["TQ2_0-tensor", "TQ2_0-blocks"])
def test_bitnet_tq2_0_agrees_with_llama_cpp(bitnets, name: str) -> None:
    gguf_path, path = bitnets[name]
    ids = [int(i) for i in np.random.default_rng(2).integers(2, 63, 12)]
    ref = _llama_cpp_logits(gguf_path, ids)
    err = np.abs(load(path).logits(ids) - ref).max() / np.abs(ref).max()
    # 7e-3 measured for ternary layers: lowbit quantises BitNet activations per token (the
    # model's definition), llama.cpp per 256 (Q8_K); 2e-3 for q2f's float activations
    assert err <= 1e-2, err
