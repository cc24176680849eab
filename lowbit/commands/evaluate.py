"""`lowbit eval ppl|kl`: measure what quantisation did to a model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from lowbit.commands.options import (
    THREADS_ENV,
    THREADS_HELP,
    Threads,
    kv_cache_option,
    method_choice,
)

# each window scores its second half (llama.cpp's method): 4 tokens is the least that scores one
CTX = click.IntRange(min=4)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{path}: cannot read text ({e})") from None


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="window", dynamic_ncols=True, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, update


def _open(model: str, method: str, ctx: int, threads: int | None, quiet: bool, kv_cache: str | None = None):
    """MODEL resolved (converted once if needed), its context checked, then loaded."""
    from lowbit.commands.options import check_context, resolve
    from lowbit.runtime import load

    path = resolve(model, method, quiet)
    check_context(path, ctx)
    return load(path, threads=threads, context_length=ctx, kv_cache=kv_cache)


@click.group()
def evaluate() -> None:
    """Perplexity and KL divergence on a text file."""


@evaluate.command()
@click.argument("model")
@click.option("--text", "text_file", required=True, type=click.Path(exists=True, dir_okay=False), help="Plain-text file.")
@click.option("--ctx", type=CTX, default=512, show_default=True, help="Window length in tokens.")
@click.option("-t", "--threads", type=Threads(), envvar=THREADS_ENV, help=THREADS_HELP)
@click.option("--method", type=method_choice(), default="q4", show_default=True, help="Encoding used when MODEL must be converted first.")
@click.option("--json", "as_json", is_flag=True)
@kv_cache_option
def ppl(model, text_file, ctx, threads, method, as_json, kv_cache) -> None:
    """Perplexity of MODEL on a text (llama.cpp's method: score the second half of each window)."""
    from lowbit.eval.perplexity import perplexity

    text = _read_text(text_file)
    llm = _open(model, method, ctx, threads, as_json, kv_cache)
    bar, update = _bar("perplexity")
    try:
        r = perplexity(llm, text, ctx, update)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(asdict(r)))
    else:
        click.echo(f"PPL = {r.ppl:.4f} ± {r.ppl_error:.4f} ({r.tokens_scored} tokens scored in {r.windows} windows of {ctx})")


@evaluate.command()
@click.argument("model")
@click.option("--ref", required=True, help="Reference: a .lowbit file, or an HF folder / GGUF run through lowbit's f32 path.")
@click.option("--text", "text_file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--ctx", type=CTX, default=512, show_default=True)
@click.option("-t", "--threads", type=Threads(), envvar=THREADS_ENV, help=THREADS_HELP)
@click.option("--method", type=method_choice(), default="q4", show_default=True, help="Encoding used when MODEL must be converted first.")
@click.option("--json", "as_json", is_flag=True)
@kv_cache_option
def kl(model, ref, text_file, ctx, threads, method, as_json, kv_cache) -> None:
    """KL divergence of MODEL's token distributions from a reference's (like llama.cpp --kl-divergence)."""
    from lowbit.eval.perplexity import kl_divergence

    text = _read_text(text_file)
    llm = _open(model, method, ctx, threads, as_json, kv_cache)  # the reference keeps an f32 cache
    ref_llm = _open(ref, "f32", ctx, threads, as_json, "f32")
    bar, update = _bar("kl-divergence")
    try:
        r = kl_divergence(llm, ref_llm, text, ctx, update)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(asdict(r)))
    else:
        click.echo(
            f"KL mean {r.kl_mean:.5f}, median {r.kl_median:.5f}, p99 {r.kl_p99:.5f}; "
            f"top-1 agreement {100 * r.top1_agreement:.2f}%; PPL {r.ppl:.4f} (reference {r.ppl_ref:.4f}); "
            f"{r.tokens_scored} tokens"
        )
