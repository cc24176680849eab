"""StreamingDetokenizer: turn a stream of token ids into text pieces that never need taking back.

Decoding token by token goes wrong in two ways: a character split over several byte tokens
(byte-level BPE, SentencePiece byte fallback) decodes to U+FFFD until its last byte arrives, and
SentencePiece drops the leading space of the first text token it decodes, so decoding each token
alone loses spaces. So, like vLLM's incremental detokenizer, each step decodes a short window of
recent ids and emits what the window's text adds to the text of its first ids, which are context
only (they hold at least one non-special token, whose leading space both decodes drop alike).
Trailing U+FFFD is held back until the character completes, and the window moves on only at a
clean boundary, so each step costs a few ids however long the stream. Should a decoder ever
disagree with its own window prefix, the detokenizer decodes every id from then on. The pieces
concatenate to `tokenizer.decode(all_ids)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

REPLACEMENT = "\ufffd"


class _Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...


class StreamingDetokenizer:
    """Feed ids with add_token(); read newly settled text from last_segment (or all of it from text)."""

    def __init__(self, tokenizer: _Decoder, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._special_ids: frozenset[int] = frozenset(getattr(tokenizer, "special_ids", ()))
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.tokens: list[int] = []
        self._text = ""  # settled text, all of it
        self._segment_start = 0  # where the text not yet returned by last_segment begins
        self._prefix = 0  # window start: ids before it are settled and out of the window
        self._read = 0  # ids before it have all their text in self._text
        self._prefix_text = ""  # decode(tokens[_prefix:_read])
        self._emitted = 0  # chars of the window's new text already settled (before a held U+FFFD)
        self._whole = False  # decode all ids each time (after the window once disagreed)
        self._final = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add_token(self, token: int) -> None:
        """Append one id; whatever text it completes becomes settled."""
        if self._final:
            raise RuntimeError("add_token after finalize(); call reset() to start a new stream")
        self.tokens.append(int(token))
        window = self._decode(self.tokens[self._prefix :])
        if not window.startswith(self._prefix_text):
            # The decoder depends on more context than the window holds: decode everything from now on.
            self._whole = True
            self._prefix = 0
            self._prefix_text = ""
            self._emitted = len(self._text)
            window = self._decode(self.tokens)
        new = window[len(self._prefix_text) :]
        if new.endswith(REPLACEMENT):
            # Possibly an incomplete character: settle what precedes it, keep the window.
            stable = new.rstrip(REPLACEMENT)
            if len(stable) > self._emitted:
                self._text += stable[self._emitted :]
                self._emitted = len(stable)
            return
        self._text += new[self._emitted :]
        self._emitted = len(new)
        if self._whole:
            return
        # Clean boundary: the ids since the last one become the next window's context, if they hold
        # text (a leading space is dropped from the window's first text token, so context needs one).
        context = self.tokens[self._read :]
        context_text = self._decode(context)
        if context_text and any(t not in self._special_ids for t in context):
            self._prefix, self._prefix_text = self._read, context_text
            self._emitted = 0
        else:
            self._prefix_text, self._emitted = window, 0
        self._read = len(self.tokens)

    def add_tokens(self, tokens: Iterable[int]) -> None:
        for t in tokens:
            self.add_token(t)

    def finalize(self) -> None:
        """End of stream: settle everything, U+FFFD from truly incomplete bytes included."""
        if self._final:
            return
        self._final = True
        if self._read < len(self.tokens):
            window = self._decode(self.tokens[self._prefix :])
            if window.startswith(self._prefix_text):
                self._text += window[len(self._prefix_text) + self._emitted :]
            else:
                full = self._decode(self.tokens)
                if full.startswith(self._text):
                    self._text = full
        self._read = len(self.tokens)

    @property
    def text(self) -> str:
        """All settled text so far (after finalize(): the decode of every id)."""
        return self._text

    @property
    def last_segment(self) -> str:
        """Text settled since the previous read of last_segment."""
        segment = self._text[self._segment_start :]
        self._segment_start = len(self._text)
        return segment
