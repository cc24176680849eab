"""Resolving the MODEL argument: a .lowbit file is used as is; anything `lowbit convert`
accepts (HF folder, hub id, GGUF file) is converted once into the cache and reused, the way
`ollama pull` keeps models."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from lowbit.errors import LowbitError

MAGIC = b"\x89LOWBIT\n"


def lowbit_home() -> Path:
    """$LOWBIT_HOME, else the platform's user cache folder for lowbit."""
    env = os.environ.get("LOWBIT_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lowbit"))


def is_lowbit_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == MAGIC
    except OSError:
        return False


def cached_path(source: str, method: str, revision: str | None = None) -> Path:
    """Where the converted copy of `source` lives in the cache."""
    p = Path(source).expanduser()
    key = str(p.resolve()) if p.exists() else source
    digest = hashlib.sha256(f"{key}@{revision or ''}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", p.name.removesuffix(".gguf") if p.exists() else source).strip("-")
    return lowbit_home() / "models" / f"{slug}-{digest}-{method}.lowbit"


def resolve_model(
    model: str | os.PathLike,
    method: str = "q4",
    revision: str | None = None,
    on_convert: Callable[[str, Path], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Return a .lowbit path for MODEL, converting (once) if it is not one already."""
    path = Path(model).expanduser()
    if path.is_file() and is_lowbit_file(path):
        return path
    if path.is_file() and path.suffix == ".lowbit":
        raise LowbitError(f"{path}: not a .lowbit file (bad magic)")
    if not path.exists() and path.suffix == ".lowbit":
        raise LowbitError(f"{path}: no such file")
    target = cached_path(str(model), method, revision)
    if target.is_file():
        return target
    from lowbit.convert.architectures import model_spec
    from lowbit.convert.converter import convert
    from lowbit.convert.sources import open_checkpoint

    model_spec(open_checkpoint(str(model), revision).config)  # refuse bad input before announcing work
    if on_convert is not None:
        on_convert(str(model), target)
    convert(str(model), target, method=method, revision=revision, progress=progress)
    return target


def load(
    model: str | os.PathLike,
    threads: int | None = None,
    context_length: int | None = None,
    method: str = "q4",
    kv_cache: str | None = None,
):
    """Load MODEL (a .lowbit file, or a checkpoint converted once into the cache); kv_cache: f32,
    f16 or q8 (checked before anything is converted)."""
    from lowbit.runtime import load as load_lowbit
    from lowbit.runtime.kv_cache import check_kind

    check_kind(kv_cache)
    return load_lowbit(resolve_model(model, method), threads=threads, context_length=context_length,
                       kv_cache=kv_cache)
