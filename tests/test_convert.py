"""The converter on tiny checkpoints written by transformers: exact tensors, refusals, recipes,
the hub cache route and interruption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_lowbit
from tiny_models import save_tiny

from lowbit.convert.converter import convert
from lowbit.convert.hf_source import HFCheckpoint
from lowbit.errors import ConversionError, UnsupportedModel
from lowbit.formats import LowbitReader
from lowbit.quant import quantize

PRESETS = ["f32", "f16", "bf16", "q8", "q4", "q3", "q2", "ternary", "ternary-1.6", "onebit"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_lowbit(*args, env=env)  # in-process (tests/cli_runner.py)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {a: save_tiny(a, root / a, seed=i) for i, a in enumerate(["llama", "qwen2", "mistral", "llama3"])}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "llama3"])
def test_f32_is_lossless(tiny_dirs, tmp_path, arch):
    out = convert(tiny_dirs[arch], tmp_path / "m.lowbit", method="f32")
    src = HFCheckpoint(tiny_dirs[arch])
    with LowbitReader(out.path) as r:
        names = set(r.tensors)
        for name in src.tensor_names():
            assert np.array_equal(r[name].dequantize(), src.get(name)), name
        assert names == set(src.tensor_names())
        assert r.metadata["config"]["attention_bias"] == (arch == "qwen2")
        if arch == "qwen2":
            assert "model.layers.0.self_attn.q_proj.bias" in names
        if arch == "mistral":
            assert r.metadata["config"]["sliding_window"] == 24
        if arch == "llama3":
            assert r.metadata["config"]["rope_scaling"]["rope_type"] == "llama3"
            assert r.metadata["config"]["rope_theta"] == 500000.0
        assert r.metadata["tokenizer"]["chat_template"].startswith("{% for message")
        assert r.blob("tokenizer.json") == (tiny_dirs[arch] / "tokenizer.json").read_bytes()
        assert r.verify() == len(names) + 1


@pytest.mark.parametrize("method", PRESETS)
def test_tensors_equal_quantiser_reference(tiny_dirs, tmp_path, method):
    """Every stored tensor dequantises to exactly what the quantiser produces from the source."""
    result = convert(tiny_dirs["llama"], tmp_path / "m.lowbit", method=method)
    src = HFCheckpoint(tiny_dirs["llama"])
    with LowbitReader(result.path) as r:
        for name, entry in r.tensors.items():
            w = src.get(name)
            ref = quantize(w, entry.encoding, entry.params).dequantize()
            assert np.array_equal(entry.dequantize(), ref), name
            assert entry.info["rel_error"] == pytest.approx(
                np.linalg.norm(ref - w) / np.linalg.norm(w), rel=1e-4, abs=1e-6
            )
        q = r["model.layers.0.self_attn.q_proj.weight"]
        assert q.encoding == {"ternary-1.6": "ternary-1.6"}.get(method, method)
        emb = r["model.embed_tokens.weight"].encoding
        assert emb == (method if method in ("f32", "f16", "bf16") else "q8")
        assert r["model.norm.weight"].encoding == "f32"
    if method == "f16":  # f16 is the source rounded once, nothing more
        with LowbitReader(result.path) as r:
            w = src.get("model.layers.1.mlp.down_proj.weight")
            assert np.array_equal(r["model.layers.1.mlp.down_proj.weight"].parts["data"], w.astype(np.float16))


def test_ptq_ternary_warns(tiny_dirs, tmp_path):
    result = convert(tiny_dirs["llama"], tmp_path / "t.lowbit", method="onebit")
    assert any("destroys its quality" in w for w in result.warnings)
    result = convert(tiny_dirs["llama"], tmp_path / "q.lowbit", method="q4")
    assert result.warnings == []


def test_recipe_mix(tiny_dirs, tmp_path):
    recipe = tmp_path / "mix.toml"
    recipe.write_text(
        'method = "q3"\n[[rules]]\npattern = "model.layers.*.mlp.down_proj.weight"\nencoding = "q8"\n'
        '[[rules]]\npattern = "model.layers.0.*"\nencoding = "q4"\ngroup_size = 32\n'
    )
    result = convert(tiny_dirs["llama"], tmp_path / "m.lowbit", recipe=recipe)
    with LowbitReader(result.path) as r:
        assert r["model.layers.0.mlp.down_proj.weight"].encoding == "q8"
        assert r["model.layers.0.self_attn.k_proj.weight"].encoding == "q4"
        assert r["model.layers.0.self_attn.k_proj.weight"].params == {"group_size": 32}
        assert r["model.layers.1.self_attn.k_proj.weight"].encoding == "q3"
        assert r["model.layers.0.input_layernorm.weight"].encoding == "f32"  # 1-D: rule skipped
        assert r.metadata["provenance"]["recipe"]["rules"][0]["encoding"] == "q8"


def test_list_methods():
    proc = run_cli("convert", "--list-methods")
    assert proc.returncode == 0
    for m in PRESETS:
        assert f"\n{m} " in "\n" + proc.stdout


def test_refuses_pickle(tmp_path, tiny_dirs):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_dirs["llama"] / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ConversionError, match="safetensors"):
        convert(folder, tmp_path / "o.lowbit")
    proc = run_cli("convert", str(folder / "pytorch_model.bin"), "-o", str(tmp_path / "o.lowbit"))
    assert_one_line_error(proc, "pytorch_model.bin", "safetensors")
    assert not (tmp_path / "o.lowbit").exists()


def test_refuses_unknown_architecture(tmp_path, tiny_dirs):
    folder = tmp_path / "gpt2"
    shutil.copytree(tiny_dirs["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModel, match="LlamaForCausalLM"):
        convert(folder, tmp_path / "o.lowbit")
    proc = run_cli("convert", str(folder), "-o", str(tmp_path / "o.lowbit"))
    assert_one_line_error(proc, "GPT2LMHeadModel", "supported")


@pytest.mark.parametrize("bad", ["nan", "inf", "zeros"])
def test_refuses_broken_tensors(tmp_path, tiny_dirs, bad):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / bad
    shutil.copytree(tiny_dirs["llama"], folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    w = tensors[name].copy()
    if bad == "zeros":
        w[:] = 0
    else:
        w[3, 5] = np.nan if bad == "nan" else np.inf
    tensors[name] = w
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    proc = run_cli("convert", str(folder), "-o", str(tmp_path / "o.lowbit"))
    assert_one_line_error(proc, name)
    assert not (tmp_path / "o.lowbit").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_output_needs_force(tmp_path, tiny_dirs):
    out = tmp_path / "m.lowbit"
    out.write_bytes(b"precious")
    proc = run_cli("convert", str(tiny_dirs["llama"]), "-o", str(out), "-m", "q8")
    assert_one_line_error(proc, "already exists", "--force")
    assert out.read_bytes() == b"precious"
    proc = run_cli("convert", str(tiny_dirs["llama"]), "-o", str(out), "-m", "q8", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "bits/weight" in proc.stdout
    with LowbitReader(out) as r:
        assert r["model.layers.0.mlp.up_proj.weight"].encoding == "q8"


def test_missing_source_and_not_a_model(tmp_path):
    assert_one_line_error(run_cli("convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o.lowbit")), "nope")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("convert", str(tmp_path / "empty"), "-o", str(tmp_path / "o.lowbit")), "config.json")


def _hf_cache(tmp_path: Path, src: Path, repo: str) -> Path:
    """Lay out a Hugging Face hub cache the way huggingface_hub does (blobs, snapshots, refs)."""
    cache = tmp_path / "hf-cache"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    import hashlib

    for f in src.iterdir():
        data = f.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return cache


def test_hub_id_offline_from_cache(tmp_path, tiny_dirs):
    cache = _hf_cache(tmp_path, tiny_dirs["qwen2"], "tiny-org/tiny-qwen2")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "hub.lowbit"
    proc = run_cli("convert", "tiny-org/tiny-qwen2", "-o", str(out), "-m", "f32", env=env)
    assert proc.returncode == 0, proc.stderr
    with LowbitReader(out) as r:
        assert r.metadata["provenance"]["source"] == "tiny-org/tiny-qwen2"
        src = HFCheckpoint(tiny_dirs["qwen2"])
        assert np.array_equal(r["model.layers.1.self_attn.k_proj.bias"].dequantize(), src.get("model.layers.1.self_attn.k_proj.bias"))
    proc = run_cli("convert", "tiny-org/absent", "-o", str(tmp_path / "x.lowbit"), env=env)
    assert_one_line_error(proc, "tiny-org/absent")


@pytest.mark.parametrize("method", ["q4", "q8", "f16"])
def test_row_chunked_conversion_is_identical(tiny_dirs, tmp_path, monkeypatch, method):
    """Large tensors are quantised in row blocks to bound memory; the bytes must not change."""
    import lowbit.convert.converter as converter

    whole = convert(tiny_dirs["qwen2"], tmp_path / "whole.lowbit", method=method).path
    monkeypatch.setattr(converter, "CHUNK_WEIGHTS", 1000)
    chunked = convert(tiny_dirs["qwen2"], tmp_path / "chunked.lowbit", method=method).path
    with LowbitReader(whole) as a, LowbitReader(chunked) as b:
        for name, e in a.tensors.items():
            for part, arr in e.parts.items():
                assert np.array_equal(arr, b[name].parts[part]), (name, part)
            assert e.info == b[name].info
