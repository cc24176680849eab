"""Decode speed at --threads 1 and 2 while another process keeps one core busy.

A machine is rarely idle: a browser, a build or a second model shares the cores. A parallel region
ends only when its slowest thread does, so a thread that has to wait for the busy core's time
slice stalls every region (about five per layer per token). This tool measures it:

    python tools/bench_contention.py [MODEL] [--tokens 64] [--rounds 5] [--env NAME=VALUE ...]

- a busy-loop process pinned to the last CPU (`--no-busy` for the quiet baseline);
- one lowbit process (a fresh one per `--env` variant, since the threading layer reads its
  settings at start) that loads MODEL once and then alternates thread counts round by round
  (1, 2, 1, 2, ...: drift hits both alike), timing time to first token and greedy decode;
- medians per thread count, printed as a table (and `--json`).

MODEL defaults to SmolLM2-135M-Instruct q4 (built and converted once, as `lowbit demo` does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
import lowbit
from lowbit.runtime.warmup import warm_up_kernels
path, tokens, rounds, counts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(t) for t in sys.argv[4].split(",")]
llm = lowbit.load(path, threads=max(counts))
warm_up_kernels(llm)
prompt = llm.tokenize("The history of the city begins in the early middle ages, when a small " * 4)
rows = []
for r in range(rounds):
    for n in (counts if r % 2 == 0 else counts[::-1]):
        llm.threads = n
        llm.reset()
        t0 = time.perf_counter()
        logits = llm.prefill(prompt)
        t1 = time.perf_counter()
        for _ in range(tokens):
            logits = llm.decode(int(np.argmax(logits)))
        t2 = time.perf_counter()
        rows.append({"threads": n, "round": r, "ttft_s": t1 - t0, "decode_tps": tokens / (t2 - t1)})
import numba
print(json.dumps({"layer": numba.threading_layer(), "rows": rows}))
"""


def busy_loop() -> subprocess.Popen:
    """A process spinning on the last CPU this process may use."""
    cpu = max(os.sched_getaffinity(0))
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def default_model() -> str:
    from lowbit.demo_model import ensure_smollm2_checkpoint
    from lowbit.models import resolve_model

    return str(resolve_model(str(ensure_smollm2_checkpoint()), method="q4"))


def measure(model: str, tokens: int, rounds: int, counts: list[int], env: dict[str, str], busy: bool) -> dict:
    hog = busy_loop() if busy else None
    try:
        time.sleep(0.2 if busy else 0)
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, model, str(tokens), str(rounds), ",".join(map(str, counts))],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=1800,
        )
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = {}
    for n in counts:
        rows = [r for r in out["rows"] if r["threads"] == n]
        summary[n] = {
            "decode_tps": statistics.median(r["decode_tps"] for r in rows),
            "ttft_s": statistics.median(r["ttft_s"] for r in rows),
            "runs": [round(r["decode_tps"], 1) for r in rows],
        }
    return {"layer": out["layer"], "env": env, "busy": busy, "threads": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help=".lowbit file (default: SmolLM2-135M-Instruct q4)")
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens decoded per run")
    ap.add_argument("--rounds", type=int, default=5, help="runs per thread count (median reported)")
    ap.add_argument("--threads", default="1,2", help="thread counts to alternate")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                    help="a variant: environment for the lowbit process ('default': none; repeat for several)")
    ap.add_argument("--no-busy", action="store_true", help="no competing process (baseline)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    model = a.model or default_model()
    counts = [int(t) for t in a.threads.split(",")]
    variants = [{} if v == "default" else dict(kv.split("=", 1) for kv in v.split(",")) for v in a.env] or [{}]
    results = [measure(model, a.tokens, a.rounds, counts, env, not a.no_busy) for env in variants]
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{os.path.basename(model)}, {a.tokens} tokens x {a.rounds} rounds, "
          f"{'a busy loop on CPU ' + str(max(os.sched_getaffinity(0))) if not a.no_busy else 'no competing process'}")
    print(f"{'variant':<44} {'layer':<9} {'threads':>7} {'decode tok/s':>13} {'TTFT s':>8}  runs")
    for res in results:
        name = ",".join(f"{k}={v}" for k, v in res["env"].items()) or "(defaults)"
        for n, s in res["threads"].items():
            print(f"{name:<44} {res['layer']:<9} {n:>7} {s['decode_tps']:>13.1f} {s['ttft_s']:>8.3f}  {s['runs']}")


if __name__ == "__main__":
    main()
