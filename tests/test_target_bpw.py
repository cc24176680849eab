"""--target-bpw with --calibrate measures each candidate encoding by its output error on the
calibration inputs (tr(ΔW H ΔWᵀ)/tr(W H Wᵀ), ΔW from GPTQ) instead of its weight error: at the
same budget its mix must damage the layers' outputs less, measured independently of the plan
(on the inputs the f32 file's own forward gives every linear)."""

from __future__ import annotations

import numpy as np
from test_calibrate import forward_inputs
from tiny_models import save_tiny

import lowbit.convert.target_bpw as target_bpw
from lowbit.convert.converter import convert
from lowbit.formats import LowbitReader
from lowbit.quant.calibrate import CalibrationConfig, default_calibration_text
from lowbit.runtime import load

SEQUENCES, SEQ_LEN = 4, 64
TARGET = 3.2  # the tiny model's cheapest mix (all q2, 64-wide rows) is 2.51 bits/weight


def output_error(path, f32, inputs: dict[str, np.ndarray]) -> float:
    """Σ over linears of ‖(W − Ŵ)X‖² / ‖WX‖²."""
    total = 0.0
    with LowbitReader(path) as r, LowbitReader(f32) as ref:
        for name, x in inputs.items():
            w = ref[name].dequantize().astype(np.float64)
            dw = w - r[name].dequantize()
            total += float(np.sum((x @ dw.T) ** 2) / np.sum((x @ w.T) ** 2))
    return total


def test_calibrated_plan_beats_weight_only_plan_at_equal_bits(tmp_path, monkeypatch):
    folder = save_tiny("llama", tmp_path / "hf", seed=1)
    f32 = convert(folder, tmp_path / "f32.lowbit", method="f32").path
    text_name, text = default_calibration_text()
    cfg = CalibrationConfig(text, text_name, sequences=SEQUENCES, seq_len=SEQ_LEN)
    measured = []
    original = target_bpw._calibrated_options
    monkeypatch.setattr(target_bpw, "_calibrated_options", lambda *a: measured.append(1) or original(*a))
    calibrated = convert(folder, tmp_path / "cal.lowbit", method="q2", target_bpw=TARGET, calibration=cfg)
    assert measured  # --calibrate measured the plan on calibration inputs

    plan = target_bpw.plan
    monkeypatch.setattr(target_bpw, "plan", lambda *a, calibration=None, **k: plan(*a, **k))  # weight error only
    weight_only = convert(folder, tmp_path / "w.lowbit", method="q2", target_bpw=TARGET, calibration=cfg)

    for out in (calibrated, weight_only):
        assert TARGET - 0.1 < out.linear_bits_per_weight <= TARGET  # the budget is met and spent
    assert calibrated.linear_bits_per_weight <= weight_only.linear_bits_per_weight + 1e-9
    with LowbitReader(calibrated.path) as r:
        assert len({r[n].encoding for n in r.tensors if n.endswith("_proj.weight")}) >= 2  # a real mix
    ids = np.asarray(load(f32).tokenize(text, add_special_tokens=False)[: SEQUENCES * SEQ_LEN])
    inputs = forward_inputs(f32, ids.reshape(SEQUENCES, SEQ_LEN))
    assert output_error(calibrated.path, f32, inputs) < 0.95 * output_error(weight_only.path, f32, inputs)
