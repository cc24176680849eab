"""Backward compatibility: the committed files in tests/golden/ (written once by
tools/make_golden_files.py) must keep reading to the values expected.npz holds, which were computed
from the logical inputs with the SPEC.md formulas. If this fails, the reader changed how it reads
existing files: fix the reader, do not regenerate the files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from lowbit.formats import LowbitReader

GOLDEN = Path(__file__).parent / "golden"
FILES = {
    "dense": {"f32", "f16", "bf16"},
    "q8": {"q8"},
    "grouped": {"q2", "q3", "q4"},
    "ternary": {"ternary", "ternary-1.6"},
    "onebit": {"onebit"},
}


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "expected.npz") as z:
        return {k: z[k] for k in z.files}


def test_golden_set_is_complete(expected):
    assert sorted(p.stem for p in GOLDEN.glob("*.lowbit")) == sorted(FILES)
    assert sum(p.stat().st_size for p in GOLDEN.iterdir()) < 100_000
    assert {k.split("/")[0] for k in expected} == set(FILES)


@pytest.mark.parametrize("stem", list(FILES))
def test_golden_file_reads(stem, expected):
    path = GOLDEN / f"{stem}.lowbit"
    raw = path.read_bytes()
    magic, major, minor, crc, header_len, _ = struct.unpack_from("<8sHHIQQ", raw)
    assert (magic, major, minor) == (b"\x89LOWBIT\n", 1, 0)
    assert zlib.crc32(raw[32 : 32 + header_len]) == crc
    with LowbitReader(path) as r:
        names = [k.split("/", 1)[1] for k in expected if k.startswith(stem + "/")]
        assert list(r.tensors) == names
        assert {e.encoding for e in r.tensors.values()} == FILES[stem]
        for name in names:
            got = r[name].dequantize()
            want = expected[f"{stem}/{name}"]
            assert got.dtype == np.float32 and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=f"{stem}/{name}")
            if len(want.shape) == 2 and want.shape[0] > 1:
                rows = np.array([want.shape[0] - 1, 0])
                np.testing.assert_array_equal(r[name].dequantize(rows), want[rows])
            assert r[name].info == {"rel_error": 0.0}
        assert r.verify() == len(names) + 1
        assert r.blob_names() == ["tokenizer.json"]
        assert r.blob("tokenizer.json").startswith(b'{"version": "1.0"')
        meta = r.metadata
        assert meta["architecture"] == "llama"
        assert meta["config"]["source_architecture"] == "LlamaForCausalLM"
        assert meta["config"]["max_position_embeddings"] == 256
        assert meta["tokenizer"]["kind"] == "tokenizers"
        assert meta["provenance"]["created"] == "2025-01-01T00:00:00+00:00"


def test_golden_params(expected):
    """The params recorded in the files, as the generator chose them."""
    with LowbitReader(GOLDEN / "grouped.lowbit") as r:
        assert [(e.encoding, e.params["group_size"]) for e in r.tensors.values()] == [
            ("q4", 32),
            ("q3", 64),
            ("q2", 128),
            ("q4", 128),
            ("q3", 32),
        ]
    with LowbitReader(GOLDEN / "ternary.lowbit") as r:
        assert [e.params["scale_mode"] for e in r.tensors.values()] == [
            "tensor",
            "row",
            "tensor",
            "row",
        ]
    with LowbitReader(GOLDEN / "onebit.lowbit") as r:
        assert [e.params["layernorm"] for e in r.tensors.values()] == [False, True]
    with LowbitReader(GOLDEN / "q8.lowbit") as r:
        assert [e.params["group_size"] for e in r.tensors.values()] == [0, 32, 256]
        assert r.metadata["quality"] == {"ppl": 12.5, "kl": 0.0123, "ctx": 256}
