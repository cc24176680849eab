"""Session: one conversation's KV cache over a LanguageModel's shared, read-only weights.

Each session generates one thing at a time. A generation holds the session from the moment it is
created until it finishes or is closed: a second caller from another thread waits for it (or,
with blocking=False, gets SessionBusy at once), and a second generation started from the same
thread while the first is unfinished (two interleaved `stream()` generators) is refused with
SessionBusy instead of silently mixing their tokens in one cache. Two sessions are independent:
their forward passes take turns on the model's compute lock, one step at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lowbit.runtime.errors import LowbitError
from lowbit.runtime.generate import GenerationResponse, stream_generate
from lowbit.runtime.kv_cache import KVCache
from lowbit.runtime.threads import set_threads
from lowbit.runtime.validate import check_context

if TYPE_CHECKING:
    from lowbit.runtime.llm import LanguageModel


class SessionBusy(LowbitError, RuntimeError):
    """The session is generating for another caller (or an unfinished generator)."""


class Session:
    """Own KV cache (and prefix reuse) over the weights of `model`; see the module docstring."""

    def __init__(self, model: LanguageModel, context_length: int | None = None) -> None:
        self.model = model
        if context_length is not None:
            check_context(model.args, context_length)
        self.context_length = min(context_length or model.context_length, model.args.max_position_embeddings)
        self.cache = KVCache(model.args, self.context_length, model.kv_cache)
        self._lock = threading.Lock()
        self._owner: int | None = None

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    # -- ownership -------------------------------------------------------------------------
    def _acquire(self, blocking: bool) -> None:
        if self._owner == threading.get_ident():
            raise SessionBusy(
                "this session is already generating in this thread (an unfinished generator): "
                "exhaust or close() it first, or use model.session() for a second conversation"
            )
        if not self._lock.acquire(blocking=blocking):
            raise SessionBusy("the model is generating for another caller (blocking=False)")
        self._owner = threading.get_ident()

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    def _held(self, blocking: bool = True) -> _Held:
        return _Held(self, blocking)

    # -- low level (each call takes the session for its duration) ----------------------------
    def reset(self) -> None:
        with self._held():
            self.cache.reset()

    def _forward(self, ids: Sequence[int], first: int | None = None) -> np.ndarray:
        lm = self.model
        with lm._compute:
            set_threads(lm.threads)
            return lm.model.forward(np.asarray(ids, dtype=np.int64), self.cache, first)

    def _prefill(self, ids: Sequence[int], chunk: int = 512) -> np.ndarray:
        ids = [int(i) for i in ids]
        start = self.cache.reuse(ids)
        logits = None
        for s in range(start, len(ids), chunk):
            logits = self._forward(ids[s : s + chunk])
        return logits[-1]

    def _decode(self, token: int) -> np.ndarray:
        return self._forward([int(token)])[-1]

    def prefill(self, ids: Sequence[int], chunk: int = 512) -> np.ndarray:
        """Run a prompt, reusing the cached prefix it shares with what the cache holds; last logits."""
        with self._held():
            return self._prefill(ids, chunk)

    def decode(self, token: int) -> np.ndarray:
        """One token through the KV cache; returns its logits [vocab]."""
        with self._held():
            return self._decode(token)

    def logits(self, ids: Sequence[int], first: int = 0) -> np.ndarray:
        """Logits [T - first, vocab] of positions first.. of ids, from an empty cache."""
        if not 0 <= first < max(len(ids), 1):
            raise ValueError(f"first={first} is not a position of the {len(ids)} ids")
        with self._held():
            self.cache.reset()
            return self._forward(list(ids), first)

    # -- text ------------------------------------------------------------------------------
    def stream_generate(
        self, prompt: str | Sequence[int], blocking: bool = True, **kwargs: Any
    ) -> Iterator[GenerationResponse]:
        """GenerationResponse items; the session is taken now and released when the iterator
        finishes, is closed, or is dropped."""
        ids = self.model.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        params = self.model.sampling_params(**kwargs)
        self._acquire(blocking)
        try:
            inner = stream_generate(_Runner(self), ids, params)
        except BaseException:
            self._release()
            raise
        return _Generation(self, inner)

    def stream(self, prompt: str | Sequence[int], blocking: bool = True, **kwargs: Any) -> Iterator[str]:
        """The completion's text piece by piece."""
        responses = self.stream_generate(prompt, blocking=blocking, **kwargs)
        return _Generation(None, (r.text for r in responses if r.text), responses)

    def generate(
        self, prompt: str | Sequence[int], max_tokens: int = 256, stream: bool = False,
        blocking: bool = True, **kwargs: Any,
    ) -> str | Iterator[str]:
        pieces = self.stream(prompt, blocking=blocking, max_tokens=max_tokens, **kwargs)
        return pieces if stream else "".join(pieces)

    def chat(
        self, messages: list[dict[str, str]], stream: bool = False, max_tokens: int = 512,
        blocking: bool = True, **kwargs: Any,
    ) -> str | Iterator[str]:
        """Answer the conversation: the chat template with add_generation_prompt, then generate."""
        ids = self.tokenizer.encode_chat(messages, add_generation_prompt=True)
        return self.generate(ids, max_tokens=max_tokens, stream=stream, blocking=blocking, **kwargs)


class _Runner:
    """What `generate.stream_generate` drives: the session's steps without re-taking it."""

    def __init__(self, session: Session) -> None:
        self.tokenizer = session.tokenizer
        self.context_length = session.context_length
        self.prefill = session._prefill
        self.decode = session._decode


class _Held:
    def __init__(self, session: Session, blocking: bool) -> None:
        self.session, self.blocking = session, blocking

    def __enter__(self) -> None:
        self.session._acquire(self.blocking)

    def __exit__(self, *exc: object) -> None:
        self.session._release()


class _Generation(Iterator):
    """An iterator that gives its session back when exhausted, closed or garbage-collected."""

    def __init__(self, session: Session | None, inner: Iterator, owner: Any = None) -> None:
        self._session = session
        self._inner = inner
        self._owner = owner  # an inner _Generation to close with this one
        self._open = True

    def __next__(self) -> Any:
        if not self._open:
            raise StopIteration
        try:
            return next(self._inner)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        if self._owner is not None:
            self._owner.close()
        if self._session is not None:
            self._session._release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
