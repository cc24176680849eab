"""GGUF tensor types gguf-py cannot dequantise (Q1_0, Q2_0, I2_S): our numpy dequantisers
against llama.cpp's own (libggml-base through ctypes) where it knows the type, and against a
loop transcription of bitnet.cpp's layout for I2_S; synthetic GGUF files of every type read
back through GGUFCheckpoint; broken files refused naming the tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf_synth import BY_NAME, llama_cpp_dequantize, random_raw, write_tiny_llama

from lowbit.convert import gguf_quants as gq
from lowbit.convert.gguf_source import GGUFCheckpoint
from lowbit.errors import LowbitError

pytest.importorskip("llama_cpp")


def test_llama_cpp_knows_q1_0_and_q2_0() -> None:
    import llama_cpp

    assert llama_cpp.GGML_TYPE_Q1_0 == gq.Q1_0 and llama_cpp.GGML_TYPE_Q2_0 == gq.Q2_0


@pytest.mark.parametrize("name", ["Q1_0", "Q2_0"])
def test_new_dequantisers_equal_llama_cpp(name: str) -> None:
    rng = np.random.default_rng(1)
    tid = BY_NAME[name]
    raw = random_raw(tid, 6, 512, rng)
    ours = gq.dequantize_q1_0(raw) if name == "Q1_0" else gq.dequantize_q2_0(raw)
    ref = llama_cpp_dequantize(tid, raw, 6 * 512).reshape(6, 512)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert len(np.unique(ours)) > 10  # random content really exercised


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0", "TQ1_0", "TQ2_0"])
def test_gguf_py_types_equal_llama_cpp(name: str) -> None:
    """The types gguf-py dequantises: its values equal llama.cpp's (our path reads them)."""
    import gguf.quants

    rng = np.random.default_rng(2)
    tid = BY_NAME[name]
    raw = random_raw(tid, 4, 512, rng, ternary=False)
    ours = np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(tid)), np.float32)
    ref = llama_cpp_dequantize(tid, raw, 4 * 512).reshape(4, 512)
    assert np.array_equal(ours, ref)


def _i2s_loop(data: bytes, rows: int, cols: int) -> np.ndarray:
    """bitnet.cpp's I2_S layout, one weight at a time."""
    n = rows * cols
    scale = np.frombuffer(data[n // 4 : n // 4 + 4], np.float32)[0]
    out = np.empty(n, np.float32)
    for i in range(n):
        block, j = divmod(i, 128)
        q = (data[block * 32 + j % 32] >> (6 - 2 * (j // 32))) & 3
        out[i] = np.float32(q - 1) * scale
    return out.reshape(rows, cols)


def test_i2s_matches_bitnet_layout() -> None:
    rng = np.random.default_rng(3)
    data = random_raw(gq.I2_S, 3, 256, rng, scale=0.7)
    assert data.size == 3 * 256 // 4 + 32
    scale = data[3 * 64 : 3 * 64 + 4].view(np.float32)[0]
    ours = gq.dequantize_i2s(data[: 3 * 64].reshape(3, 64), scale)
    assert np.array_equal(ours, _i2s_loop(data.tobytes(), 3, 256))
    assert set(np.unique(ours)) == {-scale, 0, scale}


@pytest.mark.parametrize("name", ["Q1_0", "Q2_0", "I2_S", "TQ2_0", "TQ1_0", "Q4_0", "Q4_1", "Q8_0"])
def test_synthetic_gguf_reads_every_type(tmp_path: Path, name: str) -> None:
    tid = BY_NAME[name]
    path = tmp_path / f"{name}.gguf"
    tensors = write_tiny_llama(path, tid, layers=1)
    ckpt = GGUFCheckpoint(path)
    _, raw = tensors["blk.0.ffn_down.weight"]
    w = ckpt.get("model.layers.0.mlp.down_proj.weight")
    assert w.shape == (256, 512) and w.dtype == np.float32
    if name == "I2_S":
        ref = _i2s_loop(raw.tobytes(), 256, 512)
    else:
        ref = llama_cpp_dequantize(tid, raw, w.size).reshape(w.shape)
    assert np.array_equal(w, ref)
    assert gq.type_name(ckpt.gguf_tensor("model.layers.0.mlp.down_proj.weight").tensor_type) == name


def test_unknown_type_named(tmp_path: Path) -> None:
    from gguf_synth import patch_types

    path = tmp_path / "u.gguf"
    write_tiny_llama(path, None, layers=1)
    patch_types(path, {"blk.0.ffn_up.weight": (77, 256)}, {"blk.0.ffn_up.weight": 512})
    with pytest.raises(LowbitError, match=r"tensor 'blk\.0\.ffn_up\.weight' has GGML type id 77"):
        GGUFCheckpoint(path)


@pytest.mark.parametrize("name", ["Q2_0", "Q4_1"])
def test_truncated_file_names_the_tensor(tmp_path: Path, name: str) -> None:
    path = tmp_path / "t.gguf"
    write_tiny_llama(path, BY_NAME[name], layers=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300_000])
    with pytest.raises(LowbitError, match=r"tensor '.*' ends at byte \d+, past the end of the file") as e:
        GGUFCheckpoint(path)
    assert "\n" not in str(e.value)


def test_unsupported_tokenizer_model_named(tmp_path: Path) -> None:
    path = tmp_path / "tok.gguf"
    write_tiny_llama(path, None, layers=1, tokenizer_model="rwkv")
    with pytest.raises(LowbitError, match=r"tokenizer.ggml.model 'rwkv' is not supported") as e:
        GGUFCheckpoint(path).tokenizer_files  # noqa: B018
    assert "\n" not in str(e.value)
