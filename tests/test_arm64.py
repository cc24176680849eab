"""ARM64: the threading layer chosen there, the CPU features that select the NEON dots, the
dots' AArch64 instructions (compiled for an AArch64 target on any host), and, on an ARM64 CPU
with the dot-product extension (tools/arm64/run_tests.sh runs this under QEMU), the NEON dots
held to the portable loops."""

from __future__ import annotations

import os
import platform
import re

import numpy as np
import pytest
from kernel_cases import onebit_row

from lowbit.runtime import threads
from lowbit.runtime.kernels import affine, cpu_features, grouped, neon, onebit, q8, ternary

ON_ARM64 = platform.machine().lower() in ("aarch64", "arm64")


def test_arm64_picks_openmp_when_tbb_is_missing(monkeypatch):
    monkeypatch.setattr(threads.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(threads, "tbb_installed", lambda: False)
    assert threads.layer_order() == ["omp", "workqueue", "tbb"]  # numba wants all three
    assert threads.layer_order("arm64", have_tbb=True) == ["omp", "tbb", "workqueue"]
    assert threads.layer_order("x86_64", have_tbb=False) == ["tbb", "omp", "workqueue"]
    for k in threads.CHOICES:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(threads.numba.config, "THREADING_LAYER_PRIORITY", ["tbb", "omp", "workqueue"])
    threads.choose_threading_layer()
    assert os.environ["NUMBA_THREADING_LAYER_PRIORITY"] == "omp workqueue tbb"
    assert threads.numba.config.THREADING_LAYER_PRIORITY == ["omp", "workqueue", "tbb"]
    assert os.environ["GOMP_SPINCOUNT"] == "300"


def test_workqueue_warning_names_what_to_install(monkeypatch, caplog):
    assert "libgomp1" in threads.workqueue_hint("aarch64")
    assert "tbb" in threads.workqueue_hint("x86_64")
    monkeypatch.setattr(threads.numba, "threading_layer", lambda: "workqueue")
    monkeypatch.setattr(threads.platform, "machine", lambda: "aarch64")
    with caplog.at_level("WARNING", logger=threads.log.name):
        assert threads.check_threading_layer() == "workqueue"
    assert "workqueue" in caplog.text and "libgomp1" in caplog.text


def test_cpuinfo_features():
    text = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sha512 i8mm bf16\nCPU part\t: 0xd40\n"
    assert cpu_features.cpuinfo_features(text) == {"dotprod", "i8mm"}
    assert cpu_features.cpuinfo_features("Features\t: fp asimd crc32\n") == set()
    got = cpu_features.parse_features("+neon,-i8mm,+dotprod")
    assert got == {"neon": True, "i8mm": False, "dotprod": True}


@pytest.mark.parametrize("name,want", [
    ("dot_ternary", {"sdot": 8}), ("dot_ternary_1p6", {"sdot": 10}), ("dot_b1", {"sdot": 16}), ("dot_q8", {"sdot": 4}),
    ("dot_q4_i8", {"sdot": 4}), ("dot_q4f_i8", {"sdot": 4}), ("dot_q8_2x2", {"smmla": 4}),
    ("dot_q4_tokens", {"sdot": 8}),
])
def test_neon_dots_compile_to_dot_product_instructions(name, want):
    """Each dot's inner loop, compiled for AArch64 (+dotprod, +i8mm), runs on the dot-product
    instructions: per 32 code bytes one `sdot` per stream and 16 bytes (t2: 4 streams × 2,
    t3: 5 × 2, b1: 8 × 2 with the bits made masks by `cmtst` / `cmlt`), two per 32-block (q8:
    two blocks per step; q4: 32 code bytes = 64 weights; q4f: two groups), `smmla` for 2×2, and
    the q4 prefill tile's 16 code bytes against four tokens: two `sdot` (low and high nibbles) each."""
    asm = neon.aarch64_asm(name)
    loop = neon.inner_loop(asm)
    ops = [i.split()[0] for i in loop]
    for op, n in want.items():
        assert ops.count(op) == n, (op, ops.count(op), loop)
    if name == "dot_b1":
        assert ops.count("cmtst") + ops.count("cmlt") >= 14  # bit 0 may take and + neg instead
    assert len(loop) <= 8 * sum(want.values()) + 10  # the unpacking and loads, no scalar detours
    every = [line.split()[0] for line in asm.splitlines() if line.startswith("\t") and not line.startswith("\t.")]
    assert "udot" not in every and "bl" not in every  # no calls: everything inlined


def _wrap(fn, arity: int):
    """A jitted caller of the intrinsic `fn` (intrinsics run only inside numba code)."""
    from numba import njit

    callers = {
        2: lambda a, b: fn(a, b),
        3: lambda a, b, c: fn(a, b, c),
        4: lambda a, b, c, d: fn(a, b, c, d),
        5: lambda a, b, c, d, e: fn(a, b, c, d, e),
    }
    return njit(callers[arity])


needs_dotprod = pytest.mark.skipif(not cpu_features.HAVE_NEON_DOTPROD, reason="needs an ARM64 CPU with dotprod")
needs_i8mm = pytest.mark.skipif(not cpu_features.HAVE_I8MM, reason="needs an ARM64 CPU with i8mm")


def test_features_are_found_on_arm64():
    """Under tools/arm64/run_tests.sh (QEMU_CPU=max) both extensions are found and used: the
    encodings' dots are the NEON ones."""
    if not ON_ARM64:
        assert not cpu_features.HAVE_NEON_DOTPROD and not cpu_features.HAVE_I8MM
        return
    found = cpu_features.kernel_features()
    assert cpu_features.HAVE_NEON_DOTPROD == ("dotprod" in found)
    assert cpu_features.HAVE_I8MM == ({"dotprod", "i8mm"} <= found)
    if cpu_features.HAVE_NEON_DOTPROD:
        assert ternary.dot_ternary is ternary._dot_ternary_neon and ternary.dot_ternary_1p6 is ternary._dot_ternary_1p6_neon
        assert onebit._dot_b1_row is onebit._dot_b1_neon and q8.dot_q8 is q8._dot_q8_neon
        assert grouped._dot_q4_i8_fast is grouped._dot_q4_i8_neon
        assert affine._dot_q4f_fast is affine._dot_q4f_neon


@needs_dotprod
def test_neon_dots_match_portable_loops():
    rng = np.random.default_rng(21)
    t2, t3, b1 = _wrap(ternary._dot_ternary_neon, 2), _wrap(ternary._dot_ternary_1p6_neon, 2), _wrap(onebit._dot_b1_neon, 4)
    q4, q4f, q8_ = _wrap(grouped._dot_q4_i8_neon, 5), _wrap(affine._dot_q4f_neon, 3), _wrap(q8._dot_q8_neon, 3)
    for q in (32, 64, 96, 1728):
        x = rng.integers(-128, 128, 8 * q + 32).astype(np.int8)
        x[:8] = -128
        c2 = rng.integers(0, 256, q).astype(np.uint8)
        c2[:4] = 0b10101010
        c3 = rng.integers(0, 243, q).astype(np.uint8)
        c3[:2] = 242
        assert t2(c2, x) == ternary.dot_ternary_generic(c2, x)
        assert t3(c3, x) == ternary.dot_ternary_1p6_generic(c3, x)
        for q1 in (q, q + 8, q + 31):  # OneBit rows of any length: a tail buffer for the last bytes
            c1, x1, tail, want = onebit_row(rng, q1)
            assert b1(c1, x1, q1, tail) == want == onebit.dot_b1_generic(c1, x1, q1, tail)
        for group in (32, 64, 128):
            n = 2 * q // group * group
            if n == 0:
                continue
            c4 = rng.integers(0, 256, n // 2).astype(np.uint8)
            d = rng.random(n // group).astype(np.float32)
            sq = rng.integers(1, 256, n // group).astype(np.uint8)
            np.testing.assert_allclose(q4(c4, x, d, sq, group), grouped.dot_q4_i8_generic(c4, x, d, sq, group), rtol=1e-5)
        ng = 2 * (q // 32)  # q4f G = 32: an even number of groups, x pair-permuted
        c4f = rng.integers(0, 256, 16 * ng).astype(np.uint8)
        sd = rng.random(ng).astype(np.float32)
        np.testing.assert_allclose(q4f(c4f, x, sd), affine.dot_q4f32_i8_generic(c4f, x, sd), rtol=1e-5)
        for nb in (q // 4, q // 4 - 1):  # q8: even and odd block counts, all of int8
            c8 = rng.integers(-128, 128, 32 * nb).astype(np.int8)
            c8[:8] = -128
            x8 = rng.integers(-127, 128, 32 * nb).astype(np.int8)
            d8 = rng.random(nb).astype(np.float32)
            terms = d8.astype(np.float64) * (c8.astype(np.int64) * x8).reshape(nb, 32).sum(1)
            tol = 1e-5 * float(np.abs(terms).sum()) + 1e-6
            np.testing.assert_allclose(q8_(c8, x8, d8), terms.sum(), rtol=0, atol=tol)
            np.testing.assert_allclose(q8_(c8, x8, d8), q8.dot_q8_generic(c8, x8, d8), rtol=0, atol=tol)


@needs_i8mm
def test_i8mm_2x2_matches_four_dots():
    mm = _wrap(q8.dot_q8_2x2, 5)
    rng = np.random.default_rng(5)
    for nb in (1, 2, 7):
        w = rng.integers(-128, 128, (2, 32 * nb)).astype(np.int8)
        x = rng.integers(-127, 128, (2, 32 * nb)).astype(np.int8)
        d = rng.random((nb, 2, 2)).astype(np.float32)
        got = mm(w[0], w[1], x[0], x[1], d.reshape(-1))
        prods = (w[:, None, :].astype(np.int64) * x[None, :, :]).reshape(2, 2, nb, 32).sum(-1)
        want = (prods * d.transpose(1, 2, 0)).sum(-1).reshape(-1)
        np.testing.assert_allclose(got, want, rtol=1e-5)


@needs_dotprod
def test_numba_assembly_of_the_neon_dots_has_sdot_and_smmla():
    """numba's own assembly (the jitted callers, this CPU's target) has the instructions."""
    u8, i8 = np.zeros(64, np.uint8), np.zeros(8 * 64 + 32, np.int8)
    f = _wrap(ternary._dot_ternary_neon, 2)
    f(u8, i8)
    assert re.search(r"\bsdot\b", next(iter(f.inspect_asm().values())))
    if cpu_features.HAVE_I8MM:
        g = _wrap(q8.dot_q8_2x2, 5)
        w = np.zeros(32, np.int8)
        g(w, w, w, w, np.zeros(4, np.float32))
        assert re.search(r"\bsmmla\b", next(iter(g.inspect_asm().values())))
