"""Learned calibration (lowbit.train, torch): each method lowers its loss, writes a file that
beats its initialisation on KL against the float model, and resumes after an interruption; the
runtime stays torch-free. Tiny random models, a few dozen steps each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_lowbit
from tiny_models import save_tiny

TEXT = ("The quick brown fox jumps over the lazy dog. What is the capital of France? Paris. " * 40)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("train") / "tiny", seed=3)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    from lowbit.convert.converter import convert

    out = tmp_path_factory.mktemp("ref") / "f32.lowbit"
    convert(tiny, out, method="f32")
    return out


def _cfg(mode: str, ckpt: Path, **kw):
    from lowbit.train.config import TrainConfig

    base = dict(budget_minutes=5.0, checkpoint=ckpt, max_steps=40, seq_len=32, sequences=8, threads=1,
                calib_text=("test", TEXT), every=10, lr=3e-3 if mode == "kd" else 1e-2)
    base.update(kw)
    return TrainConfig(mode, **base)


def _kl(path: Path, reference: Path) -> float:
    from lowbit import load
    from lowbit.eval.perplexity import kl_divergence

    return kl_divergence(load(path), load(reference), TEXT, ctx=32).kl_mean


def _write(tiny: Path, out: Path, method: str, result=None) -> Path:
    from lowbit.convert.converter import convert

    convert(tiny, out, method=method, force=True, trained=None if result is None else result.tensors,
            training=None if result is None else result.provenance)
    return out


@pytest.mark.parametrize(("mode", "method"), [("kd", "onebit"), ("kd", "ternary"), ("lsi", "q2")])
def test_learned_method_lowers_loss_and_beats_its_start(tiny, reference, tmp_path, mode, method):
    from lowbit.train.api import learn

    kw = {"init": "svid"} if mode == "kd" else {}  # the paper's start (the default); the calibrated one: below
    result = learn(str(tiny), method, _cfg(mode, tmp_path / "c.safetensors", max_steps=40, **kw))
    if mode == "kd":
        assert result.provenance["steps"] == 40
        assert result.provenance["loss_last"] < 0.8 * result.provenance["loss_first"]
    else:
        blocks = result.provenance["blocks"]
        assert len(blocks) == 2 and all(b["loss_last"] < b["loss_first"] for b in blocks)
    trained = _write(tiny, tmp_path / "trained.lowbit", method, result)
    start = _write(tiny, tmp_path / "start.lowbit", method)  # SVID / absmean / RTN with clip search
    kl_trained, kl_start = _kl(trained, reference), _kl(start, reference)
    assert kl_trained < 0.85 * kl_start, (kl_trained, kl_start)


def _calibrated_start(tiny: Path, method: str):
    """The calibrated tensors KD starts from, on the windows learn() trains on."""
    import torch

    from lowbit.convert.recipe import load_recipe
    from lowbit.train.teacher import linear_modules, load_teacher, open_source, text_windows
    from lowbit.train.warm_start import calibrated_start

    src = open_source(str(tiny))
    choose = load_recipe(None, method).choose
    names = {n for n, _, _ in linear_modules(load_teacher(src, torch.device("cpu")), src, choose).values()}
    return calibrated_start(src, choose, text_windows(src, TEXT, 32, 8), names)[0]


@pytest.mark.parametrize("method", ["onebit", "ternary"])
def test_students_start_exactly_at_the_calibrated_tensors(tiny, method):
    """A student built from a calibrated tensor packs back to it bit for bit (signs/trits, g/h or
    scales), and computes its dequantised weight in its forward."""
    import torch

    from lowbit.train.students import make_student

    start = _calibrated_start(tiny, method)
    name, enc = next((n, e) for n, e in start.items() if "mlp.down_proj" in n)
    lin = torch.nn.Linear(enc.shape[1], enc.shape[0], bias=False)
    student = make_student(lin, method, {"layernorm": False} if method == "onebit" else {}, enc)
    back = student.export()
    for part, a in enc.parts.items():
        np.testing.assert_array_equal(back.parts[part], a, err_msg=f"{name}.{part}")
    if method == "onebit":  # (the ternary student fake-quantises its inputs to int8 as the runtime does)
        x = torch.randn(5, enc.shape[1])
        np.testing.assert_allclose(student(x).detach().numpy(), x.numpy() @ enc.dequantize().T, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="cannot start from"):
        make_student(torch.nn.Linear(8, 4, bias=False), method, {"layernorm": False}, enc)


def test_kd_from_the_calibrated_start_begins_lower_and_beats_it(tiny, reference, tmp_path):
    """--kd-init calibrated: the first loss is far below SVID's, and the trained file
    beats the calibrated tensors it started from on KL."""
    from lowbit.train.api import learn

    svid = learn(str(tiny), "onebit", _cfg("kd", tmp_path / "s.safetensors", max_steps=1, block_fraction=0.0, init="svid"))
    result = learn(str(tiny), "onebit", _cfg("kd", tmp_path / "c.safetensors", max_steps=80, lr=3e-4, init="calibrated"))
    assert result.provenance["init"].startswith("calibrated") and result.provenance["init_seconds"] > 0
    assert result.provenance["loss_first"] < 0.5 * svid.provenance["loss_first"]
    trained = _write(tiny, tmp_path / "trained.lowbit", "onebit", result)
    start = _write(tiny, tmp_path / "start.lowbit", "onebit", type(result)(_calibrated_start(tiny, "onebit")))
    kl_trained, kl_start = _kl(trained, reference), _kl(start, reference)
    assert kl_trained < 0.9 * kl_start, (kl_trained, kl_start)


def _interrupt_at(monkeypatch, module, name: str, step: int) -> None:
    """SIGINT to this process at the `step`-th call of module.name (once per training step)."""
    original = getattr(module, name)
    calls = [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


def test_kd_interrupted_run_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    import lowbit.train.kd as kd
    from lowbit.train.api import learn
    from lowbit.train.checkpoint import load_checkpoint
    from lowbit.train.loop import Interrupted

    whole = learn(str(tiny), "onebit", _cfg("kd", tmp_path / "whole.safetensors", max_steps=12))
    ckpt = tmp_path / "cut.safetensors"
    with monkeypatch.context() as m:
        _interrupt_at(m, kd, "kd_loss", 7)
        with pytest.raises(Interrupted, match="--resume"):
            learn(str(tiny), "onebit", _cfg("kd", ckpt, max_steps=12))
    assert load_checkpoint(ckpt)[1]["step"] == 7
    with pytest.raises(Exception, match="exists: pass --resume"):
        learn(str(tiny), "onebit", _cfg("kd", ckpt, max_steps=12))
    resumed = learn(str(tiny), "onebit", _cfg("kd", ckpt, max_steps=12, resume=True))
    assert resumed.provenance["steps"] == 12
    for name, enc in whole.tensors.items():
        for part, a in enc.parts.items():
            np.testing.assert_allclose(resumed.tensors[name].parts[part].astype(np.float32), a.astype(np.float32),
                                       rtol=1e-3, atol=1e-3, err_msg=f"{name}.{part}")


def test_lsi_interrupted_in_its_second_block_resumes(tiny, tmp_path, monkeypatch):
    import lowbit.train.blockwise as blockwise
    from lowbit.train.api import learn
    from lowbit.train.checkpoint import load_checkpoint
    from lowbit.train.loop import Interrupted

    whole = learn(str(tiny), "q2", _cfg("lsi", tmp_path / "whole.safetensors", max_steps=6))
    ckpt = tmp_path / "cut.safetensors"
    with monkeypatch.context() as m:
        _interrupt_at(m, blockwise, "batch_ids", 6 + 3)  # block 0's 6 steps, then the 3rd of block 1
        with pytest.raises(Interrupted):
            learn(str(tiny), "q2", _cfg("lsi", ckpt, max_steps=6))
    meta = load_checkpoint(ckpt)[1]
    assert meta["block"] == 1 and meta["in_block"]
    resumed = learn(str(tiny), "q2", _cfg("lsi", ckpt, max_steps=6, resume=True))
    for name, enc in whole.tensors.items():
        np.testing.assert_array_equal(resumed.tensors[name].parts["codes"], enc.parts["codes"], err_msg=name)


def test_cli_validates_train_options_before_loading(tiny, tmp_path):
    r = run_lowbit("convert", str(tiny), "-m", "q4", "--train", "kd", "-o", str(tmp_path / "x.lowbit"))
    assert r.returncode != 0 and "--train kd trains methods onebit" in r.stderr
    r = run_lowbit("convert", str(tiny), "-m", "onebit", "--resume", "-o", str(tmp_path / "x.lowbit"))
    assert r.returncode != 0 and "--resume applies to --train only" in r.stderr
    r = run_lowbit("convert", str(tiny), "-m", "q2", "--train", "lsi", "--calibrate", "-o", str(tmp_path / "x.lowbit"))
    assert r.returncode != 0 and "replaces --calibrate" in r.stderr
    r = run_lowbit("convert", str(tiny), "-m", "q2", "--train", "lsi", "--resume", "-o", str(tmp_path / "x.lowbit"))
    assert r.returncode == 1 and "no training checkpoint to resume from" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.lowbit").exists()


def test_cli_kd_writes_a_file_with_its_provenance(tiny, tmp_path):
    out = tmp_path / "kd.lowbit"
    r = run_lowbit("convert", str(tiny), "-m", "ternary", "--train", "kd", "--train-steps", "3", "--calib-len", "32",
                   "--calib-sequences", "2", "--train-threads", "1", "-o", str(out), env={"LOWBIT_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "trained (kd, data-free" in r.stdout and not (tmp_path / "kd.lowbit.train.safetensors").exists()
    from lowbit.formats import LowbitReader

    with LowbitReader(out) as f:
        prov = f.metadata["provenance"]["training"]
    assert prov["method"] == "kd" and prov["steps"] == 3 and prov["data_tokens"] == 64
    assert list((tmp_path / "calibration").glob("datafree-*.npy"))  # the sampled text is cached


def test_runtime_and_cli_modules_do_not_import_torch():
    code = ("import sys, lowbit.runtime.model, lowbit.runtime.llm, lowbit.commands.convert, lowbit.train, "
            "lowbit.quant.onebit, lowbit.convert.converter; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
