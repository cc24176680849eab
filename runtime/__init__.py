"""lowbit's runtime: memory-mapped .lowbit models on numpy + numba kernels.

Imports only numpy, numba, tokenizers, sentencepiece and jinja2 — never the converter's
dependencies (torch, safetensors, huggingface_hub, gguf, click).
"""

from lowbit.runtime.llm import LanguageModel, load

__all__ = ["LanguageModel", "load"]
