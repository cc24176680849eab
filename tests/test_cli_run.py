"""generate / bench / API on a tiny random model: output shapes, JSON fields and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_lowbit
from tiny_models import save_tiny

from lowbit.convert.converter import convert

README = Path(__file__).resolve().parents[1] / "README.md"


def run_cli(*args: str, input: str | None = None, cwd=None, env=None) -> subprocess.CompletedProcess:
    return run_lowbit(*args, input=input, cwd=cwd, env=env)  # in-process: formatting and exit codes only


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    folder = save_tiny("llama", root / "hf", seed=1)
    return convert(folder, root / "tiny-q4.lowbit", method="q4").path


def test_generate_json(tiny):
    proc = run_cli("generate", str(tiny), "-p", "The quick brown fox", "--max-tokens", "12", "--json", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert isinstance(out["text"], str) and out["text"]
    assert out["generation_tokens"] == 12 and out["finish_reason"] == "length"
    assert out["prompt_tokens"] > 0
    for k in ("time_to_first_token", "prompt_tps", "generation_tps", "load_seconds"):
        assert out[k] > 0, k
    # greedy is deterministic; raw text equals what the API produces
    import lowbit

    model = lowbit.load(tiny)
    assert model.generate("The quick brown fox", max_tokens=12) == out["text"]


def test_generate_stdin_file_and_chat(tiny, tmp_path):
    a = run_cli("generate", str(tiny), "--max-tokens", "8", input="What is the capital of France?")
    f = tmp_path / "prompt.txt"
    f.write_text("What is the capital of France?")
    b = run_cli("generate", str(tiny), "-f", str(f), "--max-tokens", "8")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.strip()
    c = run_cli("generate", str(tiny), "--chat", "-p", "What is the capital of France?", "--max-tokens", "8", "--json")
    assert c.returncode == 0, c.stderr
    # the chat template adds its own tokens around the prompt
    assert json.loads(c.stdout)["prompt_tokens"] > json.loads(
        run_cli("generate", str(tiny), "-p", "What is the capital of France?", "--max-tokens", "1", "--json").stdout
    )["prompt_tokens"]


def test_bench_json(tiny):
    proc = run_cli("bench", str(tiny), "-n", "16", "-g", "8", "-t", "1,2", "-r", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["file_size_bytes"] == tiny.stat().st_size
    assert rep["bits_per_weight"] > 0 and rep["load_seconds"] > 0 and rep["peak_rss_mb"] > 0
    assert [r["threads"] for r in rep["runs"]] == [1, 2]
    for r in rep["runs"]:
        assert r["prefill_tps"] > 0 and r["decode_tps"] > 0 and r["time_to_first_token_s"] > 0
        assert r["prompt_tokens"] == 16 and r["gen_tokens"] == 8
        assert r["weights_read_gbs"] == pytest.approx(rep["decode_read_bytes"] * r["decode_tps"] / 1e9)
        assert r["read_ceiling_gbs"] is None  # measured only with --read-ceiling
    from lowbit.formats import LowbitReader

    with LowbitReader(tiny) as reader:  # every layer's linears and the (tied) head, once each
        lin = [e for e in reader.tensors.values() if ".layers." in e.name and len(e.shape) == 2]
        head = reader.tensors.get("lm_head.weight") or reader.tensors["model.embed_tokens.weight"]
        assert len(lin) == 7 * len({e.name.split(".")[2] for e in lin})
        expected = sum(int(p.nbytes) for e in [*lin, head] for p in e.parts.values())
    assert rep["decode_read_bytes"] == expected


def test_bench_read_ceiling(tiny):
    proc = run_cli("bench", str(tiny), "-n", "4", "-g", "2", "-t", "1,2", "-r", "1", "--read-ceiling")
    assert proc.returncode == 0, proc.stderr
    header, *rows = [ln.split() for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit() or "ceiling" in ln]
    assert header[-2:] == ["ceiling", "GB/s"] and [r[0] for r in rows] == ["1", "2"]
    assert all(float(r[-1]) > 0.1 for r in rows)  # a real read rate, not a placeholder


@pytest.mark.parametrize(
    "model,needle",
    [("missing.lowbit", "missing.lowbit"), ("notamodel.txt", "notamodel.txt"), ("gpt2", "GPT2LMHeadModel")],
)
def test_bad_model_argument(tmp_path, model, needle):
    (tmp_path / "notamodel.txt").write_text("hello")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (gpt2 / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for cmd in (["generate", model, "-p", "hi"], ["chat", model], ["bench", model]):
        proc = run_cli(*cmd, cwd=tmp_path, env={"LOWBIT_HOME": str(tmp_path / "home")})
        assert proc.returncode == 1, (cmd, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (cmd, proc.stderr)


def test_readme_api_example_runs(tiny, tmp_path):
    code = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "smollm2-q4.lowbit").symlink_to(tiny)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()  # it printed a completion, a streamed chat reply and a logits shape
    assert re.search(r"\(\d+, 384\)", proc.stdout)


def test_two_models_share_no_state(tiny, tmp_path):
    import lowbit

    a, b = lowbit.load(tiny), lowbit.load(tiny, threads=1)
    ids = a.tokenize("The quick brown fox")
    first = a.logits(ids)
    b.prefill(b.tokenize("something else entirely, longer than the other prompt"))
    assert (a.logits(ids) == first).all()  # b's cache and threads did not touch a
    assert a.threads != b.threads or a.threads == 1
    assert a.cache is not b.cache
