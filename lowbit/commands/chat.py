"""`lowbit chat MODEL`: a streaming terminal chat, like `ollama run` or `mlx_lm.chat`."""

from __future__ import annotations

import sys

import click

from lowbit.commands.options import model_options, open_model, sampling_kwargs, sampling_options

HELP = """commands:
  /help           show this help
  /reset          forget the conversation (keeps the system message)
  /system TEXT    set the system message and start over
  /exit           quit (Ctrl-D works too)
input: end a line with \\ to continue it, or wrap several lines in triple quotes \"\"\"
Ctrl-C stops the current reply; the conversation goes on."""


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
    """History, context trimming and one reply at a time."""

    def __init__(self, llm, system: str | None, sampling: dict, verbose: bool, variables: dict | None = None) -> None:
        self.llm = llm
        self.system = system
        self.sampling = sampling
        self.verbose = verbose
        self.variables = variables or {}  # chat template variables (--template-var)
        self.history: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def prompt_ids(self) -> list[int]:
        """Encode the conversation, dropping the oldest turns while it does not fit."""
        budget = self.llm.context_length - self.sampling.get("max_tokens", 512)
        dropped = 0
        ids = self.llm.tokenizer.encode_chat(self.messages(), add_generation_prompt=True, **self.variables)
        while len(ids) > budget and len(self.history) > 1:
            del self.history[: min(2, len(self.history) - 1)]
            dropped += 1
            ids = self.llm.tokenizer.encode_chat(self.messages(), add_generation_prompt=True, **self.variables)
        if dropped:
            click.secho(f"[context full: dropped the {dropped} oldest turn(s)]", fg="yellow", err=True)
        if len(ids) > budget:
            raise click.ClickException("the message does not fit in the context; use a shorter one or --ctx")
        return ids

    def reply(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        last = None
        try:  # Ctrl-C anywhere in the turn (prompt processing too) ends the reply, not the chat
            ids = self.prompt_ids()
            for r in self.llm.stream_generate(ids, **self.sampling):
                last = r
                if r.text:
                    pieces.append(r.text)
                    click.echo(r.text, nl=False)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            click.secho(" [interrupted]", fg="yellow", nl=False)
        click.echo()
        self.history.append({"role": "assistant", "content": "".join(pieces)})
        if self.verbose and last is not None:
            click.secho(
                f"[{last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s, "
                f"prompt {last.prompt_tokens} tokens at {last.prompt_tps:.1f} tok/s, "
                f"time to first token {last.time_to_first_token:.2f} s]",
                fg="cyan",
                err=True,
            )


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
def chat(model, system, verbose, variables, threads, context_length, method, **sampling) -> None:
    """Chat with MODEL in the terminal (or one reply per line of piped stdin)."""
    interactive = sys.stdin.isatty()
    llm, _ = open_model(model, threads, context_length, method, quiet=not interactive)
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
        elif cmd.startswith("/") and " " not in cmd:
            click.secho(f"unknown command {cmd} (/help lists them)", fg="red")
        else:
            session.reply(text)
