"""Sequential calibration: quantise layer by layer with the statistics of each linear layer's
real inputs, produced by running the *already quantised* earlier layers through the runtime's
own forward, so later layers compensate earlier errors (as GPTQ's reference code does).

Per layer: q/k/v see norm(x); o_proj sees the attention output computed with the quantised
q/k/v; gate/up see norm(x + o(attn)) with the quantised o; down sees the MLP hidden state computed
with the quantised gate/up. Only H = XᵀX per input is kept (the quantisers need nothing else).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.formats.encodings import EncodedTensor, get_encoding
from lowbit.quant import quantize
from lowbit.runtime.config import ModelArgs
from lowbit.runtime.model import (
    KVCache,
    attention_forward,
    load_attention,
    load_mlp,
    mlp_forward,
    rms_norm,
)
from lowbit.runtime.rope import RotaryEmbedding

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
    GPTQ's factorisation of it is computed once and reused."""

    def __init__(self, xs: list[np.ndarray]) -> None:
        x = np.concatenate(xs).astype(np.float32)
        self.h = (x.T @ x).astype(np.float64) / len(x)
        self._prepared = None

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


class _Capture:
    """Stands in for a linear layer: records its inputs, returns zeros."""

    def __init__(self, out_features: int) -> None:
        self.out_features = out_features
        self.inputs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(np.array(x, dtype=np.float32))
        return np.zeros((x.shape[0], self.out_features), dtype=np.float32)


class _Layer(dict):
    """name -> EncodedTensor for one layer, with `lookup` for the runtime's block loaders."""

    def lookup(self, name: str) -> Any:
        return self.get(name)


def calibrate_layers(
    args: ModelArgs,
    get: Getter,
    choose: Chooser,
    embedded: np.ndarray,
    cfg: CalibrationConfig,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, np.ndarray, EncodedTensor]]:
    """Yield (name, float weight, encoded) for every tensor of every layer, in order.

    `embedded` holds the calibration sequences after the (quantised) embedding: [n, T, hidden].
    """
    rope = RotaryEmbedding(args.head_dim, max(args.max_position_embeddings, embedded.shape[1]), args.rope_theta, args.rope_scaling)
    cache = KVCache(args, embedded.shape[1])
    xs = [x.astype(np.float32) for x in embedded]
    eps = args.rms_norm_eps
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}."
        layer = _Layer()

        def put(name: str, w: np.ndarray, stats: InputStats | None = None, layer: _Layer = layer) -> None:
            enc, params = choose(name, tuple(w.shape))
            if stats is None or len(w.shape) != 2:
                layer[name] = quantize(w, enc, params)
            else:
                layer[name] = quantize_calibrated(w, enc, params, stats, cfg)

        plain = [p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                 p + "self_attn.attn_sub_norm.weight", p + "mlp.ffn_sub_norm.weight"]
        plain += [p + f"self_attn.{x}_proj.bias" for x in "qkvo"]
        weights = {n: get(n) for n in plain}
        for n, w in weights.items():
            if w is not None:
                put(n, w)
        norm1 = layer[p + "input_layernorm.weight"].dequantize()
        norm2 = layer[p + "post_attention_layernorm.weight"].dequantize()
        # q, k, v: inputs are norm(x)
        h1 = [np.ascontiguousarray(rms_norm(x, norm1, eps), dtype=np.float32) for x in xs]
        stats = InputStats(h1)
        for x in "qkv":
            n = p + f"self_attn.{x}_proj.weight"
            weights[n] = get(n)
            put(n, weights[n], stats)
        # o_proj: input is the attention output with quantised q/k/v
        o_name = p + "self_attn.o_proj.weight"
        weights[o_name] = get(o_name)
        layer[o_name] = get_encoding("f32").pack(weights[o_name])  # placeholder shape for the loader
        attn = load_attention(layer.lookup, i)
        capture = _Capture(args.hidden_size)
        attn.o_proj = capture
        for x in h1:
            cache.reset()
            attention_forward(args, rope, attn, x, cache, i, 0)
        put(o_name, weights[o_name], InputStats(capture.inputs))
        o_lin = load_attention(layer.lookup, i).o_proj
        xs = [x + o_lin(a) for x, a in zip(xs, capture.inputs)]
        del capture, h1
        # gate, up: inputs are norm(x + attn)
        h2 = [np.ascontiguousarray(rms_norm(x, norm2, eps), dtype=np.float32) for x in xs]
        stats = InputStats(h2)
        for x in ("gate", "up"):
            n = p + f"mlp.{x}_proj.weight"
            weights[n] = get(n)
            put(n, weights[n], stats)
        d_name = p + "mlp.down_proj.weight"
        weights[d_name] = get(d_name)
        layer[d_name] = get_encoding("f32").pack(weights[d_name])
        mlp = load_mlp(layer.lookup, i)
        capture = _Capture(args.hidden_size)
        mlp.down_proj = capture
        for x in h2:
            mlp_forward(args, mlp, x)
        put(d_name, weights[d_name], InputStats(capture.inputs))
        down = load_mlp(layer.lookup, i).down_proj
        xs = [x + down(m) for x, m in zip(xs, capture.inputs)]
        del capture, h2
        for name, enc in layer.items():
            yield name, weights[name], enc
        if progress is not None:
            progress(i + 1)
