"""Compute kernels that run directly on packed weights, one module per encoding family:

- `dense`   f32 / f16 / bf16            - `q8`      int8 codes, f16 group or row scales
- `grouped` q2 / q3 / q4                - `ternary` 2-bit and base-3 ternary, int8 activations
- `onebit`  sign planes with f16 value vectors

Each has a prefill (T tokens) kernel, the row helpers that `matvec` (one token, every encoding
through one descriptor type) uses, and a numpy `*_ref` built on the encoding's own dequantize().
`decode_step` runs a whole decode step (every layer) in one call, `attention` the causal GQA,
`jit` holds the shared numba options, `simd` the dot products written as LLVM vector IR,
`common` the prefill micro-kernel, `bench` a timer. `lowbit.runtime.linear` and `.model` pick
the kernels; model code never calls them directly.

Numba's on-disk cache lives outside the installation, keyed and stamped by the kernels' content
digest (`cache`, imported first so that its locator is registered before any kernel is decorated).
"""

from __future__ import annotations

from lowbit.runtime.kernels import cache as _cache  # noqa: F401  (registers the cache locator)
