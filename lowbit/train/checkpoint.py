"""Training checkpoints: safetensors files (tensors + one JSON metadata string), never pickle.

Writes are atomic (a temporary file in the same folder, then os.replace), so an interrupted save
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lowbit.train import TrainingError

META_KEY = "lowbit_train"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        save_file(data, str(tmp), metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"{path}: cannot write the training checkpoint ({e.strerror or e})") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise TrainingError(f"{path}: no training checkpoint to resume from") from None
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise TrainingError(f"{path}: not a lowbit training checkpoint ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise TrainingError(f"{path}: not a lowbit training checkpoint (bad metadata)")
    return tensors, meta


def check_compatible(path: Path, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    """The checkpoint belongs to this run: same model, method and settings."""
    for key, value in expected.items():
        if meta.get(key) != value:
            raise TrainingError(
                f"{path}: checkpoint was made with {key}={meta.get(key)!r}, this run has {value!r} "
                "(delete it or pass the same options)"
            )
