"""Quantisers: float weights -> an EncodedTensor of the requested encoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lowbit.errors import ConversionError
from lowbit.formats.encodings import EncodedTensor, get_encoding


def _dense(w: np.ndarray, encoding: str, params: dict[str, Any]) -> EncodedTensor:
    return get_encoding(encoding).pack(w)


def _q8(w: np.ndarray, encoding: str, params: dict[str, Any]) -> EncodedTensor:
    from lowbit.quant.rtn import quantize_q8

    return quantize_q8(w, int(params.get("group_size", 0)))


def _grouped(w: np.ndarray, encoding: str, params: dict[str, Any]) -> EncodedTensor:
    from lowbit.quant.rtn import quantize_grouped

    return quantize_grouped(w, get_encoding(encoding).bits, int(params.get("group_size", 128)),
                            refine=bool(params.get("refine", False)))


def _ternary(w: np.ndarray, encoding: str, params: dict[str, Any]) -> EncodedTensor:
    from lowbit.quant.ternary import quantize_ternary

    return quantize_ternary(w, params.get("scale_mode") == "row", base3=encoding == "ternary-1.6")


def _onebit(w: np.ndarray, encoding: str, params: dict[str, Any]) -> EncodedTensor:
    from lowbit.quant.onebit import quantize_onebit

    return quantize_onebit(w, bool(params.get("layernorm", False)))


# encoding family (`Encoding.family`) -> its quantiser; the affine grids (q1f/q2f/q4f) come
# from GGUF files only and have none
QUANTIZERS: dict[str, Callable[[np.ndarray, str, dict[str, Any]], EncodedTensor]] = {
    "dense": _dense, "q8": _q8, "grouped": _grouped, "ternary": _ternary, "onebit": _onebit,
}  # fmt: skip
GGUF_ONLY = frozenset({"affine", "kquant"})  # families that only `--method keep` writes (GGUF's grids)


def quantize(w: np.ndarray, encoding: str, params: dict[str, Any]) -> EncodedTensor:
    """Round-to-nearest / absmean / SVID quantisation of one tensor (no calibration data)."""
    family = get_encoding(encoding).family  # raises UnknownEncoding
    if family in GGUF_ONLY:
        raise ConversionError(
            f"encoding {encoding} holds GGUF's own grids: it comes from `--method keep` on a GGUF, "
            "not from float weights"
        )
    return QUANTIZERS[family](w, encoding, params)


def relative_error(w: np.ndarray, w_hat: np.ndarray) -> float:
    """‖W − Ŵ‖ / ‖W‖ (0 for an all-zero W reproduced exactly)."""
    num = float(np.linalg.norm((w_hat - w).ravel()))
    den = float(np.linalg.norm(np.asarray(w, np.float32).ravel()))
    return num / den if den > 0 else num
