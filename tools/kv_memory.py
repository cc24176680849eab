"""KV cache memory at a depth, per cache type: exact bytes and the process's RSS.

    python tools/kv_memory.py MODEL.lowbit [--ctx 4096] [--kinds f32,f16,q8]

Each type runs in its own process: load MODEL with that cache, fill every position of every
layer through the cache's own store kernel (what a prefill of ctx tokens leaves, without the
minutes of a 2B prefill), decode 4 tokens at the end of the context (attention reads all of it),
and report the cache's bytes and the peak RSS (weights are mapped: the pages decode touched count).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def measure(path: str, ctx: int, kind: str) -> dict:
    import numpy as np

    import lowbit
    from lowbit.bench import peak_rss_mb
    from lowbit.runtime.kernels.kv_store import kv_write

    llm = lowbit.load(path, threads=1, context_length=ctx, kv_cache=kind)
    base = peak_rss_mb()
    c, a = llm.cache, llm.args
    rng = np.random.default_rng(0)
    fill = ctx - 4
    for layer in range(a.num_hidden_layers):
        for arr, sc in ((c.keys, c.key_scales), (c.values, c.value_scales)):
            x = rng.standard_normal((fill, a.num_key_value_heads, a.head_dim), dtype=np.float32)
            if kind == "f32":
                arr[layer, :, :fill] = x.transpose(1, 0, 2)
            else:
                kv_write(arr[layer], sc[layer], 0, x)
    c.length, c.ids = fill, [1] * fill
    tok = 1
    for _ in range(4):
        tok = int(np.argmax(llm.decode(tok)))
    return {"kind": kind, "ctx": ctx, "kv_bytes": c.nbytes, "kv_mib": c.nbytes / 2**20,
            "rss_after_load_mb": base, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--kinds", default="f32,f16,q8")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.ctx, args.one)))
        return
    rows = []
    for kind in args.kinds.split(","):
        out = subprocess.run([sys.executable, __file__, args.model, "--ctx", str(args.ctx), "--one", kind],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    f32 = next((r["kv_bytes"] for r in rows if r["kind"] == "f32"), None)
    print(f"{'cache':>5} {'KV MiB':>8} {'× f32':>6} {'RSS after load MB':>18} {'peak RSS MB':>12}")
    for r in rows:
        ratio = f"{r['kv_bytes'] / f32:.3f}" if f32 else "-"
        print(f"{r['kind']:>5} {r['kv_mib']:>8.1f} {ratio:>6} {r['rss_after_load_mb']:>18.0f} {r['peak_rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()
