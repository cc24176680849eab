"""Quantised students for knowledge distillation: torch stand-ins for the runtime's 1-bit and
ternary layers, built from a float teacher's linear layers and exported as packed tensors.

Each module computes in its forward exactly what the packed encoding will compute (signs or trits
times value vectors / scales) and keeps a float latent weight behind a straight-through estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.formats.encodings import EncodedTensor
from lowbit.train.ste import absmean, int8_activations, sign_ste, ternary_ste

KD_ENCODINGS = ("onebit", "ternary", "ternary-1.6")


class OneBitStudent(nn.Module):
    """y = h ⊙ (sign(W) (g ⊙ x)) (seed 002, eq. 5 without its LayerNorm), from SVID or from a
    calibrated OneBit tensor (its signs, g and h; the latent keeps |W| behind the signs)."""

    def __init__(self, linear: nn.Linear, params: dict[str, Any], start: EncodedTensor | None = None) -> None:
        super().__init__()
        self.params = dict(params)
        w = linear.weight.detach().float()
        if start is None:
            from lowbit.quant.onebit import svid

            _, h, g = svid(w.cpu().numpy())
            latent = w.clone()
        else:
            signs, g, h = _start_parts(start, "onebit", w.shape)
            latent = torch.from_numpy(signs).to(w.device) * w.abs().clamp_min(1e-6)
        self.latent = nn.Parameter(latent)
        self.g = nn.Parameter(torch.from_numpy(np.ascontiguousarray(g, np.float32)).to(w.device))
        self.h = nn.Parameter(torch.from_numpy(np.ascontiguousarray(h, np.float32)).to(w.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x * self.g, sign_ste(self.latent)) * self.h
        return y if self.bias is None else y + self.bias

    def export(self) -> EncodedTensor:
        from lowbit.formats.encodings.onebit import ONEBIT

        signs = np.where(self.latent.detach().cpu().numpy() >= 0, 1, -1).astype(np.int8)
        return ONEBIT.pack(signs, _np(self.g), _np(self.h), layernorm=bool(self.params.get("layernorm", False)))


class TernaryStudent(nn.Module):
    """y = s ⊙ (RoundClip(W/γ) · int8(x)): BitNet b1.58 absmean trits, a learned scale per row,
    activations fake-quantised per token as the runtime's ternary kernels quantise them. From
    absmean, or from a calibrated ternary tensor: latent t·mean|W| rounds back to its trits t
    (γ = that value × the share of non-zeros < it), scales its own."""

    def __init__(self, linear: nn.Linear, base3: bool = False, start: EncodedTensor | None = None) -> None:
        super().__init__()
        self.base3 = base3
        w = linear.weight.detach().float()
        if start is None:
            self.latent = nn.Parameter(w.clone())
            scale = absmean(w).expand(w.shape[0]).clone()
        else:
            trits, scale_np, _ = _start_parts(start, "ternary-1.6" if base3 else "ternary", w.shape)
            self.latent = nn.Parameter(torch.from_numpy(trits).to(w.device) * w.abs().mean())
            scale = torch.from_numpy(np.broadcast_to(scale_np, (w.shape[0],)).copy()).to(w.device)
        self.scale = nn.Parameter(scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def trits(self) -> torch.Tensor:
        return ternary_ste(self.latent, absmean(self.latent))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(int8_activations(x), self.trits()) * self.scale
        return y if self.bias is None else y + self.bias

    def export(self) -> EncodedTensor:
        from lowbit.formats.encodings.ternary import TERNARY, TERNARY_1P6

        trits = torch.round(self.trits().detach()).cpu().numpy().astype(np.int8)
        return (TERNARY_1P6 if self.base3 else TERNARY).pack(trits, _np(self.scale))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _start_parts(start: EncodedTensor, encoding: str, shape: torch.Size) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(signs or trits as float32, then g and h (onebit) or the scales and None (ternary)) of a
    starting tensor, checked to be what this student packs."""
    from lowbit.formats.encodings import get_encoding

    if start.encoding != encoding or tuple(start.shape) != tuple(shape):
        raise ValueError(f"a {encoding} student of shape {tuple(shape)} cannot start from {start.encoding} {tuple(start.shape)}")
    codes = get_encoding(encoding).unpack(start.parts, start.shape, start.params).astype(np.float32)
    if encoding == "onebit":
        return codes, start.parts["g"].astype(np.float32), start.parts["h"].astype(np.float32)
    return codes, start.parts["scale"].astype(np.float32), None


def make_student(linear: nn.Linear, encoding: str, params: dict[str, Any], start: EncodedTensor | None = None) -> nn.Module:
    """The trainable stand-in for one linear layer, from `start` (a packed tensor of its encoding)
    when given; its export() packs what it learned."""
    if encoding == "onebit":
        return OneBitStudent(linear, params, start)
    if encoding in ("ternary", "ternary-1.6"):
        return TernaryStudent(linear, base3=encoding == "ternary-1.6", start=start)
    raise ValueError(encoding)


def replace_linears(
    model: nn.Module, names: dict[str, str], build: Callable[[nn.Linear, str], nn.Module]
) -> dict[str, nn.Module]:
    """Swap model.<module path> for build(linear, lowbit name) for every entry of `names`
    (module path -> lowbit tensor name); returns lowbit name -> new module."""
    out = {}
    for path, name in names.items():
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        new = build(getattr(parent, attr), name)
        setattr(parent, attr, new)
        out[name] = new
    return out
