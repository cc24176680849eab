"""symmetric int8 codes with one f16 scale per row or per group (SPEC.md 2.2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.formats.constants import ceil_div
from lowbit.formats.encodings.base import EncodedTensor, Encoding, PartSpecs, Shape, select_rows

GROUP_SIZES = (0, 32, 64, 128, 256)


def group_size_of(shape: Shape, params: dict[str, Any]) -> int:
    """The effective group length: 0 in params means one group per row."""
    return int(params["group_size"]) or int(shape[1])


class Q8Encoding(Encoding):
    family = "q8"
    name = "q8"

    def check(self, shape: Shape, params: dict[str, Any]) -> None:
        super().check(shape, params)
        self.require_group_size(params, GROUP_SIZES)

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        out, n_in = shape
        ng = ceil_div(n_in, group_size_of(shape, params))
        return {"codes": ("i8", (out, n_in)), "scales": ("f16", (out, ng))}

    def pack(self, codes: np.ndarray, scales: np.ndarray, group_size: int) -> EncodedTensor:
        return self.make(
            codes.shape,
            {"group_size": int(group_size)},
            {"codes": codes.astype(np.int8), "scales": scales.astype(np.float16)},
        )

    def dequantize(self, parts, shape, params, rows=None) -> np.ndarray:
        g = group_size_of(shape, params)
        codes = select_rows(parts["codes"], rows).astype(np.float32)
        scales = select_rows(parts["scales"], rows).astype(np.float32)
        return codes * np.repeat(scales, g, axis=-1)[..., : shape[1]]


Q8 = Q8Encoding()
