"""LanguageModel: one loaded .lowbit file with its tokenizer, KV cache and generation methods.

Each instance owns its cache and thread count, so two models in one process share no state.
The cache keeps the token ids it holds: a new prompt that extends them (the next chat turn) only
runs the new tokens. The model's own methods run on its default `Session`, which generates for
one caller at a time (others wait; blocking=False raises SessionBusy); `model.session()` gives a
conversation its own KV cache over the same weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.formats import LowbitReader
from lowbit.runtime.generate import GenerationResponse
from lowbit.runtime.kv_cache import KVCache, check_kind
from lowbit.runtime.model import Transformer
from lowbit.runtime.sampling import SamplingParams
from lowbit.runtime.session import Session
from lowbit.runtime.threads import resolve_threads
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
        self, path: str | os.PathLike, threads: int | None = None, context_length: int | None = None,
        kv_cache: str | None = None,
    ) -> None:
        self.kv_cache = check_kind(kv_cache)  # before the file is opened
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
        self._compute = threading.Lock()  # one forward pass at a time over the shared weights
        self._session = Session(self, self.context_length)
        self.generation_defaults: dict[str, Any] = check_generation(meta.get("generation", {}))

    # -- sessions ----------------------------------------------------------------------------
    def session(self, context_length: int | None = None) -> Session:
        """A new conversation with its own KV cache over these weights (no weight is copied)."""
        return Session(self, context_length)

    @property
    def cache(self) -> KVCache:
        return self._session.cache

    # -- low level (the model's own session) ------------------------------------------------
    def reset(self) -> None:
        self._session.reset()

    def prefill(self, ids: Sequence[int], chunk: int = 512) -> np.ndarray:
        """Run a prompt, reusing the cached prefix it shares with the last one; last logits."""
        return self._session.prefill(ids, chunk)

    def decode(self, token: int) -> np.ndarray:
        """One token through the KV cache; returns its logits [vocab]."""
        return self._session.decode(token)

    def logits(self, ids: Sequence[int], first: int = 0) -> np.ndarray:
        """Logits [T - first, vocab] of positions first.. of ids, from an empty cache. Scoring
        only some positions (perplexity scores each window's second half) skips the output
        layer's work on the rest: with a 262k vocabulary it is most of a forward."""
        return self._session.logits(ids, first)

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

    def stream_generate(
        self, prompt: str | Sequence[int], blocking: bool = True, **kwargs: Any
    ) -> Iterator[GenerationResponse]:
        """GenerationResponse items. The model generates for one caller at a time: another
        thread waits (blocking=False: SessionBusy), and a second unfinished generator in the same
        thread is refused; `session()` gives each conversation its own cache instead."""
        return self._session.stream_generate(prompt, blocking=blocking, **kwargs)

    def stream(self, prompt: str | Sequence[int], blocking: bool = True, **kwargs: Any) -> Iterator[str]:
        """Yield the completion's text piece by piece."""
        return self._session.stream(prompt, blocking=blocking, **kwargs)

    def generate(
        self, prompt: str | Sequence[int], max_tokens: int = 256, stream: bool = False,
        blocking: bool = True, **kwargs: Any,
    ) -> str | Iterator[str]:
        """The completion (stream=True: an iterator of its text pieces)."""
        return self._session.generate(prompt, max_tokens=max_tokens, stream=stream, blocking=blocking, **kwargs)

    def chat(
        self, messages: list[dict[str, str]], stream: bool = False, max_tokens: int = 512,
        blocking: bool = True, **kwargs: Any,
    ) -> str | Iterator[str]:
        """Answer the conversation: the chat template with add_generation_prompt, then generate."""
        return self._session.chat(messages, stream=stream, max_tokens=max_tokens, blocking=blocking, **kwargs)

    def close(self) -> None:
        self.model = None
        self.reader.close()

    def __repr__(self) -> str:
        return (f"LanguageModel({str(self.path)!r}, threads={self.threads}, context_length={self.context_length}, "
                f"kv_cache={self.kv_cache!r})")


def load(path: str | os.PathLike, threads: int | None = None, context_length: int | None = None,
         kv_cache: str | None = None) -> LanguageModel:
    """Memory-map a .lowbit file and build the model (weights stay packed and mapped); kv_cache:
    the KV cache's stored form, f32, f16 or q8 (None: kv_cache.DEFAULT_KIND)."""
    return LanguageModel(path, threads=threads, context_length=context_length, kv_cache=kv_cache)
