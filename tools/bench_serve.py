#!/usr/bin/env python3
"""Benchmark `lowbit serve` on loopback: aggregate decode tok/s at 1, 2, 4 and 8 concurrent
streams, the time to first token of a request arriving while 4 others stream, and the memory of
1 and 2 replicas sharing the model's memory map.

    python tools/bench_serve.py MODEL.lowbit [MODEL2.lowbit ...] [--tokens 48] [--streams 1,2,4,8]
        [--threads N] [--replicas]

Each run starts a real server process (`lowbit serve --parallel 8`) on 127.0.0.1 and drives it
with streaming /v1/completions requests (greedy; distinct prompts). Aggregate tok/s = completion
tokens of all streams / wall time from the first request to the last token. Numbers from a shared
machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

PROMPTS = [
    "Write a long story about a lighthouse keeper who",
    "Explain in detail how a steam engine works, starting with",
    "List the history of the printing press, beginning with",
    "Describe a walk through a busy market in the morning:",
    "Tell me everything about the life cycle of stars, from",
    "Give a step by step recipe for bread, starting with",
    "Narrate a football match between two old rivals:",
    "Describe the journey of a river from the mountains to",
    "Explain how computers add numbers, from transistors to",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, threads: int | None, parallel: int = 8) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "lowbit.cli", "serve", str(model), "--port", str(port), "--parallel", str(parallel),
           "--ctx", "1024"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server for {model} exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def stream(url: str, prompt: str, max_tokens: int, out: dict) -> None:
    t0 = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "logprobs": 0,
            "stream_options": {"include_usage": True}}  # logprobs: a chunk for every token
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                out["tokens"] = ev["usage"]["completion_tokens"]
            elif ev["choices"] and "first" not in out:  # the first token (its text may be held back)
                out["first"] = time.perf_counter() - t0
    out["end"] = time.perf_counter()
    out["start"] = t0


def concurrent(url: str, n: int, max_tokens: int) -> float:
    outs = [{} for _ in range(n)]
    threads = [threading.Thread(target=stream, args=(url, PROMPTS[i % len(PROMPTS)], max_tokens, outs[i]))
               for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(o["end"] for o in outs) - t0
    return sum(o.get("tokens", 0) for o in outs) / wall


def ttft_under_load(url: str, max_tokens: int) -> tuple[float, float]:
    alone: dict = {}
    stream(url, PROMPTS[8], 4, alone)
    outs = [{} for _ in range(4)]
    threads = [threading.Thread(target=stream, args=(url, PROMPTS[i], max_tokens * 3, outs[i])) for i in range(4)]
    for t in threads:
        t.start()
    while not all("first" in o for o in outs):
        time.sleep(0.01)
    late: dict = {}
    stream(url, PROMPTS[8], 4, late)
    for t in threads:
        t.join()
    return alone["first"], late["first"]


def memory(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssFile:", "RssAnon:")):
                k, v = line.split()[:2]
                out[k[:-1]] = int(v) / 1024
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) / 1024
    return out


def machine_used() -> float:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            info[k] = int(v.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def replicas(model: Path, threads: int | None) -> None:
    base = machine_used()
    procs = []
    for n in (1, 2):
        proc, url = start(model, threads, parallel=2)
        procs.append(proc)
        stream(url, PROMPTS[0], 16, {})
        time.sleep(1)
        mems = [memory(p.pid) for p in procs]
        per = ", ".join(f"RSS {m['VmRSS']:.0f} MiB (file {m['RssFile']:.0f}, anon {m['RssAnon']:.0f}, PSS {m['Pss']:.0f})"
                        for m in mems)
        print(f"  {n} replica(s): {per}; sum of PSS {sum(m['Pss'] for m in mems):.0f} MiB; "
              f"machine used +{machine_used() - base:.0f} MiB (shared machine)")
    for p in procs:
        p.terminate()
        p.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--tokens", type=int, default=48, help="tokens per stream")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--replicas", action="store_true", help="also measure 1 and 2 replicas' memory")
    a = ap.parse_args()
    for model in a.models:
        print(f"{model.name}:")
        proc, url = start(model, a.threads)
        try:
            concurrent(url, 1, 4)  # warm
            rates = {}
            for n in (int(s) for s in a.streams.split(",")):
                rates[n] = concurrent(url, n, a.tokens)
                print(f"  {n} stream(s): {rates[n]:.1f} tok/s aggregate ({rates[n] / rates[min(rates)]:.2f}x)", flush=True)
            alone, late = ttft_under_load(url, a.tokens)
            print(f"  TTFT alone {alone * 1000:.0f} ms; arriving while 4 stream {late * 1000:.0f} ms")
        finally:
            proc.terminate()
            proc.wait(20)
        if a.replicas:
            replicas(model, a.threads)


if __name__ == "__main__":
    main()
