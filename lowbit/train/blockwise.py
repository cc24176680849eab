"""Block-by-block reconstruction, shared by LSI / DESV and the first stage of distillation: each
transformer block, with its linear layers swapped for trainable quantised stand-ins and fed the
output of the already-packed blocks before it, learns to reproduce the float block's output on the
float stream (OmniQuant's objective). A block costs 1/L of a model step, so on a CPU budget every
layer gets many more updates than end-to-end training could give it.

The blocks after training run with their weights exactly as packed, so block i+1 compensates the
rounding of blocks ≤ i. A checkpoint after every block (and every N steps inside one) lets a run
resume where it stopped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.formats.encodings import EncodedTensor
from lowbit.train.config import TrainConfig
from lowbit.train.kd import batch_ids
from lowbit.train.loop import Budget, Run
from lowbit.train.students import replace_linears
from lowbit.train.teacher import Source, linear_modules, quantise_embeddings

SAVE_SECONDS = 60.0  # between block-end checkpoints (each holds every finished block; SIGINT saves at once)
Build = Callable[[nn.Linear, str, str, dict], nn.Module]  # (linear, name, encoding, params) -> module with export()
Groups = Callable[[dict[str, nn.Parameter]], list[dict[str, Any]]]


@dataclass
class BlocksResult:
    modules: dict[str, nn.Module]  # lowbit name -> trained stand-in
    tensors: dict[str, EncodedTensor]  # lowbit name -> packed
    seconds: float
    summary: list[dict[str, Any]] = field(default_factory=list)


class Fixed(nn.Module):
    """A linear layer running the packed weight exactly as written (the next block's input)."""

    def __init__(self, enc: EncodedTensor, bias: nn.Parameter | None, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("w", torch.from_numpy(np.ascontiguousarray(enc.dequantize(), np.float32)).to(device))
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.w, self.bias)


def layer_kwargs(model: nn.Module, ids: torch.Tensor) -> list[dict[str, Any]]:
    """The keyword arguments (mask, rotary cos/sin, positions) each decoder layer receives for a
    batch of this shape, captured from one forward of the model: any architecture's own."""
    captured: list[dict[str, Any]] = []

    def hook(_mod, _args, kwargs):
        captured.append({k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "use_cache")})

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return captured


def call_layer(layer: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def forward_all(layer: nn.Module, xs: torch.Tensor, kwargs: dict[str, Any], batch: int) -> torch.Tensor:
    return torch.cat([call_layer(layer, xs[i : i + batch], kwargs) for i in range(0, len(xs), batch)])


class _EmbeddingsOnly(nn.Module):
    """The interface quantise_embeddings needs, around one (untied) copy of the embedding."""

    def __init__(self, emb: nn.Embedding) -> None:
        super().__init__()
        self.emb = emb

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def get_output_embeddings(self):
        return None


def train_blocks(src: Source, teacher: nn.Module, choose, cfg: TrainConfig, windows: np.ndarray, meta: dict,
                 build: Build, groups: Groups, seconds: float, desc: str) -> BlocksResult:
    from lowbit.train.checkpoint import check_compatible, load_checkpoint, save_checkpoint

    device = next(teacher.parameters()).device
    mods = linear_modules(teacher, src, choose)
    ids = torch.from_numpy(windows[: cfg.block_sequences]).to(device)
    kwargs = layer_kwargs(teacher, ids[: cfg.batch])
    with torch.no_grad():
        x_fp = teacher.get_input_embeddings()(ids).float()
        embed = copy.deepcopy(teacher.get_input_embeddings())
        quantise_embeddings(_EmbeddingsOnly(embed), choose)
        x_q = embed(ids).float()
        del embed
    saved_tensors, saved = {}, {}
    if cfg.resume and cfg.checkpoint.exists():
        saved_tensors, saved = load_checkpoint(cfg.checkpoint)
        check_compatible(cfg.checkpoint, saved, meta)
    start_block = int(saved.get("block", 0))
    secs: list[float] = list(saved.get("block_seconds", []))
    layers = teacher.model.layers
    spent = sum(secs[:start_block])
    result = BlocksResult({}, {}, 0.0)
    last_save = time.perf_counter()
    done: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        prefix = f"model.layers.{i}."
        target = forward_all(layer, x_fp, kwargs[i], cfg.batch)
        qlayer = copy.deepcopy(layer)
        mine = {p[len(prefix):]: v for p, v in mods.items() if p.startswith(prefix)}
        stand_ins = replace_linears(qlayer, {p: v[0] for p, v in mine.items()},
                                    lambda lin, name, mine=mine: build(lin, name, *_enc(mine, name)))
        params = {f"{n}:{a}": p for n, m in stand_ins.items() for a, p in m.named_parameters() if p.requires_grad}
        scale = float(target.pow(2).mean())
        first = last = None
        if i < start_block:  # finished before the interruption: its parameters are in the checkpoint
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved_tensors[f"done.{k}"].to(p.device))
        else:
            share = max(1.0, (seconds - spent) / (len(layers) - i))
            run = Run(params, groups(params), Budget(share, cfg.max_steps), cfg.checkpoint,
                      {**meta, "block": i, "in_block": True, "block_seconds": secs[:i]}, every=cfg.every,
                      desc=f"{desc} block {i + 1}/{len(layers)}",
                      extra=lambda: {f"done.{k}": v for k, v in done.items()}, save_at_end=False)
            if i == start_block and saved.get("in_block"):
                run.restore(saved_tensors, saved, cfg.checkpoint)
            qlayer.train()

            def step_fn(step: int, qlayer=qlayer, target=target, kw=kwargs[i], scale=scale, x_in=x_q, seed=cfg.seed + i):
                pick = torch.from_numpy(batch_ids(np.arange(len(x_in)), step, cfg.batch, seed)).to(device)
                return (call_layer(qlayer, x_in[pick], kw) - target[pick]).pow(2).mean() / scale, {}

            run.run(step_fn)
            losses = [h[2] for h in run.history]
            first, last = (losses[0], losses[-1]) if losses else (None, None)
        with torch.no_grad():
            for k, p in params.items():
                done[k] = p.detach().clone()
            fixed = {}
            for name, m in stand_ins.items():
                result.tensors[name] = m.export()
                result.modules[name] = m
                fixed[name] = Fixed(result.tensors[name], getattr(m, "bias", None), device)
            replace_linears(qlayer, {p: v[0] for p, v in mine.items()}, lambda lin, name, fixed=fixed: fixed[name])
            qlayer.eval()
            x_q = forward_all(qlayer, x_q, kwargs[i], cfg.batch)
            packed = float((x_q - target).pow(2).mean()) / scale
            x_fp = target
        if i >= start_block:
            secs = secs[:i] + [time.perf_counter() - t0]
            spent += secs[-1]
        if i >= start_block and (time.perf_counter() - last_save > SAVE_SECONDS or i + 1 == len(layers)):
            last_save = time.perf_counter()
            save_checkpoint(cfg.checkpoint, {f"done.{k}": v for k, v in done.items()},
                            {**meta, "block": i + 1, "in_block": False, "block_seconds": secs})
        result.summary.append({"block": i, "loss_first": first, "loss_last": last, "packed_loss": round(packed, 5)})
    result.seconds = spent
    return result


def _enc(mine: dict, name: str) -> tuple[str, dict]:
    for n, enc, params in mine.values():
        if n == name:
            return enc, params
    raise KeyError(name)
