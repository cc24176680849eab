"""The server's scheduler: continuous batching over one loaded model, on one worker thread.

Every step runs one `Transformer.forward_batch` over all requests in flight: each decoding
request contributes its last token, each new request a chunk of its prompt (at most
`prefill_chunk` prompt tokens per step in all, so the streams already running never stall for a
whole prompt). A request joins at the next step after it arrives and leaves the step it ends.
Since the batched forward gives every token exactly the bits it would get alone, a request's
output does not depend on what it was batched with.

Each request gets its own KVCache. Finished caches stay as a small pool for prefix reuse: a new
request takes the idle cache sharing the longest prefix with its prompt (the same system prompt,
the previous turn of its chat) and runs only the rest. Only positions that were run as prompt
tokens are reused (a previous answer's tokens run again, as prompt): their bits depend on the
tokens alone, so reuse never changes an answer either. Caches are counted against a KV memory
budget by the positions they have touched; idle ones are dropped (oldest first) to make room.
Past `parallel` requests in flight and `max_queue` waiting, `submit` raises QueueFull (the app
answers 429).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowbit.eval.perplexity import log_softmax
from lowbit.runtime.generate import TokenStream
from lowbit.runtime.kv_cache import DEFAULT_KIND, KVCache, Segment
from lowbit.runtime.sampling import SamplingParams
from lowbit.runtime.threads import set_threads
from lowbit.serve.json_prefix import JsonConstraint, TokenTexts

log = logging.getLogger("lowbit.serve")


class QueueFull(Exception):
    """Too many requests are waiting."""


@dataclass
class Job:
    """One request: its prompt and options in, its events out (to the asyncio side)."""

    prompt_ids: list[int]
    params: SamplingParams
    json_mode: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # engine-side state
    cache: KVCache | None = None
    pos: int = 0  # prompt tokens already in the cache
    stream: TokenStream | None = None
    constraint: JsonConstraint | None = None
    last: int = -1

    def emit(self, event: tuple) -> None:
        if self.loop is not None and self.events is not None:
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown)
                self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """Owns the worker thread, the queue, the requests in flight and the cache pool."""

    def __init__(
        self, llm: Any, parallel: int = 4, max_queue: int = 64, kv_budget: int | None = None,
        prefill_chunk: int = 64, context_length: int | None = None,
    ) -> None:
        self.llm = llm
        self.model = llm.model
        self.parallel = parallel
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.context_length = context_length or llm.context_length
        self.kv_kind = getattr(llm, "kv_cache", None) or DEFAULT_KIND  # each request's cache has the model's type
        self.token_bytes = KVCache.bytes_per_token(llm.args, self.kv_kind)
        self.kv_budget = kv_budget or parallel * self.context_length * self.token_bytes
        if self.kv_budget < self.context_length * self.token_bytes:
            raise ValueError("the KV budget must hold at least one full context")
        self.pending: deque[Job] = deque()
        self.active: list[Job] = []
        self.idle: list[KVCache] = []  # finished caches, oldest first
        self._high: dict[int, int] = {}  # id(cache) -> positions touched
        self._cond = threading.Condition()
        self._stop = False
        self._texts: TokenTexts | None = None
        self.steps = 0
        self.tokens_out = 0
        self.prompt_tokens = 0
        self.reused_tokens = 0  # prompt tokens not run again thanks to a cached prefix
        self._thread = threading.Thread(target=self._loop, name="lowbit-engine", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            # room: `max_queue` waiting beyond `parallel` in flight, however far the engine has got
            # in moving waiting requests into free slots
            room = self.max_queue + max(0, self.parallel - len(self.active))
            if len(self.pending) >= room:  # clients that left do not hold a place
                self.pending = deque(j for j in self.pending if not j.cancelled.is_set())
            if len(self.pending) >= room:
                raise QueueFull
            self.pending.append(job)
            self._cond.notify()

    def token_texts(self) -> TokenTexts:
        if self._texts is None:
            self._texts = TokenTexts(self.llm.tokenizer, self.llm.args.vocab_size)
        return self._texts

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "active": len(self.active), "queued": len(self.pending), "idle_caches": len(self.idle),
                "kv_bytes": self._kv_used(), "kv_budget": self.kv_budget, "steps": self.steps,
                "tokens_generated": self.tokens_out, "prompt_tokens": self.prompt_tokens,
                "prompt_tokens_reused": self.reused_tokens,
            }

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(10)

    # -- memory -----------------------------------------------------------------------------
    def _kv_used(self) -> int:
        return sum(self._high.values()) * self.token_bytes

    def _reserved(self, job: Job) -> int:
        return len(job.prompt_ids) + job.stream.max_tokens if job.stream else self.context_length

    def _take_cache(self, job: Job) -> KVCache | None:
        """The idle cache sharing the longest prefix with the prompt, else a new one if the
        budget allows (dropping idle caches, oldest first); None: wait for a request to end."""
        best = max(self.idle, key=lambda c: c.reusable(job.prompt_ids, prompt_only=True), default=None)
        if best is not None and best.reusable(job.prompt_ids, prompt_only=True) > 0:
            self.idle.remove(best)
            return best
        reserved = sum(self._reserved(j) for j in self.active) + self._reserved(job)
        while self.idle and (reserved + self._idle_positions()) * self.token_bytes > self.kv_budget:
            self._drop(self.idle.pop(0))
        if (reserved + self._idle_positions()) * self.token_bytes > self.kv_budget and self.active:
            return None
        c = KVCache(self.llm.args, self.context_length, self.kv_kind)
        self._high[id(c)] = 0
        return c

    def _idle_positions(self) -> int:
        return sum(self._high.get(id(c), 0) for c in self.idle)

    def _drop(self, cache: KVCache) -> None:
        self._high.pop(id(cache), None)

    def _release(self, job: Job) -> None:
        c, job.cache = job.cache, None
        if c is None:
            return
        self._high[id(c)] = max(self._high.get(id(c), 0), c.length)
        if len(c.ids) != c.length:  # a half-written step: nothing reusable
            c.reset()
        self.idle.append(c)
        while len(self.idle) > self.parallel:
            self._drop(self.idle.pop(0))

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        set_threads(self.llm.threads)
        while True:
            with self._cond:
                while not self._stop and not self.pending and not self.active:
                    self._cond.wait()
                if self._stop:
                    for j in [*self.active, *self.pending]:
                        j.emit(("error", "server shutting down"))
                    return
                self._admit()
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - one bad step fails its requests, not the server
                log.exception("engine step failed")
                with self._cond:
                    for j in self.active:
                        j.emit(("error", f"internal error: {e}"))
                        self._release(j)
                    self.active = []

    def _admit(self) -> None:
        while self.pending and len(self.active) < self.parallel:
            job = self.pending[0]
            if job.cancelled.is_set():
                self.pending.popleft()
                continue
            if job.stream is None:
                room = self.context_length - len(job.prompt_ids)
                job.stream = TokenStream(self.llm.tokenizer, job.params, job.prompt_ids, room)
                if job.json_mode:
                    job.constraint = JsonConstraint(
                        self.token_texts(), sorted(self.llm.tokenizer.eos_token_ids),
                        lambda s: self.llm.tokenizer.encode(s, add_special_tokens=False),
                    )
            cache = self._take_cache(job)
            if cache is None:
                return
            self.pending.popleft()
            job.cache = cache
            job.pos = cache.reuse(job.prompt_ids, prompt_only=True)
            self.prompt_tokens += len(job.prompt_ids)
            self.reused_tokens += job.pos
            self.active.append(job)

    def _step(self) -> None:
        with self._cond:
            for j in [j for j in self.active if j.cancelled.is_set()]:
                self.active.remove(j)
                self._release(j)
            jobs = list(self.active)
        if not jobs:
            return
        segments, budget = [], self.prefill_chunk
        for j in jobs:
            if j.pos < len(j.prompt_ids):
                n = max(1, min(len(j.prompt_ids) - j.pos, budget))
                budget -= n
                segments.append(Segment(j.cache, j.prompt_ids[j.pos : j.pos + n], j.cache.length, prompt=True))
            else:
                segments.append(Segment(j.cache, [j.last], j.cache.length))
        with self.llm._compute:
            logits = self.model.forward_batch(segments)
        self.steps += 1
        finished = []
        for j, seg, row in zip(jobs, segments, logits):
            if j.pos < len(j.prompt_ids):
                j.pos += len(seg.ids)
                if j.pos < len(j.prompt_ids):
                    continue  # more prompt to run
            try:
                done = self._advance(j, row)
            except Exception as e:  # noqa: BLE001 - fails this request only
                log.exception("request failed")
                j.emit(("error", f"internal error: {e}"))
                done = True
            if done:
                finished.append(j)
        if finished:
            with self._cond:
                for j in finished:
                    if j in self.active:
                        self.active.remove(j)
                    self._release(j)

    def _advance(self, j: Job, logits: np.ndarray) -> bool:
        """Choose, record and emit one token; True when the request is finished."""
        s = j.stream
        if j.constraint is not None:
            c = j.constraint
            token = c.choose(logits, s.sampler, s.history, left=s.max_tokens - len(s.generated) - 1)
            c.push(token)
        else:
            token = s.choose(logits)
        piece = s.push(token)
        if j.constraint is not None and j.constraint.state.complete and s.finish != "stop":
            if s.finish is None:  # the object is closed: nothing else may follow
                s.detok.finalize()
                rest = s.detok.text[len(s.text_out):]
                s.text_out += rest
                piece += rest
            s.finish = "stop"
        j.last = token
        self.tokens_out += 1
        info = _logprobs(logits, token, j.top_logprobs) if j.logprobs else None
        eos = token in self.llm.tokenizer.eos_token_ids
        j.emit(("token", piece, token, info, eos))
        if s.finish is not None:
            n_out = len(s.generated) - (1 if eos else 0)
            j.emit(("done", s.finish, len(j.prompt_ids), n_out))
            return True
        return False


def _logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log-softmax of the raw logits: the chosen token's value and the `top` best (id, value)."""
    lp = log_softmax(np.asarray(logits).reshape(-1))
    best: list[tuple[int, float]] = []
    if top:
        ids = np.argpartition(-lp, top - 1)[:top]
        ids = ids[np.lexsort((ids, -lp[ids]))]
        best = [(int(i), float(lp[i])) for i in ids]
    return float(lp[token]), best
