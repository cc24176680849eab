"""`lowbit convert SOURCE -o OUT.lowbit`: validates the options, then hands the work to
`lowbit.convert.converter.convert`."""

from __future__ import annotations

import click

from lowbit.commands.options import Finite, Threads, check_source, method_choice

TRAIN_ENCODINGS = {"kd": ("onebit", "ternary", "ternary-1.6"), "lsi": ("q2", "q3", "q4", "ternary", "ternary-1.6")}


def _list_methods() -> None:
    from lowbit.convert.recipe import METHODS

    click.echo(f"{'method':<12} {'encoding':<12} description")
    for m in METHODS.values():
        note = "  (needs a ternary/1-bit-trained model for good quality)" if m.needs_training else ""
        click.echo(f"{m.name:<12} {m.encoding:<12} {m.description}{note}")


@click.command()
@click.argument("source", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .lowbit file.")
@click.option("-m", "--method", type=method_choice(), default="q4", show_default=True, help="Encoding of the linear layers.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), help="TOML recipe: tensor-name glob -> encoding.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--list-methods", is_flag=True, help="List the available methods and exit.")
@click.option("--calibrate", is_flag=True, help="Calibrate on text: GPTQ for q2-q4, fitted scales for ternary/onebit.")
@click.option("--calib", "calib_file", type=click.Path(exists=True, dir_okay=False), help="Calibration text (default: the one shipped with lowbit).")
@click.option("--quantizer", type=click.Choice(["gptq", "imatrix"]), default="gptq", show_default=True, help="Calibrated quantiser for q2-q4.")
@click.option("--act-order/--no-act-order", default=True, show_default=True, help="GPTQ: quantise columns by decreasing Hessian diagonal.")
@click.option("--float-target/--own-target", default=True, show_default=True, help="Calibration: fit each layer to the float model's outputs on its own inputs (runs the float model beside it) rather than to the layer's float weight on the already-quantised layers' outputs (GPTQ, ternary, onebit; not imatrix).")
@click.option("--calib-sequences", type=click.IntRange(min=1), help="Calibration sequences (default 32; 64 with --train).")
@click.option("--calib-len", type=click.IntRange(min=2), default=256, show_default=True, help="Tokens per calibration sequence.")
@click.option("--target-bpw", type=Finite(min=0, min_open=True), help="Pick q2/q3/q4/q8 per linear layer by measured sensitivity to hit this bits/weight (with --calibrate: output error on the calibration text; without: weight error).")
@click.option("--rotate", is_flag=True, help="Incoherence processing: fold random orthogonal rotations into the weights (Llama-style models; adds an online Hadamard before down_proj).")
@click.option("--rotate-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of --rotate's random rotations.")
@click.option("--eval", "evaluate", is_flag=True, help="Measure PPL/KL against the f32 conversion and store them in the file.")
@click.option("--eval-text", type=click.Path(exists=True, dir_okay=False), help="Held-out text for --eval (default: shipped).")
@click.option("--eval-ctx", type=click.IntRange(min=4), default=256, show_default=True, help="Window length for --eval.")
@click.option("--train", "train_mode", type=click.Choice(list(TRAIN_ENCODINGS)), help="Learned calibration with torch: kd (OneBit/BitNet distillation, onebit/ternary) or lsi (LSI/DESV + learned clipping, q2-q4/ternary). Without --calib the text is sampled from the model itself (data-free).")
@click.option("--budget-minutes", type=Finite(min=0, min_open=True), default=10.0, show_default=True, help="--train: wall-clock training budget.")
@click.option("--resume", is_flag=True, help="--train: continue from the training checkpoint.")
@click.option("--train-checkpoint", type=click.Path(dir_okay=False), help="--train: checkpoint file (default: OUTPUT.train.safetensors).")
@click.option("--keep-checkpoint", is_flag=True, help="--train: keep the checkpoint after the file is written (to resume with a larger budget).")
@click.option("--train-steps", type=click.IntRange(min=1), help="--train: at most this many steps (per block in the block-by-block stages).")
@click.option("--lr", type=Finite(min=0, min_open=True), help="--train: learning rate (default kd 3e-4 from the calibrated start, 1e-3 from SVID; lsi 1e-2).")
@click.option("--kd-alpha", type=Finite(min=0), default=1.0, show_default=True, help="--train kd: weight of the hidden-state MSE.")
@click.option("--kd-block-fraction", type=Finite(min=0, max=1), default=0.25, show_default=True, help="--train kd: share of the budget for block-by-block reconstruction before end-to-end distillation.")
@click.option("--kd-init", type=click.Choice(["svid", "calibrated"]), default="svid", show_default=True, help="--train kd: students start from the paper's SVID / absmean, or from --calibrate's tensors (its time counts in the budget; on SmolLM2 no better at 10 minutes and worse at 60: docs/quality.md).")
@click.option("--lsi-band", type=click.IntRange(min=0), default=8, show_default=True, help="--train lsi: learned off-diagonals each side (DESV; 0 = LSI).")
@click.option("--train-threads", type=Threads(), help="--train: torch threads (default: torch's).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="--train: torch device (default: cuda when available).")
def convert(source, output, method, recipe, revision, force, list_methods, calibrate, calib_file, quantizer,
            act_order, float_target, calib_sequences, calib_len, target_bpw, rotate, rotate_seed, evaluate, eval_text, eval_ctx, train_mode,
            budget_minutes, resume, train_checkpoint, keep_checkpoint, train_steps, lr, kd_alpha, kd_block_fraction,
            kd_init, lsi_band, train_threads, device) -> None:
    """Convert SOURCE (a Hugging Face folder, hub id or .gguf file) into a .lowbit file."""
    if list_methods:
        _list_methods()
        return
    if not source:
        raise click.UsageError("missing SOURCE (a Hugging Face folder, hub id or .gguf file)")
    _check_train_options(click.get_current_context(), train_mode, method, calibrate, target_bpw)
    check_source(source)  # a mistyped local path is a missing path, not a hub miss
    if not output:
        from pathlib import Path

        output = f"{Path(source).name.removesuffix('.gguf')}-{method}.lowbit"
    trained = None
    if train_mode:
        trained = _learn(source, output, method, recipe, revision, force, train_mode, calib_file,
                         calib_sequences or 64, calib_len, budget_minutes, resume, train_checkpoint,
                         train_steps, lr, kd_alpha, kd_block_fraction, kd_init, lsi_band, train_threads, device)
        calibrate, calib_file = False, None
    from tqdm import tqdm

    from lowbit.convert.converter import convert as run_convert

    bar = None

    def progress(name: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # opened at the first tensor: no empty bar before a refusal
            bar = tqdm(desc="calibrating" if calibration else "converting", unit="tensor", dynamic_ncols=True, leave=False)
        bar.total = total
        bar.set_postfix_str(name.removeprefix("model."), refresh=False)
        bar.update(done - bar.n)

    calibration = None
    if calibrate or calib_file:
        from lowbit.quant.calibrate import CalibrationConfig, default_calibration_text

        name, text = (calib_file, open(calib_file, encoding="utf-8").read()) if calib_file else default_calibration_text()
        calibration = CalibrationConfig(text, name, calib_sequences or 32, calib_len, quantizer, act_order,
                                        float_target=float_target)
    try:
        result = run_convert(source, output, method=method, recipe=recipe, revision=revision, force=force,
                             progress=progress, calibration=calibration, target_bpw=target_bpw,
                             rotate=rotate_seed if rotate else None,
                             trained=None if trained is None else trained[0].tensors,
                             training=None if trained is None else trained[0].provenance)
    finally:
        if bar is not None:
            bar.close()
    if trained is not None:
        _report_training(trained[0].provenance, trained[1], keep_checkpoint)
    size_mb = result.file_size / 1e6
    click.echo(
        f"wrote {result.path} ({size_mb:.1f} MB, {len(result.tensors)} tensors) in {result.seconds:.1f} s: "
        f"linear layers {result.linear_bits_per_weight:.3f} bits/weight, all matrices {result.bits_per_weight:.3f}"
    )
    for line in _source_type_lines(result.tensors):
        click.echo(line)
    worst = ", ".join(f"{t.name} {t.rel_error:.3f}" for t in result.worst(3))
    click.echo(f"largest relative errors: {worst}")
    for w in result.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if evaluate:
        _quality_card(source, result.path, eval_text, eval_ctx, revision)


def _check_train_options(ctx, train_mode, method, calibrate, target_bpw) -> None:
    """--train and its options, before anything loads (torch included)."""
    from click.core import ParameterSource

    train_only = ("budget_minutes", "resume", "train_checkpoint", "keep_checkpoint", "train_steps", "lr", "kd_alpha",
                  "kd_block_fraction", "kd_init", "lsi_band", "train_threads", "device")
    if not train_mode:
        given = [n for n in train_only if ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, None)]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} applies to --train only")
        return
    from lowbit.convert.recipe import METHODS

    encoding = METHODS[method].encoding
    if method == "keep" or encoding not in TRAIN_ENCODINGS[train_mode]:
        raise click.UsageError(f"--train {train_mode} trains methods {', '.join(TRAIN_ENCODINGS[train_mode])}, not -m {method}")
    if calibrate or target_bpw is not None:
        raise click.UsageError(f"--train {train_mode} replaces --calibrate and does not combine with --target-bpw")
    from lowbit.train import torch_available

    if not torch_available():
        raise click.UsageError("--train needs torch: pip install 'lowbit[train]'")


def _learn(source, output, method, recipe, revision, force, mode, calib_file, sequences, seq_len, budget, resume,
           checkpoint, steps, lr, alpha, block_fraction, init, band, threads, device):
    """Run the learned method; (result, checkpoint path) for the converter to write."""
    from pathlib import Path

    from lowbit.errors import ConversionError
    from lowbit.train.api import learn
    from lowbit.train.config import TrainConfig

    if Path(output).exists() and not force:  # before minutes of training, not after
        raise ConversionError(f"{output} already exists (pass --force to overwrite)")
    ckpt = Path(checkpoint) if checkpoint else Path(f"{output}.train.safetensors")
    text = (calib_file, Path(calib_file).read_text(encoding="utf-8")) if calib_file else None
    cfg = TrainConfig(mode, budget, ckpt, resume, steps, lr, seq_len, sequences, alpha=alpha,
                      block_fraction=block_fraction, init=init, band=band,
                      threads=threads, device=device, calib_text=text)
    return learn(source, method, cfg, recipe, revision), ckpt


def _report_training(prov: dict, ckpt, keep: bool) -> None:
    loss = f", loss {prov['loss_first']} -> {prov['loss_last']}" if prov.get("loss_first") is not None else ""
    steps = f"{prov['steps']} steps, " if "steps" in prov else ""
    click.echo(f"trained ({prov['method']}, {prov['data']}, {prov['data_tokens']} tokens): {steps}"
               f"{prov['seconds']:.0f} s on {prov['device']}{loss}")
    if keep:
        click.echo(f"checkpoint kept: {ckpt} (--resume with a larger --budget-minutes continues)")
    else:
        ckpt.unlink(missing_ok=True)


def _source_type_lines(reports) -> list[str]:
    """For GGUF input: which tensors were re-packed losslessly and which re-quantised."""
    from collections import Counter

    quantised = [t for t in reports if t.source_type and len(t.shape) == 2]
    if not quantised:
        return []
    kept = Counter(f"{t.source_type} -> {t.encoding}" for t in quantised if t.kept)
    redone = [t for t in quantised if not t.kept]
    lines = [f"kept losslessly: {sum(kept.values())} tensors" + "".join(f", {n} x {k}" for k, n in kept.most_common())]
    if redone:
        by = Counter(f"{t.source_type} -> {t.encoding}" for t in redone)
        names = ", ".join(t.name for t in redone[:4]) + (", ..." if len(redone) > 4 else "")
        lines.append(f"re-quantised: {len(redone)} tensors" + "".join(f", {n} x {k}" for k, n in by.most_common()) + f" ({names})")
    return lines


def _quality_card(source: str, path, eval_text: str | None, ctx: int, revision: str | None) -> None:
    from lowbit.eval.quality import measure_quality, store_quality
    from lowbit.model_cache import resolve_model
    from lowbit.quant.calibrate import default_evaluation_text

    name, text = (eval_text, open(eval_text, encoding="utf-8").read()) if eval_text else default_evaluation_text()
    click.echo("evaluating against the f32 conversion (cached for next time)…", err=True)
    reference = resolve_model(source, method="f32", revision=revision)
    q = measure_quality(path, reference, text, name, ctx)
    store_quality(path, q)
    click.echo(
        f"quality on {name}: PPL {q['ppl']:.3f} (f32 {q['ppl_reference']:.3f}), KL mean {q['kl_mean']:.4f}, "
        f"p99 {q['kl_p99']:.4f}, top-1 agreement {100 * q['top1_agreement']:.1f}% ({q['tokens_scored']} tokens)"
    )
    from lowbit.convert.converter import perplexity_warning

    warning = perplexity_warning(q["ppl"], q["ppl_reference"])
    if warning:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
