"""--target-bpw: choose each linear layer's encoding from its measured sensitivity so the linear
layers hit a bits/weight budget.

Every candidate encoding is tried on every linear tensor (round-to-nearest); a tensor's cost is
its exact size in bits (SPEC.md formulas), its damage the squared relative error ‖W − Ŵ‖²/‖W‖²
(each layer feeds the residual stream through a norm, so relative error is what propagates).
Starting from the cheapest encoding everywhere, the upgrade with the best damage reduction per
extra bit is taken until the budget is spent — the greedy solution of this knapsack, which is
what llama.cpp's mixes (Q3_K_M: more bits for v_proj/down_proj) approximate by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lowbit.convert.architectures import is_linear_weight
from lowbit.convert.recipe import METHODS, Rule, fit_group
from lowbit.errors import ConversionError
from lowbit.formats.encodings import get_encoding
from lowbit.quant import quantize, relative_error

CANDIDATES = ("q2", "q3", "q4", "q8")


def plan(
    get: Callable[[str], np.ndarray | None],
    names: list[str],
    target: float,
    candidates: tuple[str, ...] = CANDIDATES,
    progress: Callable[[str], None] | None = None,
) -> list[Rule]:
    """Exact-name rules, one per linear tensor, whose total size is ≤ target × weights."""
    linear = [n for n in names if is_linear_weight(n)]
    options: dict[str, list[tuple[float, float, str, dict]]] = {}
    total_weights = 0
    for name in linear:
        w = get(name)
        total_weights += w.size
        opts = []
        for method in candidates:
            m = METHODS[method]
            params = fit_group(m.params, w.shape[1])
            bits = get_encoding(m.encoding).bits_per_weight(w.shape, params) * w.size
            err = relative_error(w, quantize(w, m.encoding, params).dequantize()) ** 2
            opts.append((bits, err, m.encoding, params))
        options[name] = sorted(opts)
        if progress:
            progress(name)
    budget = target * total_weights
    choice = {n: 0 for n in linear}
    spent = sum(options[n][0][0] for n in linear)
    if spent > budget:
        cheapest = spent / total_weights
        raise ConversionError(f"--target-bpw {target} is below the cheapest mix ({cheapest:.3f} bits/weight)")
    while True:
        best = None
        for n in linear:
            i = choice[n]
            for j in range(i + 1, len(options[n])):  # any larger option, not only the next
                extra = options[n][j][0] - options[n][i][0]
                gain = options[n][i][1] - options[n][j][1]
                if gain <= 0 or spent + extra > budget:
                    continue
                ratio = gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, n, j, extra)
        if best is None:
            break
        _, n, j, extra = best
        choice[n] = j
        spent += extra
    return [Rule(n, options[n][choice[n]][2], options[n][choice[n]][3]) for n in linear]
