"""What every encoding provides: the parts it stores, its exact bits/weight and a numpy
dequantize() that is the reference every kernel is tested against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowbit.formats.constants import DTYPES
from lowbit.formats.errors import InvalidTensor

Shape = tuple[int, ...]
PartSpecs = dict[str, tuple[str, Shape]]


@dataclass
class EncodedTensor:
    """A tensor as stored: its encoding, logical shape, params and packed parts."""

    encoding: str
    shape: Shape
    params: dict[str, Any]
    parts: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.parts.values())

    def dequantize(self, rows: np.ndarray | None = None) -> np.ndarray:
        from lowbit.formats.encodings import get_encoding

        return get_encoding(self.encoding).dequantize(self.parts, self.shape, self.params, rows)


class Encoding:
    """Base class: subclasses define part_specs(), bits_per_weight() and dequantize()."""

    name: str = ""
    family: str = ""  # the kernel family that runs it (runtime/kernels/<family>.py, lowbit.quant)
    matrix_only: bool = True  # quantised encodings need a 2-D [out, in] tensor

    def require(self, cond: bool, what: str) -> None:
        """Raise InvalidTensor("<name>: <what>") unless cond: a header value this encoding rejects."""
        if not cond:
            raise InvalidTensor(f"{self.name}: {what}")

    def require_group_size(self, params: dict[str, Any], allowed: tuple[int, ...]) -> int:
        """params.group_size, if it is one of `allowed` (else InvalidTensor naming the value)."""
        group = params.get("group_size")
        self.require(group in allowed, f"group_size must be one of {allowed}, got {group!r}")
        return group

    def check(self, shape: Shape, params: dict[str, Any]) -> None:
        """Raise InvalidTensor if shape or params are not valid for this encoding."""
        if self.matrix_only and (len(shape) != 2 or min(shape) < 1):
            raise InvalidTensor(f"encoding {self.name} needs a 2-D [out, in] shape, got {list(shape)}")
        if any((not isinstance(d, int)) or d < 0 for d in shape):
            raise InvalidTensor(f"invalid shape {list(shape)}")

    def part_specs(self, shape: Shape, params: dict[str, Any]) -> PartSpecs:
        raise NotImplementedError

    def bits_per_weight(self, shape: Shape, params: dict[str, Any]) -> float:
        """The SPEC.md formula: 8 × bytes of all parts / number of weights."""
        total = sum(DTYPES[dt].itemsize * int(np.prod(s, dtype=np.int64)) for dt, s in self.part_specs(shape, params).values())
        return 8.0 * total / max(1, int(np.prod(shape, dtype=np.int64)))

    def dequantize(
        self, parts: dict[str, np.ndarray], shape: Shape, params: dict[str, Any], rows: np.ndarray | None = None
    ) -> np.ndarray:
        raise NotImplementedError

    def make(self, shape: Shape, params: dict[str, Any], parts: dict[str, np.ndarray]) -> EncodedTensor:
        """Build an EncodedTensor and check its parts against part_specs()."""
        shape = tuple(int(d) for d in shape)
        self.check(shape, params)
        specs = self.part_specs(shape, params)
        if set(specs) != set(parts):
            raise InvalidTensor(f"{self.name}: parts {sorted(parts)} != expected {sorted(specs)}")
        out = {}
        for name, (dt, s) in specs.items():
            arr = np.ascontiguousarray(parts[name])
            if arr.dtype != DTYPES[dt] or arr.shape != tuple(s):
                raise InvalidTensor(
                    f"{self.name}: part {name} is {arr.dtype}{list(arr.shape)}, expected {dt}{list(s)}"
                )
            out[name] = arr
        return EncodedTensor(self.name, shape, dict(params), out)


def select_rows(arr: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return arr if rows is None else arr[rows]


class BitWidthEncoding(Encoding):
    """A family with one encoding per bit width (q2/q3/q4; q1f/q2f/q4f), named by `name_format`."""

    name_format = "q{bits}"

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = self.name_format.format(bits=bits)
