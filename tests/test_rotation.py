"""Incoherence processing (`--rotate`): the online Hadamard kernel equals its numpy reference and
the dense matrix it stands for; a rotated f32 model computes the unrotated model's logits
(prefill and the fused decode step, tied and untied embeddings); a file with the flag and an
unsupported size is refused; rotation + GPTQ beats GPTQ alone at q2 and q3 on KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiny_models import random_ids, save_tiny

from lowbit.convert.converter import convert
from lowbit.errors import ConversionError
from lowbit.quant.calibrate import (
    CalibrationConfig,
    default_calibration_text,
    default_evaluation_text,
)
from lowbit.quant.rotation import randomised_hadamard
from lowbit.runtime import load
from lowbit.runtime.errors import InvalidModel
from lowbit.runtime.kernels.hadamard import (
    hadamard_ref,
    hadamard_rows,
    odd_block,
    split_size,
    sylvester,
)
from lowbit.runtime.validate import check_config


@pytest.mark.parametrize("n", [1, 2, 64, 96, 176, 576, 1536])
def test_hadamard_kernel_matches_reference_and_matrix(n):
    p, m = split_size(n)
    assert p * m == n and m % 2 == 1 and p & (p - 1) == 0
    x = np.random.default_rng(n).standard_normal((5, n)).astype(np.float32)
    ref = hadamard_ref(x)
    np.testing.assert_allclose(hadamard_rows(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    t = np.kron(sylvester(p) / math.sqrt(p), odd_block(m).astype(np.float64))
    np.testing.assert_allclose(t @ t.T, np.eye(n), atol=1e-6)  # orthogonal
    np.testing.assert_allclose(ref, x.astype(np.float64) @ t.T, atol=1e-10)


def test_randomised_hadamard_is_orthogonal_and_incoherent():
    q = randomised_hadamard(576, np.random.default_rng(0))
    np.testing.assert_allclose(q @ q.T, np.eye(576), atol=1e-10)
    assert np.abs(q).max() <= 1 / math.sqrt(64) + 1e-12  # no entry above the Hadamard part's


def test_config_with_unsupported_size_is_refused():
    cfg = dict(hidden_size=64, intermediate_size=2 * 257, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=100, down_proj_hadamard=True)
    with pytest.raises(InvalidModel, match="down_proj_hadamard"):
        check_config(cfg)
    check_config({**cfg, "intermediate_size": 4 * 255})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rot")
    return {"untied": save_tiny("llama", root / "llama", seed=3), "tied": save_tiny("llama3", root / "llama3", seed=4)}


def _logits(path, ids, n_prompt):
    llm = load(path, threads=2, kv_cache="f32")  # exactness in f32: an f16 cache rounds rotated k/v apart
    out = [llm.logits(ids[:n_prompt])]
    out += [llm.decode(int(t))[None] for t in ids[n_prompt:]]
    return np.concatenate(out)


@pytest.mark.parametrize("kind", ["untied", "tied"])
def test_rotated_f32_model_equals_unrotated(models, tmp_path, kind):
    plain = convert(models[kind], tmp_path / "plain.lowbit", method="f32")
    rotated = convert(models[kind], tmp_path / "rot.lowbit", method="f32", rotate=7)
    ids = random_ids(20, seed=1)
    a, b = _logits(plain.path, ids, 12), _logits(rotated.path, ids, 12)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    llm = load(rotated.path)
    assert llm.args.down_proj_hadamard and not llm.args.tie_word_embeddings
    assert llm.metadata["features"]["down_proj_hadamard"] and llm.metadata["provenance"]["rotation"]["seed"] == 7
    # the weights did change: the rotation is not the identity
    w0 = load(plain.path).model.blocks[0].mlp.down_proj
    w1 = llm.model.blocks[0].mlp.down_proj
    x = np.eye(w0.in_features, dtype=np.float32)[:4]
    assert np.abs(w0(x) - w1(x)).max() > 1e-3


@pytest.mark.parametrize("parts", [dict(online=False), dict(residual=False)])
def test_partial_rotations_are_exact_too(models, tmp_path, monkeypatch, parts):
    """Without the online transform, or without the residual rotation (norm gains kept)."""
    import functools

    import lowbit.quant.rotation as rotation

    monkeypatch.setattr(rotation, "RotatedCheckpoint", functools.partial(rotation.RotatedCheckpoint, **parts))
    plain = convert(models["tied"], tmp_path / "plain.lowbit", method="f32")
    rotated = convert(models["tied"], tmp_path / "rot.lowbit", method="f32", rotate=1)
    ids = random_ids(20, seed=1)
    a, b = _logits(plain.path, ids, 12), _logits(rotated.path, ids, 12)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    args = load(rotated.path).args
    assert args.down_proj_hadamard == parts.get("online", True)
    assert args.tie_word_embeddings == (not parts.get("residual", True))


def test_rotate_refuses_what_it_cannot_fold(tmp_path):
    folder = save_tiny("bitnet", tmp_path / "bitnet", seed=0)
    with pytest.raises(ConversionError, match="--rotate"):
        convert(folder, tmp_path / "x.lowbit", method="q4", rotate=0)
    assert not (tmp_path / "x.lowbit").exists()


def test_cli_rotate(models, tmp_path):
    from cli_runner import run_lowbit

    out = tmp_path / "cli.lowbit"
    r = run_lowbit("convert", str(models["tied"]), "-o", str(out), "-m", "q4", "--rotate", "--rotate-seed", "3")
    assert r.returncode == 0, r.stderr
    assert load(out).metadata["provenance"]["rotation"]["seed"] == 3
    r = run_lowbit("convert", str(models["tied"]), "-o", str(tmp_path / "y.lowbit"), "--rotate-seed", "-1")
    assert r.returncode != 0 and "--rotate-seed" in r.stderr and not (tmp_path / "y.lowbit").exists()


def _kl(ref, logits):
    lr = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return float((np.exp(lr) * (lr - lp)).sum(-1).mean())


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    """A tiny Llama whose linear weights are heavy-tailed, as trained LLMs' are: 0.5 % of the
    weights 12 × larger, so min-max groups waste most of their grid on a few values."""
    from safetensors.numpy import load_file, save_file

    folder = save_tiny("llama", tmp_path_factory.mktemp("out") / "llama", seed=5, hidden_size=128,
                       intermediate_size=352)
    tensors = load_file(folder / "model.safetensors")
    for name, w in tensors.items():
        if name.endswith("proj.weight"):
            w[np.random.default_rng(len(name)).random(w.shape) < 0.005] *= 12.0
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("method", ["q3", "q2"])
def test_rotation_with_gptq_beats_gptq_alone(outlier_model, tmp_path, method):
    """KL to the f32 model on held-out text (measured: q3 0.14 -> 0.06, q2 0.34 -> 0.21)."""
    name, text = default_calibration_text()
    calib = CalibrationConfig(text, name, sequences=8, seq_len=64)
    ref = load(convert(outlier_model, tmp_path / "f32.lowbit", method="f32").path)
    ids = ref.tokenize(default_evaluation_text()[1], add_special_tokens=False)[:128]
    plain = convert(outlier_model, tmp_path / "gptq.lowbit", method=method, calibration=calib)
    rotated = convert(outlier_model, tmp_path / "rot.lowbit", method=method, calibration=calib, rotate=0)
    lr = ref.logits(ids)
    kl_plain, kl_rot = (_kl(lr, load(r.path).logits(ids)) for r in (plain, rotated))
    assert kl_rot < 0.8 * kl_plain, (kl_rot, kl_plain)
