"""Sequential calibration: quantise layer by layer with the statistics of each linear layer's
real inputs, produced by running the *already quantised* earlier layers through the runtime's
own forward, so later layers compensate earlier errors (as GPTQ's reference code does).

The block is the runtime's (`model.load_block` + `model.block_forward`, every architecture
feature included); only its linears are calibration's own (`_Calibrating`, through load_block's
`make` hook), each quantised on the inputs of its first call. So per layer: q/k/v see norm(x);
o_proj sees the attention output computed with the quantised q/k/v; gate/up see norm(x + o(attn))
with the quantised o; down sees the MLP hidden state computed with the quantised gate/up. Only
H = XᵀX per input is kept (the quantisers need nothing else).

With `float_target` (the default), the float model runs beside it, and each linear is fitted to
the float model's output on the float model's input, not to its own float weight on the drifted
input (GPTAQ-style asymmetric calibration): minimising ‖X_q Ŵᵀ − X_f Wᵀ‖² is the usual problem
‖X_q (Ŵ − W*)ᵀ‖² with the target W* = W (X_fᵀX_q)(X_qᵀX_q)⁻¹, so every quantiser runs unchanged on
W* with H = X_qᵀX_q. Written as W* = W + W D H⁻¹ with D = (X_f − X_q)ᵀX_q / N, it is W exactly
where the two inputs agree (the first layer), whatever the damping of H.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.convert.models.base import is_linear_weight
from lowbit.formats.encodings import EncodedTensor
from lowbit.quant import quantize
from lowbit.runtime.config import ModelArgs
from lowbit.runtime.kv_cache import KVCache, Segment, Segments
from lowbit.runtime.linear import make_linear
from lowbit.runtime.llm import DEFAULT_CONTEXT
from lowbit.runtime.model import block_forward, embed, load_block, rope_tables

Getter = Callable[[str], np.ndarray | None]
Chooser = Callable[[str, tuple[int, ...]], tuple[str, dict[str, Any]]]


@dataclass
class CalibrationConfig:
    text: str
    text_name: str = "lowbit/data/calibration.txt"
    sequences: int = 32
    seq_len: int = 256
    quantizer: str = "gptq"  # "gptq" or "imatrix" (importance-weighted round-to-nearest)
    act_order: bool = True
    damp: float = 0.01
    float_target: bool = True  # fit each linear to the float model's outputs (module docstring)
    # ridge of the target's correction, × mean(diag H): SmolLM2 GPTQ KL q4 / q2 at 0.01: 0.128 / 1.62,
    # 0.1: 0.108 / 1.44, 0.3: 0.102 / 1.35, 1.0: 0.097 / 1.37 (PPL 26.89 / 92.98; own target 0.126 / 1.96)
    target_damp: float = 1.0

    @property
    def fits_float_outputs(self) -> bool:
        """Whether the float model runs beside calibration: only for the error-feedback quantisers
        (GPTQ, ARB for ternary/onebit). imatrix rounds each weight on its own, and rounding the
        corrected target that way measured worse than plain RTN (SmolLM2 q3, 768 tokens: KL 1.50 / 1.42)."""
        return self.float_target and self.quantizer == "gptq"

    def provenance(self, tokens: int) -> dict[str, Any]:
        return {
            "method": self.quantizer,
            "text": self.text_name,
            "text_sha256": hashlib.sha256(self.text.encode()).hexdigest(),
            "tokens": tokens,
            "sequences": self.sequences,
            "seq_len": self.seq_len,
            "act_order": self.act_order,
            "damp": self.damp,
            "float_target": self.fits_float_outputs,
            "target_damp": self.target_damp,
        }


def packaged_text(name: str) -> tuple[str, str]:
    """(name, text) of a text shipped with lowbit (CC0, see lowbit/data/README.md)."""
    from importlib.resources import files

    return f"lowbit/data/{name}", files("lowbit").joinpath(f"data/{name}").read_text(encoding="utf-8")


def default_calibration_text() -> tuple[str, str]:
    return packaged_text("calibration.txt")


def default_evaluation_text() -> tuple[str, str]:
    """Held out: never used for calibration."""
    return packaged_text("eval.txt")


def calibration_batches(ids: list[int], seq_len: int, sequences: int) -> np.ndarray:
    """Up to `sequences` non-overlapping windows of seq_len tokens: [n, seq_len]."""
    n = min(sequences, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


class InputStats:
    """H = XᵀX / N of one layer input, shared by the matrices that read it (q/k/v, gate/up);
    GPTQ's factorisation of it is computed once and reused. `correction` (M = H_d⁻¹ Dᵀ, from the float
    model's input to the same layer; `_SharedInput.of` sets it) turns a weight into its target."""

    def __init__(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        self.h = (x.T @ x).astype(np.float64) / len(x)
        self._prepared = None
        self.correction: np.ndarray | None = None  # set by _SharedInput.of when a float input is given

    def target(self, w: np.ndarray) -> np.ndarray:
        """The weight the quantiser should approach on these inputs: W* = W + W Mᵀ."""
        if self.correction is None:
            return w
        w64 = np.asarray(w, np.float64)
        return (w64 + w64 @ self.correction.T).astype(np.float32)

    def gptq(self, cfg: CalibrationConfig):
        if self._prepared is None:
            from lowbit.quant.gptq import prepare_hessian

            self._prepared = prepare_hessian(2 * self.h, cfg.damp, cfg.act_order)
        return self._prepared


def quantize_calibrated(
    w: np.ndarray, encoding: str, params: dict[str, Any], stats: InputStats, cfg: CalibrationConfig
) -> EncodedTensor:
    """The calibrated quantiser for an encoding (GPTQ / imatrix, ALS for onebit, fitted ternary scales)."""
    if encoding in ("q2", "q3", "q4"):
        bits, group = int(encoding[1]), int(params.get("group_size", 128))
        if cfg.quantizer == "gptq":
            from lowbit.quant.gptq import gptq_quantize

            return gptq_quantize(w, stats.gptq(cfg), bits, group, refine=bool(params.get("refine", False)))
        from lowbit.quant.rtn import quantize_grouped

        return quantize_grouped(w, bits, group, importance=np.diag(stats.h), refine=bool(params.get("refine", False)))
    if encoding in ("ternary", "ternary-1.6"):
        from lowbit.quant.ternary import quantize_ternary_calibrated

        return quantize_ternary_calibrated(w, stats.h, base3=encoding == "ternary-1.6")
    if encoding == "onebit":
        from lowbit.quant.onebit import quantize_onebit_calibrated

        return quantize_onebit_calibrated(w, stats.h, bool(params.get("layernorm", False)))
    return quantize(w, encoding, params)


def drift_correction(x: np.ndarray, x_float: np.ndarray, h: np.ndarray, damp: float) -> np.ndarray:
    """M [in, in] with W* = W + W Mᵀ the ridge least-squares fit of X_f Wᵀ from X_q = `x`: M = H_d⁻¹ Dᵀ,
    D = (X_f − X_q)ᵀ X_q / N, H_d = H + damp · mean(diag H) (dead inputs get 1). The ridge keeps the
    correction out of directions the calibration tokens barely span, where it would fit noise."""
    if x_float.shape != x.shape:
        raise ValueError(f"float input {x_float.shape} does not match the quantised one {x.shape}")
    d = ((np.asarray(x_float, np.float32) - x).T @ x).astype(np.float64) / len(x)
    hd = np.array(h, dtype=np.float64)
    diag = np.diag(hd).copy()
    hd[np.diag_indices(len(hd))] += damp * max(float(diag.mean()), 1e-12) + (diag <= 0)
    return np.linalg.solve(hd, d.T)


class _FloatRecording:
    """A float linear layer of the reference model that keeps its input (the quantised model's
    same layer reads it back as its target's input)."""

    def __init__(self, name: str, w: np.ndarray, bias: np.ndarray | None, inputs: dict[str, np.ndarray]) -> None:
        self.name, self.w, self.bias, self.inputs = name, np.asarray(w, np.float32), bias, inputs

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.inputs[self.name] = x
        y = x @ self.w.T
        return y if self.bias is None else y + self.bias


class _SharedInput:
    """The statistics of the last input seen, so linears called on the same array (q/k/v,
    gate/up) share one H and one GPTQ factorisation."""

    def __init__(self, damp: float) -> None:  # CalibrationConfig.target_damp
        self.x: np.ndarray | None = None
        self.stats: InputStats | None = None
        self.damp = damp

    def of(self, x: np.ndarray, x_float: np.ndarray | None = None) -> InputStats:
        if x is not self.x:
            self.x, self.stats = x, InputStats(x)
        if x_float is not None and self.stats.correction is None:
            self.stats.correction = drift_correction(x, x_float, self.stats.h, self.damp)
        return self.stats


class _Calibrating:
    """Stands for a linear layer in the runtime's own block forward: its first call (all the
    calibration tokens at once) quantises the float weight on those inputs, then it runs as the
    runtime's Linear of the result, so every later layer sees the quantised layer's outputs."""

    def __init__(self, name: str, w: np.ndarray, bias: np.ndarray | None,
                 quantise: Callable[[str, np.ndarray, InputStats], EncodedTensor], shared: _SharedInput,
                 float_inputs: dict[str, np.ndarray] | None = None) -> None:
        self.name, self.w, self.bias, self.quantise, self.shared = name, w, bias, quantise, shared
        self.float_inputs = float_inputs
        self.encoded: EncodedTensor | None = None
        self.linear: Any = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.linear is None:
            x_float = None if self.float_inputs is None else self.float_inputs[self.name]
            self.encoded = self.quantise(self.name, self.w, self.shared.of(x, x_float))
            self.linear = make_linear(self.encoded, self.bias)
        return self.linear(x)


def calibrate_layers(
    args: ModelArgs,
    get: Getter,
    choose: Chooser,
    ids: np.ndarray,
    embedding: EncodedTensor,
    cfg: CalibrationConfig,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[str, np.ndarray, InputStats], None] | None = None,
) -> Iterator[tuple[str, np.ndarray, EncodedTensor]]:
    """Yield (name, float weight, encoded) for every tensor of every layer, in order.

    `ids` [n, T] are the calibration sequences, `embedding` the (quantised) embedding table. Each
    layer runs once through `model.block_forward` on all n·T tokens, its linears built by
    `_Calibrating`: the block's own order of calls quantises q/k/v on norm(x), o on the attention
    output of the quantised q/k/v, gate/up on norm(x + o(attn)) and down on the MLP hidden state of
    the quantised gate/up; the layer's output, computed with all of them quantised, is the next
    layer's input. With `cfg.fits_float_outputs` the same block first runs with float linears on the
    float model's own activations, recording each linear's input for its target (module docstring).
    Norms, biases and other small tensors are quantised by `choose` as they are read.
    `observe(name, float weight, stats)` sees each linear's statistics before it is quantised
    (--target-bpw measures its candidates on them).
    """
    n, t = ids.shape
    ropes = rope_tables(args, max(t, min(DEFAULT_CONTEXT, args.max_position_embeddings)))[1]
    cache = KVCache(args, t, "f32")  # calibration statistics in full precision, whatever the runtime default
    # one cache for all: Segments attends each sequence in turn, every one from position 0
    sequences = Segments([Segment(cache, [int(v) for v in row], 0) for row in ids])
    x = embed(args, embedding, ids.reshape(-1))
    float_sequences = None
    if cfg.fits_float_outputs:
        float_cache = KVCache(args, t, "f32")
        float_sequences = Segments([Segment(float_cache, [int(v) for v in row], 0) for row in ids])
        x_float = x

    def quantise(name: str, w: np.ndarray, stats: InputStats) -> EncodedTensor:
        if observe is not None:
            observe(name, w, stats)
        enc, params = choose(name, tuple(w.shape))
        return quantize_calibrated(stats.target(w), enc, params, stats, cfg)

    for i in range(args.num_hidden_layers):
        weights: dict[str, np.ndarray] = {}
        encoded: dict[str, EncodedTensor] = {}
        linears: dict[str, _Calibrating] = {}
        shared = _SharedInput(cfg.target_damp)
        float_inputs: dict[str, np.ndarray] | None = None

        def lookup(name: str, weights=weights, encoded=encoded) -> Any:
            if name not in weights:
                w = get(name)
                if w is None:
                    return None
                weights[name] = w
                if not is_linear_weight(name):
                    encoded[name] = quantize(w, *choose(name, tuple(w.shape)))
            return encoded.get(name, weights[name])

        if float_sequences is not None:
            float_inputs = {}

            def make_float(name: str, w: np.ndarray, bias: np.ndarray | None, inputs=float_inputs) -> _FloatRecording:
                return _FloatRecording(name, w, bias, inputs)

            reference = load_block(lookup, i, args.linear_norm_eps, make_float)
            x_float = block_forward(args, ropes[i], reference, x_float, float_sequences, i, 0)

        def make(name: str, w: np.ndarray, bias: np.ndarray | None, linears=linears, shared=shared,
                 float_inputs=float_inputs) -> _Calibrating:
            linears[name] = _Calibrating(name, w, bias, quantise, shared, float_inputs)
            return linears[name]

        block = load_block(lookup, i, args.linear_norm_eps, make)
        x = block_forward(args, ropes[i], block, x, sequences, i, 0)
        shared.x = shared.stats = None  # the layer's last input: not needed past its forward
        for name, lin in linears.items():
            if lin.encoded is None:
                raise AssertionError(f"{name} was never called by the block forward")
            encoded[name] = lin.encoded
        for name, w in weights.items():
            yield name, w, encoded[name]
        if progress is not None:
            progress(i + 1)
