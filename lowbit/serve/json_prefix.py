"""JSON mode (`response_format: {"type": "json_object"}`): constrained sampling.

`JsonPrefix` is an incremental validator: fed text a character at a time, it knows whether the
text so far can still become one JSON object (RFC 8259), whether it already is one, and the
shortest text that would complete it. `JsonConstraint` uses it per sequence: a candidate token is
allowed only if its text keeps the output a valid prefix; end-of-sequence only once the object is
complete (then generation stops); and when the token budget is about to run out, the completion
text is forced so the answer always parses. Token texts are decoded once per tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# modes
VALUE, OBJ_FIRST, OBJ_KEY, COLON, AFTER, STRING, ESCAPE, UNICODE, NUMBER, LITERAL, DONE = range(11)
_WS = " \t\n\r"
_ESCAPES = '"\\/bfnrtu'
_HEX = "0123456789abcdefABCDEF"
# number sub-states: after '-', after leading '0', in int digits, after '.', in frac digits,
# after 'e', after exponent sign, in exponent digits
N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
_N_TERMINAL = {N_ZERO, N_INT, N_FRAC, N_EXP}


class JsonPrefix:
    """State of a growing text that must become one JSON object."""

    __slots__ = ("stack", "mode", "key", "sub", "rest")

    def __init__(self) -> None:
        self.stack: tuple[str, ...] = ()  # open containers, '{' or '['
        self.mode = VALUE
        self.key = False  # the string being read is an object key
        self.sub = 0  # NUMBER sub-state, or hex digits left in UNICODE
        self.rest = ""  # LITERAL: characters still to come

    def copy(self) -> JsonPrefix:
        c = JsonPrefix.__new__(JsonPrefix)
        c.stack, c.mode, c.key, c.sub, c.rest = self.stack, self.mode, self.key, self.sub, self.rest
        return c

    @property
    def complete(self) -> bool:
        return self.mode == DONE or (self.mode == NUMBER and not self.stack and self.sub in _N_TERMINAL)

    def feed(self, text: str) -> bool:
        """Advance over text; False (state then undefined) if it can no longer be valid JSON."""
        return all(self._char(ch) for ch in text)

    def _after_value(self) -> None:
        self.mode = AFTER if self.stack else DONE

    def _start_value(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if not self.stack and ch != "{":  # json_object: the top level is an object
            return False
        if ch == "{":
            self.stack += ("{",)
            self.mode = OBJ_FIRST
        elif ch == "[":
            self.stack += ("[",)
            self.mode = VALUE
            self.sub = -1  # marks "just opened": ']' allowed
            return True
        elif ch == '"':
            self.mode, self.key = STRING, False
        elif ch == "-":
            self.mode, self.sub = NUMBER, N_SIGN
        elif ch == "0":
            self.mode, self.sub = NUMBER, N_ZERO
        elif ch.isdigit() and ch.isascii():
            self.mode, self.sub = NUMBER, N_INT
        elif ch in "tfn":
            self.mode, self.rest = LITERAL, {"t": "rue", "f": "alse", "n": "ull"}[ch]
        else:
            return False
        self.sub = self.sub if self.mode == NUMBER else 0
        return True

    def _char(self, ch: str) -> bool:
        m = self.mode
        if m == VALUE:
            if ch == "]" and self.sub == -1 and self.stack and self.stack[-1] == "[":
                self.stack = self.stack[:-1]
                self.sub = 0
                self._after_value()
                return True
            if ch in _WS:
                return True
            self.sub = 0
            return self._start_value(ch)
        if m == OBJ_FIRST or m == OBJ_KEY:
            if ch in _WS:
                return True
            if ch == '"':
                self.mode, self.key = STRING, True
                return True
            if ch == "}" and m == OBJ_FIRST:
                self.stack = self.stack[:-1]
                self._after_value()
                return True
            return False
        if m == COLON:
            if ch in _WS:
                return True
            if ch == ":":
                self.mode, self.sub = VALUE, 0
                return True
            return False
        if m == AFTER:
            if ch in _WS:
                return True
            top = self.stack[-1]
            if ch == ",":
                self.mode = OBJ_KEY if top == "{" else VALUE
                self.sub = 0
                return True
            if (ch == "}" and top == "{") or (ch == "]" and top == "["):
                self.stack = self.stack[:-1]
                self._after_value()
                return True
            return False
        if m == STRING:
            if ch == '"':
                if self.key:
                    self.mode = COLON
                else:
                    self._after_value()
                return True
            if ch == "\\":
                self.mode = ESCAPE
                return True
            return ord(ch) >= 0x20
        if m == ESCAPE:
            if ch not in _ESCAPES:
                return False
            if ch == "u":
                self.mode, self.sub = UNICODE, 4
            else:
                self.mode = STRING
            return True
        if m == UNICODE:
            if ch not in _HEX:
                return False
            self.sub -= 1
            if self.sub == 0:
                self.mode = STRING
            return True
        if m == NUMBER:
            return self._number(ch)
        if m == LITERAL:
            if not self.rest or ch != self.rest[0]:
                return False
            self.rest = self.rest[1:]
            if not self.rest:
                self._after_value()
            return True
        if m == DONE:
            return ch in _WS
        return False

    def _number(self, ch: str) -> bool:
        s = self.sub
        digit = ch.isascii() and ch.isdigit()
        nxt = None
        if s == N_SIGN:
            nxt = N_ZERO if ch == "0" else N_INT if digit else None
        elif s in (N_ZERO, N_INT):
            if digit and s == N_INT:
                nxt = N_INT
            elif ch == ".":
                nxt = N_DOT
            elif ch in "eE":
                nxt = N_E
        elif s in (N_DOT, N_FRAC):
            if digit:
                nxt = N_FRAC
            elif ch in "eE" and s == N_FRAC:
                nxt = N_E
        elif s == N_E:
            nxt = N_ESIGN if ch in "+-" else N_EXP if digit else None
        elif s in (N_ESIGN, N_EXP):
            nxt = N_EXP if digit else None
        if nxt is not None:
            self.sub = nxt
            return True
        if s not in _N_TERMINAL:
            return False
        self._after_value()  # the number ended; this character belongs to what follows
        return self._char(ch)

    def completion(self) -> str:
        """The shortest text that makes the prefix one complete JSON object."""
        c = self.copy()
        out = []

        def emit(text: str) -> None:
            out.append(text)
            c.feed(text)

        for _ in range(4 * (len(c.stack) + 4)):
            m = c.mode
            if m == DONE:
                break
            if m == VALUE and not c.stack:
                emit("{")
            elif m == VALUE:
                emit("null" if c.sub != -1 else "]")
            elif m == OBJ_FIRST or m == AFTER:
                emit("}" if c.stack[-1] == "{" else "]")
            elif m == OBJ_KEY:
                emit('""')
            elif m == COLON:
                emit(":")
            elif m == STRING:
                emit('"')
            elif m == ESCAPE:
                emit("n")
            elif m == UNICODE:
                emit("0" * c.sub)
            elif m == NUMBER:
                if c.sub in _N_TERMINAL:
                    c._after_value()
                else:
                    emit("0")
            elif m == LITERAL:
                emit(c.rest)
        return "".join(out)


class TokenTexts:
    """Every token's text decoded alone, once per tokenizer (tokens whose text is empty or a
    partial UTF-8 character are never allowed in JSON mode)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        special = set(getattr(tokenizer, "special_ids", ())) | set(tokenizer.eos_token_ids)
        texts: list[str | None] = []
        for i in range(vocab_size):
            if i in special:
                texts.append(None)
                continue
            try:
                t = tokenizer.decode([i])
            except Exception:  # noqa: BLE001 - an id the tokenizer cannot decode is never allowed
                t = ""
            texts.append(t if t and "\ufffd" not in t else None)
        self.texts = texts


class JsonConstraint:
    """Per-sequence constrained choice: the best allowed token (greedy) or a draw from the
    sampler's distribution restricted to allowed tokens (rejection and renormalisation)."""

    PROBE = 64  # candidates checked per round before widening

    def __init__(self, texts: TokenTexts, eos_ids: Sequence[int], encode: Callable[[str], list[int]]) -> None:
        self.texts = texts.texts
        self.eos = [int(i) for i in eos_ids]
        self.encode = encode
        self.state = JsonPrefix()
        self.forced: list[int] = []

    def _ok(self, token: int) -> bool:
        if token in self.eos:
            return self.state.complete
        t = self.texts[token] if token < len(self.texts) else None
        if t is None:
            return False
        c = self.state.copy()
        return c.feed(t)

    def needed(self) -> int:
        """Tokens the shortest completion takes (0 when complete)."""
        text = self.state.completion()
        return len(self.encode(text)) if text else 0

    def force(self) -> None:
        """From now on emit exactly the tokens of the completion (the budget is running out)."""
        text = self.state.completion()
        self.forced = self.encode(text) if text else []
        if not self.forced and self.eos:
            self.forced = [self.eos[0]]

    def choose(self, logits: np.ndarray, sampler: Any, history: Sequence[int]) -> int:
        if self.forced:
            return self.forced.pop(0)
        if self.state.complete and self.eos:
            return self.eos[0]
        if sampler.params.greedy:
            return self._best(np.asarray(logits, dtype=np.float32).reshape(-1))
        ids, probs = sampler.distribution(logits, history)
        probs = probs.astype(np.float64).copy()
        for _ in range(len(ids)):
            total = probs.sum()
            if total <= 0:
                break
            i = int(np.searchsorted(np.cumsum(probs), sampler.rng.random() * total, side="right"))
            i = min(i, len(ids) - 1)
            if self._ok(int(ids[i])):
                return int(ids[i])
            probs[i] = 0.0
        # nothing the filters left is valid: the best valid token of the full distribution
        return self._best(np.asarray(logits, dtype=np.float32).reshape(-1))

    def _best(self, x: np.ndarray) -> int:
        """The highest-scoring allowed token (ties: the lowest id, as argmax)."""
        best = int(np.argmax(x))
        if self._ok(best):
            return best
        k = min(self.PROBE, x.shape[0])
        for ids in (np.argpartition(-x, k - 1)[:k], np.arange(x.shape[0])):
            for tok in ids[np.lexsort((ids, -x[ids]))]:
                if self._ok(int(tok)):
                    return int(tok)
        raise ValueError("no token continues the JSON")

    def push(self, token: int) -> None:
        if token in self.eos:
            return
        t = self.texts[token] if token < len(self.texts) else None
        if t is not None:
            self.state.feed(t)
