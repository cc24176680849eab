"""tools/bench_vs_llamacpp.py's options, cases and engines without running a benchmark: depth
and prompt-length parsing, which (prompt, depth) cases a pair runs, the llama.cpp adapter's
prefix reuse (decode at depth keeps its context between runs), bitnet.cpp's GGUF header summary
and the report's depth rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_engines  # noqa: E402
import bench_report  # noqa: E402
import bench_vs_llamacpp as bvl  # noqa: E402


def test_depths_prompts_and_pairs_are_parsed_and_checked(tmp_path, capsys):
    a = bvl.parse_args(["--models", "smollm2", "--depths", "4096,0,1024", "--prompt-tokens", "128,512",
                        "--depth-pairs", "q4,ternary", "--workdir", str(tmp_path)])
    assert a.depths == [0, 1024, 4096] and a.prompt_tokens == [128, 512]
    assert bvl.pair_cases(a, "q4") == [(128, 0), (128, 1024), (128, 4096), (512, 0)]
    assert bvl.pair_cases(a, "q8") == [(128, 0), (512, 0)]
    for bad in (["--depths", "1k"], ["--depths", "-1"], ["--prompt-tokens", "0"], ["--depth-pairs", "q5"],
                ["--models", "bitnet2b4t"], ["--models", "bitnet2b4t", "--bitnetcpp", str(tmp_path)],
                ["--models", "smollm2", "--pairs", "i2s"]):
        with pytest.raises(SystemExit) as e:
            bvl.parse_args(bad)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--depths" in err and "bitnetcpp" in err and "none of --pairs applies" in err


class FakeLlama:
    """What LlamaCppEngine uses of llama_cpp.Llama: input_ids / n_tokens and an appending eval."""

    def __init__(self) -> None:
        self.input_ids = np.zeros(64, np.intc)
        self.n_tokens = 0
        self.evaluated: list[list[int]] = []

    def eval(self, ids):
        self.input_ids[self.n_tokens : self.n_tokens + len(ids)] = ids
        self.n_tokens += len(ids)
        self.evaluated.append(list(ids))

    def reset(self):
        self.n_tokens = 0


def test_llamacpp_prefill_reuses_the_cached_prefix_and_keep_context_skips_reset():
    eng = bench_engines.LlamaCppEngine.__new__(bench_engines.LlamaCppEngine)
    eng.llm = FakeLlama()
    eng._logits = lambda: np.zeros(3)
    eng.prefill([5, 6, 7])
    eng.prefill([5, 6, 7, 8, 9])  # the cached three stay
    eng.prefill([5, 6, 1])  # diverges at the third: it is dropped
    eng.prefill([5, 6, 1])  # everything cached: the last token still runs (it gives the logits)
    assert eng.llm.evaluated == [[5, 6, 7], [8, 9], [1], [1]]
    assert eng.llm.n_tokens == 3 and list(eng.llm.input_ids[:3]) == [5, 6, 1]
    keep = bench_engines._KeepContext(eng)
    keep.reset()
    assert eng.llm.n_tokens == 3


def test_gguf_header_summary_reads_types_and_sizes(tmp_path):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float16))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32), np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((16, 32), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    s = bvl.gguf_header_summary(tmp_path / "m.gguf")
    assert s["linear_types"] == {"F32": 1, "F16": 1}
    assert s["linear_bits_per_weight"] == pytest.approx(8 * (32 * 32 * 4 + 16 * 32 * 2) / (32 * 32 + 16 * 32), rel=0.02)
    assert s["token_embd_type"] == "F16" and s["output_type"] == "(tied)"


def _row(t, p, d, lowbit, peer):
    side = lambda v: {"decode_tps": v, "prefill_tps": 10 * v, "time_to_first_token_s": 1 / v, "peak_rss_mb": 100.0,  # noqa: E731
                      "runs": [{"decode_tps": v}]}
    return {"threads": t, "prompt_tokens": p, "depth": d, "lowbit": side(lowbit), "llamacpp": side(peer),
            "ratio": {k: lowbit / peer if k != "time_to_first_token_s" else peer / lowbit
                      for k in ("decode_tps", "prefill_tps", "time_to_first_token_s")} | {"peak_rss_mb": 1.0},
            "greedy_tokens_agree": None}


def test_report_rows_per_depth_and_the_bitnet_peer():
    files = {"linear_types": {"ternary": 1}, "linear_bits_per_weight": 2.0, "bits_per_weight": 3.0,
             "token_embd_type": "q8", "output_type": "q8", "file_size_bytes": 10, "path": "x"}
    pair = {"pair": "i2s", "lowbit_method": "ternary", "llamacpp_type": "I2_S", "peer_engine": "bitnetcpp",
            "lowbit_file": "a", "llamacpp_file": "b",
            "threads": [_row(2, 128, 0, 30, 20), _row(1, 128, 4096, 5, 10), _row(1, 128, 0, 20, 10)]}
    report = {"settings": {"prompt_tokens": [128], "gen_tokens": 8, "repeats": 1},
              "machine": {"cpu": "c", "cpus": 2, "llama_cpp_python": "0", "lowbit": "0"},
              "models": {"bitnet2b4t": {"description": "d", "files": {"a": files, "b": files}, "pairs": [pair],
                                        "refused": [], "steps": []}}}
    text = bench_report.format_report(report)
    lines = [x for x in text.splitlines() if x.startswith("i2s") or x.startswith(" " * 12)]
    assert "bitnet" in text and "bitnet.cpp I2_S" in text
    rows = [x.split("|")[0].split() for x in text.splitlines() if "|" in x and x.split("|")[0].split()[-1:] in (["0"], ["4096"])]
    assert rows[0][-3:] == ["1", "128", "0"] and rows[1][-3:] == ["1", "128", "4096"] and rows[2][-3:] == ["2", "128", "0"]
    assert "decode scaling, 2 threads / 1" in text and "lowbit 1.50, bitnet 2.00" in text  # from the depth-0 rows
    assert lines


def test_peer_engines_start_without_lowbits_spin_waits(monkeypatch):
    """llama.cpp and bitnet.cpp workers get the user's OpenMP environment: lowbit's short spin waits
    (set in this process when lowbit.runtime was imported) made their 2-thread decode 2-2.5x slower."""
    import lowbit.runtime.threads as threads

    monkeypatch.setitem(threads._SET_HERE, "KMP_BLOCKTIME", "0")
    monkeypatch.setenv("KMP_BLOCKTIME", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own: kept
    assert bench_engines.worker_environment("lowbit") is None  # lowbit inherits everything
    for peer in ("llamacpp", "bitnetcpp"):
        env = bench_engines.worker_environment(peer)
        assert "KMP_BLOCKTIME" not in env and env["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("KMP_BLOCKTIME", "200")  # the user changed it after lowbit: theirs now
    assert bench_engines.worker_environment("llamacpp")["KMP_BLOCKTIME"] == "200"
