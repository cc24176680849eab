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

Numba's on-disk cache keys a kernel by its own source file only, while kernels here inline
helpers from the other modules; the stamp below clears this package's cache when any module of
it changes (an upgrade, an edit).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _clear_stale_cache() -> None:
    here = Path(__file__).parent
    try:
        sources = sorted(here.glob("*.py"))
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
        cache = here / "__pycache__"
        stamp = cache / "lowbit-kernels.stamp"
        if stamp.is_file() and stamp.read_text() == digest:
            return
        if cache.is_dir():
            for p in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
                p.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # read-only install: numba falls back to its own cache directory
        pass


_clear_stale_cache()
