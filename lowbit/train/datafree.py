"""LLM-QAT's data-free calibration: text the float model samples itself, starting from BOS.

Used by the learned methods whenever no --calib text is given. Samples are cached as token ids
(.npy, read with allow_pickle=False) under $LOWBIT_HOME/calibration, keyed by the model's files
and the sampling settings, so a second run (or a --resume) reuses them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_SEQUENCES = 64  # × 256 tokens: 16.4k tokens, twice the shipped calibration text
DEFAULT_LEN = 256


def cache_path(fingerprint: str, sequences: int, length: int, seed: int) -> Path:
    from lowbit.model_cache import lowbit_home

    key = hashlib.sha256(f"{fingerprint}-{sequences}-{length}-{seed}-v1".encode()).hexdigest()[:20]
    return lowbit_home() / "calibration" / f"datafree-{key}.npy"


@torch.no_grad()
def sample_sequences(
    model: nn.Module, bos: int, sequences: int, length: int, seed: int = 0, batch: int = 16, progress=None,
) -> np.ndarray:
    """[sequences, length] token ids: BOS, then tokens sampled at temperature 1 (no top-k/top-p,
    no stop at EOS: the model's own distribution, as LLM-QAT samples it)."""
    device = next(model.parameters()).device
    out = np.empty((sequences, length), np.int64)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        for done in range(0, sequences, batch):
            b = min(batch, sequences - done)
            ids = torch.full((b, 1), bos, dtype=torch.long, device=device)
            ids = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=length - 1, min_new_tokens=length - 1,
                                 pad_token_id=bos)
            out[done : done + b] = ids[:, :length].cpu().numpy()
            if progress is not None:
                progress(b)
    return out


def datafree_windows(
    model: nn.Module, bos: int | None, fingerprint: str, sequences: int = DEFAULT_SEQUENCES,
    length: int = DEFAULT_LEN, seed: int = 0,
) -> tuple[np.ndarray, str]:
    """(token windows, provenance name): cached samples or freshly generated ones."""
    path = cache_path(fingerprint, sequences, length, seed)
    if path.is_file():
        try:
            ids = np.load(path, allow_pickle=False)
            if ids.shape == (sequences, length) and ids.dtype == np.int64:
                return ids, f"data-free (cached {path.name})"
        except (OSError, ValueError):
            pass  # a damaged cache entry is regenerated
    from tqdm import tqdm

    start = 0 if bos is None else bos
    with tqdm(total=sequences, desc="sampling calibration text (data-free)", unit="seq", dynamic_ncols=True,
              leave=False) as bar:
        ids = sample_sequences(model, start, sequences, length, seed, progress=bar.update)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, ids)
    os.replace(tmp, path)
    return ids, f"data-free (sampled from BOS, seed {seed})"
