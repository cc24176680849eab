"""`lowbit ARGS` run in-process, returning what a subprocess would (returncode, stdout, stderr).

A subprocess per CLI call re-imports numba and reloads its kernels (1-2 s each, ~40 calls in
the suite) and adds nothing to tests of formatting, exit codes and error lines. This goes through
`lowbit.cli.main` (so the one-line error handling is the real one) inside click's CliRunner
isolation (stdin, stdout, stderr and environment swapped for the call). Tests of what only a
real process shows (a terminal, signals, the README's Python snippet, an install) keep
subprocesses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping

from click.testing import CliRunner


@contextlib.contextmanager
def _chdir(path) -> Iterator[None]:  # contextlib.chdir is Python >= 3.11
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# read once, when their library is imported: a call that sets one needs a process of its own
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "NUMBA_", "OMP_", "TOKENIZERS_")


def run_lowbit(*args: str, input: str | None = None, cwd=None, env: Mapping[str, str] | None = None,
               **_ignored) -> subprocess.CompletedProcess:
    if any(k.startswith(IMPORT_TIME_ENV) for k in env or {}):
        return subprocess.run([sys.executable, "-m", "lowbit.cli", *args], capture_output=True, text=True,
                              input=input, cwd=cwd, env={**os.environ, **env}, timeout=600)
    from lowbit.cli import main

    code = 0
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(_chdir(cwd))
        out, err, _ = stack.enter_context(CliRunner().isolation(input=input, env=dict(env or {})))
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # a bug: what the interpreter would print, and its exit status
            code = 1
            err.write(traceback.format_exc().encode())
        stdout, stderr = out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace")
    return subprocess.CompletedProcess(["lowbit", *args], code, stdout, stderr)

