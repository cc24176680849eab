#!/usr/bin/env python3
"""The engines tools/bench_vs_llamacpp.py compares, each in its own worker process: one adapter per
engine (reset / prefill / decode, as lowbit.bench.timed_run expects), the worker loop that answers
run requests as JSON lines, and the parent's handle on a worker.

    python tools/bench_engines.py ENGINE MODEL THREADS CTX   # started by Worker, not by hand
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.bench import peak_rss_mb, timed_run


class LowbitEngine:
    name = "lowbit"

    def __init__(self, path: str, threads: int, ctx: int) -> None:
        from lowbit.runtime import load
        from lowbit.runtime.warmup import warm_up_kernels

        t0 = time.perf_counter()
        self.llm = load(path, threads=threads, context_length=ctx)
        self.load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm_up_kernels(self.llm)
        self.warmup_s = time.perf_counter() - t0
        self.threads = threads

    def info(self) -> dict[str, Any]:
        import numba

        try:
            layer = numba.threading_layer()
        except ValueError:
            layer = None
        return {"numba_threading_layer": layer, "numba_num_threads": numba.config.NUMBA_NUM_THREADS}

    def set_threads(self, n: int) -> None:
        self.llm.threads = n
        self.threads = n

    def reset(self) -> None:
        self.llm.reset()

    def prefill(self, ids: list[int]) -> np.ndarray:
        return self.llm.prefill(ids)

    def decode(self, tok: int) -> np.ndarray:
        return self.llm.decode(tok)


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, path: str, threads: int, ctx: int) -> None:
        self.path, self.ctx = path, ctx
        self.llm = None
        t0 = time.perf_counter()
        self._open(threads)
        self.load_s = time.perf_counter() - t0
        self.warmup_s = 0.0

    def _open(self, threads: int) -> None:
        import llama_cpp

        if self.llm is not None:
            self.llm.close()
            self.llm = None
        kw = dict(n_ctx=self.ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False,
                  logits_all=False)
        if os.environ.get("LOWBIT_BENCH_NO_REPACK"):  # --no-repack: AMX Xeons segfault with repacking
            from gguf_variants import open_llama

            self.llm = open_llama(self.path, repack=False, **kw)
        else:
            self.llm = llama_cpp.Llama(self.path, **kw)
        self.n_vocab = self.llm.n_vocab()
        self.threads = threads

    def info(self) -> dict[str, Any]:
        import llama_cpp

        return {"llama_cpp_python": llama_cpp.__version__,
                "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}

    def set_threads(self, n: int) -> None:
        if n != self.threads:  # a fresh context with n_threads=n_threads_batch=n (weights stay mmapped)
            self._open(n)

    def reset(self) -> None:
        self.llm.reset()

    def _logits(self) -> np.ndarray:
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(self.n_vocab,))

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.llm.eval(ids)
        return self._logits()

    def decode(self, tok: int) -> np.ndarray:
        self.llm.eval([tok])
        return self._logits()


def _peak_rss_mb() -> float:
    """This process's peak RSS in MB. VmHWM belongs to the process's own address space; ru_maxrss
    (lowbit.bench.peak_rss_mb) would also carry the parent's peak, which Linux keeps across
    fork + exec, so every worker would report the (large) parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_mb()


def _run(engine, prompt: list[int], gen: int) -> dict[str, Any]:
    r = timed_run(engine, prompt, gen)
    return {
        "prefill_s": r.prefill_s,
        "time_to_first_token_s": r.time_to_first_token_s,
        "decode_s": r.decode_s,
        "prefill_tps": len(prompt) / r.prefill_s,
        "decode_tps": gen / r.decode_s if gen else float("nan"),
        "tokens": r.tokens,
    }


def worker_main(engine_name: str, path: str, threads: int, ctx: int) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol channel
    os.dup2(2, 1)  # anything a library prints (C or Python) goes to stderr
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        engine = (LowbitEngine if engine_name == "lowbit" else LlamaCppEngine)(path, threads, ctx)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        send({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    send({"ok": True, "load_s": engine.load_s, "warmup_s": engine.warmup_s, "peak_rss_mb": _peak_rss_mb(),
          "info": engine.info()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd = req.get("cmd")
        try:
            if cmd == "quit":
                send({"ok": True})
                break
            engine.set_threads(int(req["threads"]))
            out = _run(engine, req["prompt"], int(req["gen"]))
            if cmd == "warm":
                out = {}
            send({"ok": True, **out, "peak_rss_mb": _peak_rss_mb()})
        except Exception as e:  # noqa: BLE001
            send({"ok": False, "error": f"{type(e).__name__}: {e}"})
    return 0


class Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, engine: str, path: Path, threads: int, ctx: int, log_path: Path) -> None:
        self.engine, self.path = engine, path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, str(Path(__file__).resolve()), engine, str(path), str(threads), str(ctx)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1)
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"{self.engine} worker for {self.path.name} exited (rc {self.proc.returncode}): "
                               f"{self.log_tail()}")
        msg = json.loads(line)
        if not msg.get("ok"):
            raise RuntimeError(f"{self.engine} worker for {self.path.name}: {msg.get('error')} {self.log_tail()}")
        return msg

    def log_tail(self, n: int = 6) -> str:
        self._log.flush()
        try:
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def request(self, **req: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request(cmd="quit")
            except (RuntimeError, BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("lowbit", "llamacpp"):
        sys.exit("usage: bench_engines.py lowbit|llamacpp MODEL THREADS CTX (started by bench_vs_llamacpp.py)")
    engine_name, model, n_threads, n_ctx = sys.argv[1:5]
    sys.exit(worker_main(engine_name, model, int(n_threads), int(n_ctx)))
