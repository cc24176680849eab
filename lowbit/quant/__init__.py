"""Quantisers: float weights -> an EncodedTensor of the requested encoding."""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.encodings import EncodedTensor, get_encoding


def quantize(w: np.ndarray, encoding: str, params: dict[str, Any]) -> EncodedTensor:
    """Round-to-nearest / absmean / SVID quantisation of one tensor (no calibration data)."""
    if encoding in ("f32", "f16", "bf16"):
        return get_encoding(encoding).pack(w)
    if encoding == "q8":
        from lowbit.quant.rtn import quantize_q8

        return quantize_q8(w, int(params.get("group_size", 0)))
    if encoding in ("q2", "q3", "q4"):
        from lowbit.quant.rtn import quantize_grouped

        return quantize_grouped(w, int(encoding[1]), int(params.get("group_size", 128)),
                                refine=bool(params.get("refine", False)))
    if encoding in ("ternary", "ternary-1.6"):
        from lowbit.quant.ternary import quantize_ternary

        return quantize_ternary(w, params.get("scale_mode") == "row", base3=encoding == "ternary-1.6")
    if encoding == "onebit":
        from lowbit.quant.onebit import quantize_onebit

        return quantize_onebit(w, bool(params.get("layernorm", False)))
    get_encoding(encoding)  # raises UnknownEncoding
    raise AssertionError(encoding)


def relative_error(w: np.ndarray, w_hat: np.ndarray) -> float:
    """‖W − Ŵ‖ / ‖W‖ (0 for an all-zero W reproduced exactly)."""
    num = float(np.linalg.norm((w_hat - w).ravel()))
    den = float(np.linalg.norm(np.asarray(w, np.float32).ravel()))
    return num / den if den > 0 else num
