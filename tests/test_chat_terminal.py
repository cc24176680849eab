"""`lowbit chat` driven through a pseudo-terminal (pexpect) and through a pipe, on SmolLM2 q4."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pexpect
import pytest

PROMPT = ">>> "
STATS = re.compile(r"\[(\d+) tokens, [\d.]+ tok/s, prompt (\d+) tokens")


@pytest.fixture(scope="module")
def q4(smollm2_file):
    return smollm2_file("q4")


def spawn(model, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable, ["-m", "lowbit.cli", "chat", str(model), *args],
        encoding="utf-8", timeout=180, dimensions=(50, 400),
        # Ctrl-C must reach the chat even when the suite inherited SIGINT ignored (run in the
        # background of a non-interactive shell)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    child.expect_exact(PROMPT)
    return child


def ask(child: pexpect.spawn, text: str) -> tuple[int, int]:
    """Send a message, wait for the reply's stats line: (generated tokens, prompt tokens)."""
    child.sendline(text)
    child.expect(STATS)
    gen, prompt = int(child.match.group(1)), int(child.match.group(2))
    child.expect_exact(PROMPT)
    return gen, prompt


def test_streams_resets_interrupts_and_exits(q4):
    child = spawn(q4, "-v", "--max-tokens", "400")
    # streaming: text arrives while the reply is still being generated (no stats line yet)
    child.sendline("Write a long story about a dragon who learns to cook.")
    child.expect(r"[A-Za-z]{3,}")
    early = child.before + child.after
    assert not STATS.search(early)
    child.expect(STATS)
    child.expect_exact(PROMPT)

    # /reset forgets the history: the same message then has the prompt length of a fresh chat
    child.sendline("/reset")
    child.expect_exact("[conversation reset]")
    child.expect_exact(PROMPT)
    _, fresh = ask(child, "Hello!")
    _, with_history = ask(child, "Hello!")
    assert with_history > fresh
    child.sendline("/reset")
    child.expect_exact(PROMPT)
    _, after_reset = ask(child, "Hello!")
    assert after_reset == fresh

    # Ctrl-C stops a long reply, the session goes on
    child.sendline("/reset")
    child.expect_exact(PROMPT)
    child.sendline("Count from 1 to 300, separated by commas.")
    child.expect_exact("commas.")  # the terminal's echo of the line
    child.expect(r"\w{2,}")  # the reply is under way (400 tokens take seconds)
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    child.sendline("/help")
    child.expect_exact("/reset")
    child.expect_exact(PROMPT)
    gen, _ = ask(child, "What is the capital of France?")
    assert gen > 0

    # Ctrl-D exits cleanly
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_piped_stdin_one_reply_per_line(q4):
    proc = subprocess.run(
        [sys.executable, "-m", "lowbit.cli", "chat", str(q4), "--max-tokens", "40"],
        input="What is the capital of France?\n/reset\n/system Answer briefly.\nWhat is 2 + 2?\n",
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "[conversation reset]" in proc.stdout
    assert ">>>" not in proc.stdout  # no prompts when stdin is not a terminal
    assert "[system message set; conversation reset]" in proc.stdout
    answers = proc.stdout.split("[system message set; conversation reset]")
    assert len(answers) == 2 and answers[1].strip()


def reply_text(child: pexpect.spawn, text: str) -> tuple[str, int, int]:
    """Send a message; (the reply's text, generated tokens, prompt tokens)."""
    child.sendline(text)
    child.expect_exact(text)  # the terminal's echo
    child.expect(STATS)
    body = child.before
    gen, prompt = int(child.match.group(1)), int(child.match.group(2))
    child.expect_exact(PROMPT)
    return body.strip(), gen, prompt


def test_a_message_that_cannot_fit_is_refused_and_the_chat_goes_on(q4):
    child = spawn(q4, "-v", "--ctx", "256", "--max-tokens", "24")
    _, _, first_prompt = reply_text(child, "Hello!")
    child.sendline("tell me about " + "dragons " * 300)
    child.expect_exact("[message not sent: it takes")
    child.expect_exact("raise --ctx (the model's maximum is 8192)]")
    child.expect_exact(PROMPT)
    # the refused message left no trace: the next turn sees only the first exchange
    text, gen, prompt = reply_text(child, "What is the capital of France?")
    assert gen > 0 and text
    assert first_prompt < prompt < first_prompt + 60
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_256_token_context_chats_for_ten_turns(q4):
    # --max-tokens stays at its default (512, more than the context): the answer's budget is what
    # the context has left, and the oldest turns go when less than the floor is left
    child = spawn(q4, "-v", "--ctx", "256", "--temperature", "0")
    questions = ["Hi!", "What is the capital of France?", "Name a colour.", "What is 2 + 2?",
                 "Tell me a fact about cats.", "What is the capital of Italy?", "Name a fruit.",
                 "What day comes after Monday?", "Say something kind.", "Goodbye!"]
    seen_drop = False
    for q in questions:
        child.sendline(q)
        child.expect_exact(q)
        i = child.expect([STATS, r"\[context full: dropped", r"message not sent"])
        assert i != 2, child.before
        if i == 1:
            seen_drop = True
            child.expect(STATS)
        gen, prompt = int(child.match.group(1)), int(child.match.group(2))
        assert gen > 0 and prompt + gen <= 256
        child.expect_exact(PROMPT)
    assert seen_drop  # ten turns do not fit in 256 tokens: older ones were dropped, the chat went on
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_save_then_load_in_a_new_chat_restores_the_history(q4, tmp_path):
    saved = tmp_path / "conversation.json"
    args = ("-v", "--max-tokens", "24", "--temperature", "0", "--system", "You are terse.")
    first = spawn(q4, *args)
    reply_text(first, "My name is Ada and I like green.")
    reply_text(first, "What colour do I like?")
    first.sendline(f"/save {saved}")
    first.expect_exact(f"[saved 5 messages to {saved}]")
    first.expect_exact(PROMPT)
    text_a, _, prompt_a = reply_text(first, "What is my name?")
    first.sendeof()
    first.expect(pexpect.EOF)

    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "You are terse."
    assert messages[1]["content"] == "My name is Ada and I like green."
    assert all(m["content"] for m in messages)

    second = spawn(q4, "-v", "--max-tokens", "24", "--temperature", "0")  # no --system: it comes from the file
    second.sendline(f"/load {saved}")
    second.expect_exact(f"[loaded 4 messages from {saved}]")
    second.expect_exact(PROMPT)
    text_b, _, prompt_b = reply_text(second, "What is my name?")
    assert prompt_b == prompt_a  # the same conversation, token for token
    assert text_b == text_a  # greedy: the same answer
    # a file that is not a conversation is refused with a notice; the chat goes on
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "wizard", "content": "hi"}]))
    second.sendline(f"/load {bad}")
    second.expect_exact("has role 'wizard'")
    second.expect_exact(PROMPT)
    second.sendline("/load")
    second.expect_exact("[usage: /load FILE]")
    second.expect_exact(PROMPT)
    _, _, prompt_c = reply_text(second, "And my colour?")
    assert prompt_c > prompt_b  # the loaded history is still there
    second.sendeof()
    second.expect(pexpect.EOF)
