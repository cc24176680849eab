"""Learned calibration with torch (the optional extra ``pip install 'lowbit[train]'``).

This package owns the training side of conversion: OneBit / BitNet-style knowledge distillation
(`kd`), LSI / DESV learned singular-value increments with learned clipping (`lsi`) and LLM-QAT's
data-free calibration text (`datafree`). What it learns is handed to the ordinary converter as
packed tensors, so the result is a normal .lowbit file. Nothing in `lowbit.runtime` imports it.
"""

from __future__ import annotations

from lowbit.errors import LowbitError

INSTALL_HINT = "pip install 'lowbit[train]'"


class TrainingError(LowbitError):
    """A learned-calibration run that cannot start or go on (one line, names the option or file)."""


def torch_available() -> bool:
    from importlib.util import find_spec

    return find_spec("torch") is not None


def require_torch() -> None:
    if not torch_available():
        raise TrainingError(f"learned calibration (--train) needs torch: {INSTALL_HINT}")
