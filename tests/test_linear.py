"""Linear layers (`lowbit.runtime.linear`) and thread settings (`lowbit.runtime.threads`).

Layers are built both from `Encoding.pack()` results and from a real memory-mapped .lowbit file
(read-only parts), and must give the same numbers as the dequantised weights.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import pytest

from lowbit.formats import LowbitReader, LowbitWriter
from lowbit.formats.encodings import ENCODINGS
from lowbit.runtime import threads
from lowbit.runtime.kernels.affine import int8_decode
from lowbit.runtime.kernels.grouped import q4_activation_ref
from lowbit.runtime.kernels.q8 import decode_activation_ref, q8_kernel_activation_ref
from lowbit.runtime.kernels.ternary import quantize_activation_ref
from lowbit.runtime.linear import REGISTRY, layer_norm, make_linear

OUT, IN = 24, 300
AFFINE_GROUPS = {"q4f": 32, "q2f": 64, "q1f": 128}  # group sizes as GGUF's Q4_1, Q2_0 and Q1_0 have them
AFFINE_IN = 384  # the affine encodings need whole groups


Q4K_IN = 512  # q4k: whole 256-weight super-blocks


def in_features(encoding: str) -> int:
    return Q4K_IN if encoding == "q4k" else AFFINE_IN if encoding in AFFINE_GROUPS else IN


def pack(encoding: str, rng: np.random.Generator, shape=(OUT, IN), layernorm: bool = False):
    out, n = shape
    w = rng.standard_normal(shape).astype(np.float32)
    enc = ENCODINGS[encoding]
    if encoding in ("f32", "f16", "bf16"):
        return enc.pack(w)
    if encoding == "q8":
        return enc.pack(
            rng.integers(-127, 128, shape).astype(np.int8),
            np.full((out, -(-n // 64)), 0.01, np.float16),
            64,
        )
    if encoding in ("q2", "q3", "q4"):
        ng = -(-n // 32)
        return enc.pack(
            rng.integers(0, 2**enc.bits, shape),
            rng.integers(0, 256, (out, ng)),
            rng.integers(0, 2**enc.bits, (out, ng)),
            np.full(out, 1e-3, np.float16),
            32,
        )
    if encoding in ("ternary", "ternary-1.6"):
        return enc.pack(rng.integers(-1, 2, shape), (rng.random(out) + 0.5).astype(np.float32))
    if encoding == "q4k":  # GGUF's Q4_K: u8 sub-scales / minimums under f16 super-block ones
        ng = n // 32
        return enc.pack(
            rng.integers(0, 16, shape).astype(np.uint8),
            rng.integers(0, 64, (out, ng)).astype(np.uint8),
            rng.integers(0, 64, (out, ng)).astype(np.uint8),
            np.full((out, ng // 8), 1e-3, np.float16),
            np.full((out, ng // 8), 5e-4, np.float16),
        )
    if encoding in AFFINE_GROUPS:  # GGUF's grids: f16 scale (and minimum) per group, zero point
        group = AFFINE_GROUPS[encoding]
        ng = n // group
        limit = 2 if enc.bits == 1 else 2**enc.bits
        return enc.pack(
            rng.integers(0, limit, shape).astype(np.uint8),
            (rng.random((out, ng)) * 0.02).astype(np.float16),
            group,
            zero=0 if enc.bits == 1 else limit // 2,
            mins=(rng.standard_normal((out, ng)) * 0.01).astype(np.float16) if enc.bits == 4 else None,
        )
    return enc.pack(
        w,
        (rng.random(n) + 0.5).astype(np.float16),
        (rng.random(out) + 0.5).astype(np.float16),
        layernorm,
    )


def expected(entry, x: np.ndarray, bias=None) -> np.ndarray:
    if entry.encoding in ("ternary", "ternary-1.6"):  # BitNet: int8 activations, per token
        xq, s = quantize_activation_ref(x)
        scale = entry.parts["scale"].astype(np.float64)
        trits = np.rint(entry.dequantize() / (scale[:, None] if scale.size > 1 else scale[0]))
        y = (xq.astype(np.float64) @ trits.T) * (scale if scale.size > 1 else scale[0]) / s[:, None]
    elif entry.encoding == "onebit" and x.shape[0] == 1:  # decode: int8 g ⊙ x, per token
        xq, s = quantize_activation_ref(x * entry.parts["g"].astype(np.float32))
        signs = ENCODINGS["onebit"].unpack(entry.parts, entry.shape, entry.params).astype(np.float64)
        y = (xq.astype(np.float64) @ signs.T) * entry.parts["h"].astype(np.float64) / s[:, None]
    elif entry.encoding == "q8":  # int8 activations per 32 values (prefill too, on VNNI for in % 256 == 0)
        y = q8_kernel_activation_ref(x) @ entry.dequantize().astype(np.float64).T
    elif entry.encoding == "q4":  # int8 activations per group (prefill too, on x86 for G % 64 == 0)
        y = q4_activation_ref(x, entry.params["group_size"]) @ entry.dequantize().astype(np.float64).T
    elif x.shape[0] == 1 and (entry.encoding == "q4k" or entry.encoding in AFFINE_GROUPS and int8_decode(
        int(entry.encoding[1]), entry.params["group_size"]
    )):
        # decode of GGUF's Q4_0 / Q4_1 / Q4_K / Q1_0 grids: int8 activations per group (32; 128 for
        # Q1_0), as llama.cpp runs them
        block = 32 if entry.encoding == "q4k" else entry.params["group_size"]
        y = decode_activation_ref(x, block) @ entry.dequantize().astype(np.float64).T
    else:
        y = x.astype(np.float64) @ entry.dequantize().astype(np.float64).T
    if entry.encoding == "onebit" and entry.params["layernorm"]:
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
    if bias is not None:
        y = y + bias
    return y


def close(y, ref, rtol=2e-5):
    np.testing.assert_allclose(y, ref, rtol=0, atol=rtol * max(np.abs(ref).max(), 1e-6))


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_make_linear_matches_dequantized(encoding):
    rng = np.random.default_rng(3)
    n_in = in_features(encoding)
    entry = pack(encoding, rng, shape=(OUT, n_in))
    bias = rng.standard_normal(OUT).astype(np.float32)
    lin = make_linear(entry, bias=bias)
    kernels = REGISTRY[encoding]
    assert type(lin) is kernels.linear and lin.shape == (OUT, n_in)
    for t in (1, 2, 9):
        x = rng.standard_normal((t, n_in)).astype(np.float32)
        y = lin(x)
        assert y.dtype == np.float32 and y.shape == (t, OUT)
        close(y, expected(entry, x, bias))
        close(y, kernels.reference(x, entry) + bias)  # the registry's numpy reference
    # a 1-D input gives a 1-D output; out= is filled and returned
    x1 = rng.standard_normal(n_in).astype(np.float32)
    assert lin(x1).shape == (OUT,)
    buf = np.empty((3, OUT), np.float32)
    x3 = rng.standard_normal((3, n_in)).astype(np.float32)
    assert lin(x3, out=buf) is buf
    close(buf, expected(entry, x3, bias))


@pytest.mark.parametrize("encoding", ["q8", "q4", "q4f", "onebit"])
def test_long_prompts_run_in_calls_of_prompt_chunk_tokens(encoding, monkeypatch):
    """A prompt longer than `prompt_chunk(in)` goes to the kernel in several calls (53 tokens at
    8 a call: 7, the last short); each token's row is the bits it gets alone and agrees with
    the reference."""
    from lowbit.runtime import linear
    from lowbit.runtime.kernels import common

    rng = np.random.default_rng(5)
    n_in = in_features(encoding)
    entry = pack(encoding, rng, shape=(OUT, n_in))
    monkeypatch.setattr(common, "PROMPT_FLOATS", 8 * n_in)
    assert common.prompt_chunk(n_in) == 8
    calls = []
    kernel = REGISTRY[encoding].prefill

    def counted(x, *args):
        calls.append(x.shape[0])
        return kernel(x, *args)

    monkeypatch.setitem(linear.REGISTRY, encoding, REGISTRY[encoding]._replace(prefill=counted))
    lin = make_linear(entry)
    x = rng.standard_normal((53, n_in)).astype(np.float32)
    y = lin(x)
    assert calls == [8] * 6 + [5]
    close(y, expected(entry, x))
    for t in (0, 7, 8, 52):
        np.testing.assert_array_equal(y[t], lin.tiles(x[t : t + 1])[0], err_msg=f"token {t}")


def test_registry_covers_every_encoding():
    """One row per encoding the format defines, naming parts the encoding stores; the converter
    quantises every family but the GGUF-only grids (affine, kquant)."""
    from lowbit.quant import GGUF_ONLY, QUANTIZERS

    assert set(REGISTRY) == set(ENCODINGS)
    rng = np.random.default_rng(4)
    for name, kernels in REGISTRY.items():
        assert kernels.spec is ENCODINGS[name]
        stored = set(pack(name, rng, shape=(OUT, in_features(name))).parts)
        assert {p for p in kernels.parts if p} <= stored | {"mins"}, name
        assert (kernels.spec.family in QUANTIZERS) == (kernels.spec.family not in GGUF_ONLY), name


def test_from_memory_mapped_file(tmp_path):
    """Parts of an open file are read-only views of the mapping; the layers run on them as is."""
    rng = np.random.default_rng(4)
    path = tmp_path / "m.lowbit"
    entries = {name: pack(name, rng, shape=(17, 577 if in_features(name) == IN else in_features(name))) for name in ENCODINGS}
    with LowbitWriter(path, {"architecture": "llama"}) as w:
        for name, e in entries.items():
            w.add_tensor(name, e)
    with LowbitReader(path) as reader:
        for name, e in entries.items():
            x = rng.standard_normal((4, e.shape[1])).astype(np.float32)
            entry = reader[name]
            assert not next(iter(entry.parts.values())).flags.writeable
            lin = make_linear(entry)
            close(lin(x), expected(e, x))
            close(lin(x[:1]), expected(e, x[:1]))
            del lin, entry


def test_ternary_shared_quantized_activation():
    rng = np.random.default_rng(5)
    a = make_linear(pack("ternary", rng))
    b = make_linear(pack("ternary-1.6", rng))
    x = rng.standard_normal((3, IN)).astype(np.float32)
    qa = a.quantize(x)
    np.testing.assert_array_equal(a(qa), a(x))
    np.testing.assert_array_equal(b(qa), b(x))  # one quantisation serves both layouts
    # decode quantises inside matvec: the same integers, the final float steps to 1 ulp
    np.testing.assert_allclose(a(a.quantize(x[:1])), a(x[:1]), rtol=3e-7, atol=1e-30)
    other = make_linear(pack("ternary", rng, shape=(OUT, 200)))
    with pytest.raises(ValueError):
        other(qa)


def test_onebit_layernorm():
    """The parameter-free LayerNorm normalises the 1-bit product; a bias is added after it."""
    rng = np.random.default_rng(6)
    entry = pack("onebit", rng, layernorm=True)
    bias = rng.standard_normal(OUT).astype(np.float32)
    x = rng.standard_normal((5, IN)).astype(np.float32)
    close(make_linear(entry, bias)(x), expected(entry, x, bias))
    lin = make_linear(entry)
    y = lin(x)
    close(y, expected(entry, x))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)
    z = np.zeros((2, 4), np.float32)
    assert np.array_equal(layer_norm(z), z)


def test_bad_inputs():
    rng = np.random.default_rng(7)
    lin = make_linear(pack("q4", rng))
    with pytest.raises(ValueError):
        lin(np.zeros((2, IN + 1), np.float32))
    with pytest.raises(ValueError):
        lin(np.zeros((2, IN), np.float32), out=np.zeros((2, OUT + 1), np.float32))
    with pytest.raises(ValueError):
        make_linear(pack("f32", rng), bias=np.zeros(OUT + 1, np.float32))
    with pytest.raises(ValueError):
        make_linear(ENCODINGS["f32"].pack(np.zeros(5, np.float32)))


def test_inputs_of_other_dtypes_and_readonly():
    rng = np.random.default_rng(8)
    entry = pack("q8", rng)
    lin = make_linear(entry)
    x = rng.standard_normal((2, IN))  # float64
    xr = x.astype(np.float32)
    xr.flags.writeable = False
    close(lin(x), expected(entry, x.astype(np.float32)))
    close(lin(xr), expected(entry, xr))
    assert lin(np.zeros((0, IN), np.float32)).shape == (0, OUT)


# -- threads --------------------------------------------------------------------------------


def test_resolve_threads(monkeypatch):
    avail = len(threads._available_cpus())
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.resolve_threads(1) == 1
    assert threads.resolve_threads(10_000) == min(avail, numba.config.NUMBA_NUM_THREADS)
    assert 1 <= threads.resolve_threads() <= avail
    assert threads.resolve_threads() == min(
        threads.physical_cores(), numba.config.NUMBA_NUM_THREADS
    )
    monkeypatch.setenv(threads.ENV, "1")
    assert threads.resolve_threads() == 1
    assert threads.resolve_threads(2) == min(2, avail, numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setenv(threads.ENV, "lots")
    with pytest.raises(ValueError):
        threads.resolve_threads()
    with pytest.raises(ValueError):
        threads.resolve_threads(0)


def test_physical_cores_counts_hyperthreads_once(tmp_path, monkeypatch):
    cpus = threads._available_cpus()
    blocks = []
    for i, cpu in enumerate(sorted(cpus)):  # two hyper-threads per core
        blocks.append(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n")
    info = tmp_path / "cpuinfo"
    info.write_text("\n".join(blocks))
    assert threads.physical_cores(str(info)) == -(-len(cpus) // 2)
    info.write_text("processor\t: 0\n")  # no topology: one core per CPU listed
    assert threads.physical_cores(str(info)) == 1
    assert threads.physical_cores(str(tmp_path / "missing")) == len(cpus)


def test_set_threads():
    old = numba.get_num_threads()
    try:
        assert threads.set_threads(1) == 1 and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(old)


def test_threading_layer_is_not_workqueue(caplog):
    """~100 µs per parallel call with workqueue against ~2 µs with TBB/OpenMP (numba-lessons)."""
    with caplog.at_level(logging.WARNING):
        layer = threads.check_threading_layer()
    assert layer in ("tbb", "omp"), layer
    assert not caplog.records
