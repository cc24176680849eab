"""`lowbit info` and `lowbit verify` through the CLI's entry point (in-process), on the golden files:
bits/weight equal the SPEC.md formulas for those tensors; bad files give exit code 1 and one
"error: ..." line, never a traceback."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import pytest
from cli_runner import run_lowbit

from lowbit.formats import LowbitReader
from lowbit.inspect import summarize

GOLDEN = Path(__file__).parent / "golden"


def lowbit(*args: str) -> subprocess.CompletedProcess:
    return run_lowbit(*args)  # in-process (tests/cli_runner.py): the output is what is tested


def ceil(a: int, b: int) -> int:
    return -(-a // b)


def spec_bits(encoding: str, shape: list[int], params: dict) -> Fraction:
    """Total bits of a tensor's parts, from the closed forms of SPEC.md section 2."""
    numel = 1
    for d in shape:
        numel *= d
    if encoding in ("f32", "f16", "bf16"):
        return Fraction(numel * {"f32": 32, "f16": 16, "bf16": 16}[encoding])
    out, n_in = shape
    if encoding == "q8":
        return (8 + Fraction(16 * ceil(n_in, params["group_size"] or n_in), n_in)) * numel
    if encoding in ("q2", "q3", "q4"):
        b, g = int(encoding[1]), params["group_size"]
        return Fraction(8 * (ceil(n_in, g) * (g * b // 8 + 2) + 2), n_in) * numel
    n_scale = 1 if params.get("scale_mode") == "tensor" else out
    if encoding == "ternary":
        return Fraction(2 * ceil(n_in, 128) * 128 * out + 32 * n_scale)
    if encoding == "ternary-1.6":
        return Fraction(8 * ceil(n_in, 160) * 32 * out + 32 * n_scale)
    if encoding == "onebit":
        return Fraction(ceil(n_in, 64) * 64 * out + 16 * (n_in + out))
    raise AssertionError(encoding)


def expected_numbers(path: Path) -> dict:
    """Per encoding and overall (weights, bits), from the header's shapes and the formulas."""
    enc: dict[str, list] = {}
    total = [0, Fraction(0)]
    linear = [0, Fraction(0)]
    per_tensor = {}
    with LowbitReader(path) as r:
        for t in r.tensors.values():
            bits = spec_bits(t.encoding, list(t.shape), t.params)
            per_tensor[t.name] = (t.encoding, list(t.shape), bits / t.numel)
            for acc in (enc.setdefault(t.encoding, [0, Fraction(0)]), total) + (
                (linear,) if t.name.startswith("model.layers.") and len(t.shape) == 2 else ()
            ):
                acc[0] += t.numel
                acc[1] += bits
    return {"encodings": enc, "total": total, "linear": linear, "tensors": per_tensor}


@pytest.mark.parametrize("stem", ["dense", "q8", "grouped", "ternary", "onebit"])
def test_info_json(stem):
    path = GOLDEN / f"{stem}.lowbit"
    res = lowbit("info", "--json", str(path))
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    want = expected_numbers(path)
    assert s["architecture"] == "llama"
    assert s["source_architecture"] == "LlamaForCausalLM"
    assert s["file_size"] == path.stat().st_size
    assert s["parameters"] == want["total"][0]
    assert s["bits_per_weight"] == pytest.approx(
        float(want["total"][1] / want["total"][0]), rel=1e-12
    )
    assert s["linear_parameters"] == want["linear"][0]
    assert s["linear_bits_per_weight"] == pytest.approx(
        float(want["linear"][1] / want["linear"][0]), rel=1e-12
    )
    assert s["file_bits_per_weight"] == pytest.approx(
        8 * path.stat().st_size / want["total"][0], rel=1e-12
    )
    assert set(s["encodings"]) == set(want["encodings"])
    for name, (weights, bits) in want["encodings"].items():
        e = s["encodings"][name]
        assert e["weights"] == weights
        assert e["bytes"] * 8 == bits
        assert e["bits_per_weight"] == pytest.approx(float(bits / weights), rel=1e-12)
    assert s["tokenizer"] == {"kind": "tokenizers", "blob": "tokenizer.json", "chat_template": True}
    assert s["context_length"] == 256
    assert s["provenance"]["source"] == "golden/tiny-llama"
    assert s["provenance"]["converter"] == "lowbit 0.1.0"
    assert s["provenance"]["created"] == "2025-01-01T00:00:00+00:00"
    assert s["provenance"]["recipe_method"] == {"dense": "f16", "grouped": "q4"}.get(stem, stem)
    assert s["quality"] == ({"ppl": 12.5, "kl": 0.0123, "ctx": 256} if stem == "q8" else None)
    assert "tensors" not in s


def test_info_json_tensors():
    path = GOLDEN / "ternary.lowbit"
    res = lowbit("info", "--json", "--tensors", str(path))
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["tensors"]
    want = expected_numbers(path)["tensors"]
    assert [r["name"] for r in rows] == list(want)
    for r in rows:
        encoding, shape, bpw = want[r["name"]]
        assert (r["encoding"], r["shape"]) == (encoding, shape)
        assert r["bits_per_weight"] == pytest.approx(float(bpw), rel=1e-12)
        assert r["rel_error"] == 0.0


def test_info_human():
    path = GOLDEN / "q8.lowbit"
    res = lowbit("info", str(path))
    assert res.returncode == 0, res.stderr
    lines = {line[:14].strip(): line[14:] for line in res.stdout.splitlines() if line[:14].strip()}
    want = expected_numbers(path)
    weights, bits = want["encodings"]["q8"]
    assert lines["architecture"] == "llama"
    assert lines["source arch"] == "LlamaForCausalLM"
    assert lines["parameters"].startswith(f"{weights:,} in 3 tensors, 1 blob")
    assert lines["bits/weight"].startswith(
        f"{float(bits / weights):.3f} overall, {float(bits / weights):.3f} linear layers"
    )
    assert lines["encodings"].split()[0] == "q8"
    assert lines["encodings"].endswith(f"{float(bits / weights):.3f} bpw")
    assert lines["tokenizer"] == "tokenizers (tokenizer.json)"
    assert lines["chat template"] == "yes"
    assert lines["context"] == "256 tokens"
    assert lines["source"] == "golden/tiny-llama"
    assert lines["converter"] == "lowbit 0.1.0"
    assert lines["created"] == "2025-01-01T00:00:00+00:00"
    assert lines["recipe"] == "q8"
    assert lines["quality"] == "ppl 12.5, kl 0.0123, ctx 256"


def test_info_tensor_table():
    path = GOLDEN / "grouped.lowbit"
    res = lowbit("info", "--tensors", str(path))
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    header = out.index(next(line for line in out if line.startswith("name ")))
    assert out[header].split() == ["name", "encoding", "shape", "bpw", "rel_error"]
    want = expected_numbers(path)["tensors"]
    rows = [line.split() for line in out[header + 1 :]]
    assert [r[0] for r in rows] == list(want)
    for name, encoding, shape, bpw, rel in rows:
        w_enc, w_shape, w_bpw = want[name]
        assert (encoding, shape) == (w_enc, "x".join(map(str, w_shape)))
        assert bpw == f"{float(w_bpw):.3f}"
        assert rel == "0"
    assert "quality" not in res.stdout  # grouped.lowbit has no metadata.quality


def bare_file(tmp_path: Path) -> Path:
    """A file with no metadata worth the name (wrong types, missing keys) and an odd tensor name,
    laid out by hand as SPEC.md 1 says."""
    data = struct.pack("<3f", 1.0, 2.0, 3.0)
    header = {
        "metadata": {
            "config": [1, 2],
            "tokenizer": {"chat_template": None},
            "provenance": "x",
            "quality": {},
        },
        "tensors": [
            {
                "name": "model.layers.0.w\ud800",
                "encoding": "f32",
                "shape": [3],
                "params": {},
                "offset": 0,
                "nbytes": 12,
                "crc32": zlib.crc32(data),
                "parts": {"data": {"dtype": "f32", "shape": [3], "offset": 0}},
            }
        ],
        "blobs": [],
    }
    hb = json.dumps(header).encode()  # ensure_ascii: the lone surrogate is written as \ud800
    data_offset = ceil(32 + len(hb), 64) * 64
    path = tmp_path / "bare.lowbit"
    path.write_bytes(
        struct.pack("<8sHHIQQ", b"\x89LOWBIT\n", 1, 0, zlib.crc32(hb), len(hb), data_offset)
        + hb.ljust(data_offset - 32, b"\0")
        + data
    )
    return path


def test_info_tolerates_missing_metadata(tmp_path):
    path = bare_file(tmp_path)
    s = summarize(path, tensors=True)
    assert (
        s["architecture"] is None
        and s["source_architecture"] is None
        and s["context_length"] is None
    )
    assert s["tokenizer"] == {"kind": None, "blob": None, "chat_template": False}
    assert s["provenance"]["source"] is None and s["provenance"]["recipe_method"] is None
    assert s["quality"] is None
    assert s["parameters"] == 3 and s["bits_per_weight"] == 32.0
    assert s["linear_parameters"] == 0 and s["linear_bits_per_weight"] is None  # 1-D is not linear
    res = lowbit("info", "--tensors", str(path))
    assert res.returncode == 0, res.stderr
    assert "chat template no" in res.stdout
    assert "architecture  unknown" in res.stdout
    assert "model.layers.0.w\\ud800" in res.stdout  # printable, not a UnicodeEncodeError
    res = lowbit("info", "--json", "--tensors", str(path))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["tensors"][0]["name"] == "model.layers.0.w\ud800"


def test_verify_ok():
    res = lowbit("verify", str(GOLDEN / "grouped.lowbit"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK: 5 tensors, 1 blobs, checksums match"


def check_error(res: subprocess.CompletedProcess, *fragments: str) -> None:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    err = res.stderr.strip()
    assert "\n" not in err and err.startswith("error: "), err
    for f in fragments:
        assert f in err, err


def test_verify_names_the_corrupt_tensor(tmp_path):
    path = tmp_path / "bad.lowbit"
    shutil.copy(GOLDEN / "onebit.lowbit", path)
    with LowbitReader(path) as r:
        entry = r["model.layers.0.mlp.gate_proj.weight"]
        pos = r.data_offset + entry.offset + 3
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    res = lowbit("verify", str(path))
    check_error(res, "checksum mismatch in tensor 'model.layers.0.mlp.gate_proj.weight'", str(path))
    assert "OK" not in res.stdout
    # info does not read the data: the corrupt file still summarises
    assert lowbit("info", str(path)).returncode == 0


def test_bad_files_give_one_error_line(tmp_path):
    good = (GOLDEN / "dense.lowbit").read_bytes()
    bad_magic = tmp_path / "magic.lowbit"
    bad_magic.write_bytes(b"GGUF" + good[4:])
    check_error(lowbit("info", str(bad_magic)), "not a .lowbit file")
    truncated = tmp_path / "trunc.lowbit"
    truncated.write_bytes(good[:40])
    check_error(lowbit("verify", str(truncated)), "truncated file", str(truncated))
    check_error(
        lowbit("info", "--json", str(tmp_path / "missing.lowbit")), "cannot open", "missing.lowbit"
    )
    check_error(lowbit("verify", str(tmp_path)), "cannot open")
