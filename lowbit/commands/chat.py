"""`lowbit chat MODEL`: a streaming terminal chat, like `ollama run` or `mlx_lm.chat`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lowbit.commands.options import model_options, open_model, sampling_kwargs, sampling_options

HELP = """commands:
  /help           show this help
  /reset          forget the conversation (keeps the system message)
  /system TEXT    set the system message and start over
  /save FILE      write the conversation to FILE (JSON: the messages list)
  /load FILE      continue a conversation saved with /save
  /exit           quit (Ctrl-D works too)
input: end a line with \\ to continue it, or wrap several lines in triple quotes \"\"\"
Ctrl-C stops the current reply; the conversation goes on."""

ANSWER_FLOOR = 32  # the least room an answer keeps before older turns are dropped
ROLES = ("system", "user", "assistant")


def notice(text: str, color: str = "yellow") -> None:
    click.secho(f"[{text}]", fg=color, err=True)


def template_vars(ctx, param, values: tuple[str, ...]) -> dict:
    """--template-var NAME=VALUE (repeatable): a chat template variable such as Qwen3's
    enable_thinking; VALUE is read as JSON (true, false, 3, "x"), else taken as a string."""
    import json
    import re

    out = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise click.BadParameter(f"{item!r} is not NAME=VALUE with NAME an identifier (e.g. enable_thinking=false)")
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw
    return out


class ChatSession:
    """History, context trimming and one reply at a time. A message never ends the chat: one that
    cannot fit is refused with a notice; the answer's budget is what the context has left (down to
    a floor, below which the oldest turns are dropped)."""

    def __init__(self, llm, system: str | None, sampling: dict, verbose: bool, variables: dict | None = None) -> None:
        self.llm = llm
        self.system = system
        self.sampling = sampling
        self.max_tokens = int(sampling.get("max_tokens", 512))
        self.verbose = verbose
        self.variables = variables or {}  # chat template variables (--template-var)
        self.history: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def floor(self) -> int:
        """Tokens an answer is always left: small contexts keep room for a prompt too."""
        return max(1, min(self.max_tokens, ANSWER_FLOOR, self.llm.context_length // 4))

    def _encode(self, history: list[dict[str, str]]) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return self.llm.tokenizer.encode_chat(head + history, add_generation_prompt=True, **self.variables)

    def prompt_ids(self) -> list[int] | None:
        """Encode the conversation (its last message the new one), dropping the oldest turns while
        the answer would get less than the floor; None when the new message alone does not fit."""
        room = self.llm.context_length - self.floor()
        if len(self._encode(self.history[-1:])) > room:
            return None
        ids = self._encode(self.history)
        dropped = 0
        while len(ids) > room and len(self.history) > 1:
            del self.history[: min(2, len(self.history) - 1)]
            dropped += 1
            ids = self._encode(self.history)
        if dropped:
            notice(f"context full: dropped the {dropped} oldest turn(s)")
        return ids

    def reply(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        last = None
        budget = self.max_tokens
        try:  # Ctrl-C anywhere in the turn (prompt processing too) ends the reply, not the chat
            ids = self.prompt_ids()
            if ids is None:
                self.history.pop()
                n = len(self._encode([{"role": "user", "content": text}]))
                notice(
                    f"message not sent: it takes {n} tokens and the context of {self.llm.context_length} "
                    f"must keep {self.floor()} for the answer; shorten it or raise --ctx "
                    f"(the model's maximum is {self.llm.args.max_position_embeddings})", "red"
                )
                return
            budget = min(self.max_tokens, self.llm.context_length - len(ids))
            for r in self.llm.stream_generate(ids, **{**self.sampling, "max_tokens": budget}):
                last = r
                if r.text:
                    pieces.append(r.text)
                    click.echo(r.text, nl=False)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            click.secho(" [interrupted]", fg="yellow", nl=False)
        click.echo()
        self.history.append({"role": "assistant", "content": "".join(pieces)})
        if last is not None and last.finish_reason == "length" and budget < self.max_tokens:
            notice(f"reply cut at {budget} tokens: the context is full (older turns go next time)")
        if self.verbose and last is not None:
            click.secho(
                f"[{last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s, "
                f"prompt {last.prompt_tokens} tokens at {last.prompt_tps:.1f} tok/s, "
                f"time to first token {last.time_to_first_token:.2f} s]",
                fg="cyan",
                err=True,
            )

    def save(self, path: str) -> None:
        """Write the messages list (system message first, if any) as JSON."""
        data = json.dumps(self.messages(), ensure_ascii=False, indent=2) + "\n"
        try:
            Path(path).expanduser().write_text(data, encoding="utf-8")
        except OSError as e:
            notice(f"cannot save to {path}: {e.strerror or e}", "red")
            return
        notice(f"saved {len(self.messages())} messages to {path}")

    def load(self, path: str) -> None:
        """Continue a conversation saved by /save (or any JSON list of {role, content})."""
        try:
            messages = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        except OSError as e:
            notice(f"cannot load {path}: {e.strerror or e}", "red")
            return
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            notice(f"cannot load {path}: not JSON ({e})", "red")
            return
        problem = _check_messages(messages)
        if problem:
            notice(f"cannot load {path}: {problem}", "red")
            return
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if messages and messages[0]["role"] == "system":
            self.system = messages.pop(0)["content"]
        self.history = messages
        self.llm.reset()
        notice(f"loaded {len(messages)} messages from {path}")


def _check_messages(messages) -> str | None:
    """Why a loaded value is not a conversation (None when it is one)."""
    if not isinstance(messages, list):
        return "expected a JSON list of messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"message {i} is not an object with string 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {i} has role {m['role']!r} (expected one of {', '.join(ROLES)})"
        if m["role"] == "system" and i > 0:
            return f"message {i}: a system message may only come first"
    return None


def read_message(interactive: bool) -> str | None:
    """One user message (None at end of input). Handles \\ continuations and \"\"\" blocks."""
    prompt, more = (">>> ", "... ") if interactive else ("", "")
    try:
        line = input(prompt)
    except EOFError:
        return None
    if line.strip().startswith('"""'):
        body = [line.strip()[3:]]
        while not body[-1].rstrip().endswith('"""'):
            try:
                body.append(input(more))
            except EOFError:
                break
        return "\n".join(body).rstrip().removesuffix('"""').strip()
    lines = [line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        try:
            lines.append(input(more))
        except EOFError:
            break
    return "\n".join(lines)


@click.command()
@click.argument("model")
@click.option("--system", help="System message.")
@click.option("-v", "--verbose", is_flag=True, help="Print tokens/s and time to first token after each reply.")
@click.option("--template-var", "variables", multiple=True, callback=template_vars, metavar="NAME=VALUE",
              help="Set a chat template variable, e.g. enable_thinking=false (Qwen3). Repeatable.")
@model_options
@sampling_options(max_tokens=512)
def chat(model, system, verbose, variables, threads, context_length, method, kv_cache, **sampling) -> None:
    """Chat with MODEL in the terminal (or one reply per line of piped stdin)."""
    interactive = sys.stdin.isatty()
    llm, _ = open_model(model, threads, context_length, method, quiet=not interactive, kv_cache=kv_cache)
    session = ChatSession(llm, system, sampling_kwargs(sampling, llm.generation_defaults), verbose, variables)
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        click.secho(f"lowbit chat: {llm.path.name} ({llm.threads} threads). /help for commands, Ctrl-D to quit.", fg="green")
    while True:
        try:
            text = read_message(interactive)
        except KeyboardInterrupt:
            click.echo()
            continue
        if text is None:
            if interactive:
                click.echo()
            return
        cmd = text.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit", "/bye"):
            return
        if cmd == "/help":
            click.echo(HELP)
        elif cmd == "/reset":
            session.history.clear()
            llm.reset()
            click.secho("[conversation reset]", fg="yellow")
        elif cmd.startswith("/system"):
            session.system = cmd[len("/system"):].strip() or None
            session.history.clear()
            click.secho(f"[system message {'set' if session.system else 'cleared'}; conversation reset]", fg="yellow")
        elif cmd.split()[0] in ("/save", "/load"):
            name, _, arg = cmd.partition(" ")
            if not arg.strip():
                notice(f"usage: {name} FILE", "red")
            elif name == "/save":
                session.save(arg.strip())
            else:
                session.load(arg.strip())
        elif cmd.startswith("/") and " " not in cmd:
            click.secho(f"unknown command {cmd} (/help lists them)", fg="red")
        else:
            session.reply(text)
