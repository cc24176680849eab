"""`--method keep`: GGUF tensors re-packed, not re-quantised. Per GGML type, a synthetic GGUF
(random raw blocks) converts, lowbit's decoded weights equal gguf's / llama.cpp's dequantisation
bit for bit, the runtime's logits equal a numpy forward over those weights, and the file says
where every encoding came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf_synth import BY_NAME, write_tiny_llama
from test_quantized_forward import ReferenceLinear, _logits

import lowbit.runtime.model as model_module
from lowbit.convert.converter import convert
from lowbit.convert.gguf_source import GGUFCheckpoint
from lowbit.errors import LowbitError
from lowbit.file_info import summarize
from lowbit.formats import LowbitReader
from lowbit.formats.encodings import ENCODINGS
from lowbit.runtime.kernels.affine import affine_ref, int8_decode
from lowbit.runtime.kernels.kquant import q4k_ref
from lowbit.runtime.kernels.q8 import decode_activation_ref
from lowbit.runtime.linear import make_linear

EXPECTED = {  # GGML type -> the lowbit encoding keep gives a linear layer (random block scales)
    "Q8_0": "q8", "Q4_0": "q4f", "Q4_1": "q4f", "Q1_0": "q1f", "Q2_0": "q2f",
    "TQ1_0": "q2f", "TQ2_0": "q2f", "I2_S": "ternary", "F16": "f16", "Q5_0": "q8", "Q4_K": "q4k",
}  # fmt: skip


class KeepReference(ReferenceLinear):
    """ReferenceLinear, with q4k's and the affine `int8_decode` grids' decode (q4f G = 32,
    q1f G = 128) on int8 activations per group (as the kernels run GGUF's Q4_0 / Q4_1 / Q4_K /
    Q1_0 grids)."""

    def __init__(self, entry, bias=None) -> None:
        super().__init__(entry, bias)
        self.group = 32 if entry.encoding == "q4k" else 0
        if entry.encoding in ("q1f", "q2f", "q4f"):
            g = int(entry.params["group_size"])
            self.group = g if int8_decode(int(entry.encoding[1]), g) else 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.group and x.shape[0] == 1:
            y = decode_activation_ref(np.asarray(x, np.float32), self.group) @ self.w.T
            return (y if self.bias is None else y + self.bias).astype(np.float32)
        return super().__call__(x)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """type -> (GGUF path, converted .lowbit path)."""
    root = tmp_path_factory.mktemp("keep")
    out = {}
    for name in EXPECTED:
        gguf_path = root / f"{name}.gguf"
        write_tiny_llama(gguf_path, BY_NAME[name], embed_type=BY_NAME[name], seed=len(out))
        out[name] = (gguf_path, convert(gguf_path, root / f"{name}.lowbit", method="keep").path)
    return out


@pytest.mark.parametrize("name", list(EXPECTED))
def test_keep_is_bit_exact(kept, name: str) -> None:
    gguf_path, path = kept[name]
    ckpt = GGUFCheckpoint(gguf_path)
    with LowbitReader(path) as r:
        for tname, entry in r.tensors.items():
            ref = ckpt.get(tname)  # gguf-py's / our dequantiser, equal to llama.cpp's (test_gguf_quants)
            ours = entry.dequantize().reshape(ref.shape)
            assert np.array_equal(_bits(ours), _bits(ref)), tname
            assert entry.info["kept"] is True and entry.info["rel_error"] == 0.0
            if len(entry.shape) == 2 and tname != "model.embed_tokens.weight":
                # one 256-weight block per row (256 inputs): TQ scales are per row, ternary holds them
                one_block = name.startswith("TQ") and entry.shape[1] == 256
                assert entry.encoding == ("ternary" if one_block else EXPECTED[name]), tname
                assert entry.info["source_type"] == name
            rows = np.array([3, 0, 63])
            if tname == "model.embed_tokens.weight":  # the embedding lookup path
                assert np.array_equal(_bits(entry.dequantize(rows=rows)), _bits(ref[rows]))


@pytest.mark.parametrize("name", ["TQ1_0", "TQ2_0"])
def test_ternary_blocks_with_one_scale_become_ternary(tmp_path: Path, name: str) -> None:
    gguf_path = tmp_path / "t.gguf"
    write_tiny_llama(gguf_path, BY_NAME[name], layers=1, block_scale=0.03125)
    path = convert(gguf_path, tmp_path / "t.lowbit", method="keep").path
    ckpt = GGUFCheckpoint(gguf_path)
    with LowbitReader(path) as r:
        e = r.tensors["model.layers.0.mlp.up_proj.weight"]
        assert e.encoding == "ternary" and e.params["scale_mode"] == "tensor"
        ref = ckpt.get("model.layers.0.mlp.up_proj.weight")
        assert np.array_equal(_bits(e.dequantize()), _bits(ref))


@pytest.mark.parametrize("name", ["Q1_0", "TQ2_0", "I2_S", "Q4_1", "Q8_0", "Q2_0", "Q4_K", "Q5_0"])
def test_logits_equal_numpy_forward(kept, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime on the kept file against a numpy forward over the dequantised weights
    (ternary and q8 layers quantise their inputs to int8 as the encodings define)."""
    _, path = kept[name]
    ids = np.random.default_rng(7).integers(0, 64, 14)
    ours = _logits(path, ids, 10)
    monkeypatch.setattr(model_module, "make_linear", KeepReference)
    ref = _logits(path, ids, 10)
    err = np.abs(ours - ref).max(axis=1) / np.abs(ref).max()
    assert err[:11].max() <= 1e-4, err  # the prompt and the first decode step
    assert err.max() <= (3e-2 if name in ("TQ2_0", "I2_S", "Q8_0", "Q4_1", "Q4_K", "Q5_0") else 1e-4), err


@pytest.mark.parametrize(
    "enc,bits,zero,group,has_min",
    [("q4f", 4, 8, 32, False), ("q4f", 4, 0, 32, True), ("q2f", 2, 1, 64, False),
     ("q2f", 2, 1, 256, False), ("q1f", 1, 0, 128, False), ("q4f", 4, 3, 128, True)],
)  # fmt: skip
def test_affine_kernels_equal_reference(enc: str, bits: int, zero: int, group: int, has_min: bool) -> None:
    """Decode (T = 1, the matvec descriptor) and prefill against the numpy reference; 37 rows so
    that the last prefill block and decode task are partial."""
    rng = np.random.default_rng(bits * 100 + group)
    out, n = 37, 768 if group != 128 else 640
    q = rng.integers(0, 1 << bits, (out, n)).astype(np.uint8)
    scales = (rng.standard_normal((out, n // group)) * 0.05).astype(np.float16)
    mins = (rng.standard_normal((out, n // group)) * 0.05).astype(np.float16) if has_min else None
    e = ENCODINGS[enc].pack(q, scales, group, zero, mins)
    assert ENCODINGS[enc].bits_per_weight(e.shape, e.params) == bits + 16 * (1 + has_min) / group
    lin = make_linear(e)
    m = None if mins is None else e.parts["mins"].view(np.uint16)
    for t in (1, 3, 17):
        x = rng.standard_normal((t, n)).astype(np.float32)
        ref = affine_ref(x, e.parts["codes"], e.parts["scales"].view(np.uint16), m, bits, zero, group)
        y = lin(x)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), t


def test_q4k_kernels_equal_reference() -> None:
    """q4k decode (the matvec descriptor, int8 activations) and prefill against the numpy
    reference; 37 rows so that the last prefill block and decode task are partial."""
    rng = np.random.default_rng(44)
    out, n = 37, 768
    q = rng.integers(0, 16, (out, n)).astype(np.uint8)
    sc, mn = (rng.integers(0, 64, (out, n // 32)).astype(np.uint8) for _ in range(2))
    d, dmin = ((rng.standard_normal((out, n // 256)) * 0.01).astype(np.float16) for _ in range(2))
    e = ENCODINGS["q4k"].pack(q, sc, mn, d, dmin)
    assert ENCODINGS["q4k"].bits_per_weight(e.shape, e.params) == 4.625
    w = e.dequantize()
    i = np.arange(n)
    expect = (d.astype(np.float32)[:, i // 256] * sc[:, i // 32]) * q - dmin.astype(np.float32)[:, i // 256] * mn[:, i // 32]
    assert np.array_equal(_bits(w), _bits(expect))
    lin = make_linear(e)
    p = e.parts
    for t in (1, 3, 17):
        x = rng.standard_normal((t, n)).astype(np.float32)
        ref = q4k_ref(x, p["codes"], p["sub_scales"], p["sub_mins"], p["super"].view(np.uint16))
        assert np.abs(lin(x) - ref).max() <= 1e-5 * np.abs(ref).max(), t


def test_kquants_requantised_and_reported(tmp_path: Path) -> None:
    from lowbit.cli import cli as main

    gguf_path = tmp_path / "k.gguf"
    overrides = {"blk.0.ffn_down.weight": BY_NAME["Q6_K"], "blk.1.attn_q.weight": BY_NAME["IQ4_NL"],
                 "blk.1.attn_k.weight": BY_NAME["Q4_K"]}
    write_tiny_llama(gguf_path, BY_NAME["Q4_1"], overrides=overrides)
    res = CliRunner().invoke(main, ["convert", str(gguf_path), "-m", "keep", "-o", str(tmp_path / "k.lowbit")])
    assert res.exit_code == 0, res.output
    assert "kept losslessly: 13 tensors, 11 x Q4_1 -> q4f, 1 x F32 -> f32, 1 x Q4_K -> q4k" in res.output
    assert "re-quantised: 2 tensors, 1 x Q6_K -> q8, 1 x IQ4_NL -> q4" in res.output
    assert "model.layers.0.mlp.down_proj.weight" in res.output
    with LowbitReader(tmp_path / "k.lowbit") as r:
        e = r.tensors["model.layers.0.mlp.down_proj.weight"]
        assert e.encoding == "q8" and e.info["source_type"] == "Q6_K" and e.info["kept"] is False  # > 5 bits: q8
        assert r.tensors["model.layers.1.self_attn.q_proj.weight"].params["group_size"] == 32  # IQ4_NL's blocks
    s = summarize(tmp_path / "k.lowbit")
    assert s["encodings"]["q4f"]["source_types"] == {"Q4_1 kept": 11}
    assert s["encodings"]["q4k"]["source_types"] == {"Q4_K kept": 1}
    assert s["encodings"]["q4"]["source_types"] == {"IQ4_NL re-quantised": 1}
    info = CliRunner().invoke(main, ["info", str(tmp_path / "k.lowbit")])
    assert "from GGUF Q4_1 kept ×11" in info.output and "from GGUF Q4_K kept ×1" in info.output, info.output


def test_lower_bit_methods_quantise_from_the_dequantised_source(kept, tmp_path: Path) -> None:
    gguf_path, _ = kept["Q4_1"]
    out = convert(gguf_path, tmp_path / "q3.lowbit", method="q3")
    ckpt = GGUFCheckpoint(gguf_path)
    with LowbitReader(out.path) as r:
        e = r.tensors["model.layers.0.mlp.up_proj.weight"]
        assert e.encoding == "q3" and e.info["kept"] is False and e.info["source_type"] == "Q4_1"
        w = ckpt.get("model.layers.0.mlp.up_proj.weight")
        assert 0 < np.linalg.norm(e.dequantize() - w) / np.linalg.norm(w) < 0.3


def test_keep_refuses_other_inputs(tmp_path: Path, kept) -> None:
    from tiny_models import save_tiny

    folder = save_tiny("llama", tmp_path / "hf")
    with pytest.raises(LowbitError, match="--method keep applies to GGUF input only"):
        convert(folder, tmp_path / "x.lowbit", method="keep")
    with pytest.raises(LowbitError, match="takes no --calibrate or --target-bpw"):
        convert(kept["Q4_1"][0], tmp_path / "y.lowbit", method="keep", target_bpw=3.0)
    assert not (tmp_path / "x.lowbit").exists() and not (tmp_path / "y.lowbit").exists()


def test_smollm2_keep_ppl_equals_f32(smollm2_gguf, smollm2_file, tmp_path: Path) -> None:
    """SmolLM2's Q4_1 GGUF kept: ≤ 5.0 bits/weight on the linear layers and PPL on the held-out
    text within 0.3 % of the f32 conversion (the same grid, so in fact equal up to float order)."""
    from lowbit.eval.perplexity import perplexity
    from lowbit.quant.calibrate import default_evaluation_text
    from lowbit.runtime import load

    res = convert(smollm2_gguf, tmp_path / "keep.lowbit", method="keep")
    assert res.linear_bits_per_weight <= 5.0
    assert {t.encoding for t in res.tensors if len(t.shape) == 2} == {"q4f", "q8"}
    assert all(t.kept for t in res.tensors)
    _, text = default_evaluation_text()
    ours = perplexity(load(res.path, context_length=256), text, 256).ppl
    ref = perplexity(load(smollm2_file("f32"), context_length=256), text, 256).ppl
    print(f"PPL keep {ours:.4f}, f32 {ref:.4f}")
    assert abs(ours - ref) <= 0.003 * ref, (ours, ref)


@pytest.mark.parametrize("name", ["Q1_0", "Q2_0", "TQ2_0", "Q4_1", "Q8_0"])
def test_logits_agree_with_llama_cpp(tmp_path: Path, name: str) -> None:
    """llama.cpp (through llama-cpp-python, which knows these types) on the same GGUF: prompt
    logits within 1e-2 relative of lowbit's on the kept file."""
    import sys

    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from gguf_variants import open_llama

    from lowbit.runtime import load

    gguf_path = tmp_path / f"{name}.gguf"
    write_tiny_llama(gguf_path, BY_NAME[name], seed=3)
    path = convert(gguf_path, tmp_path / f"{name}.lowbit", method="keep").path
    ids = [int(i) for i in np.random.default_rng(1).integers(2, 63, 12)]
    ours = load(path).logits(ids)
    llm = open_llama(gguf_path, repack=False, n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err <= 1e-2, err
