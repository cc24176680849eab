"""The ASGI app: OpenAI's /v1 endpoints over one Engine, a health check and the chat page.

Starlette (what FastAPI is built on) is used directly: the request bodies are checked by
`schema.parse`, which answers in OpenAI's error shape, so FastAPI's pydantic layer (whose
validation errors are 422s in another shape) would only be in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lowbit.errors import LowbitError
from lowbit.runtime.kv_cache import KVCache
from lowbit.serve.engine import Engine, Job, QueueFull
from lowbit.serve.schema import ApiError, Parsed, parse
from lowbit.serve.token_bytes import token_bytes

OPENAI_DEFAULTS = {"temperature": 1.0}  # when neither the request nor the model's config sets them
POLL_S = 0.25  # how often a waiting handler checks that its client is still there


class _Auth:
    """Pure ASGI middleware: `Authorization: Bearer KEY` on everything but /health and the page."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app, self.key = app, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.key and scope["type"] == "http" and scope["path"] not in ("/health", "/"):
            headers = dict(scope.get("headers") or [])
            got = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.key}".encode()):
                err = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(e: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def load_model(model_or_path: Any, threads: int | None = None, context_length: int | None = None,
               method: str = "q4") -> Any:
    """A LanguageModel as it is, or MODEL as everywhere (a .lowbit file or anything `convert`
    accepts), loaded with its kernels warm."""
    if hasattr(model_or_path, "tokenizer") and hasattr(model_or_path, "model"):
        return model_or_path
    from lowbit.model_cache import load
    from lowbit.runtime.warmup import warm_up_kernels

    llm = load(model_or_path, threads=threads, context_length=context_length, method=method)
    warm_up_kernels(llm)
    return llm


def create_app(
    model_or_path: Any,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    parallel: int = 4,
    max_queue: int = 64,
    kv_budget_mb: float | None = None,
    prefill_chunk: int = 64,
    threads: int | None = None,
    context_length: int | None = None,
    method: str = "q4",
) -> Starlette:
    """The OpenAI-compatible ASGI app for one model (a LanguageModel or MODEL as the CLI takes it).

    parallel: requests decoded together; max_queue: requests waiting beyond those (then 429);
    kv_budget_mb: KV cache memory for all requests (default: `parallel` full contexts)."""
    llm = load_model(model_or_path, threads, context_length, method)
    name = model_name or Path(str(llm.path)).stem
    budget = int(kv_budget_mb * 2**20) if kv_budget_mb else None
    one = llm.context_length * KVCache.bytes_per_token(llm.args, getattr(llm, "kv_cache", None))
    if budget is not None and budget < one:
        raise LowbitError(f"--kv-memory {kv_budget_mb:g} MiB is less than one request's full context "
                          f"({one / 2**20:.1f} MiB at {llm.context_length} tokens); raise it or lower --ctx")
    engine = Engine(llm, parallel=parallel, max_queue=max_queue, kv_budget=budget, prefill_chunk=prefill_chunk)
    created = int(time.time())
    defaults = {k: v for k, v in (llm.generation_defaults or {}).items()
                if k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty") and v is not None}
    if not (llm.generation_defaults or {}).get("do_sample", True):
        defaults = {"temperature": 0.0}
    page = resources.files("lowbit.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "lowbit",
                "context_length": llm.context_length}

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": name, **engine.stats()})

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def one_model(request: Request) -> Response:
        if request.path_params["name"] != name:
            return _error(ApiError(404, f"model {request.path_params['name']!r} not found", param="model",
                                   code="model_not_found"))
        return JSONResponse(model_card())

    async def chat(request: Request) -> Response:
        return await complete(request, chat=True)

    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    def prompt_ids(p: Parsed) -> list[int]:
        tok = llm.tokenizer
        if p.messages is not None:
            try:
                ids = tok.encode_chat(p.messages, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001 - a template that refuses these messages
                raise ApiError(400, f"messages: the chat template failed: {e}", param="messages") from None
            where = "messages"
        elif isinstance(p.prompt, str):
            ids, where = tok.encode(p.prompt), "prompt"
        else:
            ids, where = list(p.prompt), "prompt"
            if any(not 0 <= t < llm.args.vocab_size for t in ids):
                raise ApiError(400, f"prompt: token ids must be in [0, {llm.args.vocab_size})", param="prompt")
        if not ids:
            raise ApiError(400, f"{where}: the prompt is empty", param=where)
        room = llm.context_length - len(ids)
        if room <= 0 or (p.max_tokens or 1) > room:
            raise ApiError(400, f"{where}: {len(ids)} prompt tokens + {p.max_tokens or 1} to generate exceed "
                                f"the context of {llm.context_length} tokens", param=where,
                           code="context_length_exceeded")
        return ids

    async def complete(request: Request, chat: bool) -> Response:
        try:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(400, "the request body is not valid JSON") from None
            p = parse(body, chat, llm.context_length)
            if p.model is not None and p.model != name:
                raise ApiError(404, f"model {p.model!r} not found (this server serves {name!r})", param="model",
                               code="model_not_found")
            ids = prompt_ids(p)
            budget = p.max_tokens if p.max_tokens is not None else llm.context_length - len(ids)  # OpenAI: the rest
            sampling = {**OPENAI_DEFAULTS, **defaults, **p.sampling, "max_tokens": budget}
            params = llm.sampling_params(**sampling)
        except ApiError as e:
            return _error(e)
        except ValueError as e:  # SamplingParams' own range checks
            return _error(ApiError(400, str(e)))
        job = Job(ids, params, json_mode=p.json_mode, logprobs=p.logprobs, top_logprobs=p.top_logprobs,
                  loop=asyncio.get_running_loop(), events=asyncio.Queue())
        try:
            engine.submit(job)
        except QueueFull:
            return _error(ApiError(429, "too many requests in flight; retry shortly", type="rate_limit_error",
                                   code="rate_limit_exceeded"), headers={"Retry-After": "1"})
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if p.stream:
            return StreamingResponse(_stream(request, job, p, rid, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(request, job, p, rid, chat)

    async def _events(request: Request, job: Job) -> AsyncIterator[tuple]:
        """The job's events until 'done'; cancels the job if the client goes away."""
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(job.events.get(), POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                yield ev
                if ev[0] in ("done", "error"):
                    return
        finally:
            job.cancel()  # a no-op once done; stops the generation of a client that left

    def logprob_entry(token: int, info: tuple) -> dict[str, Any]:
        lp, top = info
        tok = llm.tokenizer
        return {"token": tok.decode([token]), "logprob": lp, "bytes": list(token_bytes(tok, token)),
                "top_logprobs": [{"token": tok.decode([i]), "logprob": v, "bytes": list(token_bytes(tok, i))}
                                 for i, v in top]}

    def usage(n_prompt: int, n_out: int) -> dict[str, int]:
        return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}

    def legacy_logprobs(entries: list[dict], offset0: int = 0) -> dict[str, Any]:
        offsets, at = [], offset0
        for e in entries:
            offsets.append(at)
            at += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offsets}

    async def _whole(request: Request, job: Job, p: Parsed, rid: str, chat: bool) -> Response:
        text, entries, finish, n_prompt, n_out = [], [], None, len(job.prompt_ids), 0
        async for ev in _events(request, job):
            if ev[0] == "token":
                _, piece, token, info, eos = ev
                text.append(piece)
                if info is not None and not eos:
                    entries.append(logprob_entry(token, info))
            elif ev[0] == "done":
                _, finish, n_prompt, n_out = ev
            else:
                return _error(ApiError(500, ev[1], type="server_error"))
        if finish is None:  # the client left
            return Response(status_code=499)
        out = "".join(text)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out},
                      "logprobs": {"content": entries} if p.logprobs else None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": out, "logprobs": legacy_logprobs(entries) if p.logprobs else None,
                      "finish_reason": finish}
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": name, "choices": [choice],
                             "usage": usage(n_prompt, n_out), "system_fingerprint": None})

    async def _stream(request: Request, job: Job, p: Parsed, rid: str, chat: bool) -> AsyncIterator[str]:
        created_at = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        extra = {"usage": None} if p.include_usage else {}

        def chunk(choice: dict | None, **more: Any) -> str:
            body = {"id": rid, "object": kind, "created": created_at, "model": name,
                    "choices": [choice] if choice is not None else [], "system_fingerprint": None, **extra, **more}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        if chat:
            yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None})
        offset = 0
        async for ev in _events(request, job):
            if ev[0] == "token":
                _, piece, token, info, eos = ev
                entry = logprob_entry(token, info) if info is not None and not eos else None
                if not piece and entry is None:
                    continue
                if chat:
                    yield chunk({"index": 0, "delta": {"content": piece},
                                 "logprobs": {"content": [entry]} if entry else None, "finish_reason": None})
                else:
                    yield chunk({"index": 0, "text": piece,
                                 "logprobs": legacy_logprobs([entry], offset) if entry else None,
                                 "finish_reason": None})
                offset += len(piece)
            elif ev[0] == "done":
                _, finish, n_prompt, n_out = ev
                if chat:
                    yield chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish})
                else:
                    yield chunk({"index": 0, "text": "", "logprobs": None, "finish_reason": finish})
                if p.include_usage:
                    extra.pop("usage", None)
                    yield chunk(None, usage=usage(n_prompt, n_out))
                yield "data: [DONE]\n\n"
            else:
                err = ApiError(500, ev[1], type="server_error").body()
                yield f"data: {json.dumps(err)}\n\n"
                return

    async def not_found(request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        message = f"no route {request.method} {request.url.path}" if status in (404, 405) else str(exc.detail)
        return _error(ApiError(status, message, code="not_found" if status == 404 else None))

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/models/{name:path}", one_model),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        engine.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found},
                    middleware=[Middleware(_Auth, api_key=api_key)], lifespan=lifespan)
    app.state.engine = engine
    app.state.llm = llm
    app.state.model_name = name
    return app
