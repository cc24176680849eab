"""The prompt forward's reusable activation buffers (runtime.workspace): the same bits as fresh
arrays whatever ran before, nothing returned aliases them, one set per thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from tiny_models import random_ids, save_tiny

import lowbit
from lowbit.convert.converter import convert
from lowbit.runtime.kv_cache import KVCache
from lowbit.runtime.model import block_forward
from lowbit.runtime.workspace import FRESH, Workspace


@pytest.fixture(scope="module", params=["q4", "ternary"])
def tiny(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    folder = save_tiny("llama", root / "hf", seed=5)
    return convert(folder, root / f"tiny-{request.param}.lowbit", method=request.param).path


def _blocks(model, ids, ws, context=96):
    """The residual stream after every block for ids from position 0, with ws's buffers."""
    cache = KVCache(model.args, context, "f32")
    x = model.embed_tokens(ids)
    out = []
    for i, block in enumerate(model.blocks):
        x = block_forward(model.args, model.layer_ropes[i], block, x, cache, i, 0, ws)
        out.append(x.copy())
    return out


def test_workspace_blocks_equal_fresh_arrays_after_longer_and_shorter_prompts(tiny):
    model = lowbit.load(tiny, threads=2).model
    ws = Workspace()
    long, short = random_ids(80, seed=1), random_ids(9, seed=2)
    fresh_long, fresh_short = _blocks(model, long, FRESH), _blocks(model, short, FRESH)
    # short after long: the buffers are larger than the request and hold the long prompt's values
    for ids, fresh in ((long, fresh_long), (short, fresh_short), (long, fresh_long)):
        for a, b in zip(_blocks(model, ids, ws), fresh):
            np.testing.assert_array_equal(a, b)
    assert ws.nbytes() >= 80 * model.args.intermediate_size * 4 * 2  # gate and up were kept


def test_logits_do_not_alias_the_workspace(tiny):
    llm = lowbit.load(tiny, threads=2)
    first = llm.logits(random_ids(40, seed=3))
    kept = first.copy()
    llm.session().prefill(random_ids(40, seed=4))  # the same model's buffers, other values
    np.testing.assert_array_equal(first, kept)


def test_each_thread_has_its_own_buffers():
    ws = Workspace()
    mine = ws.take("gate", 4, 8)
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(ws.take("gate", 4, 8)))
    t.start()
    t.join()
    assert not np.shares_memory(mine, theirs[0])
    assert np.shares_memory(mine, ws.take("gate", 2, 8))  # the same thread reuses its buffer
    assert mine.dtype == np.float32 and mine.flags.c_contiguous and ws.take("up", 3, 5).shape == (3, 5)
