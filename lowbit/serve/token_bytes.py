"""The raw bytes of one token (OpenAI's logprobs `bytes`): a token can hold part of a UTF-8
character, which its decoded text can only show as U+FFFD."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_HEX_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tokenizer: Any, token: int) -> bytes:
    backend = getattr(tokenizer, "_backend", None)
    piece = None
    if backend is not None:
        try:
            piece = backend.id_to_token(token) if tokenizer.kind != "sentencepiece" else backend.id_to_piece(token)
        except Exception:  # noqa: BLE001 - fall back to the decoded text
            piece = None
    if piece:
        m = _HEX_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        table = _byte_decoder()
        if tokenizer.kind != "sentencepiece" and all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
    return tokenizer.decode([token]).encode("utf-8")
