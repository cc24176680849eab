"""StreamingDetokenizer: streamed pieces concatenate to tokenizer.decode(all ids), never show broken
UTF-8, and never emit text that later has to change. Run on a byte-level BPE tokenizer.json
(SmolLM2) and a SentencePiece model with byte fallback."""

from __future__ import annotations

import random

import pytest
from test_tokenizer import our_smollm2, our_sp

from lowbit.runtime.detokenizer import StreamingDetokenizer
from lowbit.runtime.tokenizer import Tokenizer

FFFD = "\ufffd"

STREAM_TEXTS = [
    "Hello, world! This is a plain sentence.",
    "emoji 🙂👍🏽 and a family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "中文测试，日本語のテキスト、한국어 문장",
    "combining: e\u0301 a\u0308 o\u0302\u0323 — Zalgo t\u0336\u0335e\u0337xt",
    "  leading spaces, trailing   \n\n\tand tabs\n",
    "def f(x):\n    return {'k': [1, 2, 3]}  # café\n",
    "mixed عربى עברית ελληνικά кириллица",
    "a" * 50 + " " + "🙂" * 10,
]


@pytest.fixture(params=["bpe", "spm"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    return our_smollm2() if request.param == "bpe" else our_sp()


def stream(
    tok: Tokenizer, ids: list[int], skip_special_tokens: bool = False
) -> tuple[list[str], list[str]]:
    """(segments read after each token and after finalize, settled text after each token)."""
    detok = StreamingDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    segments, texts = [], []
    for i in ids:
        detok.add_token(i)
        segments.append(detok.last_segment)
        texts.append(detok.text)
    detok.finalize()
    segments.append(detok.last_segment)
    return segments, texts


def check_stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = False) -> list[str]:
    expected = tok.decode(ids, skip_special_tokens=skip_special_tokens)
    segments, texts = stream(tok, ids, skip_special_tokens)
    assert "".join(segments) == expected
    for text in texts:  # settled text is never taken back
        assert expected.startswith(text)
    if FFFD not in expected:
        assert not any(FFFD in s for s in segments)
    return segments


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_equals_decode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    check_stream(tok, ids)
    assert "".join(stream(tok, ids)[0]) == text
    # With BOS (and, for SentencePiece, its leading-space rule around it).
    check_stream(tok, tok.encode(text))
    check_stream(tok, tok.encode(text), skip_special_tokens=True)


def test_stream_with_special_tokens_between_text(tok: Tokenizer) -> None:
    eos = tok.eos_token_id
    a = tok.encode("Hello there 世界", add_special_tokens=False)
    b = tok.encode(" again 🙂 and again", add_special_tokens=False)
    for ids in ([*a, eos, *b], [eos, *a], [*a, eos], [eos, eos, *b, eos, *a]):
        check_stream(tok, ids)
        check_stream(tok, ids, skip_special_tokens=True)


def split_character(tok: Tokenizer) -> tuple[list[int], list[int], str]:
    """(ids of 'x', ids of a character the tokenizer spells with several byte tokens, the character)."""
    prefix = tok.encode("x", add_special_tokens=False)
    for ch in "🙂👍界世語한🇫":
        ids = tok.encode("x" + ch, add_special_tokens=False)
        if ids[: len(prefix)] == prefix and len(ids) - len(prefix) > 1:
            return prefix, ids[len(prefix) :], ch
    pytest.fail("no multi-token character found")


def test_split_character_is_held_back(tok: Tokenizer) -> None:
    prefix, char_ids, ch = split_character(tok)
    detok = StreamingDetokenizer(tok)
    for i in prefix:
        detok.add_token(i)
    head = detok.last_segment
    for i in char_ids[:-1]:
        detok.add_token(i)
        assert detok.last_segment == ""  # incomplete: nothing, and certainly not U+FFFD
    detok.add_token(char_ids[-1])
    assert head + detok.last_segment == tok.decode(prefix + char_ids)
    assert detok.text.endswith(ch)


def test_incomplete_bytes_at_the_end_come_out_on_finalize(tok: Tokenizer) -> None:
    prefix, char_ids, _ = split_character(tok)
    cut = prefix + char_ids[:-1]  # the character's last byte never arrives
    detok = StreamingDetokenizer(tok)
    for i in cut:
        detok.add_token(i)
    assert FFFD not in detok.text
    detok.finalize()
    assert detok.text == tok.decode(cut) and detok.text.endswith(FFFD)


def test_random_id_streams_equal_decode(tok: Tokenizer) -> None:
    """Arbitrary ids (bytes split anywhere, invalid UTF-8, specials) still concatenate exactly."""
    rng = random.Random(3)
    n = tok.vocab_size
    specials = sorted(tok.special_ids)
    for _ in range(150):
        ids = [rng.randrange(n) for _ in range(rng.randint(1, 25))]
        for _ in range(rng.randint(0, 2)):
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(specials))
        check_stream(tok, ids)
        check_stream(tok, ids, skip_special_tokens=True)


def test_long_stream_window_stays_short(tok: Tokenizer) -> None:
    """The window moves on, so each step decodes a few ids, not the whole stream."""
    text = " ".join(STREAM_TEXTS) * 3
    ids = tok.encode(text, add_special_tokens=False)
    detok = StreamingDetokenizer(tok)
    widest = 0
    for i in ids:
        detok.add_token(i)
        widest = max(widest, len(detok.tokens) - detok._prefix)
    detok.finalize()
    assert detok.text == tok.decode(ids)
    assert widest < 40 < len(ids)


def test_reset_and_finalize_rules() -> None:
    tok = our_smollm2()
    detok = StreamingDetokenizer(tok)
    detok.add_tokens(tok.encode("first stream"))
    detok.finalize()
    detok.finalize()  # idempotent
    assert detok.text == "first stream"
    with pytest.raises(RuntimeError):
        detok.add_token(1)
    detok.reset()
    detok.add_tokens(tok.encode("second"))
    detok.finalize()
    assert detok.text == "second" and detok.last_segment == "second" and detok.last_segment == ""
