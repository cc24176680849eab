"""Calibration runs the runtime's own block forward: the statistics GPTQ (and imatrix, OneBit,
ternary) calibrate each linear layer on are those of that layer's inputs when the calibrated
file runs through `Transformer.forward`, for every architecture feature (Llama with biases,
Qwen3's q/k norms, Gemma 3's output norms, embedding multiplier, local RoPE and windows, Phi-3's
partial LongRoPE). Since each layer's inputs there come from the quantised earlier layers (and
o/down from the quantised q/k/v and gate/up), this also holds the sequential semantics."""

from __future__ import annotations

import numpy as np
import pytest
from test_architectures import save
from tiny_models import save_tiny

import lowbit.quant.calibrate as calibrate
from lowbit.convert.converter import convert
from lowbit.quant.calibrate import CalibrationConfig, default_calibration_text
from lowbit.runtime import load
from lowbit.runtime.kv_cache import KVCache

SEQUENCES, SEQ_LEN = 3, 40  # past Gemma's and Phi-3's 24-token windows


class Recorder:
    """Wraps a runtime linear layer and keeps every input it is called on."""

    def __init__(self, linear) -> None:
        self.linear, self.inputs = linear, []

    def __call__(self, x):
        self.inputs.append(np.array(x, dtype=np.float32))
        return self.linear(x)


def forward_inputs(path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every linear layer's inputs when the file runs each sequence of ids [n, T] from position 0."""
    llm = load(path, threads=2, context_length=ids.shape[1])
    recorders = {}
    for i, block in enumerate(llm.model.blocks):
        for part, names in ((block.attn, ("q", "k", "v", "o")), (block.mlp, ("gate", "up", "down"))):
            for x in names:
                rec = Recorder(getattr(part, f"{x}_proj"))
                setattr(part, f"{x}_proj", rec)
                where = "self_attn" if part is block.attn else "mlp"
                recorders[f"model.layers.{i}.{where}.{x}_proj.weight"] = rec
    for row in ids:
        llm.model.forward(row, KVCache(llm.args, ids.shape[1], "f32"))  # calibration's own cache type
    return {name: np.concatenate(r.inputs) for name, r in recorders.items()}


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma3", "phi3"])
def test_calibration_sees_the_runtime_forward_inputs(tmp_path, monkeypatch, family):
    folder = save_tiny("qwen2", tmp_path / "hf", seed=8) if family == "qwen2" else save(family, tmp_path / "hf", 9)[0]
    seen = {}
    original = calibrate._Calibrating.__call__

    def recording(self, x):
        if self.linear is None:  # the call that quantises: the statistics it quantises on
            seen[self.name] = self.shared.of(x).h
        return original(self, x)

    monkeypatch.setattr(calibrate._Calibrating, "__call__", recording)
    text_name, text = default_calibration_text()
    cfg = CalibrationConfig(text, text_name, sequences=SEQUENCES, seq_len=SEQ_LEN)
    out = convert(folder, tmp_path / "cal.lowbit", method="q3", calibration=cfg)
    llm = load(out.path)
    ids = np.asarray(llm.tokenize(text, add_special_tokens=False)[: SEQUENCES * SEQ_LEN]).reshape(SEQUENCES, SEQ_LEN)
    inputs = forward_inputs(out.path, ids)
    assert set(seen) == set(inputs)
    for name, x in inputs.items():
        h = (x.T @ x).astype(np.float64) / len(x)
        np.testing.assert_allclose(seen[name], h, rtol=1e-5, atol=1e-6 * np.abs(h).max(), err_msg=name)


def test_drift_correction_is_the_least_squares_fit_of_the_float_outputs():
    """W* = W + W Mᵀ minimises ‖X_q W*ᵀ − X_f Wᵀ‖ (undamped: the lstsq solution), and is W itself
    where the quantised model's input is the float model's."""
    rng = np.random.default_rng(0)
    x_float = rng.standard_normal((400, 24)).astype(np.float32)
    mix = np.eye(24) + 0.3 * rng.standard_normal((24, 24))  # drift mostly predictable from x_quant
    x_quant = (x_float @ mix + 0.05 * rng.standard_normal(x_float.shape)).astype(np.float32)
    w = rng.standard_normal((10, 24)).astype(np.float32)
    stats = calibrate._SharedInput(damp=0.0).of(x_quant, x_float)
    target = stats.target(w)
    best = np.linalg.lstsq(x_quant.astype(np.float64), x_float @ w.T.astype(np.float64), rcond=None)[0].T
    np.testing.assert_allclose(target, best, rtol=1e-2, atol=2e-3)  # H and D are float32 products
    miss = np.linalg.norm(x_quant @ target.T - x_float @ w.T)
    assert miss < 0.7 * np.linalg.norm(x_quant @ w.T - x_float @ w.T)
    same = calibrate._SharedInput(damp=0.01).of(x_float, x_float)
    np.testing.assert_array_equal(same.target(w), w)  # D = 0 exactly: no shrinkage from the damping


def test_float_target_sees_the_float_models_inputs(tmp_path, monkeypatch):
    """The reference pass records, for every linear, the input it has in the float model (here:
    the f32 file with the same q8 embedding), and the quantiser is given W* built from it."""
    folder = save_tiny("qwen2", tmp_path / "hf", seed=8)
    seen, targets = {}, {}
    original = calibrate._Calibrating.__call__

    def recording(self, x):
        if self.linear is None:
            seen[self.name] = np.array(self.float_inputs[self.name])
        return original(self, x)

    def quantized(w, encoding, params, stats, cfg, real=calibrate.quantize_calibrated):
        targets[len(targets)] = (w, stats)
        return real(w, encoding, params, stats, cfg)

    monkeypatch.setattr(calibrate._Calibrating, "__call__", recording)
    monkeypatch.setattr(calibrate, "quantize_calibrated", quantized)
    text_name, text = default_calibration_text()
    cfg = CalibrationConfig(text, text_name, sequences=SEQUENCES, seq_len=SEQ_LEN)
    out = convert(folder, tmp_path / "cal.lowbit", method="q2", calibration=cfg)
    recipe = tmp_path / "f32.toml"
    recipe.write_text('method = "f32"\n[[rules]]\npattern = "model.embed_tokens.weight"\nencoding = "q8"\n')
    reference = convert(folder, tmp_path / "f32.lowbit", recipe=recipe)
    llm = load(out.path)
    ids = np.asarray(llm.tokenize(text, add_special_tokens=False)[: SEQUENCES * SEQ_LEN]).reshape(SEQUENCES, SEQ_LEN)
    inputs = forward_inputs(reference.path, ids)
    assert set(seen) == set(inputs)
    for name, x in inputs.items():
        np.testing.assert_allclose(seen[name], x, rtol=1e-4, atol=1e-4 * np.abs(x).max(), err_msg=name)
    drifted = [np.abs(stats.correction).max() for _, stats in targets.values()]
    assert drifted[0] == 0 and max(drifted) > 0  # layer 0's q/k/v read the float input itself


def test_float_target_lowers_the_output_error_against_the_float_model(tmp_path):
    """q2 on a tiny model: fitting each layer to the float model's outputs ends closer to the
    float model's logits than fitting it to its own weight on the drifted inputs."""
    folder = save_tiny("qwen2", tmp_path / "hf", seed=8)
    text_name, text = default_calibration_text()
    reference = load(convert(folder, tmp_path / "f32.lowbit", method="f32").path)
    ids = reference.tokenize(text, add_special_tokens=False)[: SEQUENCES * SEQ_LEN]

    def kl(float_target: bool) -> float:
        cfg = CalibrationConfig(text, text_name, sequences=SEQUENCES, seq_len=SEQ_LEN, float_target=float_target)
        llm = load(convert(folder, tmp_path / f"q2-{float_target}.lowbit", method="q2", calibration=cfg).path)
        p, q = (np.asarray(m.logits(ids), np.float64) for m in (reference, llm))
        lp, lq = (a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)
                  for a in (p, q))
        return float((np.exp(lp) * (lp - lq)).sum(-1).mean())

    assert kl(True) < kl(False)
