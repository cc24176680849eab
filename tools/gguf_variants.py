#!/usr/bin/env python3
"""GGUF files for the llama.cpp side of `tools/bench_vs_llamacpp.py`.

* `dequantized_f16_gguf(src, dst)`: a copy of a (quantised) GGUF with every tensor dequantised,
  matrices as F16 and 1-D tensors as F32, the same tensor names and every metadata key copied
  (only general.file_type becomes MOSTLY_F16). Tensors stay in GGUF order, so llama.cpp's Q/K
  RoPE permutation is already there.
* `hf_to_f16_gguf(hf_dir, dst)`: a Llama-architecture Hugging Face folder (e.g. the random
  checkpoints of tools/make_synthetic_checkpoint.py) as an F16 GGUF: llama.* metadata, a minimal
  SentencePiece-style vocabulary with the model's vocab size, HF->GGUF tensor names and the HF->GGUF
  Q/K RoPE permutation (the one convert_hf_to_gguf.py applies).
* `quantize_gguf(src, dst, type)`: llama.cpp's own quantiser (llama_model_quantize with its
  default parameters), in a subprocess so its log and any abort stay out of the caller.
* `gguf_summary(path)`: the tensor types llama.cpp actually produced (it falls back to other types
  for rows that are not a multiple of the block size) and the bits/weight of the linear layers.

Every file is written to a temporary name and renamed at the end: an existing file is complete.

    python tools/gguf_variants.py dequant SRC.gguf DST.gguf
    python tools/gguf_variants.py from-hf HF_DIR DST.gguf
    python tools/gguf_variants.py quantize SRC.gguf DST.gguf Q4_0 [--nthread 2]
    python tools/gguf_variants.py summary FILE.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

# llama.cpp ftype names accepted by quantize_gguf (values from llama_cpp's LLAMA_FTYPE_* constants)
QUANT_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K", "TQ2_0", "TQ1_0")
GGUF_FILE_TYPE_F16 = 1  # LLAMA_FTYPE_MOSTLY_F16

LINEAR_RE = re.compile(r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_LAYER_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", hf_name)
    if m and m.group(2) in HF_LAYER_TO_GGUF:
        return f"blk.{m.group(1)}.{HF_LAYER_TO_GGUF[m.group(2)]}"
    raise ValueError(f"no GGUF name for tensor {hf_name!r}")


def permute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """HF -> GGUF Q/K row order (convert_hf_to_gguf.py's LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _tmp(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{os.getpid()}.tmp")


def _write_streaming(writer, dst: Path, infos: list[tuple[str, tuple[int, ...], np.dtype]],
                     arrays: Callable[[], Iterable[np.ndarray]]) -> None:
    """Tensor infos first, then the data one tensor at a time (memory: one tensor)."""
    for name, shape, dtype in infos:
        writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    tmp = _tmp(dst)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (name, shape, dtype), arr in zip(infos, arrays(), strict=True):
            arr = np.ascontiguousarray(arr, dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: shape {arr.shape}, expected {shape}")
            writer.write_tensor_data(arr)
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def dequantized_f16_gguf(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Every tensor of `src` dequantised (F16 matrices, F32 vectors); all metadata copied."""
    import gguf

    src, dst = Path(src), Path(dst)
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(None, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if key == "general.file_type":
            writer.add_uint32(key, GGUF_FILE_TYPE_F16)
            continue
        if key == "general.alignment":
            writer.data_alignment = int(field.contents())
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 2:
            raise ValueError(f"{key}: nested arrays are not supported")
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    infos = []
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # numpy order (rows, cols)
        infos.append((t.name, shape, np.float16 if len(shape) >= 2 else np.float32))

    def arrays():
        for t, (_, shape, _) in zip(reader.tensors, infos, strict=True):
            w = gguf.quants.dequantize(t.data, t.tensor_type)
            yield np.asarray(w, dtype=np.float32).reshape(shape)

    dst.parent.mkdir(parents=True, exist_ok=True)
    _write_streaming(writer, dst, infos, arrays)
    return dst


def _spm_vocab(n_vocab: int, bos: int, eos: int, unk: int) -> tuple[list[str], list[float], list[int]]:
    """A minimal SentencePiece ("llama") vocabulary: <unk>/<s>/</s>, the 256 byte tokens when they
    fit, then distinct ordinary pieces. Enough for llama.cpp to load the model and run token ids."""
    from gguf import TokenType as tok_type
    tokens = [f"▁t{i}" for i in range(n_vocab)]
    types = [tok_type.NORMAL] * n_vocab
    scores = [-float(i) for i in range(n_vocab)]
    for i, (name, kind) in {unk: ("<unk>", tok_type.UNKNOWN), bos: ("<s>", tok_type.CONTROL),
                           eos: ("</s>", tok_type.CONTROL)}.items():
        tokens[i], types[i], scores[i] = name, kind, 0.0
    first = max(unk, bos, eos) + 1
    if n_vocab >= first + 256:
        for b in range(256):
            tokens[first + b], types[first + b], scores[first + b] = f"<0x{b:02X}>", tok_type.BYTE, 0.0
    return tokens, scores, [int(t) for t in types]


def hf_to_f16_gguf(hf_dir: str | os.PathLike, dst: str | os.PathLike, name: str | None = None) -> Path:
    """A Llama-architecture HF folder (config.json + safetensors) as an F16 GGUF llama.cpp loads."""
    import gguf
    from safetensors import safe_open

    hf_dir, dst = Path(hf_dir), Path(dst)
    cfg = json.loads((hf_dir / "config.json").read_text())
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    n_vocab = cfg["vocab_size"]
    bos, eos = cfg.get("bos_token_id", 1), cfg.get("eos_token_id", 2)
    eos = eos[0] if isinstance(eos, list) else eos
    bos = 1 if bos is None else bos
    eos = 2 if eos is None else eos
    unk = 0 if 0 not in (bos, eos) else next(i for i in range(3, n_vocab) if i not in (bos, eos))

    writer = gguf.GGUFWriter(None, "llama")
    writer.add_type("model")
    writer.add_name(name or hf_dir.name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(GGUF_FILE_TYPE_F16)
    tokens, scores, types = _spm_vocab(n_vocab, bos, eos, unk)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(unk)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    else:
        with safe_open(str(hf_dir / "model.safetensors"), "numpy") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(set(weight_map.values())):
        with safe_open(str(hf_dir / file), "numpy") as f:
            for k in f.keys():
                shapes[k] = tuple(f.get_slice(k).get_shape())
    # GGUF order: embeddings, blocks in order, final norm, output
    def order(k: str) -> tuple:
        m = re.match(r"^model\.layers\.(\d+)\.", k)
        return (1, int(m.group(1)), k) if m else ((0, 0, k) if "embed" in k else (2, 0, k))

    hf_names = sorted((k for k in shapes if not k.endswith("rotary_emb.inv_freq")), key=order)
    infos = [(gguf_name(k), shapes[k], np.float16 if len(shapes[k]) >= 2 else np.float32) for k in hf_names]

    def arrays():
        handles: dict[str, object] = {}
        try:
            for k in hf_names:
                file = weight_map[k]
                if file not in handles:
                    handles[file] = safe_open(str(hf_dir / file), "numpy")
                w = handles[file].get_tensor(k)
                if k.endswith("self_attn.q_proj.weight"):
                    w = permute_qk(w, n_head, n_head)
                elif k.endswith("self_attn.k_proj.weight"):
                    w = permute_qk(w, n_head, n_kv)
                yield w
        finally:
            handles.clear()

    dst.parent.mkdir(parents=True, exist_ok=True)
    _write_streaming(writer, dst, infos, arrays)
    return dst


def ftype_constant(type_name: str) -> int:
    import llama_cpp

    attr = "LLAMA_FTYPE_MOSTLY_" + type_name.upper()
    if not hasattr(llama_cpp, attr):
        raise ValueError(f"llama.cpp has no file type {type_name!r} ({attr})")
    return int(getattr(llama_cpp, attr))


def _quantize_here(src: Path, dst: Path, type_name: str, nthread: int) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = ftype_constant(type_name)
    tmp = _tmp(dst)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc == 0:
        os.replace(tmp, dst)
    else:
        tmp.unlink(missing_ok=True)
    return int(rc)


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, type_name: str, nthread: int = 2,
                  log: str | os.PathLike | None = None) -> Path:
    """llama.cpp's quantiser in a child process; raises with the log's tail when it fails."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "quantize", str(src), str(dst), type_name,
           "--nthread", str(nthread)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    text = proc.stdout + proc.stderr
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(text)
    if proc.returncode != 0 or not dst.is_file():
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise RuntimeError(f"llama.cpp could not quantise {src.name} to {type_name} (exit {proc.returncode}):\n{tail}")
    return dst


def open_llama(path: str | os.PathLike, repack: bool = True, **kwargs):
    """llama_cpp.Llama(path, **kwargs). repack=False turns off llama.cpp's extra buffer types
    (x86 weight repacking and AMX): on the AMX Xeon VMs seen here, llama-cpp-python 0.3.36's AMX
    matmul segfaults on the first batch. Same maths, only slower: fine for scoring, not for timing."""
    import llama_cpp
    import llama_cpp.llama_cpp as capi

    if repack:
        return llama_cpp.Llama(str(path), **kwargs)
    default = capi.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    capi.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(str(path), **kwargs)
    finally:
        capi.llama_model_default_params = default


def gguf_summary(path: str | os.PathLike) -> dict:
    """Tensor types as written, and bits/weight (linear layers, all matrices)."""
    import gguf

    reader = gguf.GGUFReader(path)
    lin_types: Counter = Counter()
    lin_bytes = lin_n = mat_bytes = mat_n = 0
    special = {}
    for t in reader.tensors:
        n, nbytes = int(t.n_elements), int(t.n_bytes)
        if len(t.shape) >= 2:
            mat_bytes += nbytes
            mat_n += n
        if LINEAR_RE.match(t.name):
            lin_types[t.tensor_type.name] += 1
            lin_bytes += nbytes
            lin_n += n
        elif t.name in ("token_embd.weight", "output.weight"):
            special[t.name] = t.tensor_type.name
    return {
        "path": str(path),
        "file_size_bytes": Path(path).stat().st_size,
        "linear_types": dict(lin_types.most_common()),
        "linear_bits_per_weight": 8.0 * lin_bytes / max(1, lin_n),
        "bits_per_weight": 8.0 * mat_bytes / max(1, mat_n),
        "token_embd_type": special.get("token_embd.weight"),
        "output_type": special.get("output.weight", "(tied to token_embd)"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dequant", help="dequantised F16 copy of a GGUF")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p = sub.add_parser("from-hf", help="HF Llama folder -> F16 GGUF")
    p.add_argument("hf_dir", type=Path)
    p.add_argument("dst", type=Path)
    p = sub.add_parser("quantize", help="llama.cpp's quantiser (runs in this process)")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("type", help=f"one of {', '.join(QUANT_TYPES)} (any LLAMA_FTYPE_MOSTLY_* name)")
    p.add_argument("--nthread", type=int, default=2)
    p = sub.add_parser("summary", help="tensor types and bits/weight")
    p.add_argument("path", type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.cmd == "dequant":
        dequantized_f16_gguf(args.src, args.dst)
    elif args.cmd == "from-hf":
        hf_to_f16_gguf(args.hf_dir, args.dst)
    elif args.cmd == "quantize":
        rc = _quantize_here(args.src, args.dst, args.type, args.nthread)
        if rc != 0:
            print(f"llama_model_quantize returned {rc}", file=sys.stderr)
            return 1
    elif args.cmd == "summary":
        print(json.dumps(gguf_summary(args.path), indent=2))
        return 0
    print(f"{args.cmd}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
