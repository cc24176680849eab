"""Render a model's Jinja2 chat template the way transformers' `apply_chat_template` does.

Chat templates are untrusted code from the model's author, so they run in jinja2's
`ImmutableSandboxedEnvironment`. The environment mirrors transformers (`utils/chat_template_utils.py`)
exactly, because the model was trained on what transformers renders: `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a no-op `{% generation %}` block, `raise_exception`,
`strftime_now`, a `tojson` filter that does not escape HTML or non-ASCII, and the restricted
`dict`/`namespace` globals. Messages are passed as plain JSON data with `None`-valued keys dropped.

A model without a template gets `DEFAULT_CHAT_TEMPLATE` (ChatML, the format transformers used as
its default before 4.43) instead of an error: a plain instruction-tuned model still answers, and
the caller logs that it is guessing.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lowbit.runtime.errors import LowbitError

# ChatML: what transformers rendered for a model without a template up to 4.42.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Bounds on what a template may build (it is a stranger's code): the size of any string or list it
# makes, of any integer, and the time one render may take. A real chat template renders in
# milliseconds into a prompt of a few thousand characters; the limits leave room for long
# conversations (MAX_CHARS grows with the input) and stop `{{ 'a' * 2**33 }}` or a nested loop.
MAX_CHARS = 1 << 22
MAX_INT_BITS = 1 << 14
TIME_LIMIT_S = 5.0
_BIG_WIDTH = re.compile(r"\d{7,}")  # a format width/precision of a million or more

# Names a message's reasoning may come under; templates read the first (transformers aliases them).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(LowbitError, ValueError):
    """The chat template cannot be compiled or rendered for these messages (one-line message)."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; render the body.

    transformers registers this tag, so templates that use it must parse here too.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates without handing them the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's namespace, refusing underscore names (a route to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})"
            )


class _TemplateTimeout(BaseException):
    """Raised inside a render that ran past TIME_LIMIT_S (BaseException: no template code or jinja
    internal `except Exception` may swallow it)."""


class _Limits(threading.local):
    chars = MAX_CHARS


_limits = _Limits()


def _too_big(value: Any) -> bool:
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return len(value) > _limits.chars
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() > MAX_INT_BITS
    return False


def _refuse(what: str) -> None:
    raise jinja2.exceptions.SecurityError(f"the template builds {what}, more than lowbit allows")


def _check_args(args: Sequence[Any], kwargs: Mapping[str, Any], fmt: bool = False) -> None:
    """Sizes that methods and filters allocate from (widths, counts) stay within MAX_CHARS."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > _limits.chars:
            _refuse(f"from a size of {a}")
        if fmt and isinstance(a, str) and _BIG_WIDTH.search(a):
            _refuse("a format with a huge width")


def _checked(value: Any) -> Any:
    if _too_big(value):
        _refuse("a value of " + (f"{len(value)} items" if hasattr(value, "__len__") else "huge size"))
    return value


def _result_size(op: str, a: Any, b: Any) -> None:
    """Refuse before computing a * b, a ** b, a + b or a % b whose result would be too big."""
    seq = (str, list, tuple)
    if op == "*":
        if isinstance(a, int) and isinstance(b, seq):
            a, b = b, a
        if isinstance(a, seq) and isinstance(b, int) and len(a) * max(b, 0) > _limits.chars:
            _refuse(f"a sequence of {len(a)} × {b} items")
        if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS:
            _refuse("an integer too large")
    elif op == "**":
        if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0:
            if b * math.log2(abs(a)) > MAX_INT_BITS:
                _refuse(f"{a} ** {b}")
    elif op == "+":
        if isinstance(a, seq) and isinstance(b, seq) and len(a) + len(b) > _limits.chars:
            _refuse(f"a sequence of {len(a) + len(b)} items")
    elif op == "%":
        if isinstance(a, str) and _BIG_WIDTH.search(a):
            _refuse("a format with a huge width")
        _check_args(b if isinstance(b, tuple) else (b,), {})


class _BoundedCodeGenerator(CodeGenerator):
    """`a ~ b` through the environment's checked join (jinja otherwise joins without a hook)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus size checks on every operator, call and filter that can allocate."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _result_size(operator, left, right)
        return _checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        receiver = getattr(__obj, "__self__", None)
        fmt = isinstance(receiver, str) and getattr(__obj, "__name__", "") in ("format", "format_map")
        _check_args(args, kwargs)
        if fmt and _BIG_WIDTH.search(receiver):
            _refuse("a format with a huge width")
        return _checked(ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        receiver = getattr(value, "__self__", None)
        name = getattr(value, "__name__", "")
        if isinstance(receiver, str) and name in ("format", "format_map") and _BIG_WIDTH.search(receiver):
            def refuse(*args: Any, **kwargs: Any) -> str:
                _refuse("a format with a huge width")
                return ""

            return refuse
        return super().wrap_str_format(value)

    @staticmethod
    def bounded_concat(values: Sequence[Any]) -> str:
        parts = [str(v) for v in values]
        if sum(len(p) for p in parts) > _limits.chars:
            _refuse(f"a string of {sum(len(p) for p in parts)} characters")
        return "".join(parts)


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_args(args, kwargs, fmt=name == "format")
        return _checked(fn(*args, **kwargs))

    return wrapper


def _run_bounded(fn: Callable[[], Any], limit_s: float) -> Any:
    """fn() in this thread, interrupted by _TemplateTimeout if it runs past limit_s (a timer thread
    raises it asynchronously; it is cleared if fn finishes first)."""
    if not hasattr(ctypes, "pythonapi"):  # not CPython: the size bounds still hold
        return fn()
    tid = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}
    set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                set_async(ctypes.c_ulong(tid), ctypes.py_object(_TemplateTimeout))

    timer = threading.Timer(limit_s, fire)
    timer.daemon = True
    timer.start()
    try:
        try:
            return fn()
        finally:
            with lock:
                state["done"] = True
                if state["fired"]:
                    set_async(ctypes.c_ulong(tid), None)  # clear it if not delivered yet
            timer.cancel()
    except _TemplateTimeout:
        raise ChatTemplateError(f"chat template took longer than {limit_s:g} s to render") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """Compile once per template string (a chat session renders the same template every turn)."""
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.filters = {k: _bounded_filter(k, f) for k, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return _run_bounded(lambda: env.from_string(source), TIME_LIMIT_S)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"chat template syntax error at line {e.lineno}: {_one_line(e)}"
        ) from None
    except jinja2.TemplateError as e:  # a sandbox bound hit while folding constants
        raise ChatTemplateError(f"chat template error: {_one_line(e)}") from None
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError) as e:
        raise ChatTemplateError(f"chat template cannot be compiled: {type(e).__name__}") from None


def _plain(value: Any) -> Any:
    """Rebuild the data out of JSON types (the sandbox only knows that those are harmless)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return _plain(item())
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def select_template(
    template: str | Mapping[str, str] | None, tools: Sequence[Any] | None = None
) -> str | None:
    """Pick the template string: a model may ship several by name (`default`, `tool_use`)."""
    if isinstance(template, Mapping):
        if tools is not None and "tool_use" in template:
            return template["tool_use"]
        if "default" in template:
            return template["default"]
        raise ChatTemplateError(
            f"the model has several chat templates ({', '.join(sorted(template))}) and none is named 'default'"
        )
    return template


def render_chat_template(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    continue_final_message: bool | str = False,
    **kwargs: Any,
) -> str:
    """The prompt text for `messages`, as transformers' `apply_chat_template(..., tokenize=False)`.

    `kwargs` (bos_token, eos_token, enable_thinking, ...) become template variables. A `None`
    template means DEFAULT_CHAT_TEMPLATE (ChatML).
    """
    source = DEFAULT_CHAT_TEMPLATE if template is None else template
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("cannot apply the chat template to an empty conversation")
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt cannot both be set"
        )
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(
                    f"a tool must be a JSON schema (a dict), got {type(tool).__name__}"
                )
    if documents is not None:
        for document in documents:
            if not isinstance(document, Mapping):
                raise ChatTemplateError("documents must be dicts with 'title' and 'text' keys")

    chat: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"a chat message must be a dict, got {type(message).__name__}")
        # APIs such as OpenAI's send content=None; templates handle a missing key better.
        chat.append(_alias_reasoning(_plain({k: v for k, v in message.items() if v is not None})))

    final_message = None
    if continue_final_message:
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final_message = chat[-1].get(field)
        if not isinstance(final_message, str):
            raise ChatTemplateError(
                f"continue_final_message is set but the last message has no text {field!r}"
            )
        chat[-1][field] = final_message + _CONTINUE_TAG

    if not isinstance(source, str):
        raise ChatTemplateError(f"the chat template must be a string, got {type(source).__name__}")
    compiled = compile_template(source)
    input_chars = len(json.dumps([chat, tools, documents, kwargs], default=str))
    _limits.chars = max(MAX_CHARS, 8 * input_chars)

    def render() -> str:
        pieces, total = [], 0
        for piece in compiled.generate(
            messages=chat,
            tools=_plain(list(tools)) if tools is not None else None,
            documents=_plain(list(documents)) if documents is not None else None,
            add_generation_prompt=add_generation_prompt,
            **_plain(kwargs),
        ):
            total += len(piece)
            if total > _limits.chars:
                raise jinja2.exceptions.SecurityError(
                    f"the rendered prompt exceeds {_limits.chars} characters"
                )
            pieces.append(piece)
        return "".join(pieces)

    try:
        text = _run_bounded(render, TIME_LIMIT_S)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template error: {_one_line(e)}") from None
    except (
        TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError,
        OverflowError, RecursionError, MemoryError, UnicodeError, LookupError,
    ) as e:
        # Only template code runs inside render(), so these are the template's mistakes.
        raise ChatTemplateError(
            f"chat template failed: {type(e).__name__}: {_one_line(e)[:200]}"
        ) from None

    if final_message is not None:
        # Cut everything the template adds after the message being continued (its end-of-turn tokens).
        at = text.rfind(_CONTINUE_TAG.strip())
        if at < 0 or final_message.strip() not in text:
            raise ChatTemplateError(
                "continue_final_message: the template does not render the final message as given"
            )
        if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            text = text[:at]
        else:  # the template trimmed trailing spaces
            text = text[:at].rstrip()
    return text
