"""The quality card: PPL and KL of a converted file against the f32 conversion of the same
source, on held-out text, stored in the file's metadata.quality and shown by `lowbit info`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lowbit.formats.writer import rewrite


def measure_quality(path: Path, reference: Path, text: str, text_name: str, ctx: int = 256,
                    threads: int | None = None, progress=None) -> dict[str, Any]:
    from lowbit.eval.perplexity import kl_divergence
    from lowbit.runtime import load

    r = kl_divergence(load(path, threads=threads, context_length=ctx), load(reference, threads=threads, context_length=ctx),
                      text, ctx, progress)
    return {
        "text": text_name,
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "ctx": ctx,
        "tokens_scored": r.tokens_scored,
        "reference": "f32 conversion of the same source",
        "ppl": round(r.ppl, 4),
        "ppl_reference": round(r.ppl_ref, 4),
        "kl_mean": round(r.kl_mean, 6),
        "kl_median": round(r.kl_median, 6),
        "kl_p99": round(r.kl_p99, 6),
        "top1_agreement": round(r.top1_agreement, 6),
    }


def store_quality(path: Path, quality: dict[str, Any]) -> None:
    """Rewrite `path` with metadata.quality set (a streamed copy, then an atomic rename)."""
    rewrite(path, path, {"quality": quality})
