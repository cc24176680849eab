"""Options shared by the commands that run a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "max_tokens")


def model_options(f: Callable) -> Callable:
    """--threads, --ctx and --method (for MODELs that still need converting)."""
    f = click.option("--method", default="q4", show_default=True, help="Encoding used when MODEL must be converted first.")(f)
    f = click.option("--ctx", "context_length", type=int, help="Context length (default: min(model's, 4096)).")(f)
    f = click.option("-t", "--threads", type=int, help="Threads (default: LOWBIT_THREADS or physical cores).")(f)
    return f


def sampling_options(max_tokens: int = 256) -> Callable:
    def decorate(f: Callable) -> Callable:
        opts = [
            click.option("--temperature", type=float, help="0 = greedy (default: the model's generation config, else 0)."),
            click.option("--top-k", type=int, help="Keep the k most likely tokens (0 = off)."),
            click.option("--top-p", type=float, help="Nucleus sampling threshold (1 = off)."),
            click.option("--min-p", type=float, help="Drop tokens below min_p × the top probability."),
            click.option("--repeat-penalty", "repetition_penalty", type=float, help="Repetition penalty (1 = off)."),
            click.option("--seed", type=int, help="Random seed: same seed, same text."),
            click.option("--max-tokens", type=int, default=max_tokens, show_default=True, help="Most tokens to generate."),
            click.option("--stop", multiple=True, help="Stop string (repeatable)."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def sampling_kwargs(params: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sampling options given on the command line, falling back to the model's defaults."""
    out = {k: params[k] for k in SAMPLING_KEYS if params.get(k) is not None}
    for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        if k not in out and defaults and defaults.get(k) is not None and defaults.get("do_sample", True):
            out[k] = defaults[k]
    if params.get("stop"):
        out["stop"] = list(params["stop"])
    return out


def open_model(model: str, threads: int | None, context_length: int | None, method: str, quiet: bool = False):
    """Resolve MODEL (converting it once if needed), say so, and load it with kernels warm."""
    import time

    from lowbit.models import resolve_model
    from lowbit.runtime import load

    def announce(source: str, target) -> None:
        if not quiet:
            click.echo(f"converting {source} to {method} (once; cached at {target})", err=True)

    path = resolve_model(model, method=method, on_convert=announce)
    t0 = time.perf_counter()
    llm = load(path, threads=threads, context_length=context_length)
    warm_up(llm, quiet)
    return llm, time.perf_counter() - t0


def warm_up(llm, quiet: bool = False) -> None:
    """Compile (first run) or load (later runs) the numba kernels before timing anything."""
    from lowbit.runtime.warmup import kernels_cached, warm_up_kernels

    if not quiet and not kernels_cached():
        click.echo("compiling kernels (first run only)…", err=True)
    warm_up_kernels(llm)
