"""lowbit's tokenizer from a GGUF with a real Llama 3 / Qwen2-Qwen3 vocabulary (tokenizer.ggml.model
"gpt2", tokenizer.ggml.pre "llama-bpe" / "qwen2") against the model's own HF tokenizer and against
llama.cpp's tokenizer on the same GGUF: ids equal, decode round-trips (fixtures: real_vocabs.py)."""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import real_vocabs
from test_tokenizer import TEXTS as TOKENIZER_TEXTS

from lowbit.convert.converter import tokenizer_section
from lowbit.convert.gguf_source import CONTROL, GGUFCheckpoint
from lowbit.runtime.tokenizer import Tokenizer

EXTRA = [
    "I'm sure you're right, they'll say it's fine; WE'VE DONE IT, didn't we? O'NEIL'S 'quoted'",
    "digits 1 12 123 1234 12345 1234567 123456789012, 3.14159e-10, ١٢٣ ٤٥٦ ४२, ４５６",
    "runs   of\u3000  spaces\n\n  \n\t \t\r\n\r\n   x  \n",
    "Привет, мир! Γειά σου κόσμε. हिन्दी में ไทย 😀🤖🇺🇳 👩🏾‍💻",
    "<|begin_of_text|>hi<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nyo<|eot_id|>",
    "<|im_start|>user\nWhat is 2+2 in 2024?<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nmaybe</think>\n\n<tool_call>{}</tool_call><|fim_prefix|>a<|fim_suffix|>b",
]
TEXTS = list(dict.fromkeys([*TOKENIZER_TEXTS, *EXTRA]))
FAMILIES = sorted(real_vocabs.FAMILIES)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def ours(family: str) -> Tokenizer:
    files = GGUFCheckpoint(real_vocabs.gguf_path(family)).tokenizer_files
    return Tokenizer.from_bytes("tokenizers", files["tokenizer.json"], tokenizer_section(files)[2])


@pytest.fixture(scope="module")
def llama_cpp(family: str) -> Any:
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from gguf_variants import open_llama

    llm = open_llama(real_vocabs.gguf_path(family), repack=False, vocab_only=True, verbose=False)
    yield llm
    llm.close()


def _normalised(family: str, text: str) -> str:
    return unicodedata.normalize("NFC", text) if real_vocabs.FAMILIES[family].nfc else text


def test_ids_equal_hf_and_llama_cpp(family: str, ours: Tokenizer, llama_cpp: Any) -> None:
    hf = real_vocabs.hf_tokenizer(family)
    add_bos = real_vocabs.FAMILIES[family].bos is not None
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids, (family, text)
        bare = ours.encode(text, add_special_tokens=False)
        assert bare == hf.encode(text, add_special_tokens=False).ids, (family, text)
        # llama.cpp does not normalise (Qwen's tokenizer.json does: NFC); given NFC text it agrees
        raw = _normalised(family, text).encode("utf-8")
        got = llama_cpp.tokenize(raw, add_bos=add_bos, special=True)
        assert ids == got, (family, text)


def test_decode_round_trips(family: str, ours: Tokenizer, llama_cpp: Any) -> None:
    hf = real_vocabs.hf_tokenizer(family)
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False)
        want = _normalised(family, text)
        assert ours.decode(ids) == want == hf.decode(ids, skip_special_tokens=False), (family, text)
        assert llama_cpp.detokenize(ids, special=True) == want.encode("utf-8"), (family, text)


def test_vocabulary_and_special_tokens(family: str, ours: Tokenizer) -> None:
    fam = real_vocabs.FAMILIES[family]
    tokens, types, merges = real_vocabs._spelled(family)
    if family == "llama3":  # Meta-Llama-3's tokenizer.json lists every split of every piece
        assert len(merges) == 280147
    assert ours.vocab_size == len(tokens) == real_vocabs.hf_tokenizer(family).get_vocab_size()
    assert ours.special_ids == {i for i, t in enumerate(types) if t == CONTROL}
    assert ours.eos_token_id == tokens.index(fam.eos)
    assert ours.bos_token_id == (None if fam.bos is None else tokens.index(fam.bos))
    # every special token, and each plain added one (Qwen's <think>, <tool_call>), is one id
    for i in range(len(real_vocabs.ranks(family)[0]), len(tokens)):
        assert ours.encode(f"x{tokens[i]}y", add_special_tokens=False)[1] == i


def test_merges_follow_ranks() -> None:
    pieces = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"ca": 6}
    # abc splits as a+bc and ab+c; ranked by the merged piece, then by the parts' ranks
    assert real_vocabs.merges_from_ranks(pieces) == [
        (b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c"), (b"c", b"a"),
    ]  # fmt: skip
