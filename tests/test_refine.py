"""Refinement without training: HQQ-style group scales never raise the (weighted) error and lower
it at 2 bits; ARB-style alternation lowers the layer-output error of calibrated OneBit and
ternary; the pure-numpy quantisers (rotations, HQQ, ARB, GPTQ, --target-bpw) import no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lowbit.quant.hqq import refine_group_params
from lowbit.quant.onebit import quantize_onebit_calibrated
from lowbit.quant.rtn import choose_group_params, dequantize_grouped, grouped_codes
from lowbit.quant.ternary import quantize_ternary_calibrated


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    n, out = 256, 64
    x = rng.standard_normal((2048, n)) * np.exp(rng.standard_normal(n))
    w = rng.standard_t(4, (out, n)) * 0.05  # heavy tails, as trained weights have
    return x.astype(np.float32), w.astype(np.float32)


def _weighted_error(w, params, bits, group, imp):
    wq = dequantize_grouped(grouped_codes(w, bits, group, *params), *params, group)
    return ((wq - w) ** 2 * imp[None, :]).sum(axis=1)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_hqq_refinement_never_raises_the_error(layer, bits, weighted):
    x, w = layer
    imp = (x.astype(np.float64) ** 2).mean(0) if weighted else np.ones(w.shape[1])
    start = choose_group_params(w, bits, 64, imp if weighted else None)
    refined = refine_group_params(w, bits, 64, *start, importance=imp if weighted else None)
    before, after = (_weighted_error(w, p, bits, 64, imp) for p in (start, refined))
    assert np.all(after <= before * (1 + 1e-6))
    if bits == 2:
        assert after.sum() < 0.97 * before.sum(), (after.sum(), before.sum())


def _output_error(x, w, w_hat):
    return np.linalg.norm(x @ (w_hat - w).T) / np.linalg.norm(x @ w.T)


def test_alternating_refinement_beats_fitted_values_alone(layer):
    x, w = layer
    h = x.astype(np.float64).T @ x / len(x)
    for quantize in (quantize_onebit_calibrated, quantize_ternary_calibrated):
        plain = _output_error(x, w, quantize(w, h, rounds=0).dequantize())
        refined = _output_error(x, w, quantize(w, h).dequantize())
        assert refined < 0.98 * plain, (quantize.__name__, refined, plain)


def test_pure_numpy_quantisers_do_not_import_torch():
    code = ("import sys\n"
            "import lowbit.quant.rotation, lowbit.quant.hqq, lowbit.quant.arb, lowbit.quant.gptq\n"
            "import lowbit.quant.rtn, lowbit.quant.onebit, lowbit.quant.ternary, lowbit.convert.target_bpw\n"
            "import lowbit.runtime.kernels.hadamard\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
