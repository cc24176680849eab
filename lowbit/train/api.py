"""`learn(...)`: one learned-calibration run for `lowbit convert --train`: open the checkpoint,
build the teacher, get the calibration windows (the --calib text, else data-free samples), train
and return the packed tensors the converter writes in place of its own quantisation."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lowbit.train import TrainingError, require_torch
from lowbit.train.config import TrainConfig, TrainResult


def learn(source: str, method: str, cfg: TrainConfig, recipe: str | Path | None = None,
          revision: str | None = None) -> TrainResult:
    require_torch()
    import torch

    from lowbit.convert.recipe import load_recipe
    from lowbit.train.datafree import datafree_windows
    from lowbit.train.teacher import load_teacher, open_source, pick_device, text_windows

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = Path(cfg.checkpoint)
    if ckpt.exists() and not cfg.resume:
        raise TrainingError(f"{ckpt} exists: pass --resume to continue from it, or delete it")
    if cfg.resume and not ckpt.is_file():
        raise TrainingError(f"{ckpt}: no training checkpoint to resume from")
    src = open_source(source, revision)
    rec = load_recipe(recipe, method)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(src, device)
    if cfg.calib_text is not None:
        data_name, text = cfg.calib_text
        windows = text_windows(src, text, cfg.seq_len, cfg.sequences)
    else:
        windows, data_name = datafree_windows(teacher, src.tokenizer.bos_token_id, src.fingerprint,
                                              cfg.sequences, cfg.seq_len, cfg.seed)
    meta = {"source": src.fingerprint, "method": method, **cfg.fingerprint(),
            "data": hashlib.sha256(windows.tobytes()).hexdigest()[:16]}
    if cfg.mode == "kd":
        from lowbit.train.kd import train_kd

        result = train_kd(src, teacher, rec.choose, cfg, windows, meta)
    elif cfg.mode == "lsi":
        from lowbit.train.lsi import train_lsi

        result = train_lsi(src, teacher, rec.choose, cfg, windows, meta)
    else:
        raise TrainingError(f"--train {cfg.mode!r}: expected kd or lsi")
    result.provenance = {"method": cfg.mode, **result.provenance, "data": data_name,
                         "data_tokens": int(windows.size), "device": str(device),
                         "threads": torch.get_num_threads(), "budget_minutes": cfg.budget_minutes,
                         "checkpoint": ckpt.name}
    return result
