"""Every command with ordinary mistakes: each bad value is one `error:` line on stderr, exit code 1,
no traceback, and fast (refused before a model is loaded). The values next to each boundary are
accepted: the run then fails on the (missing) model instead, which shows the option passed.

Run in-process (lowbit.cli.main) since a subprocess would only add numba's import time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tiny_models import save_tiny

from lowbit.cli import main
from lowbit.commands.options import available_cpus
from lowbit.convert.converter import convert

MISSING = "missing.lowbit"
TOO_MANY = str(available_cpus() + 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny q4 model whose maximum context is 256 tokens."""
    root = tmp_path_factory.mktemp("opts")
    return convert(save_tiny("llama", root / "hf", seed=3), root / "tiny-q4.lowbit", method="q4").path


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    return p


def run(capsys, argv: list[str]) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err, time.perf_counter() - t0


def assert_one_error(capsys, argv: list[str], needle: str) -> str:
    code, out, err, seconds = run(capsys, argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, (argv, code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert "Traceback" not in err and not out.strip(), (argv, out, err)
    assert needle in lines[0], (argv, needle, lines[0])
    assert seconds < 5, (argv, seconds)
    return lines[0]


THREADED = [
    ["generate", MISSING, "-p", "hi"],
    ["chat", MISSING],
    ["demo"],
    ["eval", "ppl", MISSING, "--text", "{text}"],
    ["eval", "kl", MISSING, "--ref", MISSING, "--text", "{text}"],
]
SAMPLED = [["generate", MISSING, "-p", "hi"], ["chat", MISSING]]
CONVERTING = THREADED[:2] + [["bench", MISSING], ["eval", "ppl", MISSING, "--text", "{text}"]]
KV_CACHED = SAMPLED + [["bench", MISSING], ["serve", MISSING], ["eval", "ppl", MISSING, "--text", "{text}"],
                       ["eval", "kl", MISSING, "--ref", MISSING, "--text", "{text}"]]

# (argv tail, words the error line must contain); empty needle list = just one error line
BAD = (
    [(cmd, ["--threads", v], "--threads") for cmd in THREADED for v in ("0", "-2", TOO_MANY, "two")]
    + [(["bench", MISSING], ["-t", v], "--threads") for v in ("0", "-2", TOO_MANY, "1,0", "1,", "a")]
    + [(cmd, ["--method", "bogus"], "'bogus' is not one of") for cmd in CONVERTING]
    + [(["convert", "./src"], ["-m", "bogus"], "'bogus' is not one of"), (["demo"], ["-m", "bogus"], "'bogus'")]
    + [(cmd, ["--seed", "-2"], "--seed") for cmd in SAMPLED]
    + [(cmd, ["--max-tokens", v], "--max-tokens") for cmd in SAMPLED + [["demo"]] for v in ("0", "-1")]
    + [(cmd, [opt, v], opt) for cmd in SAMPLED for opt, v in (
        ("--temperature", "-0.1"), ("--temperature", "nan"), ("--top-k", "-1"), ("--top-p", "0"),
        ("--top-p", "1.5"), ("--min-p", "-0.5"), ("--min-p", "2"), ("--repeat-penalty", "0"),
        ("--repeat-penalty", "inf"))]
    + [(cmd, ["--ctx", v], "--ctx") for cmd in SAMPLED for v in ("0", "-5", "15")]
    + [(["eval", sub, *rest], ["--ctx", v], "--ctx") for sub, *rest in (
        ("ppl", MISSING, "--text", "{text}"), ("kl", MISSING, "--ref", MISSING, "--text", "{text}"))
       for v in ("0", "3", "-1")]
    + [(["bench", MISSING], [opt, "0"], opt) for opt in ("--prompt-tokens", "--gen-tokens", "--repeats")]
    + [(["bench", MISSING], ["-n", "-3"], "--prompt-tokens"), (["bench", MISSING], ["-r", "-1"], "--repeats")]
    + [(cmd, ["--kv-cache", v], f"'{v}' is not one of") for cmd in KV_CACHED for v in ("q4", "F16")]
    + [(["bench", MISSING], ["--depth", v], "--depth") for v in ("-1", "1,", "a", "1.5", "")]
    + [(["generate", MISSING], ["-p", v], "prompt is empty") for v in ("", "  ")]
    + [(["demo"], ["-p", ""], "prompt is empty")]
    + [(["chat", MISSING], ["--template-var", v], "NAME=VALUE") for v in ("enable thinking", "=1", "1x=2")]
    + [(["convert", "./src"], [opt, v], opt) for opt, v in (
        ("--calib-sequences", "0"), ("--calib-len", "1"), ("--target-bpw", "0"), ("--target-bpw", "nan"),
        ("--eval-ctx", "3"))]
)


@pytest.mark.parametrize("base,extra,needle", BAD, ids=[" ".join(b + e) for b, e, _ in BAD])
def test_bad_value_is_one_error_line(capsys, text_file, base, extra, needle):
    argv = [str(text_file) if a == "{text}" else a for a in base + extra]
    assert_one_error(capsys, argv, needle)


# the accepted neighbours of those boundaries: the error is then the missing model's
GOOD = (
    [(cmd, ["--threads", v]) for cmd in THREADED[:2] + THREADED[3:] for v in ("1", str(available_cpus()))]
    + [(["bench", MISSING], ["-t", f"1,{available_cpus()}"])]
    + [(cmd, ["--seed", v]) for cmd in SAMPLED for v in ("-1", "0")]
    + [(cmd, ["--max-tokens", "1"]) for cmd in SAMPLED]
    + [(cmd, ["--ctx", "16"]) for cmd in SAMPLED]
    + [(["eval", "ppl", MISSING, "--text", "{text}"], ["--ctx", "4"])]
    + [(["bench", MISSING], ["-n", "1", "-g", "1", "-r", "1"])]
    + [(["bench", MISSING], ["--depth", v]) for v in ("0", "0,1024", " 4096 ")]
    + [(cmd, ["--kv-cache", v]) for cmd in KV_CACHED[:2] + KV_CACHED[3:] for v in ("f32", "f16", "q8")]
    + [(SAMPLED[0], [opt, v]) for opt, v in (
        ("--temperature", "0"), ("--top-k", "0"), ("--top-p", "1"), ("--min-p", "0"), ("--min-p", "1"),
        ("--repeat-penalty", "1"))]
    + [(cmd, ["--method", m]) for cmd in CONVERTING for m in ("q2", "ternary-1.6")]
)


@pytest.mark.parametrize("base,extra", GOOD, ids=[" ".join(b + e) for b, e in GOOD])
def test_boundary_value_is_accepted(capsys, text_file, base, extra):
    argv = [str(text_file) if a == "{text}" else a for a in base + extra]
    assert_one_error(capsys, argv, f"{MISSING}: no such file")


def test_seed_minus_one_is_random():
    from click.testing import CliRunner

    from lowbit.commands.generate import generate

    seen = {}

    def fake_generate(**params):
        seen.update(params)

    cmd = generate.callback
    try:
        generate.callback = fake_generate
        res = CliRunner().invoke(generate, [MISSING, "-p", "hi", "--seed", "-1"])
        assert res.exit_code == 0, res.output
        assert seen["seed"] is None  # None = fresh entropy in SamplingParams
        CliRunner().invoke(generate, [MISSING, "-p", "hi", "--seed", "7"])
        assert seen["seed"] == 7
    finally:
        generate.callback = cmd


def test_context_beyond_the_model_is_refused_naming_its_maximum(capsys, tiny, text_file):
    for argv in (
        ["generate", str(tiny), "-p", "hi", "--ctx", "100000"],
        ["chat", str(tiny), "--ctx", "257"],
        ["eval", "ppl", str(tiny), "--text", str(text_file), "--ctx", "512"],
    ):
        line = assert_one_error(capsys, argv, "maximum context of 256")
        assert "--ctx" in line


def test_prompt_longer_than_the_context_names_ctx_and_the_maximum(capsys, tiny):
    long = "The quick brown fox jumps over the lazy dog. " * 30
    line = assert_one_error(capsys, ["generate", str(tiny), "-p", long, "--ctx", "64"], "--ctx")
    assert "context of 64" in line and "maximum is 256" in line
    line = assert_one_error(capsys, ["generate", str(tiny), "-p", long, "--ctx", "16"], "context of 16")
    line = assert_one_error(capsys, ["generate", str(tiny), "-p", long * 3], "maximum is 256")


def test_bench_beyond_the_context_fails_before_any_work(capsys, tiny):
    line = assert_one_error(capsys, ["bench", str(tiny), "-n", "9000"], "maximum is 256")
    assert "-n 9000" in line
    assert_one_error(capsys, ["bench", str(tiny), "-n", "200", "-g", "57"], "need a context of 257")
    assert_one_error(capsys, ["bench", str(tiny), "-d", "0,150", "-n", "100", "-g", "7"], "need a context of 257")


def test_convert_mistyped_local_path_is_a_missing_path(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for src in ("./SmolLM2-135M-Instruc", "models/SmolLM2", "~/no-such-folder-here", "model.gguf", "SmolLM2"):
        line = assert_one_error(capsys, ["convert", src, "-o", "out.lowbit"], "no such file or folder")
        assert src in line
        assert not (tmp_path / "out.lowbit").exists()
    # the same names as MODEL of generate / chat / bench
    for cmd in (["generate", "./SmolLM2", "-p", "hi"], ["chat", "models/x"], ["bench", "./x"]):
        assert_one_error(capsys, cmd, "no such file or folder")


def test_bogus_method_is_refused_before_a_conversion_is_announced(capsys, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    code, out, err, _ = run(capsys, ["generate", str(folder), "-p", "hi", "--method", "bogus"])
    assert code == 1 and "converting" not in err and "'bogus'" in err


def test_usage_errors_are_one_line_too(capsys):
    assert_one_error(capsys, ["nosuchcommand"], "no such command")
    assert_one_error(capsys, ["generate", MISSING, "--no-such-option"], "--no-such-option")
    assert_one_error(capsys, ["convert"], "missing SOURCE")
    assert_one_error(capsys, ["bench"], "MODEL")


@pytest.mark.parametrize("value", ["0", "-1", TOO_MANY, "x"])
def test_threads_from_the_environment_are_checked_too(capsys, monkeypatch, text_file, value):
    monkeypatch.setenv("LOWBIT_THREADS", value)
    for cmd in (["generate", MISSING, "-p", "hi"], ["chat", MISSING], ["bench", MISSING],
                ["eval", "ppl", MISSING, "--text", str(text_file)]):
        assert_one_error(capsys, cmd, "$LOWBIT_THREADS")
