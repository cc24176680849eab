"""Model features a .lowbit file needs from the runtime (SPEC.md 3.3).

A converter records in `metadata.features` every feature beyond the Llama block that the model
uses, with the lowbit release that added it. A runtime that lacks one refuses the file, naming
the feature and that release, instead of running a different model than the one converted.
"""

from __future__ import annotations

from typing import Any

from lowbit.runtime.errors import LowbitError

# what this runtime implements (keep in step with lowbit.convert.models.base.FEATURE_VERSIONS)
SUPPORTED_FEATURES = frozenset({
    "qk_norm", "attn_output_norm", "mlp_output_norm", "gelu_tanh", "embedding_multiplier",
    "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "layer_types",
    "local_rope", "partial_rotary", "longrope", "linear_input_norm",
    "down_proj_hadamard",
})


class UnsupportedFeature(LowbitError):
    """The file needs a model feature this runtime does not have (one-line message)."""


def _runtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lowbit")
    except PackageNotFoundError:
        return "unknown"


def check_features(metadata: dict[str, Any], supported: frozenset[str] = SUPPORTED_FEATURES) -> None:
    """Refuse a file whose `features` name one this runtime lacks."""
    features = metadata.get("features") or {}
    if isinstance(features, list):
        features = dict.fromkeys(features, "a later version")
    if not isinstance(features, dict):
        raise UnsupportedFeature("metadata.features must be an object of feature name -> lowbit version")
    for name, added in features.items():
        if name not in supported:
            raise UnsupportedFeature(
                f"this model needs the feature {name!r} (added in lowbit {added}); this lowbit "
                f"({_runtime_version()}) does not have it: upgrade lowbit"
            )
