"""KV cache types f16 and q8: the row store and the attention kernel reading the stored form held
to their numpy references, the fused decode step to the layer-by-layer forward on each type, and
the bytes each type takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import save_tiny

from lowbit.runtime.kernels.attention import attention, attention_ref
from lowbit.runtime.kernels.kv_store import kv_write, load_ref, store_ref
from lowbit.runtime.kv_cache import KVCache, check_kind

KINDS = ["f32", "f16", "q8"]


@pytest.fixture(scope="module")
def tiny_lowbit(tmp_path_factory) -> Path:
    from lowbit.convert.converter import convert

    root = tmp_path_factory.mktemp("kv")
    return convert(save_tiny("llama", root / "hf", seed=3), root / "tiny-q4.lowbit", method="q4").path


def _cache(kind: str, kvh: int, ctx: int, d: int):
    from lowbit.runtime.kernels.kv_store import DTYPES, SCALED

    data = np.zeros((kvh, ctx, d), DTYPES[kind])
    scales = np.zeros((kvh, ctx if kind in SCALED else 0), np.float32)
    return data, scales


@pytest.mark.parametrize("kind", KINDS)
def test_row_store_matches_numpy(kind):
    rng = np.random.default_rng(1)
    src = (rng.standard_normal((5, 2, 16)) * rng.uniform(0.01, 30, size=(5, 2, 1))).astype(np.float32)
    src[2, 1] = 0.0  # an all-zero row: scale 0, codes 0, no division by zero
    data, scales = _cache(kind, 2, 9, 16)
    kv_write(data, scales, 3, src)
    ref, ref_scales = store_ref(kind, src.transpose(1, 0, 2))
    got = data[:, 3:8]
    assert not data[:, :3].any() and not data[:, 8:].any()  # nothing outside the positions written
    if kind == "q8":
        np.testing.assert_allclose(scales[:, 3:8], ref_scales, rtol=1e-6)
        assert np.abs(got.astype(np.int32) - ref).max() <= 1  # 127/amax may round differently
        assert np.abs(got).max() == 127 and not got[1, 2].any()
        back = load_ref(kind, got, scales[:, 3:8])
        assert np.all(np.abs(back - src.transpose(1, 0, 2)) <= scales[:, 3:8, None] * 0.5 * 1.01 + 1e-9)
    else:
        np.testing.assert_array_equal(got, ref)  # f16: round to nearest even, as numpy


@pytest.mark.parametrize("kind", ["f16", "q8"])
@pytest.mark.parametrize("t_len,start,window", [(1, 40, 0), (6, 0, 0), (5, 20, 7)])
def test_attention_reads_stored_cache(kind, t_len, start, window):
    """The kernel on the stored form equals the reference on that form's float values."""
    rng = np.random.default_rng(2)
    h, kvh, d, ctx = 4, 2, 32, 64
    q = rng.standard_normal((t_len, h, d)).astype(np.float32)
    k = rng.standard_normal((ctx, kvh, d)).astype(np.float32) * 2
    v = rng.standard_normal((ctx, kvh, d)).astype(np.float32)
    keys, ks = _cache(kind, kvh, ctx, d)
    values, vs = _cache(kind, kvh, ctx, d)
    kv_write(keys, ks, 0, k)
    kv_write(values, vs, 0, v)
    out = np.empty((t_len, h * d), np.float32)
    scales = (ks, vs) if kind == "q8" else (None, None)
    attention(q, keys, values, start, window, out, 0.0, 0.0, *scales)
    ref = attention_ref(q, load_ref(kind, keys, ks if kind == "q8" else None),
                        load_ref(kind, values, vs if kind == "q8" else None), start, window)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    # and the stored form is close to, but not the same as, f32 attention
    exact = attention_ref(q, k.transpose(1, 0, 2), v.transpose(1, 0, 2), start, window)
    err = np.abs(out - exact).max()
    assert 0 < err < (0.01 if kind == "f16" else 0.1)


def test_bytes_per_token_and_nbytes():
    class A:
        num_hidden_layers, num_key_value_heads, head_dim = 3, 2, 128

    f32, f16, q8 = (KVCache.bytes_per_token(A, k) for k in KINDS)
    assert (f32, f16, q8) == (2 * 3 * 2 * 128 * 4, 2 * 3 * 2 * 128 * 2, 2 * 3 * 2 * (128 + 4))
    assert q8 <= 0.3 * f32
    for kind in KINDS:
        assert KVCache(A, 10, kind).nbytes == 10 * KVCache.bytes_per_token(A, kind)
    with pytest.raises(ValueError, match="unknown KV cache type 'q4'"):
        check_kind("q4")


@pytest.mark.parametrize("kind", ["f16", "q8"])
def test_fused_decode_equals_numpy_forward_per_cache_type(tiny_lowbit, kind):
    """The fused decode step (stores and attends inside numba) against the layer-by-layer
    forward (kv_write + attention kernel) on the same cache type, and both near f32."""
    import lowbit

    ids = list(range(3, 40))
    fused = lowbit.load(tiny_lowbit, threads=1, kv_cache=kind)
    assert fused.model.fused_decode and fused.cache.keys.dtype != np.float32
    a = [fused.prefill(ids[:20])] + [fused.decode(t) for t in ids[20:]]
    ref = lowbit.load(tiny_lowbit, threads=1, kv_cache=kind)
    ref.model.fused_decode = False
    b = [ref.prefill(ids[:20])] + [ref.decode(t) for t in ids[20:]]
    base = lowbit.load(tiny_lowbit, threads=1, kv_cache="f32")
    c = [base.prefill(ids[:20])] + [base.decode(t) for t in ids[20:]]
    a, b, c = (np.array(x) for x in (a, b, c))
    scale = np.abs(c).max()
    assert np.abs(a - b).max() / scale <= 1e-4
    drift = np.abs(a - c).max() / scale
    assert 0 < drift < (0.05 if kind == "f16" else 0.2), drift  # a random tiny model: big activations
