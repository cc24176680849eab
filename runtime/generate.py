"""Token generation: prefill, then decode one token at a time, streaming text as it settles."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lowbit.runtime.detokenizer import StreamingDetokenizer
from lowbit.runtime.sampling import SamplingParams, make_sampler
from lowbit.runtime.stopping import StopChecker

if TYPE_CHECKING:
    from lowbit.runtime.llm import LanguageModel


@dataclass
class GenerationResponse:
    """One streamed step: the newly settled text and running statistics."""

    text: str
    token: int | None
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    time_to_first_token: float
    finish_reason: str | None = None  # "stop" (EOS or stop string), "length", or None while running


class TokenStream:
    """One sequence's choices after its prompt: sample a token from each step's logits, turn the
    tokens into settled text, stop at EOS, a stop string or max_tokens. The model is driven by
    the caller (`stream_generate` one sequence at a time, the server many in one batch)."""

    def __init__(self, tokenizer: Any, params: SamplingParams, prompt_ids: Sequence[int], room: int) -> None:
        self.sampler = make_sampler(params)
        self.tokenizer = tokenizer
        self.stop = StopChecker(params.stop or [], tokenizer.eos_token_ids)
        self.detok = StreamingDetokenizer(tokenizer)
        max_tokens = params.max_tokens if params.max_tokens is not None else 256
        self.max_tokens = min(max_tokens, room)
        self.history = list(prompt_ids)
        self.generated: list[int] = []
        self.text_out = ""  # text already handed out
        self.finish: str | None = None

    def choose(self, logits: np.ndarray) -> int:
        return int(self.sampler(logits, self.history))

    def push(self, token: int) -> str:
        """Take the next token; returns the newly settled text (sets self.finish at the end)."""
        self.generated.append(token)
        self.history.append(token)
        if self.stop.is_eos(token):
            self.finish = "stop"
        else:
            self.detok.add_token(token)
        full = self.detok.text
        cut, hold = self.stop.check(full)
        if cut is not None:
            full, self.finish = full[:cut], "stop"
        elif self.finish is None and len(self.generated) >= self.max_tokens:
            self.finish = "length"
        if self.finish is not None:
            self.detok.finalize()
            full = self.detok.text if cut is None else full
            piece = full[len(self.text_out):]
        else:
            safe = len(full) - hold
            piece = full[len(self.text_out):safe] if safe > len(self.text_out) else ""
        self.text_out += piece
        return piece


def check_prompt(prompt_ids: Sequence[int], context_length: int) -> int:
    """The room left for generated tokens; raises ValueError for an empty or too long prompt."""
    if not prompt_ids:
        raise ValueError("empty prompt")
    room = context_length - len(prompt_ids)
    if room <= 0:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {context_length}")
    return room


def stream_generate(
    model: LanguageModel,
    prompt_ids: Sequence[int],
    params: SamplingParams | None = None,
    prefill_chunk: int = 512,
) -> Iterator[GenerationResponse]:
    """Yield GenerationResponse items; the last one carries finish_reason."""
    params = params or SamplingParams()
    prompt_ids = list(prompt_ids)
    room = check_prompt(prompt_ids, model.context_length)
    seq = TokenStream(model.tokenizer, params, prompt_ids, room)

    t0 = time.perf_counter()
    logits = model.prefill(prompt_ids, chunk=prefill_chunk)
    t_first = time.perf_counter()
    prompt_tps = len(prompt_ids) / max(t_first - t0, 1e-9)
    t_decode = t_first
    while True:
        token = seq.choose(logits)
        piece = seq.push(token)
        n = len(seq.generated)
        elapsed = time.perf_counter() - t_decode
        yield GenerationResponse(
            text=piece,
            token=token,
            prompt_tokens=len(prompt_ids),
            generation_tokens=n,
            prompt_tps=prompt_tps,
            generation_tps=(n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0,
            time_to_first_token=t_first - t0,
            finish_reason=seq.finish,
        )
        if seq.finish is not None:
            return
        if n == 1:
            t_decode = time.perf_counter()
        logits = model.decode(token)
