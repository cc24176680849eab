"""OneBit knowledge distillation (seed 000/002) and the same recipe for BitNet-style ternary
students. A first share of the budget (--kd-block-fraction) reconstructs block by block
(`lowbit.train.blockwise`: cheap per update, so every layer leaves the destroyed SVID start
quickly); the rest trains the whole student against the float teacher with

    L = KL(P_teacher ‖ P_student) + α Σ_layers mean_tokens ‖ q_T/‖q_T‖ − q_S/‖q_S‖ ‖²,

the paper's loss (its cross-entropy on the teacher's soft labels differs from this KL by the
teacher's entropy, a constant), with straight-through estimators on signs and trits. The students
start from `lowbit convert --calibrate`'s tensors (`lowbit.train.warm_start`; its time counts in
the budget) or, with init "svid", from the paper's SVID (onebit) / absmean (ternary).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from lowbit.formats.encodings import EncodedTensor
from lowbit.train import TrainingError
from lowbit.train.config import TrainConfig, TrainResult
from lowbit.train.loop import Budget, Run
from lowbit.train.students import KD_ENCODINGS, make_student, replace_linears
from lowbit.train.teacher import Source, linear_modules, quantise_embeddings
from lowbit.train.warm_start import INITS, calibrated_start

# per start: from SVID (SmolLM2 block 3, 30 steps: normalised loss 0.0369 -> 0.0279 at 2e-4, 0.0203 at
# 1e-3, 0.017 at 3e-3); from the calibrated tensors a smaller step keeps their gain (SmolLM2, 10 minutes,
# held-out KL from 3.238: 3.360 at 1e-3, 3.053 at 3e-4, 3.239 at 1e-4; docs/quality.md)
DEFAULT_LR = {"svid": 1e-3, "calibrated": 3e-4}
VALUE_LR_SCALE = 10.0  # g, h and row scales move faster than the latent weights behind the signs


def kd_loss(t_out, s_out, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    lt = torch.log_softmax(t_out.logits.float(), -1)
    ls = torch.log_softmax(s_out.logits.float(), -1)
    kl = (lt.exp() * (lt - ls)).sum(-1).mean()
    mse = torch.zeros((), device=kl.device)
    for ht, hs in zip(t_out.hidden_states[1:], s_out.hidden_states[1:]):
        mse = mse + (nn.functional.normalize(ht.float(), dim=-1) - nn.functional.normalize(hs.float(), dim=-1)).pow(2).sum(-1).mean()
    return kl + alpha * mse, {"kl": float(kl.detach()), "mse": float(mse.detach())}


def batch_ids(windows: np.ndarray, step: int, batch: int, seed: int) -> np.ndarray:
    """The windows of one step: epoch-wise permutations from the seed, so a resumed run sees
    exactly the batches an uninterrupted one would."""
    n = len(windows)
    picks = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(k, n)
        picks.append(np.random.default_rng([seed, epoch]).permutation(n)[pos])
    return windows[picks]


def train_kd(src: Source, teacher: nn.Module, choose, cfg: TrainConfig, windows: np.ndarray,
             meta: dict) -> TrainResult:
    from lowbit.train.checkpoint import check_compatible, load_checkpoint

    device = next(teacher.parameters()).device
    mods = linear_modules(teacher, src, choose)
    bad = sorted({enc for _, enc, _ in mods.values() if enc not in KD_ENCODINGS})
    if bad:
        raise TrainingError(f"--train kd distils into {', '.join(KD_ENCODINGS)}; this conversion asks for {', '.join(bad)} "
                            "(use --train lsi for q2/q3/q4)")
    enc_of = {name: (enc, params) for name, enc, params in mods.values()}
    if cfg.init not in INITS:
        raise TrainingError(f"--kd-init {cfg.init!r}: expected one of {', '.join(INITS)}")
    lr = cfg.lr or DEFAULT_LR[cfg.init]

    def groups(params: dict[str, nn.Parameter]) -> list[dict]:
        latent = [p for k, p in params.items() if k.endswith(":latent")]
        values = [p for k, p in params.items() if not k.endswith(":latent")]
        return [{"params": latent, "base_lr": lr}, {"params": values, "base_lr": lr * VALUE_LR_SCALE}]

    saved_tensors, saved = ({}, {})
    if cfg.resume:
        saved_tensors, saved = load_checkpoint(cfg.checkpoint)
        check_compatible(cfg.checkpoint, saved, meta)
    start: dict[str, EncodedTensor] = {}
    init_seconds = float(saved.get("init_seconds", 0.0))  # (kept by the kd stage's checkpoints only)
    if cfg.init == "calibrated" and saved.get("stage") != "kd":  # (a resumed kd stage has every parameter)
        start, init_seconds = calibrated_start(src, choose, windows, set(enc_of))
    total = max(0.0, cfg.budget_minutes * 60 - init_seconds)
    trained: dict[str, nn.Module] = {}
    block_stage = None
    stage1 = float(saved.get("stage1_seconds", 0.0))
    if cfg.block_fraction > 0 and saved.get("stage") != "kd":
        from lowbit.train.blockwise import train_blocks

        blocks = train_blocks(src, teacher, choose, cfg, windows, {**meta, "stage": "blocks"},
                              lambda lin, name, enc, params: make_student(lin, enc, params, start.get(name)), groups,
                              total * cfg.block_fraction, "reconstructing")
        trained, stage1 = blocks.modules, blocks.seconds
        block_stage = {"seconds": round(stage1, 1), "blocks": blocks.summary}
    student = copy.deepcopy(teacher)
    quantise_embeddings(student, choose)
    students = replace_linears(student, {p: n for p, (n, _, _) in mods.items()},
                               lambda lin, name: trained[name] if name in trained else make_student(lin, *enc_of[name], start.get(name)))
    params = {f"{name}:{a}": p for name, m in students.items() for a, p in m.named_parameters() if p.requires_grad}
    run = Run(params, groups(params), Budget(max(0.0, total - stage1), cfg.max_steps), cfg.checkpoint,
              {**meta, "stage": "kd", "stage1_seconds": stage1, "init_seconds": init_seconds}, every=cfg.every,
              desc=f"distilling ({', '.join(sorted({e for e, _ in enc_of.values()}))})")
    if saved.get("stage") == "kd":
        run.restore(saved_tensors, saved, cfg.checkpoint)
    student.train()

    def step_fn(step: int):
        ids = torch.from_numpy(batch_ids(windows, step, cfg.batch, cfg.seed)).to(device)
        with torch.no_grad():
            t_out = teacher(input_ids=ids, output_hidden_states=True)
        s_out = student(input_ids=ids, output_hidden_states=True)
        return kd_loss(t_out, s_out, cfg.alpha)

    run.run(step_fn)
    tensors = {name: m.export() for name, m in students.items()}
    prov = _provenance(run, cfg, lr, windows)
    prov["block_stage"] = block_stage if block_stage is not None else {"seconds": round(stage1, 1)}
    prov["init_seconds"] = round(init_seconds, 1)
    prov["seconds"] = round(init_seconds + stage1 + run.elapsed, 1)
    return TrainResult(tensors, prov)


def _provenance(run: Run, cfg: TrainConfig, lr: float, windows: np.ndarray) -> dict:
    losses = [h[2] for h in run.history]
    k = max(1, min(10, len(losses) // 4))
    return {
        "loss": "KL(teacher || student) + alpha * sum_layers |q_T/|q_T| - q_S/|q_S||^2 (OneBit)",
        "init": "calibrated (lowbit convert --calibrate)" if cfg.init == "calibrated" else "SVID (onebit) / absmean (ternary)",
        "alpha": cfg.alpha,
        "lr": lr,
        "steps": run.step,
        "kd_seconds": round(run.elapsed, 1),
        "tokens_seen": run.step * cfg.batch * int(windows.shape[1]),
        "loss_first": round(float(np.mean(losses[:k])), 5) if losses else None,
        "loss_last": round(float(np.mean(losses[-k:])), 5) if losses else None,
    }
