"""LSI / DESV (seed 001) with OmniQuant-style learned weight clipping, block by block.

Each linear weight W = U diag(S) Vᵀ gets learned increments on its singular values (LSI) and on
`band` off-diagonals around them (DESV): W' = W + U D Vᵀ with D banded. Its grouped codes come from
W' with a learned range factor per group (clip = sigmoid(θ), OmniQuant's LWC, initialised at the
factor lowbit's RTN clip search picks and trained alone for the first LWC_FRACTION of each block's
steps: the starting point LSI refines). Each block is
trained so that, fed the output of the already-quantised blocks before it, it reproduces the float
block's output on the float stream; then W' is merged and packed with the ordinary encoders, so
inference costs nothing extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.formats.encodings import EncodedTensor
from lowbit.train import TrainingError
from lowbit.train.config import TrainConfig, TrainResult
from lowbit.train.ste import absmean, grouped_fake_quant, ternary_ste
from lowbit.train.teacher import Source, linear_modules

LSI_ENCODINGS = ("q2", "q3", "q4", "ternary", "ternary-1.6")
DEFAULT_LR = 1e-2  # increments; SmolLM2 block 3 at q2, 30 steps: 0.0333 -> 0.0306 clip only, 0.0252 at 1e-3, 0.0194 at 1e-2
CLIP_LR = 1e-2
CLIP_MAX = 0.999  # the clip search's 1.0, kept inside sigmoid's range
LWC_FRACTION = 0.25


def searched_clip(w: np.ndarray, bits: int, group: int) -> np.ndarray:
    """The range factor per group that lowbit's RTN clip search picks (rtn.choose_group_params),
    read back from the scales it stores: the learned clipping starts where RTN ends."""
    from lowbit.quant.rtn import _pad_groups, choose_group_params

    sq, _, rs = choose_group_params(w, bits, group)
    wg, _ = _pad_groups(w, group)
    span = np.maximum(wg.max(-1), 0) - np.minimum(wg.min(-1), 0)
    stored = rs.astype(np.float32)[:, None] * sq.astype(np.float32) * ((1 << bits) - 1)
    return np.clip(stored / np.where(span > 0, span, 1), 0.5, CLIP_MAX).astype(np.float32)


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
            clip = torch.from_numpy(searched_clip(linear.weight.detach().float().cpu().numpy(), self.bits, self.group))
            self.clip_logit = nn.Parameter(torch.logit(clip).float().to(dev))
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


def train_lsi(src: Source, teacher: nn.Module, choose, cfg: TrainConfig, windows: np.ndarray,
              meta: dict) -> TrainResult:
    from lowbit.train.blockwise import train_blocks

    mods = linear_modules(teacher, src, choose)
    bad = sorted({enc for _, enc, _ in mods.values() if enc not in LSI_ENCODINGS})
    if bad:
        raise TrainingError(f"--train lsi packs {', '.join(LSI_ENCODINGS)}; this conversion asks for {', '.join(bad)} "
                            "(use --train kd for onebit)")
    lr = cfg.lr or DEFAULT_LR

    def groups(params: dict[str, nn.Parameter]) -> list[dict[str, Any]]:
        clip = [p for k, p in params.items() if k.endswith(":clip_logit")]
        rest = [p for k, p in params.items() if not k.endswith(":clip_logit")]
        out = [{"params": rest, "base_lr": lr, "start": LWC_FRACTION if clip else 0.0}]
        return out + ([{"params": clip, "base_lr": CLIP_LR}] if clip else [])

    blocks = train_blocks(src, teacher, choose, cfg, windows, {**meta, "stage": "blocks"},
                          lambda lin, name, enc, params: LSILinear(lin, enc, params, cfg.band), groups,
                          cfg.budget_minutes * 60, "LSI")
    prov = {"loss": "per block: mean |block_q(x_q) - block_fp(x_fp)|^2 / mean |block_fp(x_fp)|^2",
            "init": "W (zero increments), clip from lowbit's RTN clip search", "band": cfg.band, "lr": lr, "clip_lr": CLIP_LR,
            "seconds": round(blocks.seconds, 1), "blocks": blocks.summary}
    return TrainResult(blocks.tensors, prov)
