"""Synthetic GGUF files for the GGUF tests: raw blocks per ggml-common.h with random content,
written with gguf-py's writer, and llama.cpp's own dequantisers (libggml-base through ctypes).

Types gguf-py's writer does not know (Q2_0, I2_S) are written as I8 tensors of their raw bytes,
and the tensor table entry is then patched to the real type id and shape (same entry length).
"""

from __future__ import annotations

import ctypes
import struct
from functools import cache
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lowbit.convert import gguf_quants as gq

T = gguf.GGMLQuantizationType
# type id -> (block weights, block bytes, offsets of its f16 fields)
LAYOUT: dict[int, tuple[int, int, tuple[int, ...]]] = {
    int(T.Q4_0): (32, 18, (0,)),
    int(T.Q4_1): (32, 20, (0, 2)),
    int(T.Q8_0): (32, 34, (0,)),
    int(T.TQ1_0): (256, 54, (52,)),
    int(T.TQ2_0): (256, 66, (64,)),
    gq.Q1_0: (128, 18, (0,)),
    gq.Q2_0: (64, 18, (0,)),
    int(T.Q4_K): (256, 144, (0, 2)),
    int(T.Q6_K): (256, 210, (208,)),
    int(T.Q5_0): (32, 22, (0,)),
    int(T.Q5_K): (256, 176, (0, 2)),
    int(T.IQ4_NL): (32, 18, (0,)),
}
NAMES = {int(T.Q4_0): "Q4_0", int(T.Q4_1): "Q4_1", int(T.Q8_0): "Q8_0", int(T.TQ1_0): "TQ1_0",
         int(T.TQ2_0): "TQ2_0", gq.Q1_0: "Q1_0", gq.Q2_0: "Q2_0", gq.I2_S: "I2_S",
         int(T.Q4_K): "Q4_K", int(T.Q6_K): "Q6_K", int(T.F16): "F16", int(T.Q5_0): "Q5_0",
         int(T.Q5_K): "Q5_K", int(T.IQ4_NL): "IQ4_NL"}  # fmt: skip
BY_NAME = {v: k for k, v in NAMES.items()}


def random_raw(type_id: int, rows: int, cols: int, rng: np.random.Generator, scale: float = 0.05,
               ternary: bool = True) -> np.ndarray:
    """Random raw rows u8 [rows, row bytes] of a block type (I2_S: the whole tensor's bytes).
    `ternary`: TQ2_0 / I2_S codes limited to 0..2 as real files have them."""
    if type_id == gq.I2_S:
        q = rng.integers(0, 3 if ternary else 4, (rows, cols)).astype(np.uint8)
        return gq.pack_i2s(q, float(np.float32(scale)))
    block, nbytes, f16s = LAYOUT[type_id]
    nb = rows * cols // block
    raw = rng.integers(0, 256, (nb, nbytes), dtype=np.uint8)
    if type_id == int(T.TQ2_0) and ternary:
        q = rng.integers(0, 3, (nb, 64, 4)).astype(np.uint8)
        raw[:, :64] = q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)
    for k, off in enumerate(f16s):
        v = (rng.standard_normal(nb) * scale).astype(np.float16)
        if k == 0 and type_id in (int(T.Q4_1), int(T.Q4_K)):
            v = np.abs(v) / 8
        raw[:, off : off + 2] = v.reshape(-1, 1).view(np.uint8)
    return raw.reshape(rows, -1)


@cache
def _ggml() -> Any:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    return lib


def llama_cpp_dequantize(type_id: int, raw: np.ndarray, n: int) -> np.ndarray:
    """llama.cpp's dequantize_row_<type> over the raw bytes (float32 [n])."""
    fn = getattr(_ggml(), f"dequantize_row_{NAMES[type_id].lower()}")
    fn.restype = None
    src = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.empty(n, np.float32)
    fn(ctypes.c_void_p(src.ctypes.data), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.c_int64(n))
    return out


def add_raw_tensor(w: gguf.GGUFWriter, name: str, type_id: int, raw: np.ndarray,
                   patches: dict[str, tuple[int, int]], cols: int) -> None:
    """Add one tensor of raw blocks; types gguf-py lacks are patched in after writing."""
    if type_id in gq.EXTRA_TYPES:
        rows = raw.shape[0] if type_id != gq.I2_S else None
        data = raw.reshape(1, -1) if type_id == gq.I2_S else raw
        w.add_tensor(name, np.ascontiguousarray(data).view(np.int8))
        patches[name] = (type_id, cols)
        del rows
    else:
        w.add_tensor(name, np.ascontiguousarray(raw), raw_dtype=T(type_id))


def patch_types(path: Path, patches: dict[str, tuple[int, int]], rows: dict[str, int]) -> None:
    """Rewrite the tensor table entries of `patches` (name -> (type id, columns))."""
    data = bytearray(path.read_bytes())
    for name, (type_id, cols) in patches.items():
        key = struct.pack("<Q", len(name)) + name.encode()
        at = data.index(key) + len(key)
        (n_dims,) = struct.unpack_from("<I", data, at)
        assert n_dims == 2
        struct.pack_into("<QQ", data, at + 4, cols, rows[name])
        struct.pack_into("<I", data, at + 4 + 16, type_id)
    path.write_bytes(bytes(data))


def write_tiny_llama(path: Path, linear_type: int | None, *, layers: int = 2, hidden: int = 256,
                     ffn: int = 512, heads: int = 4, kv_heads: int = 2, vocab: int = 64,
                     embed_type: int | None = None, seed: int = 0, ternary: bool = True,
                     tokenizer_model: str = "gpt2", overrides: dict[str, int] | None = None,
                     block_scale: float | None = None, arch: str = "llama",
                     ) -> dict[str, tuple[int | None, np.ndarray]]:
    """A Llama-shaped GGUF whose linear layers are random raw blocks of `linear_type` (None: F32).
    `arch` "qwen3": Qwen3's shape (a per-head RMSNorm on q and k, `attn_{q,k}_norm` [head_dim]),
    as PrismML's Bonsai GGUFs are written; "bitnet": llama.cpp's BitNet (sub-norms before o_proj
    and down_proj, `attn_sub_norm` [hidden] and `ffn_sub_norm` [ffn]). Returns GGUF name -> (type id or None, raw rows or
    float32 values)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(vocab)
    w.add_file_type(0)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([chr(33 + i) for i in range(vocab - 1)] + ['!"'])  # one merge: llama.cpp needs merges
    w.add_token_types([1] * vocab)
    w.add_token_merges(['! "'])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    hd = hidden // heads
    shapes = {"attn_q": (heads * hd, hidden), "attn_k": (kv_heads * hd, hidden),
              "attn_v": (kv_heads * hd, hidden), "attn_output": (hidden, heads * hd),
              "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}  # fmt: skip
    tensors: dict[str, tuple[int | None, np.ndarray]] = {}
    patches: dict[str, tuple[int, int]] = {}
    rows: dict[str, int] = {}

    def add(name: str, shape: tuple[int, int], type_id: int | None, scale: float) -> None:
        type_id = (overrides or {}).get(name, type_id)
        if type_id == int(T.F16):
            a = (rng.standard_normal(shape) * scale).astype(np.float16)
            w.add_tensor(name, a)
            tensors[name] = (type_id, a)
            return
        if type_id is None:
            a = (rng.standard_normal(shape) * scale).astype(np.float32)
            w.add_tensor(name, a)
            tensors[name] = (None, a)
            return
        if type_id in (int(T.Q8_0), int(T.Q4_K)):  # Q8_0 codes span ±127 (d ≈ max|w| / 127, as
            scale /= 40  # llama.cpp writes it), Q4_K's d multiplies sub-scales up to 63
        raw = random_raw(type_id, shape[0], shape[1], rng, scale, ternary)
        if block_scale is not None and type_id in (int(T.TQ1_0), int(T.TQ2_0)):
            at = LAYOUT[type_id][2][0]  # one scale for the whole tensor, as BitNet's weights have
            blocks = raw.reshape(-1, LAYOUT[type_id][1])
            blocks[:, at : at + 2] = np.array([block_scale], np.float16).view(np.uint8)
        add_raw_tensor(w, name, type_id, raw, patches, shape[1])
        rows[name] = shape[0]
        tensors[name] = (type_id, raw)

    add("token_embd.weight", (vocab, hidden), embed_type, 0.5)
    for i in range(layers):
        norms = {"attn_norm": hidden, "ffn_norm": hidden}
        if arch == "qwen3":
            norms.update(attn_q_norm=hd, attn_k_norm=hd)
        if arch == "bitnet":
            norms.update(attn_sub_norm=hidden, ffn_sub_norm=ffn)
        for short, size in norms.items():
            a = (1 + 0.1 * rng.standard_normal(size)).astype(np.float32)
            w.add_tensor(f"blk.{i}.{short}.weight", a)
            tensors[f"blk.{i}.{short}.weight"] = (None, a)
        for short, shape in shapes.items():
            add(f"blk.{i}.{short}.weight", shape, linear_type, 0.02 if linear_type is None else 0.01)
    a = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w.add_tensor("output_norm.weight", a)
    tensors["output_norm.weight"] = (None, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if patches:
        patch_types(path, patches, rows)
    return tensors
