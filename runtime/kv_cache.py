"""KVCache: one sequence's keys and values, and the token ids they were computed from.

The cache owns every write into it (`attend`: rotate, store, attend), its prefix reuse (`reuse`:
keep the longest prefix a new prompt shares with the ids already held, drop the rest) and its
reset. A generation runs on one cache; the server gives every request its own, and
`LanguageModel.session()` hands one to each caller, all over the same read-only weights.

`Segments` runs several sequences through one forward pass: the linear layers see all their
tokens stacked, while RoPE, the cache writes and attention run per sequence on its own cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.runtime.errors import InvalidModel
from lowbit.runtime.kernels.attention import attention
from lowbit.runtime.kernels.kv_store import DTYPES, KINDS, SCALED, kv_write

DEFAULT_KIND = "f16"  # half f32's bytes for -0.004 % PPL on SmolLM2 (docs/quality.md), as llama.cpp's default


def check_kind(kind: str | None) -> str:
    """A KV cache type lowbit stores: f32, f16 or q8 (kernels.kv_store); None: the default."""
    if kind is None:
        return DEFAULT_KIND
    if kind not in KINDS:
        raise ValueError(f"unknown KV cache type {kind!r}: choose one of {', '.join(KINDS)}")
    return kind


class KVCache:
    """Pre-allocated keys and values for every layer: [layers, kv_heads, context, head_dim], in
    the stored form `kind` (f32, f16 bits, or q8 with scales [layers, kv_heads, context]; see
    kernels.kv_store). The attention kernels read that form directly.

    np.zeros is calloc: pages become resident only as positions are used, and return to the
    system when the cache is dropped."""

    def __init__(self, args: Any, context_length: int, kind: str | None = None) -> None:
        self.kind = kind = check_kind(kind)
        shape = (args.num_hidden_layers, args.num_key_value_heads, context_length, args.head_dim)
        scaled = (*shape[:2], context_length if kind in SCALED else 0)
        try:
            self.keys = np.zeros(shape, dtype=DTYPES[kind])
            self.values = np.zeros(shape, dtype=DTYPES[kind])
            self.key_scales = np.zeros(scaled, dtype=np.float32)
            self.value_scales = np.zeros(scaled, dtype=np.float32)
        except MemoryError:
            raise InvalidModel(f"the KV cache for a context of {context_length} tokens does not fit in memory "
                               "(pass a smaller context_length)") from None
        self.context_length = context_length
        self.length = 0
        self.ids: list[int] = []  # the tokens at positions 0..length-1, when known
        self.prompt_upto = 0  # positions 0..prompt_upto-1 were all run as prompt segments

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.keys, self.values, self.key_scales, self.value_scales)))

    @staticmethod
    def bytes_per_token(args: Any, kind: str | None = None) -> int:
        """Bytes one position takes (keys and values of every layer, with q8's scales)."""
        kind = check_kind(kind)
        row = args.head_dim * np.dtype(DTYPES[kind]).itemsize + (4 if kind in SCALED else 0)
        return 2 * args.num_hidden_layers * args.num_key_value_heads * row

    def reset(self) -> None:
        self.length = 0
        self.ids = []
        self.prompt_upto = 0

    def truncate(self, n: int) -> None:
        """Forget every position from n on."""
        n = max(0, min(n, self.length))
        self.length = n
        self.prompt_upto = min(self.prompt_upto, n)
        del self.ids[n:]

    def common_prefix(self, ids: Sequence[int]) -> int:
        """How many leading ids of `ids` this cache already holds."""
        n = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            n += 1
        return n

    def reusable(self, ids: Sequence[int], prompt_only: bool = False) -> int:
        """How many leading positions a prompt `ids` could keep (prompt_only: only positions that
        were run as prompt tokens, whose bits then do not depend on what came after them)."""
        n = self.common_prefix(ids)
        return min(n, self.prompt_upto) if prompt_only else n

    def reuse(self, ids: Sequence[int], prompt_only: bool = False) -> int:
        """Keep the prefix shared with `ids`, at most len(ids) − 1 positions (the last token must
        run to give logits); returns where the new tokens start."""
        keep = min(self.reusable(ids, prompt_only), len(ids) - 1)
        self.truncate(keep)
        return keep

    def check_room(self, t: int) -> None:
        if self.length + t > self.context_length:
            raise ValueError(f"context length {self.context_length} exceeded ({self.length} + {t} tokens)")

    def advance(self, ids: Sequence[int], prompt: bool = False) -> None:
        """Record that `ids` now fill the next positions (prompt: they ran as a prompt segment)."""
        if prompt and self.prompt_upto == self.length:
            self.prompt_upto += len(ids)
        self.ids.extend(int(i) for i in ids)
        self.length += len(ids)

    def attend(self, layer: int, rope: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray,
               start: int, window: int, scale: float = 0.0, softcap: float = 0.0) -> np.ndarray:
        """Rotate q [T, H, D] and k [T, KVH, D] for positions start.., write k and v at them,
        and return causal attention of q over positions ≤ its own (and within `window`, if set):
        [T, H·D]. scale 0 means 1/sqrt(D); softcap > 0 soft-caps the scores (Gemma 2)."""
        t, h, d = q.shape
        q = rope.apply(q, start)
        k = rope.apply(k, start)
        end = start + t
        out = np.empty((t, h * d), dtype=np.float32)
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.kind == "f32":
            self.keys[layer, :, start:end] = k.transpose(1, 0, 2)
            self.values[layer, :, start:end] = v.transpose(1, 0, 2)
            attention(q, self.keys[layer], self.values[layer], start, window, out, scale, softcap)
            return out
        # the fused decode step's own row store (kv_store.store): both paths keep the same bits
        kv_write(self.keys[layer], self.key_scales[layer], start, np.ascontiguousarray(k, dtype=np.float32))
        kv_write(self.values[layer], self.value_scales[layer], start, np.ascontiguousarray(v, dtype=np.float32))
        attention(q, self.keys[layer], self.values[layer], start, window, out, scale, softcap,
                  self.key_scales[layer], self.value_scales[layer])
        return out


@dataclass
class Segment:
    """Tokens of one sequence in a batched forward: they go to `cache` at positions start..
    A prompt segment runs the prefill kernels (one weight unpack for all its tokens), a decode
    segment the decode kernel; either way a token's bits never depend on the other segments."""

    cache: KVCache
    ids: list[int]
    start: int
    prompt: bool = False


class Segments:
    """Several sequences in one forward pass; stands where a KVCache does in `attention_forward`."""

    def __init__(self, segments: list[Segment]) -> None:
        self.items = segments
        self.bounds = np.cumsum([0] + [len(s.ids) for s in segments])

    def attend(self, layer: int, rope: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray,
               start: Any, window: int, scale: float = 0.0, softcap: float = 0.0) -> np.ndarray:
        t, h, d = q.shape
        out = np.empty((t, h * d), dtype=np.float32)
        for seg, a, b in zip(self.items, self.bounds[:-1], self.bounds[1:]):
            out[a:b] = seg.cache.attend(layer, rope, q[a:b], k[a:b], v[a:b], seg.start, window, scale, softcap)
        return out
