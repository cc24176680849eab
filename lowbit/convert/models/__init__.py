"""One module per architecture family; this registry finds the one a config.json asks for.

Adding an architecture: a module here with ARCHITECTURES, MODEL_TYPES and `spec(hf, source_arch)`
(and GGUF names if llama.cpp has it), the runtime features its config turns on, and its test.
"""

from __future__ import annotations

from typing import Any

from lowbit.convert.models import bitnet, gemma2, gemma3, llama, phi3, qwen3
from lowbit.convert.models.base import (
    FEATURE_VERSIONS,
    SKIPPED_SUFFIXES,
    CheckpointView,
    ModelSpec,
    is_linear_weight,
    required_features,
)
from lowbit.errors import UnsupportedModel

MODULES = (llama, bitnet, qwen3, gemma2, gemma3, phi3)
BY_CLASS = {arch: m for m in MODULES for arch in m.ARCHITECTURES}
# model_type -> (module, HF class): MODEL_TYPES[i] is the type of ARCHITECTURES[i] (or of the last)
BY_MODEL_TYPE = {t: (m, m.ARCHITECTURES[min(i, len(m.ARCHITECTURES) - 1)])
                 for m in MODULES for i, t in enumerate(m.MODEL_TYPES)}
SUPPORTED = tuple(BY_CLASS)


def model_spec(hf: dict[str, Any]) -> ModelSpec:
    """Validate a Hugging Face config.json and translate it to lowbit's config (SPEC.md 3.1).

    The architecture is `architectures[0]`; when config.json has none, its `model_type` (which is
    what transformers itself loads by)."""
    archs = hf.get("architectures") or []
    if archs:
        source_arch = str(archs[0])
        module = BY_CLASS.get(source_arch)
    else:
        found = BY_MODEL_TYPE.get(str(hf.get("model_type")))
        module, source_arch = found if found else (None, f"model_type {hf.get('model_type', 'unknown')}")
    if module is None:
        raise UnsupportedModel(f"architecture {source_arch!r} is not supported (supported: {', '.join(SUPPORTED)})")
    spec = module.spec(hf, source_arch)
    spec.config["source_architecture"] = source_arch
    return spec


__all__ = ["FEATURE_VERSIONS", "SKIPPED_SUFFIXES", "SUPPORTED", "CheckpointView", "ModelSpec", "is_linear_weight",
           "model_spec", "required_features"]
