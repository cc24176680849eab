"""`lowbit serve MODEL`: the OpenAI-compatible server (a thin wrapper over lowbit.serve.create_app)."""

from __future__ import annotations

import ipaddress

import click

from lowbit.commands.options import model_options
from lowbit.errors import LowbitError


@click.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The default answers only this machine; 0.0.0.0 opens it to the network.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0: any free port).")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(min=1),
              help="Requests decoded together in one batch; more wait in the queue.")
@click.option("--queue", "max_queue", default=64, show_default=True, type=click.IntRange(min=0),
              help="Requests that may wait beyond --parallel; past that the server answers 429 with Retry-After.")
@click.option("--kv-memory", "kv_budget_mb", type=click.FloatRange(min=0, min_open=True),
              help="KV-cache memory in MiB for all requests together (default: --parallel full contexts).")
@click.option("--prefill-chunk", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most prompt tokens run per batch step, so running streams keep flowing while a prompt is read.")
@click.option("--api-key", envvar="LOWBIT_API_KEY",
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health and the page (env LOWBIT_API_KEY).")
@click.option("--model-name", help="Model id reported by /v1/models and expected in requests (default: the file's stem).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level.")
@model_options  # --method, --ctx (of each request), --threads: validated as on every command
def serve(model, host, port, threads, context_length, parallel, max_queue, kv_budget_mb, prefill_chunk,
          api_key, model_name, method, kv_cache, log_level) -> None:
    """Serve MODEL (a .lowbit file or anything `convert` accepts) over OpenAI's API: POST
    /v1/chat/completions and /v1/completions (streaming or not), GET /v1/models, GET /health, and
    a chat page at /. Requests in flight are decoded together (continuous batching)."""
    if api_key is not None and not api_key.strip():
        raise click.BadParameter("must not be empty", param_hint="--api-key")
    try:
        import uvicorn

        from lowbit.serve import create_app
    except ImportError as e:
        raise LowbitError(f"lowbit serve needs the serve extra: pip install 'lowbit[serve]' ({e.name} missing)") from None
    try:
        if not ipaddress.ip_address(host).is_loopback:
            click.echo(f"warning: binding {host}: the server is reachable from other machines"
                       + ("" if api_key else " and has no --api-key"), err=True)
    except ValueError:
        pass  # a host name: uvicorn resolves it
    from lowbit.commands.options import open_model

    llm, _ = open_model(model, threads, context_length, method, kv_cache=kv_cache)
    app = create_app(llm, model_name=model_name, api_key=api_key, parallel=parallel, max_queue=max_queue,
                     kv_budget_mb=kv_budget_mb, prefill_chunk=prefill_chunk)
    where = f"http://{host}:{port}" if port else f"{host}, on a port the system picks (--log-level info shows it)"
    click.echo(f"serving {app.state.model_name} on {where} (Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
