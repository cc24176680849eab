"""Incoherence processing (QuaRot / QuIP# style): orthogonal rotations folded into the weights
of a Llama-style checkpoint, so the quantisers see matrices without outlier rows or columns.

Three rotations, each exact in float arithmetic:

- the residual stream, x' = Q x, Q [hidden, hidden]. RMSNorm commutes with an orthogonal Q only
  without a gain, so every norm's gain is folded into the linears that read it first (q/k/v,
  gate/up, lm_head: W·diag(g)), and the norms become ones. Readers of the stream take W·Qᵀ
  (embedding rows too); writers (o_proj, down_proj) take Q·W. Tied embeddings are untied: the
  head is E·diag(g)·Qᵀ, the embedding E·Qᵀ.
- per head between v and o: v_proj's rows of each KV head take R [head_dim, head_dim], o_proj's
  columns of each head Rᵀ (attention mixes positions, never dimensions within a head).
- down_proj's input: the hidden state passes an elementwise product, so its rotation is applied
  on line (`runtime.kernels.hadamard`, T fixed by intermediate_size) and down_proj stores W·D·Tᵀ;
  the random signs D are folded into up_proj's rows (D(a ⊙ u) = a ⊙ Du).

Q and R are randomised Hadamard-Kronecker matrices, (H_p/√p ⊗ O_m)·diag(s): p the largest power
of two dividing n, O_m a random orthogonal m × m block (m odd: 9 for SmolLM2's 576), s random
signs — a Hadamard where one exists, the same incoherence guarantees (max |Q_ij| ≤ 1/√p) where n
is not a power of two. Pure numpy; the seed makes a conversion reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.errors import ConversionError
from lowbit.runtime.kernels.hadamard import MAX_ODD_BLOCK, hadamard_ref, split_size, sylvester

DEFAULT_SEED = 0


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal m × m matrix (QR of a Gaussian, signs fixed so it is Haar-distributed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def randomised_hadamard(n: int, rng: np.random.Generator) -> np.ndarray:
    """(H_p/√p ⊗ O_m)·diag(s) [n, n], float64 (see the module docstring)."""
    p, m = split_size(n)
    if m > MAX_ODD_BLOCK:
        raise ConversionError(f"--rotate: size {n} = {p} × {m}, an odd factor above {MAX_ODD_BLOCK}")
    block = random_orthogonal(m, rng) if m > 1 else np.ones((1, 1))
    signs = rng.choice([-1.0, 1.0], size=n)
    return np.kron(sylvester(p) / math.sqrt(p), block) * signs[None, :]


@dataclass
class Rotations:
    """The rotations of one model: Q (residual), R (per head), signs D of the MLP hidden state."""

    q: np.ndarray
    r: np.ndarray
    signs: np.ndarray
    seed: int

    @classmethod
    def make(cls, hidden: int, head_dim: int, intermediate: int, seed: int = DEFAULT_SEED) -> Rotations:
        rng = np.random.default_rng(seed)
        q = randomised_hadamard(hidden, rng)
        r = randomised_hadamard(head_dim, rng)
        signs = rng.choice([-1.0, 1.0], size=intermediate)
        return cls(q, r, signs, seed)

    def provenance(self, residual: bool = True, online: bool = True) -> dict[str, Any]:
        return {"seed": self.seed, "residual": "randomised Hadamard ⊗ orthogonal" if residual else None,
                "heads": "v/o", "down_proj": "online Hadamard ⊗ DCT (config.down_proj_hadamard)" if online else None}


def _per_head_rows(w: np.ndarray, r: np.ndarray) -> np.ndarray:
    """blockdiag(R, …) · w for w [heads·d, …] (v_proj's rows, its bias)."""
    d = r.shape[0]
    return np.einsum("ij,hj...->hi...", r, w.reshape(-1, d, *w.shape[1:])).reshape(w.shape)


def _per_head_cols(w: np.ndarray, r: np.ndarray) -> np.ndarray:
    """w · blockdiag(R, …)ᵀ for w [out, heads·d] (o_proj's columns)."""
    d = r.shape[0]
    return np.einsum("ohj,ij->ohi", w.reshape(w.shape[0], -1, d), r).reshape(w.shape)


class RotatedCheckpoint:
    """A checkpoint view (lowbit names) whose tensors are the rotated model's: what the converter
    and the calibration read instead of the source's. `config` is lowbit's (sizes); `online` and
    `residual` leave out the down_proj transform or the residual rotation (ablations)."""

    GAIN_OF = {"self_attn.q_proj": "input_layernorm", "self_attn.k_proj": "input_layernorm",
               "self_attn.v_proj": "input_layernorm", "mlp.gate_proj": "post_attention_layernorm",
               "mlp.up_proj": "post_attention_layernorm"}

    def __init__(self, ckpt: Any, config: dict[str, Any], seed: int = DEFAULT_SEED, online: bool = True,
                 residual: bool = True) -> None:
        self.ckpt = ckpt
        self.online = online  # rotate down_proj's input (the runtime's online Hadamard)
        self.residual = residual  # rotate the residual stream (folds the norm gains)
        self.rot = Rotations.make(config["hidden_size"], config["head_dim"], config["intermediate_size"], seed)
        self._names = list(ckpt.tensor_names())
        self.tied = residual and "lm_head.weight" not in self._names
        if self.tied:
            self._names.insert(self._names.index("model.embed_tokens.weight") + 1, "lm_head.weight")
        for attr in ("config", "generation_config", "tokenizer_files", "source_id", "revision", "path", "file_hashes"):
            if hasattr(ckpt, attr):
                setattr(self, attr, getattr(ckpt, attr))
        if hasattr(ckpt, "rows"):
            self.rows = self._rows if residual else ckpt.rows
            self.dtype = (lambda name: "F32") if residual else ckpt.dtype

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def shape(self, name: str) -> list[int]:
        return list(self.ckpt.shape("model.embed_tokens.weight" if name == "lm_head.weight" and self.tied else name))

    def release(self, name: str) -> None:
        if hasattr(self.ckpt, "release") and name in self.ckpt:
            self.ckpt.release(name)

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._names:
            yield name, self.get(name)

    def _src(self, name: str) -> np.ndarray:
        return np.asarray(self.ckpt.get(name), dtype=np.float64)

    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows of the embedding or head (row-separable: each row is rotated on its own)."""
        src = "model.embed_tokens.weight" if name == "lm_head.weight" and self.tied else name
        w = np.asarray(self.ckpt.rows(src, start, stop), dtype=np.float64)
        return self._readers(name, w)

    def _readers(self, name: str, w: np.ndarray) -> np.ndarray:
        """Embedding E·Qᵀ, head W·diag(g_final)·Qᵀ."""
        if name == "lm_head.weight":
            w = w * self._src("model.norm.weight")[None, :]
        return np.ascontiguousarray(w @ self.rot.q.T, dtype=np.float32)

    def get(self, name: str) -> np.ndarray:
        rot = self.rot
        if not self.residual and not name.startswith("model.layers."):
            return self.ckpt.get(name)
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            src = "model.embed_tokens.weight" if name == "lm_head.weight" and self.tied else name
            return self._readers(name, self._src(src))
        if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
            return self.ckpt.get(name) if not self.residual else np.ones(self.ckpt.shape(name), dtype=np.float32)
        if name == "model.norm.weight":
            return np.ones(self.ckpt.shape(name), dtype=np.float32)
        parts = name.split(".")
        if parts[0] != "model" or parts[1] != "layers" or len(parts) != 6:
            raise ConversionError(f"--rotate: tensor {name} has no known rotation")
        layer = f"model.layers.{parts[2]}."
        module, kind = f"{parts[3]}.{parts[4]}", parts[5]
        w = self._src(name)
        q = rot.q if self.residual else np.eye(len(rot.q))
        if kind == "weight" and module in self.GAIN_OF and self.residual:
            w = (w * self._src(layer + self.GAIN_OF[module] + ".weight")[None, :]) @ q.T
        if module == "self_attn.v_proj":
            w = _per_head_rows(w, rot.r)
        elif module == "mlp.up_proj" and self.online:
            w = rot.signs.reshape(-1, *([1] * (w.ndim - 1))) * w
        elif module == "self_attn.o_proj":
            w = q @ (_per_head_cols(w, rot.r) if kind == "weight" else w)
        elif module == "mlp.down_proj":
            if kind == "weight" and self.online:
                w = hadamard_ref(w * rot.signs[None, :])
            w = q @ w
        elif module not in self.GAIN_OF:
            raise ConversionError(f"--rotate: tensor {name} has no known rotation")
        return np.ascontiguousarray(w, dtype=np.float32)


def check_rotatable(config: dict[str, Any], features: list[str], tensor_names: list[str]) -> None:
    """--rotate folds RMSNorm gains and needs the plain pre-norm Llama block: refuse the rest."""
    if features:
        raise ConversionError(f"--rotate does not support model feature {features[0]!r} yet (Llama-style models only)")
    odd = [n for n in tensor_names if n.endswith(("attn_sub_norm.weight", "ffn_sub_norm.weight"))]
    if odd:
        raise ConversionError(f"--rotate does not support the sub-norm {odd[0]} (BitNet-style models)")
    for key in ("hidden_size", "head_dim", "intermediate_size"):
        p, m = split_size(int(config[key]))
        if m > MAX_ODD_BLOCK:
            raise ConversionError(f"--rotate: {key} {config[key]} = {p} × {m}, an odd factor above {MAX_ODD_BLOCK}")
