"""`lowbit bench --depth`: the timed prefill and decode run after N tokens already in the cache,
and the timed prefill runs only the new prompt (the context is reused as a prefix)."""

from __future__ import annotations

import pytest
from tiny_models import save_tiny

import lowbit
from lowbit.bench import bench_model, bench_prompt, run_once


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lowbit.convert.converter import convert

    root = tmp_path_factory.mktemp("depth")
    return lowbit.load(convert(save_tiny("llama", root / "hf", seed=3), root / "t.lowbit", method="q4").path,
                       threads=1, context_length=128)


def test_depth_fills_the_cache_before_timing(tiny, monkeypatch):
    context, prompt = bench_prompt(tiny, 40, seed=1), bench_prompt(tiny, 8)
    assert len(context) == 40 and len(prompt) == 8
    runs = []
    forward = tiny.model.forward
    monkeypatch.setattr(tiny.model, "forward", lambda ids, cache, *rest: runs.append(len(ids)) or forward(ids, cache, *rest))
    run_once(tiny, prompt, 5, context)
    assert runs == [40, 8, 1, 1, 1, 1, 1]  # context untimed, then only the prompt, then decode
    assert tiny.cache.length == 40 + 8 + 5 and tiny.cache.ids[:40] == context


def test_bench_rows_per_depth(tiny):
    rows = bench_model(tiny, prompt_tokens=4, gen_tokens=2, threads=[1], repeats=1, depths=[0, 30])
    assert [(r.threads, r.depth, r.prompt_tokens) for r in rows] == [(1, 0, 4), (1, 30, 4)]
    assert all(r.decode_tps > 0 and r.prefill_tps > 0 for r in rows)
