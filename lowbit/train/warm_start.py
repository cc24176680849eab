"""Distillation's starting point: the numpy calibration of `lowbit convert --calibrate` (ARB codes
and values fitted to the float model's outputs, `lowbit.quant.calibrate`) run on the training
windows, so the students start where post-training quantisation ends instead of at SVID/absmean.

On SmolLM2 that start reads PPL 636 where SVID reads 2.5 million, yet distillation from SVID
catches up: after 10 minutes SVID's student reads 524 against this start's 536, after 60 minutes
292 against 366 (docs/quality.md). So it is `--kd-init calibrated`, not the default.
"""

from __future__ import annotations

import time

import numpy as np

from lowbit.formats.encodings import EncodedTensor
from lowbit.train.teacher import Source

INITS = ("svid", "calibrated")  # svid: the paper's start (SVID for onebit, absmean for ternary)
START_SEQUENCES = 32  # windows the calibration runs on (CalibrationConfig's default)


def calibrated_start(src: Source, choose, windows: np.ndarray, names: set[str]) -> tuple[dict[str, EncodedTensor], float]:
    """({lowbit name: calibrated tensor} for `names`, seconds it took)."""
    from tqdm import tqdm

    from lowbit.convert.converter import tensor_getter
    from lowbit.convert.models import CheckpointView
    from lowbit.quant import quantize
    from lowbit.quant.calibrate import CalibrationConfig, calibrate_layers
    from lowbit.runtime.config import ModelArgs

    t0 = time.perf_counter()
    ckpt = src.ckpt if src.spec.tensors is None else CheckpointView(src.ckpt, src.spec.tensors)
    get = tensor_getter(ckpt)
    emb = get("model.embed_tokens.weight")
    embedding = quantize(emb, *choose("model.embed_tokens.weight", tuple(emb.shape)))
    cfg = CalibrationConfig(text="", text_name="the training windows")
    ids = windows[:START_SEQUENCES]
    args = ModelArgs.from_dict(src.spec.config)
    with tqdm(total=args.num_hidden_layers, desc="calibrating the start", unit="layer", leave=False) as bar:
        out = {name: enc for name, _, enc in calibrate_layers(args, get, choose, ids, embedding, cfg,
                                                               progress=lambda i: bar.update(i - bar.n))
               if name in names}
    missing = sorted(names - set(out))
    if missing:
        raise AssertionError(f"calibration produced no {missing[0]}")
    return out, time.perf_counter() - t0
