"""Chat templates rendered by lowbit against transformers' apply_chat_template(tokenize=False)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from test_tokenizer import hf_smollm2, our_smollm2, smollm2_dir, spec_config

from lowbit.runtime.chat_template import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplateError,
    render_chat_template,
)
from lowbit.runtime.tokenizer import Tokenizer

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there 🙂 — naïve 世界"},
    ],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?\n\nExplain  with\tspaces."},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "  leading and trailing  "},
        {"role": "assistant", "content": "ok"},
    ],
]

# Exercises what transformers' environment adds: namespace, loop controls, {% generation %},
# tojson with its options, dict(), strftime_now, tools, reasoning aliases, extra variables and
# trim_blocks/lstrip_blocks whitespace handling.
RICH_TEMPLATE = """{%- set ns = namespace(system='', turns=0) -%}
{%- for m in messages %}
  {%- if m.role == 'system' %}{% set ns.system = m.content %}{% continue %}{% endif %}
  {%- set ns.turns = ns.turns + 1 %}
  {%- if ns.turns > 20 %}{% break %}{% endif %}
<{{ m.role }}>
  {% if m.reasoning_content is defined %}[think]{{ m.reasoning_content }}[/think]
  {% endif %}
  {% generation %}{{ m.content | trim if m.content is defined else '(none)' }}{% endgeneration %}
  {% if m.tool_calls is defined %}{{ m.tool_calls | tojson }}{% endif %}
{% endfor %}
{% if tools %}TOOLS:
{{ tools | tojson(indent=2) }}
{% endif %}
{% if ns.system %}SYSTEM={{ ns.system | tojson }}{% endif %}
{{ dict(b='é<&>', a=1) | tojson(sort_keys=True) }} {{ dict.fromkeys(['x', 'y'], 0) | tojson(separators=(',', ':')) }}
year={{ strftime_now('%Y') }} bos={{ bos_token }} eos={{ eos_token }} flag={{ custom_flag | default('unset') }}
{% if add_generation_prompt %}<assistant>
{% endif %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Météo <today> & tomorrow",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def with_template(template: str | None) -> Tokenizer:
    folder = smollm2_dir()
    config = {**spec_config(folder), "chat_template": template}
    return Tokenizer.from_bytes("tokenizers", (folder / "tokenizer.json").read_bytes(), config)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_smollm2_template_matches_transformers(
    conversation: int, add_generation_prompt: bool
) -> None:
    hf, ours = hf_smollm2(), our_smollm2()
    messages = CONVERSATIONS[conversation]
    expected = hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert (
        ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
    )
    ids = hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    assert ours.encode_chat(messages, add_generation_prompt=add_generation_prompt) == list(ids)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rich_template_matches_transformers(add_generation_prompt: bool) -> None:
    hf, ours = hf_smollm2(), with_template(RICH_TEMPLATE)
    messages = [
        {"role": "system", "content": "Be <brief> & exact — ünïcode"},
        {"role": "user", "content": "  Weather in Zürich?  "},
        {
            "role": "assistant",
            "content": None,  # dropped, as transformers drops None-valued keys
            "thinking": "call the tool",  # aliased to reasoning_content
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Zürich"}}],
        },
        {"role": "tool", "content": '{"temp": 21}'},
    ]
    kwargs = dict(add_generation_prompt=add_generation_prompt, tools=TOOLS, custom_flag=True)
    expected = hf.apply_chat_template(
        messages, chat_template=RICH_TEMPLATE, tokenize=False, **kwargs
    )
    got = ours.apply_chat_template(messages, **kwargs)
    assert got == expected
    assert "Zürich" in got and "\\u" not in got.split("TOOLS")[0]  # tojson keeps non-ASCII
    # Without tools or the extra variable.
    expected = hf.apply_chat_template(messages[:2], chat_template=RICH_TEMPLATE, tokenize=False)
    assert ours.apply_chat_template(messages[:2], add_generation_prompt=False) == expected


def test_default_template_is_chatml(caplog: pytest.LogCaptureFixture) -> None:
    hf, ours = hf_smollm2(), with_template(None)
    messages = CONVERSATIONS[2]
    with caplog.at_level(logging.WARNING, logger="lowbit.runtime.tokenizer"):
        got = ours.apply_chat_template(messages)
    assert "no chat template" in caplog.text
    assert got == hf.apply_chat_template(
        messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert got == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd times 3?\n\nExplain  with\tspaces.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_continue_final_message_matches_transformers() -> None:
    hf, ours = hf_smollm2(), our_smollm2()
    messages = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}]
    expected = hf.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    got = ours.apply_chat_template(
        messages, add_generation_prompt=False, continue_final_message=True
    )
    assert got == expected and got.endswith("1, 2,")


RAISING_TEMPLATE = (
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{{ m['content'] }}{% endfor %}"
)


def test_raise_exception_becomes_chat_template_error() -> None:
    import jinja2

    hf, ours = hf_smollm2(), with_template(RAISING_TEMPLATE)
    messages = [{"role": "assistant", "content": "first"}]
    with pytest.raises(jinja2.TemplateError) as theirs:
        hf.apply_chat_template(messages, chat_template=RAISING_TEMPLATE, tokenize=False)
    with pytest.raises(ChatTemplateError) as err:
        ours.apply_chat_template(messages)
    assert str(theirs.value) in str(err.value)
    assert isinstance(err.value, ValueError)
    ok = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert ours.apply_chat_template(ok, add_generation_prompt=False) == "ab"


@pytest.mark.parametrize(
    "template, match",
    [
        ("{% for m in messages %}{{ m.content }", "syntax error at line 1"),
        ("{{ raise_exception('two\nlines') }}", "two lines"),
        ("{{ messages[0].content.nope() }}", "chat template error"),
        ("{{ 1 + messages[0].content }}", "TypeError"),
        ("{{ ().__class__.__base__.__subclasses__() }}", "chat template error"),
        ("{% set ns = namespace() %}{% set ns._x = 1 %}", "underscore"),
        ("{{ messages[5].content.x }}", "chat template error"),
    ],
)
def test_template_errors_are_one_line(template: str, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match) as err:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert "\n" not in str(err.value)


def test_bad_inputs() -> None:
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        render_chat_template(None, [])
    with pytest.raises(ChatTemplateError, match="must be a dict"):
        render_chat_template(None, ["hello"])  # type: ignore[list-item]
    with pytest.raises(ChatTemplateError, match="JSON schema"):
        render_chat_template(None, [{"role": "user", "content": "x"}], tools=[len])  # type: ignore[list-item]
    with pytest.raises(ChatTemplateError, match="cannot both"):
        render_chat_template(None, [{"role": "user", "content": "x"}], continue_final_message=True)


def test_named_templates_pick_default_or_tool_use() -> None:
    ours = with_template(None)
    ours.chat_template = {
        "default": "D{{ messages[0].content }}",
        "tool_use": "T{{ tools | length }}",
    }
    msgs = [{"role": "user", "content": "x"}]
    assert ours.apply_chat_template(msgs) == "Dx"
    assert ours.apply_chat_template(msgs, tools=TOOLS) == "T1"
    ours.chat_template = {"a": "A", "b": "B"}
    with pytest.raises(ChatTemplateError, match="none is named 'default'"):
        ours.apply_chat_template(msgs)


def test_caller_messages_are_not_modified() -> None:
    messages = [{"role": "user", "content": "hi", "thinking": "t", "extra": None}]
    before = [dict(m) for m in messages]
    render_chat_template(RICH_TEMPLATE, messages)
    assert messages == before
