"""LSI / DESV (seed 001) with OmniQuant-style learned weight clipping, block by block.

Each linear weight W = U diag(S) Vᵀ gets learned increments on its singular values (LSI) and on
`band` off-diagonals around them (DESV): W' = W + U D Vᵀ with D banded. Its grouped codes come from
W' with a learned range factor per group (clip = sigmoid(θ), OmniQuant's LWC, which trains alone
for the first LWC_FRACTION of each block's steps: the starting point LSI refines). Each block is
trained so that, fed the output of the already-quantised blocks before it, it reproduces the float
block's output on the float stream; then W' is merged and packed with the ordinary encoders, so
inference costs nothing extra.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.formats.encodings import EncodedTensor
from lowbit.train import TrainingError
from lowbit.train.config import TrainConfig, TrainResult
from lowbit.train.kd import batch_ids
from lowbit.train.loop import Budget, Run
from lowbit.train.ste import absmean, grouped_fake_quant, ternary_ste
from lowbit.train.students import replace_linears
from lowbit.train.teacher import Source, linear_modules, quantise_embeddings

LSI_ENCODINGS = ("q2", "q3", "q4", "ternary", "ternary-1.6")
DEFAULT_LR = 1e-3  # increments; the paper's 1.5e-4 is for epochs over far more data
CLIP_LR = 5e-3
CLIP_INIT = 4.0  # sigmoid(4) = 0.982, OmniQuant's initialisation
LWC_FRACTION = 0.25


class LSILinear(nn.Module):
    """A linear layer whose weight is W + U D Vᵀ, fake-quantised as the file will hold it."""

    def __init__(self, linear: nn.Linear, encoding: str, params: dict[str, Any], band: int) -> None:
        super().__init__()
        w = linear.weight.detach().double()
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        r = s.shape[0]
        dev = linear.weight.device
        self.encoding, self.params = encoding, dict(params)
        self.register_buffer("w", linear.weight.detach().float().clone())
        self.register_buffer("u", u.float())
        self.register_buffer("vt", vt.float())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.diag = nn.Parameter(torch.zeros(r, device=dev))
        n = min(band, r - 1)
        rows, cols, idx = [], [], []
        for k in [o for o in range(-n, n + 1) if o != 0]:
            j = np.arange(max(0, -k), min(r, r - k))
            rows.append(j)
            cols.append(j + k)
            idx.append(len(rows) - 1 + 0 * j)
        self.band = nn.Parameter(torch.zeros(max(1, 2 * n), r, device=dev))
        if n:
            self.register_buffer("rows", torch.from_numpy(np.concatenate(rows)).to(dev))
            self.register_buffer("cols", torch.from_numpy(np.concatenate(cols)).to(dev))
            self.register_buffer("flat", torch.from_numpy(np.concatenate(idx) * r + np.concatenate(rows)).to(dev))
        else:
            self.rows = None
        if encoding in ("q2", "q3", "q4"):
            self.bits, self.group = int(encoding[1]), int(params.get("group_size", 128))
            ng = -(-w.shape[1] // self.group)
            self.clip_logit = nn.Parameter(torch.full((w.shape[0], ng), CLIP_INIT, device=dev))
        elif encoding in ("ternary", "ternary-1.6"):
            self.bits = 0
        else:
            raise TrainingError(f"--train lsi packs {', '.join(LSI_ENCODINGS)}, not {encoding}")

    def merged(self) -> torch.Tensor:
        d = torch.diag_embed(self.diag)
        if self.rows is not None:
            d = d.index_put((self.rows, self.cols), self.band.reshape(-1)[self.flat], accumulate=True)
        return self.w + (self.u @ d) @ self.vt

    def quantised(self) -> torch.Tensor:
        w = self.merged()
        if self.bits:
            return grouped_fake_quant(w, self.bits, self.group, torch.sigmoid(self.clip_logit))
        if self.params.get("scale_mode") == "row":
            gamma = w.detach().abs().mean(1, keepdim=True) + 1e-5
            return ternary_ste(w, gamma) * gamma
        gamma = absmean(w)
        return ternary_ste(w, gamma) * gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.quantised(), self.bias)

    @torch.no_grad()
    def export(self) -> EncodedTensor:
        w = self.merged().float().cpu().numpy()
        if self.bits:
            from lowbit.formats.encodings.grouped import GroupedEncoding
            from lowbit.quant.rtn import grouped_codes, grouped_params

            clip = torch.sigmoid(self.clip_logit).float().cpu().numpy()
            sq, z, rs = grouped_params(w, self.bits, self.group, clip)
            return GroupedEncoding(self.bits).pack(grouped_codes(w, self.bits, self.group, sq, z, rs), sq, z, rs, self.group)
        from lowbit.quant import quantize

        return quantize(w, self.encoding, self.params)


class _Fixed(nn.Module):
    """A linear layer running the packed weight exactly as written (the next block's input)."""

    def __init__(self, enc: EncodedTensor, bias: nn.Parameter | None, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("w", torch.from_numpy(np.ascontiguousarray(enc.dequantize(), np.float32)).to(device))
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.w, self.bias)


def _layer_kwargs(model: nn.Module, ids: torch.Tensor) -> list[dict[str, Any]]:
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


def _call(layer: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _forward_all(layer: nn.Module, xs: torch.Tensor, kwargs: dict[str, Any], batch: int) -> torch.Tensor:
    return torch.cat([_call(layer, xs[i : i + batch], kwargs) for i in range(0, len(xs), batch)])


def train_lsi(src: Source, teacher: nn.Module, choose, cfg: TrainConfig, windows: np.ndarray,
              meta: dict) -> TrainResult:
    from lowbit.train.checkpoint import check_compatible, load_checkpoint

    device = next(teacher.parameters()).device
    mods = linear_modules(teacher, src, choose)
    bad = sorted({enc for _, enc, _ in mods.values() if enc not in LSI_ENCODINGS})
    if bad:
        raise TrainingError(f"--train lsi packs {', '.join(LSI_ENCODINGS)}; this conversion asks for {', '.join(bad)} "
                            "(use --train kd for onebit)")
    ids = torch.from_numpy(windows).to(device)
    kwargs = _layer_kwargs(teacher, ids[: cfg.batch])
    with torch.no_grad():
        x_fp = teacher.get_input_embeddings()(ids).float()
        student_embed = copy.deepcopy(teacher.get_input_embeddings())
        quantise_embeddings(_EmbeddingsOnly(student_embed), choose)
        x_q = student_embed(ids).float()
    saved_tensors, saved = ({}, {})
    if cfg.resume:
        saved_tensors, saved = load_checkpoint(cfg.checkpoint)
        check_compatible(cfg.checkpoint, saved, meta)
    layers = teacher.model.layers
    total = cfg.budget_minutes * 60
    spent = 0.0
    out: dict[str, EncodedTensor] = {}
    done_params: dict[str, torch.Tensor] = {}
    summary = []
    lr = cfg.lr or DEFAULT_LR
    start_block = int(saved.get("block", 0)) if saved else 0
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        prefix = f"model.layers.{i}."
        target = _forward_all(layer, x_fp, kwargs[i], cfg.batch)
        qlayer = copy.deepcopy(layer)
        mine = {p[len(prefix):]: v for p, v in mods.items() if p.startswith(prefix)}
        lsi = replace_linears(qlayer, {p: v[0] for p, v in mine.items()},
                              lambda lin, name: LSILinear(lin, *_enc(mods, name), cfg.band))
        params = {f"{n}:{a}": p for n, m in lsi.items() for a, p in m.named_parameters() if p.requires_grad}
        scale = float(target.pow(2).mean())
        if i < start_block:  # finished before the interruption: its parameters are in the checkpoint
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved_tensors[f"done.{k}"].to(p.device))
            spent += float(saved.get("block_seconds", [0.0] * (i + 1))[i])
            first = last = None
        else:
            groups = [{"params": [p for k, p in params.items() if not k.endswith(":clip_logit")], "base_lr": lr, "start": LWC_FRACTION},
                      {"params": [p for k, p in params.items() if k.endswith(":clip_logit")], "base_lr": CLIP_LR}]
            groups = [g for g in groups if g["params"]]
            share = max(1.0, (total - spent) / (len(layers) - i))
            block_meta = {**meta, "block": i, "in_block": True, "block_seconds": saved.get("block_seconds", []) if saved else []}
            run = Run(params, groups, Budget(share, cfg.max_steps), cfg.checkpoint, block_meta, every=cfg.every,
                      desc=f"LSI block {i + 1}/{len(layers)}",
                      extra=lambda: {f"done.{k}": v for k, v in done_params.items()})
            if cfg.resume and i == start_block and saved.get("in_block"):
                run.restore(saved_tensors, saved, cfg.checkpoint)
            qlayer.train()

            def step_fn(step: int, qlayer=qlayer, target=target, kw=kwargs[i], scale=scale, x_in=x_q, seed=cfg.seed + i):
                pick = torch.from_numpy(batch_ids(np.arange(len(x_in)), step, cfg.batch, seed)).to(device)
                y = _call(qlayer, x_in[pick], kw)
                return (y - target[pick]).pow(2).mean() / scale, {}

            run.run(step_fn)
            losses = [h[2] for h in run.history]
            first, last = (losses[0], losses[-1]) if losses else (None, None)
        with torch.no_grad():
            for k, p in params.items():
                done_params[k] = p.detach().clone()
            fixed = {}
            for name, m in lsi.items():
                out[name] = m.export()
                fixed[name] = _Fixed(out[name], m.bias, device)
            replace_linears(qlayer, {p: v[0] for p, v in mine.items()}, lambda lin, name, fixed=fixed: fixed[name])
            qlayer.eval()
            x_q = _forward_all(qlayer, x_q, kwargs[i], cfg.batch)
            packed_loss = float((x_q - target).pow(2).mean()) / scale
            x_fp = target
        dt = time.perf_counter() - t0
        if i >= start_block:
            spent += dt
        summary.append({"block": i, "loss_first": first, "loss_last": last, "packed_loss": round(packed_loss, 5)})
        secs = list(saved.get("block_seconds", [])[: i]) if saved else []
        while len(secs) < i:
            secs.append(0.0)
        secs.append(dt)
        saved = {**saved, "block_seconds": secs} if saved else {"block_seconds": secs}
        from lowbit.train.checkpoint import save_checkpoint

        save_checkpoint(cfg.checkpoint, {f"done.{k}": v for k, v in done_params.items()},
                        {**meta, "block": i + 1, "in_block": False, "block_seconds": secs, "finished": i + 1 == len(layers)})
    prov = {"loss": "per block: mean |block_q(x_q) - block_fp(x_fp)|^2 / mean |block_fp(x_fp)|^2",
            "init": "W (zero increments), clip sigmoid(4) = 0.982", "band": cfg.band, "lr": lr, "clip_lr": CLIP_LR,
            "seconds": round(spent, 1), "blocks": summary}
    return TrainResult(out, prov)


class _EmbeddingsOnly(nn.Module):
    """The interface quantise_embeddings needs, around one (untied) embedding."""

    def __init__(self, emb: nn.Embedding) -> None:
        super().__init__()
        self.emb = emb

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def get_output_embeddings(self):
        return None


def _enc(mods: dict, name: str) -> tuple[str, dict]:
    for n, enc, params in mods.values():
        if n == name:
            return enc, params
    raise KeyError(name)
