"""Settings of a learned-calibration run and what it hands back to the converter."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.formats.encodings import EncodedTensor

MODES = ("kd", "lsi")


@dataclass
class TrainConfig:
    mode: str  # "kd" (OneBit / BitNet distillation) or "lsi" (LSI / DESV + learned clipping)
    budget_minutes: float = 10.0
    checkpoint: Path = Path("train.ckpt.safetensors")
    resume: bool = False
    max_steps: int | None = None  # per run (kd) or per block (lsi)
    lr: float | None = None  # default per mode
    seq_len: int = 256
    sequences: int = 64
    batch: int = 1
    alpha: float = 1.0  # OneBit: weight of the normalised hidden-state MSE
    block_sequences: int = 16  # block stages: windows streamed through the blocks (each pass over them costs
    # two block forwards per window, which on a CPU budget must stay small next to the training steps)
    block_fraction: float = 0.25  # kd: share of the budget for block-by-block reconstruction first
    init: str = "svid"  # kd: the paper's SVID / absmean, or "calibrated" (--calibrate's tensors; docs/quality.md)
    band: int = 8  # DESV: off-diagonals on each side of the singular values
    every: int = 25  # checkpoint every N steps
    threads: int | None = None
    device: str | None = None
    seed: int = 0
    calib_text: tuple[str, str] | None = None  # (name, text); None: data-free

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed checkpoint must agree on."""
        return {"mode": self.mode, "seq_len": self.seq_len, "sequences": self.sequences, "batch": self.batch,
                "alpha": self.alpha, "block_fraction": self.block_fraction, "init": self.init,
                "block_sequences": self.block_sequences, "band": self.band, "seed": self.seed, "max_steps": self.max_steps}


@dataclass
class TrainResult:
    tensors: dict[str, EncodedTensor]  # lowbit tensor name -> what the file holds
    provenance: dict[str, Any] = field(default_factory=dict)
