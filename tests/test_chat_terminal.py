"""`lowbit chat` driven through a pseudo-terminal (pexpect) and through a pipe, on SmolLM2 q4."""

from __future__ import annotations

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
