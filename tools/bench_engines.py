#!/usr/bin/env python3
"""The engines tools/bench_vs_llamacpp.py compares, each in its own worker process: one adapter per
engine (reset / prefill / decode, as lowbit.bench.timed_run expects), the worker loop that answers
run requests as JSON lines, and the parent's handle on a worker.

bitnet.cpp (microsoft/BitNet's llama.cpp fork, built by ../shared/tools/bitnetcpp/bitnetcpp.sh) has
no Python binding: its adapter runs that build's own `llama-bench` once per request (one
repetition of pp P and tg G, its own timing: tg decodes from an empty cache, no depth option) and
reports the same fields; its binary comes from $LOWBIT_BENCH_BITNETCPP.

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
        """Run ids after the cached prefix they share with the tokens held (at most len − 1 kept,
        so the last token runs and gives logits), as lowbit's prefill does: decode at depth keeps
        its context between runs. Llama.eval appends at n_tokens and drops the cache beyond."""
        held = self.llm.input_ids[: self.llm.n_tokens]
        keep = 0
        for a, b in zip(held, ids[:-1]):
            if int(a) != b:
                break
            keep += 1
        self.llm.n_tokens = keep
        self.llm.eval(ids[keep:])
        return self._logits()

    def decode(self, tok: int) -> np.ndarray:
        self.llm.eval([tok])
        return self._logits()


class BitnetCppEngine:
    """bitnet.cpp through its llama-bench: `run` measures one pp/tg repetition (timed_run does not
    apply: the binary times itself; its prompt is its own random tokens of the same length)."""

    name = "bitnetcpp"
    ENV = "LOWBIT_BENCH_BITNETCPP"

    def __init__(self, path: str, threads: int, ctx: int) -> None:
        self.path, self.threads = path, threads
        self.binary = os.environ.get(self.ENV, "")
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"${self.ENV} ({self.binary!r}) is not bitnet.cpp's llama-bench binary")
        self.load_s = self.warmup_s = 0.0

    def info(self) -> dict[str, Any]:
        return {"binary": self.binary}

    def set_threads(self, n: int) -> None:
        self.threads = n

    def run(self, n_prompt: int, gen: int) -> dict[str, Any]:
        import resource

        cmd = [self.binary, "-m", self.path, "-p", str(n_prompt), "-n", str(gen), "-t", str(self.threads),
               "-r", "1", "-o", "json"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"llama-bench exited {p.returncode}: {p.stderr.strip()[-300:]}")
        tests = json.loads(p.stdout)
        pp = next(e for e in tests if e["n_prompt"] > 0 and e["n_gen"] == 0)["avg_ts"]
        tg = next((e for e in tests if e["n_gen"] > 0 and e["n_prompt"] == 0), {"avg_ts": float("nan")})["avg_ts"]
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return {"prefill_s": n_prompt / pp, "time_to_first_token_s": n_prompt / pp, "decode_s": gen / tg if gen else 0.0,
                "prefill_tps": pp, "decode_tps": tg if gen else float("nan"), "tokens": [], "peak_rss_mb": peak}


ENGINES = {"lowbit": LowbitEngine, "llamacpp": LlamaCppEngine, "bitnetcpp": BitnetCppEngine}


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


class _KeepContext:
    """An engine whose reset() keeps the cache: timed_run's untimed context prefill then finds the
    context still cached from the last run at this depth (both engines reuse a shared prefix), so
    a depth-4096 run does not re-run 4096 tokens each time. Prompt and decoded tokens after it are
    dropped by the next prefill, as after a reset."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def reset(self) -> None:
        pass

    def prefill(self, ids: list[int]) -> np.ndarray:
        return self.engine.prefill(ids)

    def decode(self, tok: int) -> np.ndarray:
        return self.engine.decode(tok)


def _run(engine, prompt: list[int], gen: int, context: list[int] | None = None) -> dict[str, Any]:
    if isinstance(engine, BitnetCppEngine):
        if context:
            raise RuntimeError("bitnet.cpp's llama-bench has no depth option")
        return engine.run(len(prompt), gen)
    r = timed_run(_KeepContext(engine) if context else engine, prompt, gen, context)
    return {
        "prefill_s": r.prefill_s,
        "time_to_first_token_s": r.time_to_first_token_s,
        "decode_s": r.decode_s,
        "prefill_tps": len(prompt) / r.prefill_s,
        "decode_tps": gen / r.decode_s if gen else float("nan"),
        "tokens": r.tokens,
    }


OPENMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")  # reported by each worker


def worker_main(engine_name: str, path: str, threads: int, ctx: int) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol channel
    os.dup2(2, 1)  # anything a library prints (C or Python) goes to stderr
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        engine = ENGINES[engine_name](path, threads, ctx)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        send({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    send({"ok": True, "load_s": engine.load_s, "warmup_s": engine.warmup_s, "peak_rss_mb": _peak_rss_mb(),
          "info": {**engine.info(), "openmp_env": {k: os.environ[k] for k in OPENMP_ENV if k in os.environ}}})
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
            out = _run(engine, req["prompt"], int(req["gen"]), req.get("context"))
            if cmd == "warm":
                out = {}
            send({"ok": True, "peak_rss_mb": _peak_rss_mb(), **out})
        except Exception as e:  # noqa: BLE001
            send({"ok": False, "error": f"{type(e).__name__}: {e}"})
    return 0


def worker_environment(engine: str) -> dict[str, str] | None:
    """The environment a worker starts with: the parent's for lowbit; for llama.cpp and bitnet.cpp
    (OpenMP both) the parent's without lowbit's own OpenMP wait settings, which the parent picked
    up when it imported lowbit.runtime and which made their 2-thread decode 2-2.5x slower."""
    if engine == "lowbit":
        return None
    from lowbit.runtime.threads import environment_for_other_programs

    return environment_for_other_programs()


class Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, engine: str, path: Path, threads: int, ctx: int, log_path: Path) -> None:
        self.engine, self.path = engine, path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, str(Path(__file__).resolve()), engine, str(path), str(threads), str(ctx)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1, env=worker_environment(engine))
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
    if len(sys.argv) != 5 or sys.argv[1] not in ENGINES:
        sys.exit(f"usage: bench_engines.py {'|'.join(ENGINES)} MODEL THREADS CTX (started by bench_vs_llamacpp.py)")
    engine_name, model, n_threads, n_ctx = sys.argv[1:5]
    sys.exit(worker_main(engine_name, model, int(n_threads), int(n_ctx)))
