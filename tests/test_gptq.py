"""GPTQ pieces: the numba column sweep equals its numpy reference, the one-Cholesky factor of H⁻¹
is right, and GPTQ / importance-weighted RTN / calibrated OneBit and ternary each reduce the
layer-output error they are designed to reduce (synthetic layer with uneven input channels)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from lowbit.quant.gptq import _inverse_cholesky_upper, gptq_quantize
from lowbit.quant.gptq_kernel import sweep_block, sweep_block_ref
from lowbit.quant.onebit import quantize_onebit, quantize_onebit_calibrated
from lowbit.quant.rtn import quantize_grouped
from lowbit.quant.ternary import quantize_ternary, quantize_ternary_calibrated


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    n, out = 320, 96
    x = rng.standard_normal((4096, n)) * np.exp(rng.standard_normal(n))
    x[:, :4] *= 8  # a few outlier channels, as real activations have
    w = rng.standard_normal((out, n)) * 0.05 * np.exp(0.3 * rng.standard_normal(out))[:, None]
    return x.astype(np.float32), w.astype(np.float32)


def output_error(x, w, w_hat):
    return np.linalg.norm(x @ (w_hat - w).T) / np.linalg.norm(x @ w.T)


@pytest.mark.parametrize("threads", [1, 2])
def test_sweep_block_matches_reference(threads):
    rng = np.random.default_rng(1)
    rows, width, ng = 37, 50, 3
    w1 = rng.standard_normal((rows, width))
    a = rng.standard_normal((width, width))
    u1 = np.triu(a) + width * np.eye(width)
    step = rng.uniform(0.05, 0.2, (rows, ng))
    zero = rng.integers(0, 8, (rows, ng)).astype(np.float64)
    groups = rng.integers(0, ng, width)
    outs = []
    for fn in (sweep_block, sweep_block_ref):
        numba.set_num_threads(threads)
        w = w1.copy()
        q, e = np.empty_like(w), np.empty_like(w)
        fn(w, u1, step, zero, groups, 7.0, q, e)
        outs.append((w, q, e))
    for a_, b_ in zip(*outs):
        np.testing.assert_allclose(a_, b_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [60, 301])  # 301: the triangular inverse recurses over uneven halves
def test_inverse_cholesky_factor(n):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((n, n))
    h = a @ a.T + np.eye(n)
    u = _inverse_cholesky_upper(h)
    assert np.allclose(u, np.triu(u))
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(h), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("bits,group", [(4, 64), (3, 64), (2, 32)])
def test_gptq_and_importance_beat_rtn(layer, bits, group):
    x, w = layer
    h = x.astype(np.float64).T @ x
    rtn = output_error(x, w, quantize_grouped(w, bits, group).dequantize())
    imatrix = output_error(x, w, quantize_grouped(w, bits, group, importance=np.diag(h)).dequantize())
    gptq = output_error(x, w, gptq_quantize(w, 2 * h, bits, group).dequantize())
    assert gptq < imatrix < rtn, (gptq, imatrix, rtn)


def test_calibrated_onebit_and_ternary_beat_uncalibrated(layer):
    x, w = layer
    h = x.astype(np.float64).T @ x
    assert output_error(x, w, quantize_onebit_calibrated(w, h).dequantize()) < output_error(
        x, w, quantize_onebit(w).dequantize()
    )
    assert output_error(x, w, quantize_ternary_calibrated(w, h).dequantize()) < output_error(
        x, w, quantize_ternary(w).dequantize()
    )
