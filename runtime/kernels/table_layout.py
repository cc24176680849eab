"""The layout of the int64 decode table (`runtime.decode_table` writes it, `decode_step` reads it).

Kept among the kernels because `decode_step` compiles these numbers in: numba's cache is stamped
by the digest of `runtime/kernels/*.py`, so a change here recompiles the decode step.

A table is int64 [layers, ROW, ENTRY]. Each layer's row has one entry per norm or linear (the
names below). An entry is `ENTRY` ints: KIND, GROUP, FLAGS (a linear's matvec descriptor
fields), then six array specs of SPEC ints each (buffer 0 file / 1 side arena, byte offset,
rows, bytes per row) starting at A, B, C, D (the descriptor's arrays), BIAS and IN_NORM (the
linear's own input norm, Falcon-E; empty when none). A norm entry uses only the spec at NORM.
"""

from __future__ import annotations

# entries of a layer's row
INPUT_NORM, POST_NORM, ATTN_SUB_NORM, MLP_SUB_NORM = 0, 1, 2, 3
Q_PROJ, K_PROJ, V_PROJ, O_PROJ, GATE_PROJ, UP_PROJ, DOWN_PROJ = 4, 5, 6, 7, 8, 9, 10
Q_NORM, K_NORM, ATTN_OUT_NORM, MLP_OUT_NORM = 11, 12, 13, 14
ROW = 15
LINEARS = (Q_PROJ, K_PROJ, V_PROJ, O_PROJ, GATE_PROJ, UP_PROJ, DOWN_PROJ)
NORMS = (INPUT_NORM, POST_NORM, ATTN_SUB_NORM, MLP_SUB_NORM, Q_NORM, K_NORM, ATTN_OUT_NORM, MLP_OUT_NORM)

# fields of an entry
SPEC = 4  # (buffer, byte offset, rows, bytes per row)
KIND, GROUP, FLAGS = 0, 1, 2
A, B, C, D, BIAS, IN_NORM = 3, 7, 11, 15, 19, 23  # where each array's spec starts
NORM = A
ENTRY = IN_NORM + SPEC
