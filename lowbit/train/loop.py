"""The training loop the learned methods share: a wall-clock budget (and optional step cap), a
cosine learning rate over the budget, a tqdm bar with loss and ETA, checkpoints every N steps and
at SIGINT, and resumption of parameters, Adam moments, step count and elapsed time."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lowbit.train import TrainingError
from lowbit.train.checkpoint import save_checkpoint


class Interrupted(TrainingError):
    """SIGINT during training: the checkpoint is saved, --resume continues."""


@contextmanager
def sigint_flag() -> Iterator[list[bool]]:
    """[flag] set by SIGINT instead of raising, so the loop stops between steps and saves."""
    flag = [False]
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: flag.__setitem__(0, True))
    except ValueError:  # not the main thread: no handler, Ctrl-C raises as usual
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Budget:
    seconds: float
    max_steps: int | None = None  # a step cap (tests, reproducible runs); the time limit still holds

    def progress(self, step: int, elapsed: float) -> float:
        p = elapsed / self.seconds if self.seconds > 0 else 1.0
        if self.max_steps is not None:
            p = max(p, step / max(1, self.max_steps))
        return p


def cosine_lr(base: float, progress: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    if progress < warmup:
        return base * (0.1 + 0.9 * progress / warmup)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    out = {}
    for p, state in opt.state.items():
        for k, v in state.items():
            if torch.is_tensor(v):
                out[f"adam.{names[id(p)]}.{k}"] = v
    return out


def restore_optimizer(opt: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter],
                      tensors: dict[str, torch.Tensor], path: Path) -> None:
    for name, p in params.items():
        state = {}
        for k in ("step", "exp_avg", "exp_avg_sq"):
            key = f"adam.{name}.{k}"
            if key in tensors:
                state[k] = tensors[key].to(p.device) if k != "step" else tensors[key]
        if state:
            if "exp_avg" in state and state["exp_avg"].shape != p.shape:
                raise TrainingError(f"{path}: optimizer state of {name} has the wrong shape")
            opt.state[p] = state


@dataclass
class Run:
    """One optimisation with its checkpoint. `step_fn(step)` computes the loss (a tensor, with
    graph) and returns (loss, metrics); the loop does backward and the optimizer step."""

    params: dict[str, torch.nn.Parameter]
    groups: list[dict[str, Any]]  # torch param groups; each has "base_lr"
    budget: Budget
    checkpoint: Path
    meta: dict[str, Any]
    every: int = 50
    desc: str = "training"
    step: int = 0
    elapsed: float = 0.0
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds, loss)
    extra: Callable[[], dict[str, torch.Tensor]] | None = None  # more tensors for the checkpoint
    save_at_end: bool = True  # False when the caller saves its own state after run()

    def __post_init__(self) -> None:
        self.opt = torch.optim.Adam(self.groups, lr=self.groups[0]["base_lr"])
        self._names = {id(p): n for n, p in self.params.items()}

    def state(self) -> dict[str, torch.Tensor]:
        t = {f"param.{n}": p for n, p in self.params.items()}
        t.update(optimizer_tensors(self.opt, self._names))
        if self.extra is not None:
            t.update(self.extra())
        return t

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                t = tensors.get(f"param.{n}")
                if t is None or t.shape != p.shape:
                    raise TrainingError(f"{path}: checkpoint lacks {n} or has another shape")
                p.copy_(t.to(p.device))
        restore_optimizer(self.opt, self.params, tensors, path)
        self.step = int(meta.get("step", 0))
        self.elapsed = float(meta.get("elapsed", 0.0))
        self.history = [tuple(h) for h in meta.get("history", [])]

    def save(self, finished: bool = False) -> None:
        meta = {**self.meta, "step": self.step, "elapsed": self.elapsed, "finished": finished,
                "history": self.history[-2000:]}
        save_checkpoint(self.checkpoint, self.state(), meta)

    def run(self, step_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]]) -> None:
        from tqdm import tqdm

        total = self.budget.max_steps if self.budget.max_steps is not None else None
        fmt = None if total else "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
        bar = tqdm(total=total or round(self.budget.seconds), initial=self.step if total else min(self.elapsed, self.budget.seconds),
                   desc=self.desc, unit="step" if total else "s", dynamic_ncols=True, leave=False, bar_format=fmt)
        try:
            with sigint_flag() as interrupted:
                while self.budget.progress(self.step, self.elapsed) < 1.0:
                    t0 = time.perf_counter()
                    frac = self.budget.progress(self.step, self.elapsed)
                    for g in self.opt.param_groups:  # a group with "start" waits until then
                        g["lr"] = cosine_lr(g["base_lr"], frac) if frac >= g.get("start", 0.0) else 0.0
                    self.opt.zero_grad(set_to_none=True)
                    loss, metrics = step_fn(self.step)
                    loss.backward()
                    self.opt.step()
                    dt = time.perf_counter() - t0
                    self.step += 1
                    self.elapsed += dt
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingError(f"training diverged at step {self.step} (loss {value}); try a lower --lr")
                    self.history.append((self.step, round(self.elapsed, 2), round(value, 5)))
                    bar.update(1 if total else min(dt, bar.total - bar.n))
                    bar.set_postfix({"loss": f"{value:.4f}", "step": self.step,
                                     **{k: f"{v:.4f}" for k, v in metrics.items()}}, refresh=False)
                    if interrupted[0]:
                        self.save()
                        raise Interrupted(f"interrupted at step {self.step}: checkpoint saved to {self.checkpoint}; "
                                          "run the same command with --resume to continue")
                    if self.every and self.step % self.every == 0:
                        self.save()
            if self.save_at_end:
                self.save(finished=True)
        finally:
            bar.close()
