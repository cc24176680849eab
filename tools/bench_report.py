"""The text table of a tools/bench_vs_llamacpp.py report (a run just made, or a saved --out JSON):
one row per pair, thread count, prompt length and depth (older reports: one prompt, depth 0)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def _types(files: dict[str, Any]) -> str:
    return "+".join(f"{k}×{v}" if len(files["linear_types"]) > 1 else k for k, v in files["linear_types"].items())


def _case(row: dict[str, Any], settings: dict[str, Any]) -> tuple[int, int]:
    """(prompt tokens, depth) of a row."""
    p = settings["prompt_tokens"]
    return row.get("prompt_tokens", p[0] if isinstance(p, list) else p), row.get("depth", 0)


def decode_scaling(pair: dict[str, Any], settings: dict[str, Any] | None = None) -> tuple[float | None, float | None]:
    """Decode tok/s at the most threads over the fewest, for lowbit and its peer: the median of
    run r's ratio (the runs of both thread counts alternate, so run r's pair is minutes apart), on
    the first case (first prompt length, depth 0)."""
    rows = pair["threads"]
    if settings is not None and rows:
        first = _case(rows[0], settings)
        rows = sorted((r for r in rows if _case(r, settings) == first), key=lambda r: r["threads"])
    if len(rows) < 2:
        return None, None
    lo, hi = rows[0], rows[-1]
    return tuple(
        statistics.median(b["decode_tps"] / a["decode_tps"] for a, b in zip(lo[e]["runs"], hi[e]["runs"]))
        for e in ("lowbit", "llamacpp")
    )


def probed_runs(pairs: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """Each run's decode tok/s @ the memory read rate measured just before / just after it (GB/s):
    on a VM whose read ceiling moves between runs, which runs met which machine."""
    lines = []
    for p in pairs:
        for row in sorted(p["threads"], key=lambda r: (r["threads"], *_case(r, settings))):
            cells = {e: [f"{r['decode_tps']:.1f}@{r['read_ceiling_gbs']:.0f}/{r.get('read_ceiling_after_gbs') or 0:.0f}"
                         for r in row[e].get("runs", [])
                         if r.get("read_ceiling_gbs") is not None] for e in ("lowbit", "llamacpp")}
            if cells["lowbit"]:
                pp, depth = _case(row, settings)
                lines.append(f"decode tok/s @ read GB/s before/after, {p['pair']} t={row['threads']} pp{pp} d{depth}: lowbit "
                             + " ".join(cells["lowbit"]) + " | peer " + " ".join(cells["llamacpp"]))
    return lines


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"lowbit vs llama.cpp on {report['machine']['cpu']} ({report['machine']['cpus']} CPUs), "
             f"llama-cpp-python {report['machine']['llama_cpp_python']}, lowbit {report['machine']['lowbit']}",
             f"prompt {s['prompt_tokens']} tokens, decode {s['gen_tokens']} tokens, median of {s['repeats']} "
             f"alternating runs; ratio = lowbit / the peer engine (llama.cpp; bitnet.cpp for bitnet2b4t); "
             f"depth d: after d tokens of context (llama-bench -d)",
             f"load average (1/5/15 min) at start {report['machine'].get('loadavg_at_start')}, "
             f"at end {report['machine'].get('loadavg_at_end')} (other processes share these CPUs)"]
    for name, e in report["models"].items():
        lines += ["", f"== {name}: {e['description']}", "",
                  f"{'file':<22} {'linear types':<28} {'lin bpw':>7} {'all bpw':>7} {'embd/out':<17} {'MB':>8}"]
        for key, f in e["files"].items():
            eo = f"{f['token_embd_type']}/{f['output_type'] if not str(f['output_type']).startswith('(') else 'tied'}"
            lines.append(f"{key:<22} {_types(f)[:28]:<28} {f['linear_bits_per_weight']:>7.3f} {f['bits_per_weight']:>7.3f} "
                         f"{eo:<17} {f['file_size_bytes'] / 1e6:>8.1f}")
        peer = "bitnet" if any(p.get("peer_engine") == "bitnetcpp" for p in e["pairs"]) else "llama"
        hdr = (f"{'pair':<12} {'thr':>3} {'pp':>4} {'depth':>5} | {'decode tok/s':^22} | {'prefill tok/s':^22} | "
               f"{'TTFT s':^22} | {'peak RSS MB':^22} | {'size':>5} {'agree':>5}")
        sub = (f"{'':<12} {'':>3} {'':>4} {'':>5} | " + " | ".join(f"{'lowbit':>7}{peer:>8}{'ratio':>7}" for _ in range(4))
               + f" | {'ratio':>5} {'tok':>5}")
        lines += ["", hdr, sub, "-" * len(sub)]
        for p in e["pairs"]:
            size_ratio = e["files"][p["lowbit_file"]]["file_size_bytes"] / e["files"][p["llamacpp_file"]]["file_size_bytes"]
            label = f"{p['pair']}"
            if not p["threads"]:
                err = p.get("lowbit_error") or p.get("llamacpp_error")
                lines.append(f"{label:<12}      failed: {err[:120]}")
            for row in sorted(p["threads"], key=lambda r: (r["threads"], *_case(r, s))):
                cells = []
                for k, fmt in (("decode_tps", ".1f"), ("prefill_tps", ".1f"), ("time_to_first_token_s", ".3f"),
                               ("peak_rss_mb", ".0f")):
                    cells.append(f"{row['lowbit'][k]:>7{fmt}}{row['llamacpp'][k]:>8{fmt}}{row['ratio'][k]:>7.2f}")
                pp, depth = _case(row, s)
                agree = row.get("greedy_tokens_agree")
                lines.append(f"{label:<12} {row['threads']:>3} {pp:>4} {depth:>5} | " + " | ".join(cells)
                             + f" | {size_ratio:>5.2f} {'-' if agree is None else agree:>5}")
                label = ""
        lines += ["", "pairs: " + ", ".join(f"{p['pair']} = lowbit {p['lowbit_method']} vs "
                                            f"{'bitnet.cpp ' if p.get('peer_engine') == 'bitnetcpp' else ''}{p['llamacpp_type']}"
                                            for p in e["pairs"])]
        scaling = [f"{p['pair']} lowbit {sl:.2f}, {peer} {sc:.2f}" for p in e["pairs"]
                   for sl, sc in [decode_scaling(p, s)] if sl is not None]
        if scaling:
            t = sorted({r["threads"] for r in e["pairs"][0]["threads"]})
            lines.append(f"decode scaling, {t[-1]} threads / {t[0]} (median of the per-repetition "
                         "ratios): " + "; ".join(scaling))
        lines += probed_runs(e["pairs"], s)
        for f in e["files"].values():
            fb = f.get("quantizer_fallbacks")
            if fb:
                lines.append(f"llama.cpp fell back in {Path(f['path']).name}: "
                             + ", ".join(f"{k} ({v} tensors)" for k, v in fb.items()))
        for r in e["refused"]:
            lines.append(f"refused: {r['pair']} at {r['stage']}: {r['error'][:300]}")
        made = [st for st in e["steps"] if not st["cached"]]
        if made:
            lines.append("generated this run: " + "; ".join(f"{st['step']} {st['seconds']:.1f} s" for st in made))
        lines.append("'agree': leading greedy tokens equal between the engines (run 1); "
                     "ratios above 1 = lowbit faster (tok/s) or slower/larger (TTFT, RSS, size)")
    return "\n".join(lines)
