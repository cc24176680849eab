"""GGUF files of the acceptance shapes, written by the test with random raw blocks: a tiny
Qwen3 (q/k norms per head, NeoX RoPE) as a Q1_0 GGUF, the layout of PrismML's 1-bit Bonsai
models. Converted with `--method keep`, lowbit's logits equal a numpy forward over the
dequantised weights, and llama.cpp's (llama-cpp-python knows Q1_0 and qwen3) on the GGUF itself."""

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
    _, path = bonsai
    ids = np.random.default_rng(5).integers(0, 64, 14)
    ours = _logits(path, ids, 10)
    monkeypatch.setattr(model_module, "make_linear", KeepReference)
    ref = _logits(path, ids, 10)
    err = np.abs(ours - ref).max(axis=1) / np.abs(ref).max()
    assert err.max() <= 1e-4, err  # q1f runs on float activations: every step, prompt and decode


def test_qwen3_q1_0_agrees_with_llama_cpp(bonsai) -> None:
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from gguf_variants import open_llama

    from lowbit.runtime import load

    gguf_path, path = bonsai
    ids = [int(i) for i in np.random.default_rng(2).integers(2, 63, 12)]
    ours = load(path).logits(ids)
    llm = open_llama(gguf_path, repack=False, n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err <= 1e-2, err
