"""Compute kernels that run directly on packed weights, one module per encoding family:

- `dense`   f32 / f16 / bf16            - `q8`      int8 codes, f16 group or row scales
- `grouped` q2 / q3 / q4                - `ternary` 2-bit and base-3 ternary, int8 activations
- `onebit`  sign planes with f16 value vectors
- `affine`  q1f / q2f / q4f (f16 group scales and minimums)

Each holds its encoding's whole kernel: the prefill (T tokens) kernel, the row helpers that
`matvec` (one token, every encoding through one descriptor type) uses, the vector row dots (x86
IR, VNNI form and the portable twin the tests hold them to) and a numpy `*_ref` built on the
encoding's own dequantize(). Shared pieces: `llvm_ir` (the IR building blocks of the vector
dots), `cpu_features` (HAVE_AVX2 / HAVE_VNNI / ..., which the modules dispatch on), `jit` (the
numba options), `common` (the prefill micro-kernel). `decode_step` runs a whole decode step
(every layer) in one call (`table_layout`: its layer table), `attention` the causal GQA (its vector steps in
`attention_simd`),
`kv_store` the KV cache's stored forms. `lowbit.runtime.linear` (with its encoding registry)
and `.model` pick the kernels; model code never calls them directly (`runtime.kernel_bench`
times them).

Numba's on-disk cache lives outside the installation, keyed and stamped by the kernels' content
digest (`cache`, imported first so that its locator is registered before any kernel is decorated).
`cpu_features` comes next: on AArch64 it may add the CPU's DotProd / i8mm to numba's target
features, which numba reads when the first function is decorated.
"""

from __future__ import annotations

from lowbit.runtime.kernels import cache as _cache  # noqa: F401  (registers the cache locator)
from lowbit.runtime.kernels import cpu_features as _cpu_features  # noqa: F401  (before any @njit)
