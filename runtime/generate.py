"""Token generation: prefill, then decode one token at a time, streaming text as it settles."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def stream_generate(
    model: LanguageModel,
    prompt_ids: Sequence[int],
    params: SamplingParams | None = None,
    prefill_chunk: int = 512,
) -> Iterator[GenerationResponse]:
    """Yield GenerationResponse items; the last one carries finish_reason."""
    params = params or SamplingParams()
    sampler = make_sampler(params)
    tokenizer = model.tokenizer
    stop = StopChecker(params.stop or [], tokenizer.eos_token_ids)
    detok = StreamingDetokenizer(tokenizer)
    max_tokens = params.max_tokens if params.max_tokens is not None else 256
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise ValueError("empty prompt")
    room = model.context_length - len(prompt_ids)
    if room <= 0:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {model.context_length}")
    max_tokens = min(max_tokens, room)

    t0 = time.perf_counter()
    logits = model.prefill(prompt_ids, chunk=prefill_chunk)
    t_first = time.perf_counter()
    prompt_tps = len(prompt_ids) / max(t_first - t0, 1e-9)
    history = list(prompt_ids)
    generated: list[int] = []
    text_out = ""  # text already yielded
    finish = None
    t_decode = t_first
    while True:
        token = int(sampler(logits, history))
        generated.append(token)
        history.append(token)
        if token in tokenizer.eos_token_ids:
            finish = "stop"
        else:
            detok.add_token(token)
        full = detok.text
        cut, hold = stop.check(full)
        if cut is not None:
            full, finish = full[:cut], "stop"
        elif finish is None and len(generated) >= max_tokens:
            finish = "length"
        if finish is not None:
            detok.finalize()
            full = detok.text if cut is None else full
            piece = full[len(text_out):]
        else:
            safe = len(full) - hold
            piece = full[len(text_out):safe] if safe > len(text_out) else ""
        text_out += piece
        elapsed = time.perf_counter() - t_decode
        yield GenerationResponse(
            text=piece,
            token=token,
            prompt_tokens=len(prompt_ids),
            generation_tokens=len(generated),
            prompt_tps=prompt_tps,
            generation_tps=(len(generated) - 1) / elapsed if len(generated) > 1 and elapsed > 0 else 0.0,
            time_to_first_token=t_first - t0,
            finish_reason=finish,
        )
        if finish is not None:
            return
        if len(generated) == 1:
            t_decode = time.perf_counter()
        logits = model.decode(token)


def greedy_tokens(model: LanguageModel, prompt_ids: Sequence[int], n: int) -> list[int]:
    """n greedy tokens after prompt_ids (no detokenisation): for tests and benchmarks."""
    logits = model.prefill(list(prompt_ids))
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = model.decode(tok)
    return out
