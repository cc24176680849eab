"""lowbit: run extremely low-bit LLMs on ordinary CPUs.

    import lowbit
    model = lowbit.load("smollm2-q4.lowbit")
    print(model.chat([{"role": "user", "content": "What is the capital of France?"}]))
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(model, threads=None, context_length=None, method="q4", kv_cache=None):
    """Load a .lowbit file, or convert a HF folder / hub id / GGUF once into the cache and load it;
    kv_cache: the KV cache's stored form, "f32", "f16" or "q8" (None: the default, f16)."""
    from lowbit.model_cache import load as _load

    return _load(model, threads=threads, context_length=context_length, method=method, kv_cache=kv_cache)


def convert(source, output, method="q4", **kwargs):
    """Convert a checkpoint into a .lowbit file (see `lowbit convert --help`)."""
    from lowbit.convert.converter import convert as _convert

    return _convert(source, output, method=method, **kwargs)


__all__ = ["__version__", "convert", "load"]
