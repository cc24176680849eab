"""Registry of the encodings SPEC.md defines, by their name in the file."""

from __future__ import annotations

from lowbit.formats.encodings.affine import Q1F, Q2F, Q4F
from lowbit.formats.encodings.base import EncodedTensor, Encoding
from lowbit.formats.encodings.dense import BF16, F16, F32
from lowbit.formats.encodings.grouped import Q2, Q3, Q4
from lowbit.formats.encodings.kquant import Q4K
from lowbit.formats.encodings.onebit import ONEBIT
from lowbit.formats.encodings.q8 import Q8
from lowbit.formats.encodings.ternary import TERNARY, TERNARY_1P6
from lowbit.formats.errors import UnknownEncoding

ENCODINGS: dict[str, Encoding] = {
    e.name: e for e in (F32, F16, BF16, Q8, Q4, Q3, Q2, TERNARY, TERNARY_1P6, ONEBIT, Q4F, Q2F, Q1F, Q4K)
}


def get_encoding(name: str) -> Encoding:
    try:
        return ENCODINGS[name]
    except (KeyError, TypeError):
        raise UnknownEncoding(
            f"unknown encoding {name!r} (this lowbit knows {', '.join(ENCODINGS)})"
        ) from None


__all__ = ["ENCODINGS", "EncodedTensor", "Encoding", "get_encoding"]
