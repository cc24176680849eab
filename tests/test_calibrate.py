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
