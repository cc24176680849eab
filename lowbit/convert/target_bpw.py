"""--target-bpw: choose each linear layer's encoding from its measured sensitivity so the linear
layers hit a bits/weight budget.

Every candidate encoding is tried on every linear tensor; a tensor's cost is its exact size in
bits (SPEC.md formulas, group scales included, as the file's bits/weight figure counts them).
Its damage is measured one of two ways:

- with calibration (`--calibrate`): the relative output error ‖(W − Ŵ)X‖²/‖WX‖² =
  tr(ΔW H ΔWᵀ)/tr(W H Wᵀ), H = XᵀX/N of the layer's inputs in the float model, with Ŵ from the
  calibrated quantiser that will write the file (GPTQ for q2-q4). H comes from calibrate.py's
  own capture (`calibrate_layers`, every linear left in f32), so the inputs are the runtime's.
  This sees what the weight error cannot: which input directions the layer actually uses, and
  how much GPTQ recovers at each bit width.
- without (round-to-nearest files): the squared relative weight error ‖W − Ŵ‖²/‖W‖², so a plain
  conversion stays data-free.

Both are relative because each layer feeds the residual stream through a norm. Starting from the
cheapest encoding everywhere, the upgrade with the best damage reduction per extra bit is taken
until the budget is spent — the greedy solution of this knapsack, which is what llama.cpp's
mixes (Q3_K_M: more bits for v_proj/down_proj) approximate by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from lowbit.convert.architectures import is_linear_weight
from lowbit.convert.recipe import METHODS, Rule, fit_group
from lowbit.errors import ConversionError
from lowbit.formats.encodings import get_encoding
from lowbit.quant import quantize, relative_error

if TYPE_CHECKING:
    from lowbit.quant.calibrate import CalibrationConfig, InputStats
    from lowbit.runtime.config import ModelArgs

CANDIDATES = ("q2", "q3", "q4", "q8")
Option = tuple[float, float, str, dict[str, Any]]  # bits, damage, encoding, params


def plan(
    get: Callable[[str], np.ndarray | None],
    names: list[str],
    target: float,
    candidates: tuple[str, ...] = CANDIDATES,
    progress: Callable[[str], None] | None = None,
    calibration: tuple[ModelArgs, np.ndarray, CalibrationConfig] | None = None,
) -> list[Rule]:
    """Exact-name rules, one per linear tensor, whose total size is ≤ target × weights.

    `calibration` (args, calibration ids [n, T], config): measure output errors on those inputs."""
    linear = [n for n in names if is_linear_weight(n)]
    sizes: dict[str, int] = {}
    if calibration is None:
        options = {}
        for name in linear:
            w = get(name)
            sizes[name] = w.size
            options[name] = _options(w, candidates, lambda enc, params, w=w: quantize(w, enc, params),
                                     lambda dw, w=w: relative_error(w, w - dw) ** 2)
            if progress:
                progress(name)
    else:
        options = _calibrated_options(get, candidates, progress, sizes, *calibration)
        if set(options) != set(linear):
            raise AssertionError(f"calibration measured {len(options)} linear tensors, the checkpoint has {len(linear)}")
    chosen = _knapsack(options, sizes, target)
    return [Rule(n, options[n][chosen[n]][2], options[n][chosen[n]][3]) for n in linear]


def _knapsack(options: dict[str, list[Option]], sizes: dict[str, int], target: float) -> dict[str, int]:
    """Each tensor's option index: cheapest everywhere, then the best damage saved per extra bit
    (any larger option, not only the next) until no upgrade fits target × weights."""
    total_weights = sum(sizes.values())
    budget = target * total_weights
    choice = {n: 0 for n in options}
    spent = sum(opts[0][0] for opts in options.values())
    if spent > budget:
        raise ConversionError(f"--target-bpw {target} is below the cheapest mix ({spent / total_weights:.3f} bits/weight)")
    while True:
        best = None
        for n, opts in options.items():
            i = choice[n]
            for j in range(i + 1, len(opts)):
                extra = opts[j][0] - opts[i][0]
                gain = opts[i][1] - opts[j][1]
                if gain <= 0 or spent + extra > budget:
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, n, j, extra)
        if best is None:
            return choice
        _, n, j, extra = best
        choice[n] = j
        spent += extra


def _options(w: np.ndarray, candidates: tuple[str, ...], encode: Callable, damage: Callable) -> list[Option]:
    """(bits, damage, encoding, params) of every candidate on one tensor, cheapest first."""
    opts = []
    for method in candidates:
        m = METHODS[method]
        params = fit_group(m.params, w.shape[1])
        bits = get_encoding(m.encoding).bits_per_weight(w.shape, params) * w.size
        dw = w.astype(np.float64) - encode(m.encoding, params).dequantize()
        opts.append((bits, float(damage(dw)), m.encoding, params))
    return sorted(opts, key=lambda o: o[0])


def _calibrated_options(
    get: Callable[[str], np.ndarray | None],
    candidates: tuple[str, ...],
    progress: Callable[[str], None] | None,
    sizes: dict[str, int],
    args: ModelArgs,
    ids: np.ndarray,
    cfg: CalibrationConfig,
) -> dict[str, list[Option]]:
    """Each linear's options, damage = relative output error on its float-model inputs."""
    from lowbit.quant.calibrate import calibrate_layers, quantize_calibrated

    options: dict[str, list[Option]] = {}

    def observe(name: str, w: np.ndarray, stats: InputStats) -> None:
        sizes[name] = w.size
        w64 = w.astype(np.float64)
        norm = float(np.sum((w64 @ stats.h) * w64)) or 1.0
        options[name] = _options(w, candidates, lambda enc, params: quantize_calibrated(w, enc, params, stats, cfg),
                                 lambda dw: np.sum((dw @ stats.h) * dw) / norm)
        if progress:
            progress(name)

    embedding = quantize(get("model.embed_tokens.weight"), "f32", {})
    float_model = dataclasses.replace(cfg, float_target=False)  # every layer stays f32: no drift to correct
    for _ in calibrate_layers(args, get, lambda name, shape: ("f32", {}), ids, embedding, float_model, observe=observe):
        pass
    return options
