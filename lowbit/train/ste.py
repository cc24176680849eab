"""Straight-through estimators: the forward pass rounds exactly as the packed encoding will, the
backward pass treats the rounding as the identity so latent weights and scales get gradients."""

from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def sign_ste(w: torch.Tensor) -> torch.Tensor:
    """±1 with 0 -> +1 (as OneBitEncoding.pack stores `w >= 0`), identity gradient."""
    s = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))
    return w + (s - w).detach()


def ternary_ste(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """RoundClip(w / γ, −1, 1) (BitNet b1.58 absmean), identity gradient inside the clip range."""
    u = w / gamma
    return u + (torch.clamp(torch.round(u), -1, 1) - u).detach()


def absmean(w: torch.Tensor) -> torch.Tensor:
    """γ of lowbit.quant.ternary.absmean_ternary (per tensor), detached."""
    return (w.detach().abs().mean() + 1e-5).reshape(1)


def int8_activations(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 fake quantisation: what the runtime's ternary kernels do to inputs."""
    s = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
    return round_ste(x / s) * s


def grouped_fake_quant(w: torch.Tensor, bits: int, group: int, clip: torch.Tensor) -> torch.Tensor:
    """Asymmetric grouped round-to-nearest with a per-group range factor `clip` [out, ng], as
    lowbit.quant.rtn.grouped_params/grouped_codes compute it (float group scales: the stored
    8-bit scale under an f16 row scale changes them by < 1/255)."""
    out, n_in = w.shape
    ng = -(-n_in // group)
    pad = ng * group - n_in
    if pad:  # padded with the last group's first value, as rtn._pad_groups does
        w = torch.cat([w, w[:, (ng - 1) * group:(ng - 1) * group + 1].expand(out, pad)], 1)
    wg = w.reshape(out, ng, group)
    qmax = (1 << bits) - 1
    lo = torch.clamp(wg.amin(-1), max=0.0) * clip
    hi = torch.clamp(wg.amax(-1), min=0.0) * clip
    step = ((hi - lo) / qmax).clamp_min(1e-8)
    z = torch.clamp(round_ste(-lo / step), 0, qmax)
    q = torch.clamp(round_ste(wg / step[..., None]) + z[..., None], 0, qmax)
    return ((q - z[..., None]) * step[..., None]).reshape(out, -1)[:, :n_in]
