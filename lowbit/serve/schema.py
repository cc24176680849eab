"""Request bodies of /v1/chat/completions and /v1/completions, checked field by field.

OpenAI's rules: unknown fields are ignored; a known field of the wrong type or out of range is
HTTP 400 with an error object naming it (`param`). The result is a `Parsed` with the prompt ids
left to the app (they need the tokenizer) and ready SamplingParams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    """An error answered with OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


@dataclass
class Parsed:
    model: str | None
    messages: list[dict[str, str]] | None = None
    prompt: str | list[int] | None = None
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    json_mode: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)


def _number(body: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad(name, f"expected a number, got {type(v).__name__}")
    if v != v or (v <= lo if lo_open else v < lo) or v > hi:
        left = "(" if lo_open else "["
        raise bad(name, f"{v} is out of range {left}{lo}, {hi}]")
    return float(v)


def _integer(body: dict, name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise bad(name, f"expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise bad(name, f"{v} is out of range [{lo}, {hi}]")
    return v


def _boolean(body: dict, name: str) -> bool | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise bad(name, f"expected a boolean, got {type(v).__name__}")
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        if len(v) > 16:
            raise bad("stop", f"at most 16 stop strings, got {len(v)}")
        return list(v)
    raise bad("stop", "expected a string or a list of strings")


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: only text is understood
        out = []
        for k, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{i}].content[{k}]", "only text content parts are supported")
            out.append(part["text"])
        return "".join(out)
    raise bad(f"messages[{i}].content", "expected a string or a list of text parts")


ROLES = {"system", "developer", "user", "assistant", "tool"}


def parse(body: Any, chat: bool, context_length: int) -> Parsed:
    """Check a request body; raises ApiError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "expected a string")
    p = Parsed(model=model)
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise bad("messages", "expected a non-empty list of messages")
        p.messages = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise bad(f"messages[{i}]", "expected an object")
            role = m.get("role")
            if role not in ROLES:
                raise bad(f"messages[{i}].role", f"expected one of {', '.join(sorted(ROLES))}")
            p.messages.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise bad("prompt", "must not be empty")
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            pass
        else:
            raise bad("prompt", "expected a non-empty string or list of token ids (one prompt per request)")
        p.prompt = prompt
    n = _integer(body, "n", 1, 1)
    del n
    mt = _integer(body, "max_completion_tokens", 1, context_length)
    mt2 = _integer(body, "max_tokens", 1, context_length)
    p.max_tokens = mt if mt is not None else mt2
    p.stream = bool(_boolean(body, "stream"))
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise bad("stream_options", "expected an object")
        p.include_usage = bool(_boolean(so, "include_usage"))
    if chat:
        p.logprobs = bool(_boolean(body, "logprobs"))
        tl = _integer(body, "top_logprobs", 0, 20)
        if tl and not p.logprobs:
            raise bad("top_logprobs", "requires logprobs: true")
        p.top_logprobs = tl or 0
    else:
        lp = _integer(body, "logprobs", 0, 20)
        p.logprobs = lp is not None
        p.top_logprobs = lp or 0
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object"):
            raise bad("response_format", 'expected {"type": "text"} or {"type": "json_object"}')
        p.json_mode = rf["type"] == "json_object"
    s: dict[str, Any] = {}
    s["temperature"] = _number(body, "temperature", 0.0, 2.0)
    s["top_p"] = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    s["top_k"] = _integer(body, "top_k", 0, 1 << 30)
    s["min_p"] = _number(body, "min_p", 0.0, 1.0)
    s["presence_penalty"] = _number(body, "presence_penalty", -2.0, 2.0)
    s["frequency_penalty"] = _number(body, "frequency_penalty", -2.0, 2.0)
    s["repetition_penalty"] = _number(body, "repetition_penalty", 0.0, 10.0, lo_open=True)
    s["seed"] = _integer(body, "seed", -(1 << 63), (1 << 64) - 1)
    if s["seed"] is not None and s["seed"] < 0:
        s["seed"] &= (1 << 64) - 1  # numpy seeds are non-negative; keep every int distinct
    s["stop"] = _stop(body)
    p.sampling = {k: v for k, v in s.items() if v is not None}
    return p
