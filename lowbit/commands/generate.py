"""`lowbit generate MODEL -p TEXT`: one completion, streamed, or as JSON."""

from __future__ import annotations

import json
import sys

import click

from lowbit.commands.options import (
    check_fits,
    check_prompt,
    model_options,
    open_model,
    sampling_kwargs,
    sampling_options,
    warm_up,
)


@click.command()
@click.argument("model")
@click.option("-p", "--prompt", help="Prompt text.")
@click.option("-f", "--file", "prompt_file", type=click.File("r", encoding="utf-8"), help="Read the prompt from a file.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--system", help="System message (with --chat).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, token counts, timings.")
@model_options
@sampling_options(max_tokens=256)
def generate(model, prompt, prompt_file, chat, system, as_json, threads, context_length, method, kv_cache,
             **sampling) -> None:
    """Complete a prompt given with -p, -f or on stdin."""
    source = "-p"
    if prompt is None and prompt_file is not None:
        prompt, source = prompt_file.read(), "-f"
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a prompt with -p TEXT, -f FILE or on stdin")
        prompt, source = sys.stdin.read(), "-p, -f or stdin"
    check_prompt(prompt, source)
    llm, load_s = open_model(model, threads, context_length, method, quiet=as_json, warm=False, kv_cache=kv_cache)
    kwargs = sampling_kwargs(sampling, llm.generation_defaults)
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = llm.tokenizer.encode_chat(messages, add_generation_prompt=True)
    else:
        ids = llm.tokenize(prompt)
    check_fits(llm, len(ids))
    warm_up(llm, quiet=as_json)
    text, last = [], None
    for r in llm.stream_generate(ids, **kwargs):
        last = r
        text.append(r.text)
        if not as_json and r.text:
            click.echo(r.text, nl=False)
            sys.stdout.flush()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "text": "".join(text),
                    "prompt_tokens": last.prompt_tokens,
                    "generation_tokens": last.generation_tokens,
                    "finish_reason": last.finish_reason,
                    "load_seconds": round(load_s, 4),
                    "time_to_first_token": round(last.time_to_first_token, 4),
                    "prompt_tps": round(last.prompt_tps, 2),
                    "generation_tps": round(last.generation_tps, 2),
                    "model": str(llm.path),
                    "threads": llm.threads,
                },
                ensure_ascii=False,
            )
        )
    else:
        click.echo()
