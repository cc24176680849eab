"""Round-to-nearest quantisers: grouped asymmetric q2/q3/q4 and symmetric q8.

Grouped (algorithms.md §1): per group of G inputs, s = (max − min)/(2^b − 1), z = round(−min/s),
q = clamp(round(w/s) + z). The group scale is then itself stored as an 8-bit integer under one f16
scale per row, so q is computed against that *stored* scale: the reference is what the file holds.
An optional per-input importance vector (imatrix-style) weights the error when choosing the clip
range of each group.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.constants import ceil_div
from lowbit.formats.encodings import EncodedTensor
from lowbit.formats.encodings.grouped import GroupedEncoding
from lowbit.formats.encodings.q8 import Q8


def _pad_groups(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] -> ([out, ng, G] padded with the group's first value, valid mask [ng, G])."""
    out, n_in = w.shape
    ng = ceil_div(n_in, group)
    padded = np.empty((out, ng * group), dtype=np.float32)
    padded[:, :n_in] = w
    mask = np.zeros(ng * group, dtype=bool)
    mask[:n_in] = True
    if ng * group > n_in:  # fill padding with an in-range value so it does not widen min/max
        padded[:, n_in:] = w[:, (ng - 1) * group : (ng - 1) * group + 1]
    return padded.reshape(out, ng, group), mask.reshape(ng, group)


def grouped_params(
    w: np.ndarray, bits: int, group: int, clip: np.ndarray | float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer group scales sq [out, ng] (u8), zero points z [out, ng] and f16 row scale [out].

    `clip` (scalar or [out, ng]) shrinks each group's [min, max] range before the scale is chosen.
    """
    wg, _ = _pad_groups(w, group)
    qmax = (1 << bits) - 1
    lo = np.minimum(wg.min(axis=-1), 0.0) * clip
    hi = np.maximum(wg.max(axis=-1), 0.0) * clip
    step = (hi - lo) / qmax  # [out, ng] float scales
    row_max = step.max(axis=1)
    row_scale = (row_max / 255.0).astype(np.float16)
    rs = row_scale.astype(np.float32)
    safe = np.where(rs > 0, rs, 1.0)
    sq = np.clip(np.ceil(step / safe[:, None] - 1e-6), 1, 255).astype(np.uint8)  # ceil: keep the range
    step_q = rs[:, None] * sq.astype(np.float32)
    step_safe = np.where(step_q > 0, step_q, 1.0)
    z = np.clip(np.round(-lo / step_safe), 0, qmax).astype(np.uint8)
    return sq, z, row_scale


def grouped_codes(
    w: np.ndarray, bits: int, group: int, sq: np.ndarray, z: np.ndarray, row_scale: np.ndarray
) -> np.ndarray:
    """Codes q [out, in] for given stored scales: clamp(round(w / step) + z)."""
    out, n_in = w.shape
    step = row_scale.astype(np.float32)[:, None] * sq.astype(np.float32)  # [out, ng]
    step = np.where(step > 0, step, 1.0)
    wg, _ = _pad_groups(w, group)
    q = np.clip(np.round(wg / step[..., None]) + z[..., None], 0, (1 << bits) - 1)
    return q.reshape(out, -1)[:, :n_in].astype(np.uint8)


def dequantize_grouped(q, sq, z, row_scale, group: int) -> np.ndarray:
    out, n_in = q.shape
    step = row_scale.astype(np.float32)[:, None] * sq.astype(np.float32)
    ng = step.shape[1]
    qg = np.zeros((out, ng * group), np.float32)
    qg[:, :n_in] = q
    wq = (qg.reshape(out, ng, group) - z[..., None].astype(np.float32)) * step[..., None]
    return wq.reshape(out, -1)[:, :n_in]


def choose_group_params(
    w: np.ndarray, bits: int, group: int, importance: np.ndarray | None = None, clip_search: bool = True,
    refine: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group scales and zero points with a small per-group clip search.

    For each group a few range shrink factors are tried; per group the one with the lowest
    (importance-weighted, like llama.cpp's imatrix) squared error wins — the cheap part of what
    llama.cpp's make_qkx does. `refine` then alternates closed-form scale / zero updates on the
    same weighted error (`hqq`).
    """
    w = np.asarray(w, dtype=np.float32)
    out, n_in = w.shape
    ng = ceil_div(n_in, group)
    weight = np.ones(n_in, np.float32) if importance is None else np.asarray(importance, np.float32)
    wpad = np.zeros(ng * group, np.float32)
    wpad[:n_in] = weight
    wgt = wpad.reshape(ng, group)
    factors = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75) if clip_search else (1.0,)
    best_err = np.full((out, ng), np.inf, np.float32)
    best_clip = np.ones((out, ng), np.float32)
    for f in factors:
        sq, z, rs = grouped_params(w, bits, group, f)
        q = grouped_codes(w, bits, group, sq, z, rs)
        e = np.zeros((out, ng * group), np.float32)
        e[:, :n_in] = dequantize_grouped(q, sq, z, rs, group) - w
        errg = ((e.reshape(out, ng, group) ** 2) * wgt[None]).sum(-1)
        better = errg < best_err
        best_err = np.where(better, errg, best_err)
        best_clip = np.where(better, f, best_clip)
    sq, z, rs = grouped_params(w, bits, group, best_clip)
    if refine:
        from lowbit.quant.hqq import refine_group_params

        sq, z, rs = refine_group_params(w, bits, group, sq, z, rs, importance)
    return sq, z, rs


def quantize_grouped(
    w: np.ndarray,
    bits: int,
    group: int = 128,
    importance: np.ndarray | None = None,
    clip_search: bool = True,
    refine: bool = False,
) -> EncodedTensor:
    """Round-to-nearest grouped quantisation (optionally importance-weighted clip search, HQQ-style refinement)."""
    w = np.asarray(w, dtype=np.float32)
    sq, z, rs = choose_group_params(w, bits, group, importance, clip_search, refine)
    return GroupedEncoding(bits).pack(grouped_codes(w, bits, group, sq, z, rs), sq, z, rs, group)


def quantize_q8(w: np.ndarray, group: int = 0) -> EncodedTensor:
    """Symmetric absmax int8 per row (group 0) or per group of `group` inputs."""
    w = np.asarray(w, dtype=np.float32)
    out, n_in = w.shape
    g = group or n_in
    ng = ceil_div(n_in, g)
    padded = np.zeros((out, ng * g), np.float32)
    padded[:, :n_in] = w
    wg = padded.reshape(out, ng, g)
    scales = (np.abs(wg).max(axis=-1) / 127.0).astype(np.float16)
    s = scales.astype(np.float32)
    s = np.where(s > 0, s, 1.0)
    codes = np.clip(np.round(wg / s[..., None]), -127, 127).reshape(out, -1)[:, :n_in].astype(np.int8)
    return Q8.pack(codes, scales, group)
