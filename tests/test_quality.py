"""Accuracy per bit on the real model (SmolLM2-135M-Instruct): `lowbit eval ppl` agrees with
transformers; calibrated quantisers beat their uncalibrated versions on KL against f32; the
quality card lands in the file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_runner import run_lowbit

from lowbit.convert.converter import convert
from lowbit.eval.perplexity import kl_divergence, make_windows
from lowbit.formats import LowbitReader
from lowbit.quant.calibrate import (
    CalibrationConfig,
    default_calibration_text,
    default_evaluation_text,
)
from lowbit.runtime import load

CTX = 128
_, EVAL_TEXT = default_evaluation_text()
SHORT_TEXT = EVAL_TEXT[:3000]  # about five windows of 128 tokens


@pytest.fixture(scope="module")
def f32(smollm2_file):
    return smollm2_file("f32")


def test_ppl_matches_transformers(smollm2_hf_dir, f32, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text(SHORT_TEXT)
    proc = run_lowbit("eval", "ppl", str(f32), "--text", str(text), "--ctx", str(CTX), "--json")  # in-process
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    # transformers on the same windows, scored the llama.cpp way (second half of each window)
    import transformers

    llm = load(f32)
    windows = make_windows(llm.tokenize(SHORT_TEXT, add_special_tokens=False), CTX, None)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32)
    nll = []
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(torch.tensor([w])).logits[0].double(), -1)
            first = CTX // 2
            nll += [-logp[i, w[i + 1]].item() for i in range(first, CTX - 1)]
    ref = math.exp(np.mean(nll))
    print(f"PPL lowbit {ours['ppl']:.4f}, transformers {ref:.4f} ({len(nll)} tokens)")
    assert ours["tokens_scored"] == len(nll) and ours["windows"] == len(windows)
    assert abs(ours["ppl"] - ref) <= 0.005 * ref, (ours["ppl"], ref)
    assert ours["ppl_error"] > 0


def _kl(path, f32) -> float:
    return kl_divergence(load(path, context_length=CTX), load(f32, context_length=CTX), SHORT_TEXT, CTX).kl_mean


@pytest.fixture(scope="module")
def calib():
    name, text = default_calibration_text()
    return lambda quantizer="gptq": CalibrationConfig(text, name, sequences=6, seq_len=128, quantizer=quantizer)


# q4 and q2, the ends of GPTQ's range (q3 runs the same code: its quality is in docs/quality.md, and
# test_importance_weighted_rtn_beats_rtn calibrates at q3); each calibrated conversion is ~40 s here
@pytest.mark.parametrize("method", ["q4", "q2"])
def test_gptq_beats_rtn(smollm2_hf_dir, smollm2_file, f32, calib, tmp_path, method):
    rtn = smollm2_file(method)  # round-to-nearest, shared with the other SmolLM2 tests
    gptq = convert(smollm2_hf_dir, tmp_path / "gptq.lowbit", method=method, calibration=calib()).path
    with LowbitReader(gptq) as r:
        cal = r.metadata["provenance"]["calibration"]
        assert cal["method"] == "gptq" and cal["tokens"] == 6 * 128
    kl_rtn, kl_gptq = _kl(rtn, f32), _kl(gptq, f32)
    print(f"{method}: KL RTN {kl_rtn:.4f}, GPTQ {kl_gptq:.4f}")
    assert kl_gptq < kl_rtn


def test_importance_weighted_rtn_beats_rtn(smollm2_hf_dir, smollm2_file, f32, calib, tmp_path):
    rtn = smollm2_file("q3")
    imat = convert(smollm2_hf_dir, tmp_path / "imat.lowbit", method="q3", calibration=calib("imatrix")).path
    kl_rtn, kl_imat = _kl(rtn, f32), _kl(imat, f32)
    print(f"q3: KL RTN {kl_rtn:.4f}, imatrix {kl_imat:.4f}")
    assert kl_imat < kl_rtn


def test_calibrated_onebit_beats_svid_on_the_model(smollm2_hf_dir, f32, calib, tmp_path):
    """OneBit g/h fitted by ALS on calibration inputs (produced by the already-quantised earlier
    layers) beat SVID's on whole-model KL. The MLPs of layers 10-14 go to 1 bit and the rest stays
    f32: all-onebit SmolLM2 without distillation is destroyed either way (KL ~11 nats, where the
    order of two broken models says nothing)."""
    recipe = tmp_path / "onebit_mlp.toml"
    recipe.write_text('method = "f32"\n[[rules]]\npattern = "model.layers.1[0-4].mlp.*_proj.weight"\nencoding = "onebit"\n')
    svid = convert(smollm2_hf_dir, tmp_path / "svid.lowbit", method="f32", recipe=recipe).path
    cal = convert(smollm2_hf_dir, tmp_path / "als.lowbit", method="f32", recipe=recipe, calibration=calib()).path
    with LowbitReader(cal) as r:
        assert r["model.layers.12.mlp.up_proj.weight"].encoding == "onebit"
        assert r["model.layers.9.mlp.up_proj.weight"].encoding == "f32"
        assert r["model.layers.15.mlp.up_proj.weight"].encoding == "f32"
    kl_svid, kl_cal = _kl(svid, f32), _kl(cal, f32)
    print(f"onebit MLPs 10-14: KL SVID {kl_svid:.4f}, calibrated {kl_cal:.4f}")
    assert kl_cal < 0.8 * kl_svid


def test_calibrated_onebit_beats_svid_on_layer_outputs(smollm2_hf_dir, f32):
    """OneBit's g/h fitted by ALS reproduce a layer's outputs on real calibration inputs better
    than SVID's (the loss ALS minimises: ‖X Wᵀ − X Ŵᵀ‖²)."""
    from safetensors.numpy import load_file

    from lowbit.quant.onebit import quantize_onebit, quantize_onebit_calibrated

    llm = load(f32, threads=2)
    _, text = default_calibration_text()
    ids = llm.tokenize(text)[:256]
    hidden = llm.model.embed_tokens(np.asarray(ids)).astype(np.float64)
    block = llm.model.blocks[0]
    x = hidden / np.sqrt((hidden**2).mean(-1, keepdims=True) + llm.args.rms_norm_eps)
    x = x * block.input_norm  # layer 0's q/k/v input on the calibration text
    weights = {}
    for f in sorted(smollm2_hf_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    for name in ("q_proj", "k_proj", "v_proj"):
        w = weights[f"model.layers.0.self_attn.{name}.weight"].astype(np.float64)
        hess = x.T @ x
        errs = []
        for enc in (quantize_onebit(w), quantize_onebit_calibrated(w, hess)):
            w_hat = enc.dequantize().astype(np.float64)
            errs.append(float(np.square(x @ (w - w_hat).T).sum()))
        print(f"onebit {name}: output error SVID {errs[0]:.4g}, calibrated {errs[1]:.4g}")
        assert errs[1] < 0.95 * errs[0]


def test_quality_card_and_target_bpw(smollm2_hf_dir, f32, tmp_path):
    from lowbit.eval.quality import measure_quality, store_quality
    from lowbit.file_info import summarize

    out = convert(smollm2_hf_dir, tmp_path / "mix.lowbit", method="q2", target_bpw=3.0)
    assert out.linear_bits_per_weight <= 3.0
    assert out.linear_bits_per_weight > 2.6  # the budget is spent, not left on the table
    with LowbitReader(out.path) as r:
        encodings = {e.encoding for n, e in r.tensors.items() if n.startswith("model.layers.") and len(e.shape) == 2}
    assert len(encodings) >= 2  # a real mix
    q = measure_quality(out.path, f32, SHORT_TEXT, "short", CTX)
    store_quality(out.path, q)
    info = summarize(out.path)
    assert info["quality"]["kl_mean"] == q["kl_mean"] > 0
    assert info["quality"]["ppl_reference"] < info["quality"]["ppl"]
    with LowbitReader(out.path) as r:  # rewritten file is complete and valid
        assert r.verify() == len(r.tensors) + 1
