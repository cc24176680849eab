"""A Hugging Face checkpoint folder: config, tokenizer files and safetensors weights.

Pickle checkpoints (.bin/.pt/.pth) are refused: loading them executes arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.convert.safetensors_file import SafetensorsFile
from lowbit.errors import ConversionError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)


def refuse_pickle(path: Path) -> None:
    raise ConversionError(
        f"{path}: pickle checkpoints are not loaded (unpickling can run arbitrary code); "
        "convert the model to safetensors first (e.g. transformers' save_pretrained(safe_serialization=True))"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConversionError(f"{path}: cannot read JSON ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: must hold a JSON object, not {type(value).__name__}")
    return value


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class HFCheckpoint:
    """Weights from one or many *.safetensors files (with model.safetensors.index.json)."""

    def __init__(self, folder: str | Path, source_id: str | None = None, revision: str | None = None) -> None:
        self.folder = Path(folder)
        self.source_id = source_id or str(self.folder)
        self.revision = revision
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise ConversionError(f"{self.folder}: not a Hugging Face model folder (no config.json)")
        self.config = _read_json(config_path)
        gen = self.folder / "generation_config.json"
        self.generation_config = _read_json(gen) if gen.is_file() else {}
        self.tokenizer_files = {
            name: (self.folder / name).read_bytes() for name in TOKENIZER_FILES if (self.folder / name).is_file()
        }
        self.weight_files = self._find_weight_files()
        self._files = {p.name: SafetensorsFile(p) for p in self.weight_files}
        self._where: dict[str, str] = {}
        for fname, f in self._files.items():
            for key in f.keys():
                self._where[key] = fname

    def _find_weight_files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            files = sorted({self.folder / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ConversionError(f"{index}: shard {missing[0]} is missing")
            return files
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            return files
        pickles = [p for p in self.folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(pickles[0])
        raise ConversionError(f"{self.folder}: no *.safetensors weights found")

    def tensor_names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def raw(self, name: str) -> np.ndarray:
        return self._files[self._where[name]].raw(name)

    def dtype(self, name: str) -> str:
        return self._files[self._where[name]].dtype(name)

    def get(self, name: str) -> np.ndarray:
        """A tensor as float32 (packed integer tensors keep their dtype)."""
        f = self._files[self._where[name]]
        if f.dtype(name) in ("U8", "I8", "I32", "I64", "I16", "BOOL"):
            return f.raw(name)
        return f.float32(name)

    def shape(self, name: str) -> list[int]:
        return self._files[self._where[name]].shape(name)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._files[self._where[name]].rows_float32(name, start, stop)

    def release(self, name: str) -> None:
        self._files[self._where[name]].release(name)

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._where:
            yield name, self.get(name)

    def file_hashes(self) -> dict[str, str]:
        paths = [self.folder / "config.json", *self.weight_files]
        paths += [self.folder / n for n in self.tokenizer_files]
        return {p.name: sha256_file(p) for p in paths}
