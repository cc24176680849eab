"""Linear layers on packed weights: one class per encoding, the kernel picked once at construction.

    lin = make_linear(reader["model.layers.0.mlp.up_proj.weight"], bias=None)
    y = lin(x)            # x float32 [T, in] (or [in]) -> y float32 [T, out] (or [out])
    lin(x, out=buf)       # write into a preallocated C-contiguous float32 [T, out]

T == 1 runs the generic matrix-vector kernel (`kernels.matvec`, on the layer's `descriptor`),
T > 1 the encoding's prefill kernel. Weights stay packed and
memory-mapped; the layers pass read-only views of them to the kernels, so numba compiles one
signature per kernel whether a tensor came from a file or from `Encoding.pack()`.

Ternary layers quantise their input to int8 once per call; `quantize(x)` exposes that step so
that several matrices with the same prefill input (q/k/v, gate/up) can share one quantised
activation:

    qa = q_proj.quantize(x); q, k, v = q_proj(qa), k_proj(qa), v_proj(qa)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from lowbit.formats.encodings import ENCODINGS, Encoding
from lowbit.formats.encodings.q8 import group_size_of
from lowbit.runtime.kernels import affine, dense, grouped, kquant, matvec, onebit, q8, ternary
from lowbit.runtime.kernels.common import prompt_chunk
from lowbit.runtime.kernels.matvec import layer_norm as layer_norm_row
from lowbit.runtime.kernels.matvec import matvec_rows
from lowbit.runtime.kernels.ternary import QuantizedActivation, quantize_activation


def _read_parts(parts: dict[str, np.ndarray], **dtypes: Any) -> list[np.ndarray]:
    """The named parts, in the order named, each as `_readonly(part, dtype)`."""
    return [_readonly(parts[name], dtype) for name, dtype in dtypes.items()]


def _readonly(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A C-contiguous read-only view (f16 parts become their u16 bits)."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.float16:
        a = a.view(np.uint16)
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"expected a {np.dtype(dtype)} part, got {a.dtype}")
    v = a.view()
    v.flags.writeable = False
    return v


def _as_input(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not x.flags.writeable:  # keep one kernel signature (numba types read-only arrays apart)
        x = x.copy()
    return x


class Linear:
    """Base class: shape checks, output buffer, bias, the decode path. Subclasses set `_prefill`
    and, where the descriptor needs them, `_group` and `_layernorm`."""

    encoding: str

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        shape = tuple(int(d) for d in entry.shape)
        if len(shape) != 2:
            raise ValueError(f"a linear layer needs a 2-D weight, got shape {list(shape)}")
        self.encoding = entry.encoding
        self.out_features, self.in_features = shape
        self.params = dict(entry.params)
        self.name = getattr(entry, "name", "")
        self.nbytes = int(sum(int(p.nbytes) for p in entry.parts.values()))
        self.bias = None
        if bias is not None:
            b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
            if b.shape[0] != self.out_features:
                raise ValueError(
                    f"bias has {b.shape[0]} values, the layer has {self.out_features} outputs"
                )
            self.bias = b
        self.kernels = REGISTRY[entry.encoding]
        self.descriptor = make_descriptor(
            entry.encoding, entry.parts, self._group(), self._layernorm(), self.bias, self._flags()
        )

    def _bind_prefill(self, *args: Any) -> None:
        """`_prefill(x, y)` runs the registry's prefill kernel on x, this layer's parts and y, in
        calls of `prompt_chunk(in)` tokens. A token's row is the same bits in any call: each
        token is multiplied on its own."""
        pre = self.kernels.prefill
        step = prompt_chunk(self.in_features)

        def prefill(x: np.ndarray, y: np.ndarray) -> None:
            for t0 in range(0, x.shape[0], step):
                pre(x[t0 : t0 + step], *args, y[t0 : t0 + step])

        self._prefill = prefill

    def _group(self) -> int:
        return 0

    def _flags(self) -> int:
        return 0

    def _layernorm(self) -> bool:
        return False

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        one = x.ndim == 1
        x2 = _as_input(x.reshape(1, -1) if one else x)
        if x2.ndim != 2 or x2.shape[1] != self.in_features:
            raise ValueError(
                f"{self._what()}: input shape {list(x.shape)}, expected [T, {self.in_features}]"
            )
        y = self._output(x2.shape[0], out)
        if x2.shape[0] == 1:
            matvec.matvec(self.descriptor, x2[0], y[0])  # bias and LayerNorm included
        elif x2.shape[0] > 1:
            self._prefill(x2, y)
            self._finish(y)
        return y[0] if one and out is None else y

    def rows(self, x: np.ndarray) -> np.ndarray:
        """x [B, in] -> [B, out] with the decode kernel for every row: row b is bit for bit
        self(x[b]), whatever the other rows are (the server batches sequences on this)."""
        x2 = _as_input(x)
        if x2.ndim != 2 or x2.shape[1] != self.in_features:
            raise ValueError(
                f"{self._what()}: input shape {list(x.shape)}, expected [B, {self.in_features}]"
            )
        y = np.empty((x2.shape[0], self.out_features), dtype=np.float32)
        if x2.shape[0]:
            matvec_rows(self.descriptor, x2, y)
        return y

    def tiles(self, x: np.ndarray) -> np.ndarray:
        """x [T, in] -> [T, out] with the prefill kernel whatever T (1 included): a block of
        weight rows is unpacked once for all T tokens, and row t is the same bits for any T and
        any other rows (the server runs prompt tokens on this)."""
        x2 = _as_input(x)
        if x2.ndim != 2 or x2.shape[1] != self.in_features:
            raise ValueError(
                f"{self._what()}: input shape {list(x.shape)}, expected [T, {self.in_features}]"
            )
        y = self._output(x2.shape[0], None)
        if x2.shape[0]:
            self._prefill(x2, y)
        self._finish(y)
        return y

    # -- helpers for subclasses ----------------------------------------------------------------

    def _output(self, t: int, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return np.empty((t, self.out_features), dtype=np.float32)
        if (
            out.shape != (t, self.out_features)
            or out.dtype != np.float32
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                f"{self._what()}: out must be a writable C-contiguous float32 [{t}, {self.out_features}], "
                f"got {out.dtype}{list(out.shape)}"
            )
        return out

    def _finish(self, y: np.ndarray) -> None:
        if self.bias is not None:
            y += self.bias

    def _what(self) -> str:
        return f"{type(self).__name__}({self.name or self.encoding} {self.out_features}x{self.in_features})"

    def __repr__(self) -> str:
        return f"{self._what()[:-1]}, {self.encoding})"


class DenseLinear(Linear):
    """f32, f16 (raw u16 bits) and bf16 weights."""

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        super().__init__(entry, bias)
        self.w = _readonly(entry.parts["data"], np.float32 if entry.encoding == "f32" else np.uint16)
        self._bind_prefill(self.w)


class Q8Linear(Linear):
    def _group(self) -> int:
        return group_size_of(self.shape, self.params)

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        super().__init__(entry, bias)
        self._bind_prefill(*_read_parts(entry.parts, codes=np.int8, scales=np.uint16), self._group())


class GroupedLinear(Linear):
    """q2, q3, q4."""

    def _group(self) -> int:
        return int(self.params["group_size"])

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        super().__init__(entry, bias)
        parts = _read_parts(entry.parts, codes=np.uint8, scales=np.uint8, zeros=np.uint8, row_scale=np.uint16)
        self._bind_prefill(*parts, self.kernels.spec.bits, self._group())


class AffineLinear(Linear):
    """q1f, q2f, q4f: f16 group scales (and minimums), the exact grids of GGUF block types."""

    def _group(self) -> int:
        return int(self.params["group_size"])

    def _flags(self) -> int:
        return int(self.encoding[1]) | int(self.params["zero"]) << 8

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        super().__init__(entry, bias)
        no_mins = {"mins": np.zeros((self.out_features, 0), np.uint16)}
        parts = _read_parts({**no_mins, **entry.parts}, codes=np.uint8, scales=np.uint16, mins=np.uint16)
        self._bind_prefill(*parts, int(self.encoding[1]), int(self.params["zero"]), self._group())


class Q4KLinear(Linear):
    """q4k: GGUF's Q4_K super-blocks (f16 d / dmin per 256, u8 sub-scales / minimums per 32)."""

    def _group(self) -> int:
        return 32

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        super().__init__(entry, bias)
        self._bind_prefill(
            *_read_parts(entry.parts, codes=np.uint8, sub_scales=np.uint8, sub_mins=np.uint8, super=np.uint16)
        )


class TernaryLinear(Linear):
    """`ternary` and `ternary-1.6`, with BitNet int8 activations. Accepts a float32 input or a
    QuantizedActivation from `quantize()` (of any ternary layer with the same input size)."""

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        super().__init__(entry, bias)
        self.codes = _readonly(entry.parts["codes"], np.uint8)
        self.scale = _readonly(entry.parts["scale"], np.float32)
        self.padded_in = self.codes.shape[1] * self.kernels.spec.trits_per_byte
        self._pre = self.kernels.prefill

    def tiles(self, x: np.ndarray) -> np.ndarray:
        return self(self.quantize(x))

    def quantize(self, x: np.ndarray) -> QuantizedActivation:
        x2 = _as_input(x.reshape(1, -1) if x.ndim == 1 else x)
        if x2.ndim != 2 or x2.shape[1] != self.in_features:
            raise ValueError(
                f"{self._what()}: input shape {list(x.shape)}, expected [T, {self.in_features}]"
            )
        return quantize_activation(x2)

    def __call__(
        self, x: np.ndarray | QuantizedActivation, out: np.ndarray | None = None
    ) -> np.ndarray:
        one = False
        if isinstance(x, QuantizedActivation):
            qa = x
            if qa.n != self.in_features or qa.xq.shape[1] < self.padded_in:
                raise ValueError(f"{self._what()}: quantised activation of size {qa.n}")
        else:
            one = x.ndim == 1
            x2 = _as_input(x.reshape(1, -1) if one else x)
            if x2.ndim != 2 or x2.shape[1] != self.in_features:
                raise ValueError(
                    f"{self._what()}: input shape {list(x.shape)}, expected [T, {self.in_features}]"
                )
            if x2.shape[0] == 1:  # decode: quantise inside the kernel, one call
                return super().__call__(x, out)
            qa = quantize_activation(x2)
        t = qa.xq.shape[0]
        y = self._output(t, out)
        if t:
            self._pre(qa.xq, qa.xsum, qa.s, self.codes, self.scale, y)
        self._finish(y)
        return y[0] if one and out is None else y


class OneBitLinear(Linear):
    """Sign planes with f16 value vectors; the parameter-free LayerNorm when params.layernorm."""

    def _layernorm(self) -> bool:
        return bool(self.params.get("layernorm", False))

    def __init__(self, entry: Any, bias: np.ndarray | None = None) -> None:
        super().__init__(entry, bias)
        self.layernorm = self._layernorm()
        self._bind_prefill(*_read_parts(entry.parts, signs=np.uint8, g=np.uint16, h=np.uint16))

    def _finish(self, y: np.ndarray) -> None:
        if self.layernorm:  # normalises h ⊙ (S (g ⊙ x)); a bias (if any) is added after it
            layer_norm(y)
        super()._finish(y)


def layer_norm(y: np.ndarray) -> np.ndarray:
    """In place over the last axis: (y − mean) / sqrt(var + eps), no weight or bias; the same
    numba routine decode applies (`kernels.matvec.layer_norm`), one row at a time."""
    for row in y.reshape(-1, y.shape[-1]):
        layer_norm_row(row)
    return y


class EncodingKernels(NamedTuple):
    """Everything the runtime runs one encoding with (a row of `REGISTRY`)."""

    spec: Encoding  # lowbit.formats: the parts, the header checks, pack() and dequantize()
    kind: int  # the matvec descriptor's kind: the decode branch
    parts: tuple[str | None, ...]  # the parts that become the descriptor's a..d (None: empty)
    linear: type[Linear]  # the class make_linear builds
    prefill: Callable  # the T > 1 kernel
    reference: Callable[[np.ndarray, Any], np.ndarray]  # numpy: (x [T, in], entry) -> [T, out], no bias


_GROUPED = ("codes", "scales", "zeros", "row_scale")
_TERNARY = ("codes", None, None, "scale")
_AFFINE = ("codes", "scales", "mins")
_KQUANT = ("codes", "sub_scales", "sub_mins", "super")

# encoding name (as in the file) -> its kernels; lowbit.formats' ENCODINGS holds the same names
REGISTRY: dict[str, EncodingKernels] = {
    name: EncodingKernels(ENCODINGS[name], *row)
    for name, row in {
        "f32": (matvec.F32, ("data",), DenseLinear, dense.f32_prefill, dense.entry_ref),
        "f16": (matvec.F16, ("data",), DenseLinear, dense.f16_prefill, dense.entry_ref),
        "bf16": (matvec.BF16, ("data",), DenseLinear, dense.bf16_prefill, dense.entry_ref),
        "q8": (matvec.Q8, ("codes", "scales"), Q8Linear, q8.q8_prefill, q8.entry_ref),
        "q2": (matvec.Q2, _GROUPED, GroupedLinear, grouped.grouped_prefill, grouped.entry_ref),
        "q3": (matvec.Q3, _GROUPED, GroupedLinear, grouped.grouped_prefill, grouped.entry_ref),
        "q4": (matvec.Q4, _GROUPED, GroupedLinear, grouped.q4_prefill, grouped.entry_ref),
        "ternary": (matvec.TERNARY, _TERNARY, TernaryLinear, ternary.ternary_prefill, ternary.entry_ref),
        "ternary-1.6": (matvec.TERNARY_1P6, _TERNARY, TernaryLinear, ternary.ternary_1p6_prefill, ternary.entry_ref),
        "onebit": (matvec.ONEBIT, ("signs", "g", "h"), OneBitLinear, onebit.onebit_prefill, onebit.entry_ref),
        "q1f": (matvec.AFFINE, _AFFINE, AffineLinear, affine.affine_prefill, affine.entry_ref),
        "q2f": (matvec.AFFINE, _AFFINE, AffineLinear, affine.affine_prefill, affine.entry_ref),
        "q4f": (matvec.AFFINE, _AFFINE, AffineLinear, affine.affine_prefill, affine.entry_ref),
        "q4k": (matvec.KQ4, _KQUANT, Q4KLinear, kquant.q4k_prefill, kquant.entry_ref),
    }.items()
}  # fmt: skip


def make_descriptor(
    encoding: str, parts: dict[str, np.ndarray], group: int = 0, layernorm: bool = False,
    bias: np.ndarray | None = None, flags: int = 0,
) -> tuple:
    """The matvec descriptor of one linear layer of `encoding` (its parts by name)."""
    k = REGISTRY[encoding]
    return matvec.make_descriptor(k.kind, k.parts, parts, group, layernorm, bias, flags)


def make_linear(entry: Any, bias: np.ndarray | None = None) -> Linear:
    """The linear layer for a tensor entry (`.encoding, .shape, .params, .parts`)."""
    try:
        cls = REGISTRY[entry.encoding].linear
    except KeyError:
        raise ValueError(f"no linear kernel for encoding {entry.encoding!r}") from None
    return cls(entry, bias)


def warmup() -> None:
    """Compile (or load from numba's cache) every kernel with the argument types the layers use:
    read-only weights, decode and prefill."""

    rng = np.random.default_rng(0)
    out, n = 4, 40
    x = rng.standard_normal((2, n)).astype(np.float32)
    w = rng.standard_normal((out, n)).astype(np.float32)
    ng = -(-n // 32)
    entries = [ENCODINGS[e].pack(w) for e in ("f32", "f16", "bf16")]
    entries.append(
        ENCODINGS["q8"].pack(np.ones((out, n), np.int8), np.ones((out, 1), np.float16), 0)
    )
    entries.append(
        ENCODINGS["q4"].pack(
            np.ones((out, n), np.uint8), np.ones((out, ng)), np.zeros((out, ng)), np.ones(out), 32
        )
    )
    entries.append(ENCODINGS["ternary"].pack(np.sign(w).astype(np.int8), np.ones(1, np.float32)))
    entries.append(
        ENCODINGS["ternary-1.6"].pack(np.sign(w).astype(np.int8), np.ones(out, np.float32))
    )
    entries.append(ENCODINGS["onebit"].pack(w, np.ones(n, np.float16), np.ones(out, np.float16)))
    q32 = np.ones((out, 64), np.uint8)
    entries.append(ENCODINGS["q4f"].pack(q32, np.ones((out, 2)), 32, 8))
    entries.append(ENCODINGS["q4f"].pack(q32, np.ones((out, 2)), 32, 0, np.ones((out, 2))))
    q256 = np.ones((out, 256), np.uint8)
    entries.append(ENCODINGS["q4k"].pack(q256, q256[:, :8], q256[:, :8], np.ones((out, 1)), np.ones((out, 1))))
    for e in entries:
        lin = make_linear(e)
        xe = x if lin.in_features == n else rng.standard_normal((2, lin.in_features)).astype(np.float32)
        lin(xe[:1])
        lin(xe)
        if isinstance(lin, TernaryLinear):  # the shared-activation forms too
            lin(lin.quantize(x[:1]))
