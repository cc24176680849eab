"""The float teacher: a transformers model built from the Hugging Face folder being converted,
the map from its linear modules to lowbit's tensor names, and the calibration token windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.train import TrainingError


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when torch sees one (or as asked), else the CPU."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise TrainingError(f"--device {requested}: torch sees no CUDA device")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Source:
    """What training needs from the checkpoint: its folder, lowbit's view of it and its tokenizer."""

    folder: Path
    ckpt: Any  # lowbit.convert.hf_source.HFCheckpoint
    spec: Any  # lowbit.convert.architectures.ModelSpec
    tokenizer: Any  # lowbit.runtime.tokenizer.Tokenizer

    @property
    def fingerprint(self) -> str:
        """Hash of the source files: a checkpoint of another model is refused on --resume."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.ckpt.file_hashes(), sort_keys=True).encode()).hexdigest()[:16]


def open_source(source: str, revision: str | None = None) -> Source:
    from lowbit.convert.architectures import model_spec
    from lowbit.convert.converter import _malformed_input, tokenizer_section
    from lowbit.convert.sources import open_checkpoint
    from lowbit.runtime.tokenizer import Tokenizer

    with _malformed_input(source):
        ckpt = open_checkpoint(str(source), revision)
        if not hasattr(ckpt, "folder"):
            raise TrainingError(f"{source}: --train needs a Hugging Face folder or hub id (the float teacher), not GGUF")
        spec = model_spec(ckpt.config)
    if spec.ternary_weights is not None:
        raise TrainingError(f"{source}: already a ternary (BitNet) model, nothing to distil")
    _, blob, meta = tokenizer_section(ckpt.tokenizer_files)
    return Source(ckpt.folder, ckpt, spec, Tokenizer.from_bytes(meta["kind"], blob, meta))


def load_teacher(src: Source, device: torch.device) -> nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(src.folder, dtype=torch.float32, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as e:
        raise TrainingError(f"{src.folder}: transformers cannot build the teacher ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    model.to(device).eval()
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def linear_modules(model: nn.Module, src: Source, choose) -> dict[str, tuple[str, str, dict]]:
    """module path -> (lowbit tensor name, encoding, params) for every linear weight of the
    transformer blocks, checked against the checkpoint's own names and shapes (an architecture
    whose linears lowbit splits or renames, as Phi-3's fused qkv, is refused here)."""
    from lowbit.convert.architectures import canonical_name, is_linear_weight

    names = {canonical_name(n) for n in src.ckpt.tensor_names()}
    out = {}
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or not path.startswith("model.layers."):
            continue
        name = canonical_name(path + ".weight")
        if name not in names or not is_linear_weight(name):
            raise TrainingError(f"--train: teacher layer {path} has no tensor {name} in {src.folder}")
        if list(src.ckpt.shape(name)) != list(mod.weight.shape):
            raise TrainingError(f"--train: teacher layer {path} has shape {list(mod.weight.shape)}, the checkpoint {src.ckpt.shape(name)}")
        enc, params = choose(name, tuple(mod.weight.shape))
        out[path] = (name, enc, params)
    if not out:
        raise TrainingError(f"--train: found no linear layers in {src.folder}")
    return out


def quantise_embeddings(model: nn.Module, choose) -> None:
    """Embeddings and lm_head as the file will hold them (q8 by default), so the student trains
    against the head it will run with."""
    from lowbit.quant import quantize

    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    pairs = [("model.embed_tokens.weight", model.get_input_embeddings())]
    if not tied and model.get_output_embeddings() is not None:
        pairs.append(("lm_head.weight", model.get_output_embeddings()))
    for name, mod in pairs:
        w = mod.weight.detach().float().cpu().numpy()
        enc, params = choose(name, tuple(w.shape))
        deq = quantize(w, enc, params).dequantize()
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(deq, np.float32)))


def text_windows(src: Source, text: str, seq_len: int, sequences: int) -> np.ndarray:
    """Non-overlapping windows [n, seq_len] of the tokenised text (BOS first, as eval does)."""
    ids = src.tokenizer.encode(text, add_special_tokens=False)
    n = min(sequences, len(ids) // seq_len)
    if n == 0:
        raise TrainingError(f"the calibration text has {len(ids)} tokens, fewer than one window of {seq_len}")
    w = np.asarray(ids[: n * seq_len], np.int64).reshape(n, seq_len)
    bos = src.tokenizer.bos_token_id
    if bos is not None:
        w[:, 0] = bos
    return w
