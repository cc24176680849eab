#!/usr/bin/env python3
"""Accuracy per bit for SmolLM2-135M-Instruct in one run: lowbit's encodings (RTN and calibrated)
and llama.cpp's types (quantised from the same f16 weights), all scored on the same held-out text
and the same windows against lowbit's f32 reference: file size, bits/weight, PPL, KL, top-1.

    python tools/quality_table.py [--ctx 256] [--calib-sequences 32] [--out docs/quality.md]

llama.cpp is driven through llama-cpp-python (`pip install -e '.[bench]'`) on our token ids, so
both engines see exactly the same tokens and windows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gguf_variants import dequantized_f16_gguf, gguf_summary, open_llama, quantize_gguf  # noqa: E402

from lowbit.convert.converter import convert  # noqa: E402
from lowbit.demo_model import ensure_smollm2_checkpoint, smollm2_gguf_path  # noqa: E402
from lowbit.eval.perplexity import make_windows, model_bos, scored_logprobs, window_logprobs  # noqa: E402
from lowbit.file_info import summarize  # noqa: E402
from lowbit.model_cache import lowbit_home  # noqa: E402
from lowbit.quant.calibrate import (  # noqa: E402
    CalibrationConfig,
    default_calibration_text,
    default_evaluation_text,
)
from lowbit.runtime import load  # noqa: E402

ONEBIT_MLPS = 'method = "f32"\n[[rules]]\npattern = "model.layers.1?.mlp.*_proj.weight"\nencoding = "onebit"\n'


def refined(encoding: str, down_group: int) -> str:
    """A recipe of `encoding` with HQQ-style refined group scales (`refine = true`) on every linear
    layer, at the groups the method itself picks on SmolLM2 (576-wide rows take G = 64)."""
    rule = '[[rules]]\npattern = "{}"\nencoding = "{}"\ngroup_size = {}\nrefine = true\n'
    return (rule.format("model.layers.*.mlp.down_proj.weight", encoding, down_group)
            + rule.format("model.layers.*_proj.weight", encoding, 64))


LOWBIT_VARIANTS = [  # label, convert() keyword arguments (recipe_text: a TOML recipe), calibrated?
    ("q8", dict(method="q8"), False),
    ("q4 g128 RTN", dict(method="q4"), False),
    ("q4 g128 GPTQ", dict(method="q4"), True),
    ("q3 g128 RTN", dict(method="q3"), False),
    ("q3 g128 GPTQ", dict(method="q3"), True),
    ("q2 g64 RTN", dict(method="q2"), False),
    ("q2 g64 GPTQ", dict(method="q2"), True),
    ("ternary absmean", dict(method="ternary"), False),
    ("ternary calibrated", dict(method="ternary"), True),
    ("onebit SVID", dict(method="onebit"), False),
    ("onebit calibrated", dict(method="onebit"), True),
    # incoherence processing (--rotate, lowbit.quant.rotation) before the quantiser: see ROTATED
    # HQQ-style closed-form group scales and zero points (lowbit.quant.hqq), for RTN and as GPTQ's grid
    ("q4 g128 RTN + HQQ", dict(method="q4", recipe_text=refined("q4", 128)), False),
    ("q3 g128 GPTQ + HQQ", dict(method="q3", recipe_text=refined("q3", 128)), True),
    ("q2 g64 GPTQ + HQQ", dict(method="q2", recipe_text=refined("q2", 64)), True),
    ("target-bpw 2.5 (GPTQ)", dict(method="q2", target_bpw=2.5), True),
    ("target-bpw 3.0 (GPTQ)", dict(method="q2", target_bpw=3.0), True),
    # llama.cpp's Q2_K, Q3_K_M and Q4_K_M fall back to 4-5 bit types on SmolLM2's 576-wide rows: lowbit at
    # their actual bits/weight
    ("target-bpw 4.23 = Q2_K's bits (GPTQ)", dict(method="q2", target_bpw=4.23), True),
    ("target-bpw 4.63 = Q3_K_M's bits (GPTQ)", dict(method="q3", target_bpw=4.63), True),
    ("target-bpw 5.53 = Q4_K_M's bits (GPTQ)", dict(method="q4", target_bpw=5.53), True),
    # 1 bit where the rest of the model still works: SVID against ALS-fitted g/h
    ("onebit MLPs 10-19 (rest f32) SVID", dict(method="f32", recipe_text=ONEBIT_MLPS), False),
    ("onebit MLPs 10-19 (rest f32) calibrated", dict(method="f32", recipe_text=ONEBIT_MLPS), True),
    # the source GGUF itself, re-packed without a second rounding (Q4_1 -> q4f, Q8_0 -> q8 g32)
    ("keep (the Q4_1 GGUF re-packed)", dict(method="keep", source="gguf"), False),
    # learned calibration (lowbit[train], `lowbit convert --train`): its data-free text, 2 torch threads;
    # KD starts from the paper's SVID (the default, lr 1e-3) or from the calibrated tensors (`--kd-init
    # calibrated`, lr 3e-4); the lr rows are the ablation behind the calibrated start's lr
    ("onebit KD 10 min", dict(method="onebit", train=dict(mode="kd", budget_minutes=10)), False),
    ("onebit KD 10 min from calibrated", dict(method="onebit", train=dict(mode="kd", budget_minutes=10, init="calibrated")), False),
    ("onebit KD 10 min from calibrated lr 1e-3", dict(method="onebit", train=dict(mode="kd", budget_minutes=10, init="calibrated", lr=1e-3)), False),
    ("onebit KD 10 min from calibrated lr 1e-4", dict(method="onebit", train=dict(mode="kd", budget_minutes=10, init="calibrated", lr=1e-4)), False),
    ("onebit KD 60 min", dict(method="onebit", train=dict(mode="kd", budget_minutes=60)), False),
    ("onebit KD 60 min from calibrated", dict(method="onebit", train=dict(mode="kd", budget_minutes=60, init="calibrated")), False),
]
ROTATED = ["q4 g128 RTN", "q4 g128 GPTQ", "q3 g128 RTN", "q3 g128 GPTQ", "q2 g64 GPTQ", "ternary calibrated",
           "onebit calibrated"]
_AFTER = LOWBIT_VARIANTS.index(next(v for v in LOWBIT_VARIANTS if v[0] == "onebit calibrated")) + 1
LOWBIT_VARIANTS[_AFTER:_AFTER] = [
    (f"{label} + rotate", {**kwargs, "rotate": 0}, calibrated)
    for label, kwargs, calibrated in LOWBIT_VARIANTS if label in ROTATED
]
SOURCE_GGUF_LABEL = "Q4_1 (the source GGUF)"
NOTES_MARKER = "<!-- notes below are kept by tools/quality_table.py -->"
LLAMA_TYPES = ["Q8_0", "Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K", "TQ2_0"]


def score(logprob_fn, windows, ref_lp) -> dict:
    """PPL, KL(ref ‖ model), top-1 agreement over the scored halves of all windows."""
    nll, kls, agree = [], [], []
    for w, lr in zip(windows, ref_lp):
        lp, targets = logprob_fn(w)
        nll.append(-lp[np.arange(len(targets)), targets])
        kls.append(np.maximum((np.exp(lr) * (lr - lp)).sum(-1), 0))
        agree.append(lp.argmax(-1) == lr.argmax(-1))
    nll, kl = np.concatenate(nll), np.concatenate(kls)
    return {"ppl": float(np.exp(nll.mean())), "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "top1": float(np.concatenate(agree).mean())}


def lowbit_logprobs(path: Path, ctx: int):
    llm = load(path, context_length=ctx)
    return lambda w: window_logprobs(llm, w)


def llama_logprobs(path: Path, ctx: int, threads: int):
    llm = open_llama(path, repack=False, n_ctx=ctx, n_batch=ctx, n_threads=threads, n_threads_batch=threads,
                     logits_all=True, verbose=False)

    def fn(w):
        llm.reset()
        llm.eval(w)
        return scored_logprobs(np.array(llm.scores[: len(w)], dtype=np.float32), w)

    return fn


def row_key(row: dict) -> tuple[str, str]:
    """A row's identity across runs: the lowbit label, or the llama.cpp type (its fallbacks vary)."""
    return row["engine"], row["variant"] if row["engine"] == "lowbit" else row["variant"].split()[0]


def merge_rows(saved: list[dict], new: list[dict]) -> list[dict]:
    """The saved table with `new` rows replacing or joining it, in the canonical row order."""
    order = [("lowbit", "f32 reference")] + [("lowbit", v[0]) for v in LOWBIT_VARIANTS] + [("llama.cpp", t) for t in LLAMA_TYPES] + [("llama.cpp", "Q4_1")]
    merged = {row_key(r): r for r in saved}
    merged.update({row_key(r): r for r in new})
    rank = {k: i for i, k in enumerate(order)}
    return sorted(merged.values(), key=lambda r: rank.get(row_key(r), len(order)))


def target_lines(rows: list[dict]) -> list[str]:
    """The table read against the accuracy targets: PPL ratios to f32 and to llama.cpp's types,
    with each side's bits/weight."""
    by = {row_key(r): r for r in rows}
    ref = by.get(("lowbit", "f32 reference"))
    if ref is None:
        return []
    out = ["Against the targets (PPL; bits/weight of the linear layers):", ""]

    def ours(label: str, target: float | None = None, vs: str | None = None) -> None:
        r = by.get(("lowbit", label))
        if r is None:
            return
        text = f"- {label} ({r['linear_bpw']:.2f} bpw): {r['ppl'] / ref['ppl']:.3f} × f32"
        if target is not None:
            text += f" (target ≤ {target})"
        other = by.get(("llama.cpp", vs)) if vs else None
        if other is not None:
            text += f"; {r['ppl']:.2f} against llama.cpp {vs}'s {other['ppl']:.2f} at {other['linear_bpw']:.2f} bpw"
        out.append(text)

    ours("q4 g128 GPTQ", 1.03, "Q4_0")
    ours("keep (the Q4_1 GGUF re-packed)", 1.003, "Q4_1")
    ours("q3 g128 GPTQ", 1.15, "Q3_K_M")
    ours("q2 g64 GPTQ", None, "Q2_K")
    ours("q3 g128 GPTQ + rotate", 1.20, "Q3_K_M")
    ours("q2 g64 GPTQ + rotate", 2.5, "Q2_K")
    ours("q4 g128 GPTQ + rotate", 1.05, "Q4_0")
    ours("ternary calibrated", 20, "TQ2_0")
    ours("ternary calibrated + rotate", 20, "TQ2_0")
    ours("onebit KD 60 min", 10)
    ours("onebit KD 60 min from calibrated", 10)
    ours("target-bpw 2.5 (GPTQ)", None, "Q2_K")
    ours("target-bpw 4.23 = Q2_K's bits (GPTQ)", None, "Q2_K")
    ours("target-bpw 4.63 = Q3_K_M's bits (GPTQ)", None, "Q3_K_M")
    ours("target-bpw 5.53 = Q4_K_M's bits (GPTQ)", None, "Q4_K_M")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--calib-sequences", type=int, default=CalibrationConfig.sequences)  # `lowbit convert`'s defaults
    ap.add_argument("--calib-len", type=int, default=CalibrationConfig.seq_len)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--own-target", action="store_true",
                    help="calibrate each layer to its own float weight (`lowbit convert --own-target`), for comparison")
    ap.add_argument("--workdir", type=Path, default=lowbit_home() / "quality")
    ap.add_argument("--out", type=Path, default=Path("docs/quality.md"))
    ap.add_argument("--only", help="comma-separated labels to run (default: all); the other rows are kept from --out's .json")
    ap.add_argument("--merge", type=Path, action="append", default=[],
                    help="another run's .json: take its --only rows into --out without scoring (repeatable)")
    args = ap.parse_args()
    if args.merge:
        if not args.only:
            ap.error("--merge needs --only (the rows to take)")
        merge_json(args, args.merge, set(args.only.split(",")))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    hf = ensure_smollm2_checkpoint()
    text_name, text = default_evaluation_text()
    cal_name, cal_text = default_calibration_text()
    calib = CalibrationConfig(cal_text, cal_name, args.calib_sequences, args.calib_len,
                              float_target=not args.own_target)

    f32 = args.workdir / "f32.lowbit"
    if not f32.exists():
        convert(hf, f32, method="f32")
    ref = load(f32, context_length=args.ctx)
    windows = make_windows(ref.tokenize(text, add_special_tokens=False), args.ctx, model_bos(ref))
    ref_lp = [window_logprobs(ref, w)[0] for w in windows]
    rows = [{"engine": "lowbit", "variant": "f32 reference", "file_mb": f32.stat().st_size / 1e6,
             "linear_bpw": 32.0, **score(lowbit_logprobs(f32, args.ctx), windows, ref_lp), "seconds": 0}]
    only = set(args.only.split(",")) if args.only else None
    for label, kwargs, calibrated in LOWBIT_VARIANTS:
        if only and label not in only:
            continue
        path = args.workdir / (re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_") + ".lowbit")
        kwargs = dict(kwargs)
        src = smollm2_gguf_path() if kwargs.pop("source", None) == "gguf" else hf
        if "recipe_text" in kwargs:
            kwargs["recipe"] = path.with_suffix(".toml")
            kwargs["recipe"].write_text(kwargs.pop("recipe_text"))
        timing = path.with_suffix(".seconds")  # a cached conversion keeps its measured time
        if not path.exists():
            t0 = time.perf_counter()
            if "train" in kwargs:
                kwargs.update(learned(src, kwargs["method"], kwargs.pop("train"), path, args.threads))
            convert(src, path, calibration=calib if calibrated else None, **kwargs)
            timing.write_text(f"{time.perf_counter() - t0:.1f}")
        seconds = float(timing.read_text()) if timing.exists() else 0.0
        info = summarize(path)
        rows.append({"engine": "lowbit", "variant": label, "file_mb": path.stat().st_size / 1e6,
                     "linear_bpw": info["linear_bits_per_weight"], **score(lowbit_logprobs(path, args.ctx), windows, ref_lp),
                     "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    if not only or SOURCE_GGUF_LABEL in only:  # llama.cpp on the downloaded file itself
        s = gguf_summary(smollm2_gguf_path())
        rows.append({"engine": "llama.cpp", "variant": SOURCE_GGUF_LABEL, "file_mb": s["file_size_bytes"] / 1e6,
                     "linear_bpw": s["linear_bits_per_weight"],
                     **score(llama_logprobs(smollm2_gguf_path(), args.ctx, args.threads), windows, ref_lp), "seconds": 0})
        print(json.dumps(rows[-1]), flush=True)
    f16 = args.workdir / "smollm2-F16.gguf"
    for t in LLAMA_TYPES:
        if only and t not in only:
            continue
        if not f16.exists():  # (only when a llama.cpp row is made)
            dequantized_f16_gguf(smollm2_gguf_path(), f16)
        path = args.workdir / f"smollm2-{t}.gguf"
        if not path.exists():
            quantize_gguf(f16, path, t)
        s = gguf_summary(path)
        types = ", ".join(f"{k}×{v}" for k, v in s["linear_types"].items())
        rows.append({"engine": "llama.cpp", "variant": f"{t} ({types})", "file_mb": s["file_size_bytes"] / 1e6,
                     "linear_bpw": s["linear_bits_per_weight"], **score(llama_logprobs(path, args.ctx, args.threads), windows, ref_lp),
                     "seconds": 0})
        print(json.dumps(rows[-1]), flush=True)
    if only and args.out.with_suffix(".json").exists():  # a partial run updates the saved table
        rows = merge_rows(json.loads(args.out.with_suffix(".json").read_text()), rows)
    render(rows, args, text_name, cal_name, len(windows))


def learned(src: Path, method: str, train: dict, path: Path, threads: int) -> dict:
    """convert()'s trained/training arguments: `lowbit convert --train` on the model's own
    data-free text, as the CLI runs it without --calib."""
    from lowbit.train.api import learn
    from lowbit.train.config import TrainConfig

    ckpt = path.with_suffix(".train.safetensors")
    result = learn(str(src), method, TrainConfig(**train, checkpoint=ckpt, resume=ckpt.exists(), threads=threads))
    ckpt.unlink(missing_ok=True)
    return {"trained": result.tensors, "training": result.provenance}


def render(rows: list[dict], args: argparse.Namespace, text_name: str, cal_name: str, n_windows: int) -> None:
    """Write --out (the table, the target lines, the notes kept from below the marker) and its .json."""
    lines = [
        f"# Quality per bit: SmolLM2-135M-Instruct on `{text_name}`",
        "",
        f"Made by `python tools/quality_table.py` (ctx {args.ctx}, {n_windows} windows, second half of each scored as "
        f"llama.cpp's perplexity tool does; KL and top-1 against lowbit's f32; calibration {args.calib_sequences}×"
        f"{args.calib_len} tokens of `{cal_name}`). bits/weight are of the linear layers; llama.cpp falls back to other "
        "types for rows that are not a multiple of 256 (listed).",
        "",
        "| engine | variant | file MB | linear bits/weight | PPL | KL mean | KL p99 | top-1 | convert s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['variant']} | {r['file_mb']:.1f} | {r['linear_bpw']:.3f} | {r['ppl']:.3f} | "
                     f"{r['kl_mean']:.4f} | {r['kl_p99']:.3f} | {100 * r['top1']:.1f}% | {r['seconds']} |")
    lines += ["", *target_lines(rows)]
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    if NOTES_MARKER in old:  # hand-written analysis below the marker survives regeneration
        lines += ["", NOTES_MARKER + old.split(NOTES_MARKER, 1)[1].rstrip("\n")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


def merge_json(args: argparse.Namespace, sources: list[Path], labels: set[str]) -> None:
    """--merge: the rows named by --only from other runs' .json files (partial runs into other
    --out files) into --out, re-rendered without scoring anything again."""
    rows = json.loads(args.out.with_suffix(".json").read_text())
    for src in sources:
        rows = merge_rows(rows, [r for r in json.loads(src.read_text()) if r["variant"] in labels])
    found = re.search(r"ctx \d+, (\d+) windows", args.out.read_text(encoding="utf-8"))
    render(rows, args, default_evaluation_text()[0], default_calibration_text()[0], int(found.group(1)) if found else 0)


if __name__ == "__main__":
    main()
