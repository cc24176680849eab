"""Random inputs for the int8 vector dots, with the answer computed in int64 numpy (shared by the
x86 and the ARM64 dot tests)."""

from __future__ import annotations

import numpy as np


def onebit_row(rng: np.random.Generator, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(codes, x, tail, want) for one OneBit row of q code bytes: x zero-padded to 8q + 32, its last
    q % 32 code bytes copied into the zero-padded tail buffer, want = Σ_j bit_j(codes) · x[jq:(j+1)q]."""
    codes = rng.integers(0, 256, q).astype(np.uint8)
    x = np.zeros(8 * q + 32, np.int8)
    x[: 8 * q] = rng.integers(-128, 128, 8 * q)
    tail = np.zeros(32, np.uint8)
    tail[: q % 32] = codes[q // 32 * 32 :]
    bits = [(codes.astype(np.int64) >> j) & 1 for j in range(8)]
    want = int(sum(bits[j] @ x[j * q : (j + 1) * q] for j in range(8)))
    return codes, x, tail, want
