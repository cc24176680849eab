"""The `lowbit` command: a thin click group. Each subcommand lives in lowbit/commands/ and is
imported only when it runs, so `lowbit --help` and `lowbit info` start instantly."""

from __future__ import annotations

import importlib
import sys

import click

from lowbit import __version__

# command name -> "module:function" under lowbit.commands
COMMANDS = {
    "convert": "convert:convert",
    "info": "info:info",
    "verify": "info:verify",
    "generate": "generate:generate",
    "chat": "chat:chat",
    "bench": "bench:bench",
    "eval": "evaluate:evaluate",
    "demo": "demo:demo",
    "serve": "serve:serve",
}

HELP = {
    "convert": "Convert a Hugging Face folder, hub id or GGUF file into a .lowbit file.",
    "info": "Show what a .lowbit file holds.",
    "verify": "Check a .lowbit file's structure and every checksum.",
    "generate": "Complete a prompt (raw or as chat).",
    "chat": "Chat with a model in the terminal.",
    "bench": "Measure load time, prefill and decode speed.",
    "eval": "Measure perplexity or KL divergence on a text.",
    "demo": "Build the default model (SmolLM2-135M-Instruct), convert it and answer a question.",
    "serve": "Serve a model over an OpenAI-compatible HTTP API, with a chat page.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"lowbit.commands.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in COMMANDS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lowbit")
def cli() -> None:
    """Run extremely low-bit LLMs on ordinary CPUs."""


def _one_line(e: click.ClickException) -> str:
    """A click error as one `error:` line (click prints usage, a hint and the error on three)."""
    msg = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError):  # click's own wording: "Invalid value ...", "No such ..."
        msg = msg[:1].lower() + msg[1:].removesuffix(".")
        if ctx is not None:
            msg += f" (see '{ctx.command_path} --help')"
    return f"error: {msg}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: lowbit's own errors and bad options become one line on stderr and exit code 1."""
    from lowbit.errors import LowbitError
    from lowbit.formats.errors import FormatError

    try:
        cli.main(args=argv, prog_name="lowbit", standalone_mode=False)
    except (LowbitError, FormatError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as e:  # plain `lowbit`: the help, as click shows it
        e.show()
        sys.exit(0)
    except click.ClickException as e:
        click.echo(_one_line(e), err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        if e.filename is None:
            raise
        click.echo(f"error: {e.filename}: {e.strerror}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
