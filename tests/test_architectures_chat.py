"""The chat templates of the new families (tests/templates, as published in their
tokenizer_config.json) render to exactly transformers' apply_chat_template ids through
Tokenizer.encode_chat, on a 4-turn conversation with a system message: Qwen3 with and without
thinking (`enable_thinking`, reasoning split out of earlier turns, `namespace`, reversed slices),
Gemma 3 (system folded into the first turn, `raise_exception`, `loop.first`), Gemma 2 (refuses a
system message, as transformers does), Phi-3.5 and Phi-4-mini."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import tokenizer_json

from lowbit.convert.converter import tokenizer_section
from lowbit.runtime.chat_template import ChatTemplateError
from lowbit.runtime.tokenizer import Tokenizer

TEMPLATES = Path(__file__).parent / "templates"
FAMILIES = {  # template, bos, eos, special tokens, plain added tokens
    "qwen3": ("qwen3.jinja", None, "<|im_end|>", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              ["<think>", "</think>", "<tool_call>", "</tool_call>"]),
    "gemma3": ("gemma3.jinja", "<bos>", "<end_of_turn>", ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], []),
    "gemma2": ("gemma2.jinja", "<bos>", "<end_of_turn>", ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], []),
    "phi3.5": ("phi3.5.jinja", "<s>", "<|endoftext|>", ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], []),
    "phi4-mini": ("phi4-mini.jinja", None, "<|endoftext|>", ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], []),
}
CONVERSATION = [
    {"role": "system", "content": "You are a terse geography tutor."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "<think>\nThe user wants a capital.\n</think>\n\nParis."},
    {"role": "user", "content": "And of Italy? Answer in one word. "},
]


def tokenizer_folder(folder: Path, family: str) -> Path:
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend

    template, bos, eos, specials, plain = FAMILIES[family]
    backend = Backend.from_str(tokenizer_json())
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in plain])
    folder.mkdir()
    (folder / "tokenizer.json").write_text(backend.to_str())
    added = {str(backend.token_to_id(t)): {"content": t, "special": t in specials, "normalized": False,
                                             "lstrip": False, "rstrip": False, "single_word": False}
             for t in specials + plain}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
           "chat_template": (TEMPLATES / template).read_text(), "added_tokens_decoder": added}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def both(tmp_path, family):
    import transformers

    folder = tokenizer_folder(tmp_path / family, family)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    _, blob, meta = tokenizer_section(files)  # what `lowbit convert` stores
    return Tokenizer.from_bytes(meta["kind"], blob, meta), transformers.AutoTokenizer.from_pretrained(folder)


def hf_ids(hf, messages, **kwargs) -> list[int]:
    out = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "phi3.5", "phi4-mini"])
def test_chat_template_ids_match_transformers(tmp_path, family):
    ours, hf = both(tmp_path, family)
    expected = hf_ids(hf, CONVERSATION)
    assert ours.encode_chat(CONVERSATION, add_generation_prompt=True) == expected
    text = hf.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(CONVERSATION, add_generation_prompt=True) == text
    assert "geography tutor" in text and "Italy" in text


def test_qwen3_thinking_switch_matches_transformers(tmp_path):
    ours, hf = both(tmp_path, "qwen3")
    off = ours.apply_chat_template(CONVERSATION, add_generation_prompt=True, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "The user wants a capital" not in off  # earlier turns' reasoning is dropped
    for value in (False, True):
        assert ours.encode_chat(CONVERSATION, enable_thinking=value) == hf_ids(hf, CONVERSATION, enable_thinking=value)


def test_gemma2_refuses_a_system_message_as_transformers_does(tmp_path):
    import jinja2

    ours, hf = both(tmp_path, "gemma2")
    with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
        hf.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        ours.encode_chat(CONVERSATION)
    assert ours.encode_chat(CONVERSATION[1:]) == hf_ids(hf, CONVERSATION[1:])
    with pytest.raises(ChatTemplateError, match="alternate"):
        ours.encode_chat([CONVERSATION[1], CONVERSATION[1]])


def test_chat_command_sets_template_variables(tmp_path):
    """`lowbit chat --template-var enable_thinking=false` reaches Qwen3's template: the prompt
    gains the empty think block; a malformed NAME=VALUE is refused before loading."""
    import subprocess
    import sys

    import torch
    import transformers as tf

    from lowbit.convert.converter import convert

    torch.manual_seed(0)
    folder = tmp_path / "qwen3"
    tf.Qwen3ForCausalLM(tf.Qwen3Config(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                       max_position_embeddings=256)).save_pretrained(folder)
    tok = tokenizer_folder(tmp_path / "tok", "qwen3")
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    path = convert(folder, tmp_path / "q.lowbit", method="f32").path

    def prompt_tokens(*extra):
        proc = subprocess.run([sys.executable, "-m", "lowbit.cli", "chat", str(path), "-v", "--max-tokens", "1", *extra],
                              input="Hello there\n", capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        line = next(x for x in proc.stderr.splitlines() if "prompt" in x)
        return int(line.split("prompt ")[1].split()[0])

    plain = prompt_tokens()
    assert prompt_tokens("--template-var", "enable_thinking=false") > plain
    assert prompt_tokens("--template-var", "enable_thinking=true") == plain
    proc = subprocess.run([sys.executable, "-m", "lowbit.cli", "chat", str(path), "--template-var", "enable thinking"],
                          input="", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "NAME=VALUE" in proc.stderr


def test_jinja_extensions_render_as_transformers(tmp_path):
    """strftime_now (Llama 3.x's date line), loop controls ({% break %}, {% continue %}) and
    raise_exception behave as in transformers' environment."""
    ours, hf = both(tmp_path, "qwen3")
    template = (
        "{{- 'Today: ' + strftime_now('%d %b %Y') + '\\n' }}"
        "{%- for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% if loop.index0 > 2 %}{% break %}{% endif %}"
        "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    ours.chat_template = template
    expected = hf.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False, chat_template=template)
    assert ours.apply_chat_template(CONVERSATION, add_generation_prompt=True) == expected
    assert "Italy" not in expected and "Paris" in expected and "tutor" not in expected
    ours.chat_template = "{{ raise_exception('no tools here') }}"
    with pytest.raises(ChatTemplateError, match="no tools here"):
        ours.encode_chat(CONVERSATION)
