"""What a .lowbit file holds, as a plain dict: `lowbit info` prints it, `lowbit bench` reuses it.

Only metadata keys from SPEC.md section 3 are read, and every one of them is optional: a file
written by another converter (or an older lowbit) still summarises, with None where a key is
missing or has the wrong type.
"""

from __future__ import annotations

import os
import re
from typing import Any

from lowbit.formats import LowbitReader

# SPEC.md section 4: linear layers are the 2-D tensors of the decoder blocks
_LAYER_RE = re.compile(r"model\.layers\.\d+\.")


def is_linear(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and _LAYER_RE.match(name) is not None


def _bpw(nbytes: int, weights: int) -> float | None:
    return 8.0 * nbytes / weights if weights else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summarize(source: LowbitReader | str | os.PathLike, tensors: bool = False) -> dict[str, Any]:
    """Summarise an open reader (or a path, opened and closed here).

    bits/weight follow SPEC.md section 2: 8 × bytes of the tensor's parts / number of weights
    (padding included, record alignment gaps excluded). With tensors=True the result also holds
    a per-tensor list under "tensors".
    """
    if not isinstance(source, LowbitReader):
        with LowbitReader(source) as reader:
            return summarize(reader, tensors)
    reader = source
    meta = reader.metadata
    config = _obj(meta.get("config"))
    tok = _obj(meta.get("tokenizer"))
    prov = _obj(meta.get("provenance"))
    recipe = prov.get("recipe")
    if isinstance(recipe, dict):
        method = _str(recipe.get("method"))
    else:
        method = _str(recipe)

    encodings: dict[str, dict[str, Any]] = {}
    rows = []
    n_weights = n_bytes = lin_weights = lin_bytes = 0
    for entry in reader.tensors.values():
        weights = entry.numel
        nbytes = sum(int(p.nbytes) for p in entry.parts.values())
        n_weights += weights
        n_bytes += nbytes
        if is_linear(entry.name, entry.shape):
            lin_weights += weights
            lin_bytes += nbytes
        enc = encodings.setdefault(entry.encoding, {"tensors": 0, "weights": 0, "bytes": 0})
        enc["tensors"] += 1
        enc["weights"] += weights
        enc["bytes"] += nbytes
        src = entry.info.get("source_type")
        if isinstance(src, str):  # converted from a GGUF: its GGML type, re-packed or re-quantised
            key = _str(src) + (" kept" if entry.info.get("kept") is True else " re-quantised")
            by_src = enc.setdefault("source_types", {})
            by_src[key] = by_src.get(key, 0) + 1
        if tensors:
            rel = entry.info.get("rel_error")
            rows.append(
                {
                    "name": entry.name,
                    "encoding": entry.encoding,
                    "shape": list(entry.shape),
                    "params": entry.params,
                    "bytes": nbytes,
                    "bits_per_weight": _bpw(nbytes, weights),
                    "rel_error": rel
                    if isinstance(rel, (int, float)) and not isinstance(rel, bool)
                    else None,
                }
            )
    head = reader.tensors.get("lm_head.weight") or reader.tensors.get("model.embed_tokens.weight")
    head_bytes = sum(int(p.nbytes) for p in head.parts.values()) if head is not None else 0
    for enc in encodings.values():
        enc["bits_per_weight"] = _bpw(enc["bytes"], enc["weights"])

    quality = meta.get("quality")
    summary: dict[str, Any] = {
        "path": str(reader.path),
        "format_version": f"{reader.version[0]}.{reader.version[1]}",
        "file_size": reader.file_size,
        "architecture": _str(meta.get("architecture")),
        "source_architecture": _str(config.get("source_architecture")),
        "parameters": n_weights,
        "tensor_count": len(reader.tensors),
        "blob_count": len(reader.blob_names()),
        "tensor_bytes": n_bytes,
        "bits_per_weight": _bpw(n_bytes, n_weights),
        "file_bits_per_weight": _bpw(reader.file_size, n_weights),
        "linear_parameters": lin_weights,
        "linear_bits_per_weight": _bpw(lin_bytes, lin_weights),
        # what a decode token streams: every layer's linears and the output head, once each
        "decode_read_bytes": lin_bytes + head_bytes,
        "encodings": dict(sorted(encodings.items(), key=lambda kv: -kv[1]["weights"])),
        "tokenizer": {
            "kind": _str(tok.get("kind")),
            "blob": _str(tok.get("blob")),
            "chat_template": bool(_str(tok.get("chat_template"))),
        },
        "context_length": _int(config.get("max_position_embeddings")),
        "provenance": {
            "source": _str(prov.get("source")),
            "revision": _str(prov.get("revision")),
            "converter": _str(prov.get("converter")),
            "created": _str(prov.get("created")),
            "recipe_method": method,
            "calibrated": "calibration" in prov and prov["calibration"] is not None,
        },
        "quality": quality if isinstance(quality, dict) and quality else None,
    }
    if tensors:
        summary["tensors"] = rows
    return summary
