"""`lowbit bench MODEL`: speed and memory of one model."""

from __future__ import annotations

import json
import time

import click

from lowbit.commands.options import THREADS_ENV, ThreadList, kv_cache_option, method_choice


class DepthList(click.ParamType):
    """Comma-separated context depths in tokens (0 = an empty cache), as llama-bench's -d."""

    name = "list"

    def convert(self, value, param, ctx) -> list[int]:
        if isinstance(value, list):
            return value
        out = []
        for p in str(value).split(","):
            p = p.strip()
            if not p.isdigit():
                self.fail(f"{value!r} is not a comma-separated list of token counts (each 0 or more)", param, ctx)
            out.append(int(p))
        return out


@click.command()
@click.argument("model")
@click.option("--prompt-tokens", "-n", type=click.IntRange(min=1), default=128, show_default=True, help="Prompt length for prefill.")
@click.option("--gen-tokens", "-g", type=click.IntRange(min=1), default=128, show_default=True, help="Tokens to decode.")
@click.option("--threads", "-t", "thread_list", type=ThreadList(), envvar=THREADS_ENV, default=None, help="Thread counts, comma-separated (default: LOWBIT_THREADS or physical cores).")
@click.option("--repeats", "-r", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per setting (median reported).")
@click.option("--method", type=method_choice(), default="q4", show_default=True, help="Encoding used when MODEL must be converted first.")
@click.option("--depth", "-d", "depths", type=DepthList(), default="0", show_default=True,
              help="Context depths, comma-separated: prefill and decode are timed after this many tokens in the cache.")
@kv_cache_option
@click.option("--read-ceiling", is_flag=True,
              help="Also measure how fast this machine reads memory at each thread count (256 MB buffer): "
                   "decode's ceiling, beside the rate at which it streams the weights.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(model, prompt_tokens, gen_tokens, thread_list, repeats, method, depths, kv_cache, read_ceiling,
          as_json) -> None:
    """Measure load time, time to first token, prefill and decode tokens/s and peak RSS."""
    from lowbit.bench import bench_model, bench_report
    from lowbit.commands.options import model_limit, resolve, warm_up
    from lowbit.file_info import summarize
    from lowbit.runtime import load

    path = resolve(model, method, quiet=as_json)
    limit = model_limit(path)
    depth = max(depths)
    if depth + prompt_tokens + gen_tokens > limit:  # refused now, not after minutes of prefill
        raise click.ClickException(
            f"-d {depth} plus -n {prompt_tokens} plus -g {gen_tokens} tokens need a context of "
            f"{depth + prompt_tokens + gen_tokens}; the model's maximum is {limit}"
        )
    t0 = time.perf_counter()
    llm = load(path, context_length=min(depth + prompt_tokens + gen_tokens + 16, limit), kv_cache=kv_cache)
    load_s = time.perf_counter() - t0
    warm_up(llm, quiet=as_json)
    probe = None
    if read_ceiling:
        from lowbit.runtime.read_bandwidth import ReadProbe

        probe = ReadProbe()
    rows = bench_model(llm, prompt_tokens, gen_tokens, thread_list, repeats, depths, probe)
    report = bench_report(path, load_s, rows, summarize(llm.reader))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"{path.name}: {report['file_size_bytes'] / 1e6:.1f} MB, {report['bits_per_weight']:.3f} bits/weight "
        f"(linear {report['linear_bits_per_weight']:.3f}), load {load_s:.2f} s"
    )
    click.echo(f"{'threads':>7} {'depth':>6} {'TTFT s':>8} {'prefill tok/s':>14} {'decode tok/s':>13} "
               f"{'weights GB/s':>13}" + (f" {'ceiling GB/s':>13}" if probe else ""))
    for r in report["runs"]:
        weights = r["weights_read_gbs"]
        ceiling = r["read_ceiling_gbs"]
        click.echo(
            f"{r['threads']:>7} {r['depth']:>6} {r['time_to_first_token_s']:>8.3f} {r['prefill_tps']:>14.1f} "
            f"{r['decode_tps']:>13.1f} {weights if weights is not None else float('nan'):>13.1f}"
            + (f" {ceiling:>13.1f}" if ceiling is not None else "")
        )
    click.echo(f"peak RSS {report['peak_rss_mb']:.0f} MB (prompt {prompt_tokens}, decode {gen_tokens}, "
               f"KV cache {kv_cache}, median of {repeats}; a decode token reads "
               f"{(report['decode_read_bytes'] or 0) / 1e6:.0f} MB of weights)")
