"""The converter on hostile input and faults: every malformed checkpoint is one line on stderr,
exit 1 and no output file (no temp file either); a SIGKILL'd convert's temp files are removed by
the next convert of the same target; two concurrent converts to one target: exactly one succeeds;
a full disk is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import write_tokenizer

from lowbit.formats import LowbitReader

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 384, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
    "tie_word_embeddings": False,
}


def hf_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                   p + "mlp.down_proj.weight": (h, inter)}
    return {n: (1.0 + 0.1 * rng.standard_normal(s) if len(s) == 1 else 0.08 * rng.standard_normal(s)).astype(np.float32)
            for n, s in shapes.items()}


def write_hf(folder: Path, cfg: dict | None = None, tensors: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    cfg = dict(CONFIG if cfg is None else cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(hf_tensors(CONFIG) if tensors is None else tensors, str(folder / "model.safetensors"))
    write_tokenizer(folder)
    return folder


def edit_safetensors_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = edit(json.loads(raw[8 : 8 + n]))
    new = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def first_tensor(h: dict) -> str:
    return next(k for k in h if k != "__metadata__")


def lowbit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from lowbit.cli import main; main()", *args]


def run_convert(src: Path, out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(lowbit_cmd("convert", str(src), "-o", str(out), "-m", "q4", *extra),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The error lines of stderr (the progress bar, which writes to stderr too, aside); a
    traceback would show here as lines that are neither."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    return [ln for ln in lines if not ln.startswith("converting:")]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- malformed inputs ----------------------------------------------------------------------------


def _cfg(**changes):
    def make(folder: Path) -> Path:
        cfg = {**CONFIG, **changes}
        return write_hf(folder, {k: v for k, v in cfg.items() if v is not _DROP})
    return make


_DROP = object()


def _st(edit):
    def make(folder: Path) -> Path:
        write_hf(folder)
        edit_safetensors_header(folder / "model.safetensors", edit)
        return folder
    return make


def _raw_config(text: bytes):
    def make(folder: Path) -> Path:
        write_hf(folder)
        (folder / "config.json").write_bytes(text)
        return folder
    return make


def _wide_tensors(folder: Path) -> Path:  # hidden_size 128 in the config, 64-wide tensors
    return write_hf(folder, {**CONFIG, "hidden_size": 128, "num_attention_heads": 8})


HF_CASES = {
    "hidden-128-tensors-64": _wide_tensors,
    "max-position-2^40": _cfg(max_position_embeddings=1 << 40),
    "heads-0": _cfg(num_attention_heads=0),
    "kv-heads-0": _cfg(num_key_value_heads=0),
    "kv-heads-3": _cfg(num_key_value_heads=3),
    "heads-string": _cfg(num_attention_heads="4"),
    "hidden-float": _cfg(hidden_size=64.5),
    "hidden-missing": _cfg(hidden_size=_DROP),
    "vocab-mismatch": _cfg(vocab_size=385),
    "layers-3": _cfg(num_hidden_layers=3),
    "rms-eps-string": _cfg(rms_norm_eps="tiny"),
    "rope-scaling-factor-0": _cfg(rope_scaling={"rope_type": "linear", "factor": 0}),
    "config-not-object": _raw_config(b"[1, 2, 3]"),
    "config-not-json": _raw_config(b"{not json"),
    "config-not-utf8": _raw_config(b'{"architectures": ["\xff\xfe"]}'),
    "st-negative-shape": _st(lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "shape": [-1, 64]}}),
    "st-header-not-object": _st(lambda h: b"[1, 2]"),
    "st-header-not-json": _st(lambda h: b"{\xff\xfe"),
    "st-entry-not-object": _st(lambda h: {**h, first_tensor(h): 5}),
    "st-shape-string": _st(lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "shape": "64"}}),
    "st-offsets-wrong": _st(lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "data_offsets": [0, 1]}}),
    "st-offsets-not-list": _st(lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "data_offsets": 7}}),
    "st-dtype-unknown": _st(lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "dtype": "F8"}}),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_malformed_hf_input_is_one_line(case, tmp_path):
    src = HF_CASES[case](tmp_path / "src")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_convert(src, out_dir / "m.lowbit")
    lines = error_lines(r.stderr)
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert list(out_dir.iterdir()) == []  # no output, no temp file, no lock file


def write_gguf(path: Path, heads: int = 4, kv_heads: int = 2, bad_utf8: bool = False) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(176)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("ZZZZZZZZ" if bad_utf8 else "gpt-2")
    w.add_token_list([chr(65 + i) for i in range(26)])
    w.add_token_types([1] * 26)
    w.add_token_merges([])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", (0.1 * rng.standard_normal((26, 64))).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if bad_utf8:
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"ZZZZZZZZ", b"\xff\xfe\xfd\xfc\xff\xfe\xfd\xfc", 1))
    return path


@pytest.mark.parametrize("case", ["heads-0", "kv-heads-0", "non-utf8-string"])
def test_malformed_gguf_is_one_line(case, tmp_path):
    src = write_gguf(tmp_path / "m.gguf", heads=0 if case == "heads-0" else 4,
                     kv_heads=0 if case == "kv-heads-0" else 2, bad_utf8=case == "non-utf8-string")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_convert(src, out_dir / "m.lowbit")
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert list(out_dir.iterdir()) == []


# -- faults during conversion --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_src(tmp_path_factory) -> Path:
    return write_hf(tmp_path_factory.mktemp("hf") / "tiny")


def test_sigkill_leaves_temp_files_that_the_next_convert_removes(hf_src, tmp_path):
    out = tmp_path / "m.lowbit"
    proc = subprocess.Popen(lowbit_cmd("convert", str(hf_src), "-o", str(out), "-m", "q4"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(n.endswith(".data.tmp") for n in leftovers(tmp_path)):
        if proc.poll() is not None:
            pytest.fail("the convert finished before it could be killed")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = leftovers(tmp_path)
    assert any(n.endswith(".data.tmp") for n in stale), stale  # what SIGKILL leaves behind
    assert not out.exists()
    r = run_convert(hf_src, out)
    assert r.returncode == 0, r.stderr
    assert leftovers(tmp_path) == []
    with LowbitReader(out) as reader:
        assert reader.verify() > 0


def test_two_concurrent_converts_exactly_one_succeeds(hf_src, tmp_path):
    out = tmp_path / "m.lowbit"
    procs = [subprocess.Popen(lowbit_cmd("convert", str(hf_src), "-o", str(out), "-m", "q4"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    err = error_lines(next(e for rc, e in results if rc == 1))
    assert len(err) == 1 and ("another lowbit process" in err[0] or "already exists" in err[0]), err
    assert leftovers(tmp_path) == []
    with LowbitReader(out) as reader:
        assert reader.verify() > 0


def _small_filesystem(folder: Path) -> bool:
    """Mount a 64 KiB tmpfs at folder (root only); False where that is not allowed."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    return r.returncode == 0


def test_disk_full_is_one_line(hf_src, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if _small_filesystem(disk):
        try:
            r = run_convert(hf_src, disk / "m.lowbit")
            left = list(disk.iterdir())
        finally:
            subprocess.run(["umount", str(disk)], check=False)
        expected = "no space left on device"
    else:  # no mount: the file-size limit gives the same write error (EFBIG) through the same path
        code = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000)); "
                "from lowbit.cli import main; main()")
        r = subprocess.run([sys.executable, "-c", code, "convert", str(hf_src), "-o", str(disk / "m.lowbit"),
                            "-m", "q4"], capture_output=True, text=True, timeout=300)
        left = list(disk.iterdir())
        expected = "cannot write"
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and expected in lines[0], r.stderr
    assert left == []
