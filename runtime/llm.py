"""LanguageModel: one loaded .lowbit file with its tokenizer, KV cache and generation methods.

Each instance owns its cache and thread count, so two models in one process share no state.
The cache keeps the token ids it holds: a new prompt that extends them (the next chat turn) only
runs the new tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.formats import LowbitReader
from lowbit.runtime.errors import InvalidModel
from lowbit.runtime.generate import GenerationResponse, stream_generate
from lowbit.runtime.model import KVCache, Transformer
from lowbit.runtime.sampling import SamplingParams
from lowbit.runtime.threads import resolve_threads, set_threads
from lowbit.runtime.tokenizer import Tokenizer
from lowbit.runtime.validate import (
    check_config,
    check_context,
    check_generation,
    check_tokenizer,
    check_tokenizer_metadata,
)

DEFAULT_CONTEXT = 4096


class LanguageModel:
    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, context_length: int | None = None
    ) -> None:
        self.path = Path(path)
        self.reader = LowbitReader(self.path)
        try:
            self._build(threads, context_length)
        except BaseException:
            self.reader.close()
            raise

    def _build(self, threads: int | None, context_length: int | None) -> None:
        meta = self.reader.metadata
        self.metadata = meta
        # validation before anything is built from the file (runtime.validate)
        self.args = check_config(meta.get("config", {}))
        tok_meta = check_tokenizer_metadata(meta.get("tokenizer", {}), self.reader.blob_names())
        limit = self.args.max_position_embeddings
        if context_length is not None:
            check_context(self.args, context_length)
        self.context_length = min(context_length or min(DEFAULT_CONTEXT, limit), limit)
        self.threads = resolve_threads(threads)
        self.model = Transformer(self.reader, self.args, self.context_length)
        self.tokenizer = Tokenizer.from_bytes(
            tok_meta.get("kind", "tokenizers"),
            self.reader.blob(tok_meta.get("blob", "tokenizer.json")),
            tok_meta,
            eos_token_ids=self.args.eos_token_id,
        )
        check_tokenizer(self.args, self.tokenizer)
        try:
            self.cache = KVCache(self.args, self.context_length)
        except MemoryError:
            raise InvalidModel(f"the KV cache for a context of {self.context_length} tokens does not fit in memory "
                               "(pass a smaller context_length)") from None
        self._cached_ids: list[int] = []
        self.generation_defaults: dict[str, Any] = check_generation(meta.get("generation", {}))

    # -- low level -------------------------------------------------------------------------
    def reset(self) -> None:
        self.cache.reset()
        self._cached_ids = []

    def _run(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        set_threads(self.threads)
        logits = self.model.forward(np.asarray(ids, dtype=np.int64), self.cache, all_logits=all_logits)
        self._cached_ids.extend(int(i) for i in ids)
        return logits

    def prefill(self, ids: Sequence[int], chunk: int = 512) -> np.ndarray:
        """Run a prompt, reusing the cached prefix it shares with the last one; last logits."""
        ids = [int(i) for i in ids]
        common = 0
        for a, b in zip(self._cached_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # always run at least one token
        self.cache.length = common
        del self._cached_ids[common:]
        logits = None
        for s in range(common, len(ids), chunk):
            logits = self._run(ids[s : s + chunk])
        return logits[-1]

    def decode(self, token: int) -> np.ndarray:
        """One token through the KV cache; returns its logits [vocab]."""
        return self._run([token])[-1]

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [T, vocab] for every position of ids, from an empty cache."""
        self.reset()
        out = self._run(list(ids), all_logits=True)
        return out

    # -- text ------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def sampling_params(self, **kwargs: Any) -> SamplingParams:
        names = {f.name for f in fields(SamplingParams)}
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        return SamplingParams(**{k: v for k, v in kwargs.items() if v is not None})

    def stream_generate(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[GenerationResponse]:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        return stream_generate(self, ids, self.sampling_params(**kwargs))

    def stream(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[str]:
        """Yield the completion's text piece by piece."""
        for r in self.stream_generate(prompt, **kwargs):
            if r.text:
                yield r.text

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, **kwargs: Any) -> str:
        return "".join(self.stream(prompt, max_tokens=max_tokens, **kwargs))

    def chat(
        self, messages: list[dict[str, str]], stream: bool = False, max_tokens: int = 512, **kwargs: Any
    ) -> str | Iterator[str]:
        """Answer the conversation: the chat template with add_generation_prompt, then generate."""
        ids = self.tokenizer.encode_chat(messages, add_generation_prompt=True)
        pieces = self.stream(ids, max_tokens=max_tokens, **kwargs)
        return pieces if stream else "".join(pieces)

    def close(self) -> None:
        self.model = None
        self.reader.close()

    def __repr__(self) -> str:
        return f"LanguageModel({str(self.path)!r}, threads={self.threads}, context_length={self.context_length})"


def load(path: str | os.PathLike, threads: int | None = None, context_length: int | None = None) -> LanguageModel:
    """Memory-map a .lowbit file and build the model (weights stay packed and mapped)."""
    return LanguageModel(path, threads=threads, context_length=context_length)
