"""Open whatever the user points `lowbit convert` at: an HF folder, a hub id or a GGUF file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.convert.hf_source import PICKLE_SUFFIXES, HFCheckpoint, refuse_pickle
from lowbit.errors import ConversionError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "chat_template.jinja"]


def open_checkpoint(source: str, revision: str | None = None) -> Any:
    """Return a checkpoint object (HFCheckpoint or GGUFCheckpoint) for a path or hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            from lowbit.convert.gguf_source import GGUFCheckpoint

            return GGUFCheckpoint(path)
        if path.suffix in PICKLE_SUFFIXES:
            refuse_pickle(path)
        if path.suffix in (".safetensors", ".json"):
            return HFCheckpoint(path.parent)
        raise ConversionError(f"{path}: not a model (expected a folder, a .gguf file or a hub id)")
    if path.is_dir():
        return HFCheckpoint(path)
    if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return HFCheckpoint(download(source, revision), source_id=source, revision=revision)
    raise ConversionError(f"{source}: no such file or folder (and not a hub id like org/name)")


def download(repo_id: str, revision: str | None) -> Path:
    """Fetch only config, tokenizer and safetensors files; works offline from the HF cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ConversionError(
            f"{repo_id}: not in the Hugging Face cache and the hub cannot be reached (offline?)"
        ) from None
    except HfHubHTTPError as e:
        raise ConversionError(f"{repo_id}: download failed ({str(e).splitlines()[0]})") from None
    except (OSError, ValueError) as e:
        raise ConversionError(f"{repo_id}: download failed ({type(e).__name__}: {e})") from None


def check_weight(name: str, w: np.ndarray) -> None:
    """Refuse NaN/Inf anywhere and all-zero weight matrices, naming the tensor."""
    if w.dtype.kind == "f" and not np.isfinite(w).all():
        raise ConversionError(f"tensor {name} contains NaN or Inf values")
    if w.ndim == 2 and name.endswith(".weight") and not np.any(w):
        raise ConversionError(f"tensor {name} is all zeros (a broken checkpoint?)")
