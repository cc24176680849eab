"""JsonPrefix, the incremental validator behind JSON mode: every prefix of a valid object is
accepted and completes to valid JSON; invalid texts are refused; only whole objects are complete."""

from __future__ import annotations

import json
import random

import pytest

from lowbit.serve.json_prefix import JsonPrefix


def _value(rnd: random.Random, depth: int):
    r = rnd.random()
    if depth > 3 or r < 0.3:
        return rnd.choice([0, -1.5e3, 12, 0.25, 'a"b\\c\n\u00e9', True, False, None, "", -0.0, 1e-7, "\U0001f600"])
    if r < 0.65:
        return {f"k{i}\t": _value(rnd, depth + 1) for i in range(rnd.randint(0, 3))}
    return [_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]


def test_every_prefix_of_an_object_is_valid_and_completes():
    rnd = random.Random(0)
    for _ in range(300):
        obj = {f"x{i}": _value(rnd, 1) for i in range(rnd.randint(0, 4))}
        text = json.dumps(obj, indent=rnd.choice([None, 1]), ensure_ascii=rnd.random() < 0.5)
        state = JsonPrefix()
        for i, ch in enumerate(text):
            assert json.loads(text[:i] + state.completion()) is not None
            assert not state.complete
            assert state.feed(ch), (text, i)
        assert state.complete and state.completion() == ""
        assert state.feed("  \n") and not state.feed("x")


@pytest.mark.parametrize("text", ['[1]', '1', '"s"', '{"a" 1}', '{"a":01}', '{"a":tru}', '{,}', '{"a":1,}',
                                  '{"a":[1,]}', '{"a":"\x01"}', '{"a":1}}', '{"a":-}', '{"a":"\\x"}',
                                  '{"a":1} x', '{"a":.5}', '{a:1}', "{'a':1}"])
def test_invalid_texts_are_refused(text):
    state = JsonPrefix()
    assert not (state.feed(text) and state.complete)


def test_copy_is_independent():
    a = JsonPrefix()
    assert a.feed('{"k": [1, ')
    b = a.copy()
    assert b.feed('2]}') and b.complete and not a.complete
    assert a.completion() == "null]}"
