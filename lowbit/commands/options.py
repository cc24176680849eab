"""Options shared by the commands that run a model, each validated when parsed (a bad value is
one `error:` line before anything is loaded), and the model opening they share."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "max_tokens")


def available_cpus() -> int:
    """CPUs this process may run on, capped by $NUMBA_NUM_THREADS (numba's pool) when set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    env = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    return min(n, int(env)) if env.isdigit() and int(env) > 0 else n


THREADS_ENV = "LOWBIT_THREADS"


def _from_env(param, ctx) -> bool:
    return (ctx is not None and param is not None
            and ctx.get_parameter_source(param.name) == click.core.ParameterSource.ENVIRONMENT)


class Threads(click.ParamType):
    """A thread count: at least 1 and at most the CPUs available (more would only time-slice)."""

    name = "integer"

    def fail(self, message: str, param=None, ctx=None):
        if _from_env(param, ctx):
            message = f"{message} (from ${THREADS_ENV})"
        super().fail(message, param, ctx)

    def convert(self, value: Any, param, ctx) -> int:
        if isinstance(value, int):
            n = value
        else:
            try:
                n = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a whole number of threads", param, ctx)
        if n < 1:
            self.fail(f"{n} is not a positive number of threads", param, ctx)
        cpus = available_cpus()
        if n > cpus:
            self.fail(f"{n} is more than the {cpus} CPUs available to this process", param, ctx)
        return n


class ThreadList(Threads):
    """Comma-separated thread counts (bench), each checked as Threads."""

    name = "list"

    def convert(self, value: Any, param, ctx) -> list[int]:
        if isinstance(value, list):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if not all(parts):
            self.fail(f"{value!r} is not a comma-separated list of thread counts", param, ctx)
        return [Threads().convert(p, param, ctx) for p in parts]


class Finite(click.FloatRange):
    """A float range that also refuses nan and inf (they pass every comparison-based check)."""

    def convert(self, value: Any, param, ctx) -> float:
        rv = click.types.FloatParamType.convert(self, value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value} is not a finite number", param, ctx)
        return super().convert(rv, param, ctx)


def _seed(ctx, param, value: int | None) -> int | None:
    """-1 means a random seed (fresh entropy), as in llama.cpp."""
    return None if value == -1 else value


def method_choice() -> click.Choice:
    from lowbit.convert.recipe import METHODS

    return click.Choice(list(METHODS))


MIN_CONTEXT = 16  # warm-up runs 3 positions; below this no prompt and answer fit anyway
THREADS_HELP = "Threads (default: LOWBIT_THREADS or physical cores)."


KV_CACHE_HELP = "KV cache type: f32, f16 (half the memory) or q8 (int8 + a scale per token and head, 0.27 ×)."


def kv_cache_option(f: Callable) -> Callable:
    """--kv-cache f32|f16|q8, checked when parsed."""
    from lowbit.runtime.kernels.kv_store import KINDS
    from lowbit.runtime.kv_cache import DEFAULT_KIND

    return click.option("--kv-cache", "kv_cache", type=click.Choice(list(KINDS)), default=DEFAULT_KIND, show_default=True,
                        help=KV_CACHE_HELP)(f)


def model_options(f: Callable) -> Callable:
    """--threads, --ctx, --kv-cache and --method (for MODELs that still need converting)."""
    f = kv_cache_option(f)
    f = click.option("--method", type=method_choice(), default="q4", show_default=True,
                     help="Encoding used when MODEL must be converted first.")(f)
    f = click.option("--ctx", "context_length", type=click.IntRange(min=MIN_CONTEXT),
                     help=f"Context length, at least {MIN_CONTEXT} (default: min(model's, 4096)).")(f)
    f = click.option("-t", "--threads", type=Threads(), envvar=THREADS_ENV, help=THREADS_HELP)(f)
    return f


def sampling_options(max_tokens: int = 256) -> Callable:
    def decorate(f: Callable) -> Callable:
        opts = [
            click.option("--temperature", type=Finite(min=0), help="0 = greedy (default: the model's generation config, else 0)."),
            click.option("--top-k", type=click.IntRange(min=0), help="Keep the k most likely tokens (0 = off)."),
            click.option("--top-p", type=Finite(0, 1, min_open=True), help="Nucleus sampling threshold (1 = off)."),
            click.option("--min-p", type=Finite(0, 1), help="Drop tokens below min_p × the top probability."),
            click.option("--repeat-penalty", "repetition_penalty", type=Finite(min=0, min_open=True), help="Repetition penalty (1 = off)."),
            click.option("--seed", type=click.IntRange(min=-1), callback=_seed, help="Random seed: same seed, same text (-1 = random)."),
            click.option("--max-tokens", type=click.IntRange(min=1), default=max_tokens, show_default=True, help="Most tokens to generate."),
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


def check_prompt(prompt: str, option: str = "-p") -> None:
    if not prompt.strip():
        raise click.ClickException(f"the prompt is empty (give some text with {option})")


def check_source(source: str) -> None:
    """A MODEL/SOURCE that is meant as a local path (./x, ../x, /x, ~/x, a .gguf or .lowbit name,
    or one under a folder that exists here) but is missing: say so, instead of asking the hub."""
    from lowbit.convert.sources import HUB_ID

    p = Path(source).expanduser()
    if p.exists():
        return
    local = (
        source.startswith((".", "/", "~"))
        or p.suffix in (".gguf", ".lowbit", ".safetensors", ".json")
        or not HUB_ID.match(source)
        or (p.parent != Path(".") and p.parent.is_dir())
    )
    if local:
        raise click.ClickException(f"{source}: no such file or folder")


def model_limit(path: Path) -> int:
    """The model's maximum context, from the file's header only (no weights touched)."""
    from lowbit.formats import LowbitReader
    from lowbit.runtime.config import ModelArgs

    with LowbitReader(path) as reader:
        return ModelArgs.from_dict(reader.metadata.get("config", {})).max_position_embeddings


def check_context(path: Path, needed: int | None, what: str = "--ctx") -> None:
    """Refuse a context the model cannot hold (rather than clamping it silently)."""
    if needed is None:
        return
    limit = model_limit(path)
    if needed > limit:
        raise click.ClickException(f"{what} {needed} is more than the model's maximum context of {limit} tokens")


def resolve(model: str, method: str, quiet: bool = False) -> Path:
    """MODEL as a .lowbit path, converting it once (with a progress bar) when it is not one."""
    from lowbit.model_cache import resolve_model

    check_source(model)
    bar = None

    def announce(source: str, target) -> None:
        nonlocal bar
        if not quiet:
            click.echo(f"converting {source} to {method} (once; cached at {target})", err=True)
            from tqdm import tqdm

            bar = tqdm(desc="converting", unit="tensor", dynamic_ncols=True, leave=False)

    def progress(name: str, done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        return resolve_model(model, method=method, on_convert=announce, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def open_model(model: str, threads: int | None, context_length: int | None, method: str, quiet: bool = False,
               warm: bool = True, kv_cache: str | None = None):
    """Resolve MODEL (converting it once if needed), say so, and load it (with kernels warm unless
    `warm=False`: the caller checks its input first, then calls warm_up)."""
    import time

    from lowbit.runtime import load

    path = resolve(model, method, quiet)
    check_context(path, context_length)
    t0 = time.perf_counter()
    llm = load(path, threads=threads, context_length=context_length, kv_cache=kv_cache)
    if warm:
        warm_up(llm, quiet)
    return llm, time.perf_counter() - t0


def check_fits(llm, n_prompt: int) -> None:
    """A prompt must leave room for at least one generated token."""
    if n_prompt + 1 > llm.context_length:
        limit = llm.args.max_position_embeddings
        raise click.ClickException(
            f"the prompt is {n_prompt} tokens, more than the context of {llm.context_length} leaves room "
            f"for (raise --ctx; the model's maximum is {limit})"
        )


def warm_up(llm, quiet: bool = False) -> None:
    """Compile (first run) or load (later runs) the numba kernels before timing anything; while
    numba really compiles, the user sees it (lowbit.commands.progress)."""
    from lowbit.commands.progress import compiling_notice
    from lowbit.runtime.warmup import warm_up_kernels

    with compiling_notice(enabled=not quiet):
        warm_up_kernels(llm)
