"""Which checkpoints lowbit converts: the registry of per-architecture modules in
`lowbit.convert.models` (one module per family), re-exported here for existing imports."""

from __future__ import annotations

from lowbit.convert.models import SUPPORTED, model_spec
from lowbit.convert.models.base import LINEAR_RE, SKIPPED_SUFFIXES, ModelSpec, is_linear_weight
from lowbit.convert.models.bitnet import RENAMES
from lowbit.convert.models.llama import ARCHITECTURES as LLAMA_LIKE


def canonical_name(name: str) -> str:
    """1bitLLM's BitNet sub-norm names -> ours (other renames live in each model module)."""
    for old, new in RENAMES.items():
        name = name.replace(old, new)
    return name


__all__ = ["LINEAR_RE", "LLAMA_LIKE", "SKIPPED_SUFFIXES", "SUPPORTED", "ModelSpec", "canonical_name",
           "is_linear_weight", "model_spec"]
