"""Tokenizer: the model's own tokenizer file (embedded in the .lowbit) behind one small interface.

Two kinds (SPEC.md 3.2):

* `tokenizers` — a tokenizer.json run by the `tokenizers` library. Its post-processor alone decides
  whether encode() adds BOS/EOS: transformers 5 ignores `add_bos_token`/`add_eos_token` from
  tokenizer_config.json when a tokenizer.json exists, and the ids must match what the model saw.
  Decoding is the library's decode, which is what transformers 5 returns (it never applies
  `clean_up_tokenization_spaces` to BPE vocabularies).
* `sentencepiece` — a tokenizer.model run by `sentencepiece`. Special-token strings in the text
  (`bos_token`, `eos_token`, `unk_token`, `pad_token`, `special_tokens`) are split out first and
  each piece of text between them is encoded on its own, with SentencePiece's dummy-prefix space,
  as Meta's reference code and transformers' legacy Llama tokenizer do. BOS/EOS follow
  `add_bos_token`/`add_eos_token`; unset, BOS is added when the model defines one (Llama's default).

Chat prompts are rendered by `chat_template.render_chat_template` and encoded with
`add_special_tokens=False`, as transformers does: the template already writes BOS where wanted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lowbit.runtime.errors import LowbitError

logger = logging.getLogger(__name__)

TOKENIZER_KINDS = ("tokenizers", "sentencepiece")


class TokenizerError(LowbitError, ValueError):
    """The embedded tokenizer cannot be built (unknown kind, unreadable file)."""


def _as_id_list(value: int | Iterable[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class Tokenizer:
    """Text <-> ids for one model, plus its chat template and special tokens."""

    def __init__(
        self,
        kind: str,
        backend: Any,
        config: Mapping[str, Any] | None = None,
        eos_token_ids: int | Iterable[int] | None = None,
    ) -> None:
        if kind not in TOKENIZER_KINDS:
            raise TokenizerError(
                f"unknown tokenizer kind {kind!r} (expected one of {', '.join(TOKENIZER_KINDS)})"
            )
        config = dict(config or {})
        self.kind = kind
        self._backend = backend
        self.chat_template: str | Mapping[str, str] | None = config.get("chat_template")
        self.bos_token: str | None = config.get("bos_token")
        self.eos_token: str | None = config.get("eos_token")
        self.pad_token: str | None = config.get("pad_token")
        self.unk_token: str | None = config.get("unk_token")
        self.add_bos_token: bool | None = config.get("add_bos_token")
        self.add_eos_token: bool | None = config.get("add_eos_token")
        if kind == "sentencepiece":
            self._init_sentencepiece(config)
        else:
            # transformers resets these per call; a tokenizer.json may carry a max_length of 512.
            backend.no_truncation()
            backend.no_padding()
            self.special_ids = frozenset(
                i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
            )

        self.bos_token_id: int | None = self.token_to_id(self.bos_token)
        if self.bos_token_id is None and kind == "sentencepiece" and backend.bos_id() >= 0:
            self.bos_token_id = int(backend.bos_id())
        eos = self.token_to_id(self.eos_token)
        if eos is None and kind == "sentencepiece" and backend.eos_id() >= 0:
            eos = int(backend.eos_id())
        self.eos_token_id: int | None = eos
        # Chat models often end a turn with a token other than eos_token (config.eos_token_id lists them).
        self.eos_token_ids: set[int] = ({eos} if eos is not None else set()) | set(
            _as_id_list(eos_token_ids)
        )
        self.pad_token_id: int | None = self.token_to_id(self.pad_token)
        self.unk_token_id: int | None = self.token_to_id(self.unk_token)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_bytes(
        cls,
        kind: str,
        data: bytes,
        config: Mapping[str, Any] | None = None,
        eos_token_ids: int | Iterable[int] | None = None,
    ) -> Tokenizer:
        """Build from the tokenizer file's bytes (a tokenizer.json or a tokenizer.model)."""
        if kind == "tokenizers":
            import tokenizers

            try:
                backend = tokenizers.Tokenizer.from_str(bytes(data).decode("utf-8"))
            except Exception as e:  # the library raises a bare Exception on bad JSON
                raise TokenizerError(
                    f"tokenizer.json cannot be read: {' '.join(str(e).split())}"
                ) from None
        elif kind == "sentencepiece":
            import sentencepiece

            try:
                backend = sentencepiece.SentencePieceProcessor(model_proto=bytes(data))
            except Exception as e:
                raise TokenizerError(
                    f"tokenizer.model cannot be read: {' '.join(str(e).split())}"
                ) from None
        else:
            raise TokenizerError(
                f"unknown tokenizer kind {kind!r} (expected one of {', '.join(TOKENIZER_KINDS)})"
            )
        return cls(kind, backend, config, eos_token_ids=eos_token_ids)

    def _init_sentencepiece(self, config: Mapping[str, Any]) -> None:
        sp = self._backend
        named = [self.bos_token, self.eos_token, self.unk_token, self.pad_token]
        strings = [
            s for s in [*named, *(config.get("special_tokens") or [])] if isinstance(s, str) and s
        ]
        self._special_to_id: dict[str, int] = {}
        for s in strings:
            i = sp.piece_to_id(s)
            if sp.id_to_piece(i) == s:  # piece_to_id answers unk for strings it does not know
                self._special_to_id[s] = int(i)
        # Longest first, so the leftmost match is also the longest (transformers' trie does this).
        alternatives = sorted(self._special_to_id, key=len, reverse=True)
        self._special_re = (
            re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        )
        controls = [i for i in (sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id()) if i >= 0]
        self.special_ids = frozenset([*self._special_to_id.values(), *controls])
        # A piece that decodes to "a": put before a run of ids, it stops SentencePiece from dropping
        # the run's leading space (it only drops the first piece's dummy prefix).
        self._sentinel: int | None = None
        for piece in ("<0x61>", "a"):
            i = sp.piece_to_id(piece)
            if sp.id_to_piece(i) == piece and sp.decode([i]) == "a":
                self._sentinel = int(i)
                break

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the model's embedding may be padded larger)."""
        if self.kind == "sentencepiece":
            return int(self._backend.get_piece_size())
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        if self.kind == "sentencepiece":
            i = self._backend.piece_to_id(token)
            return int(i) if self._backend.id_to_piece(i) == token else None
        i = self._backend.token_to_id(token)
        return None if i is None else int(i)

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry (e.g. 'Ġthe', '▁the', '<0xE4>'), not its text."""
        if self.kind == "sentencepiece":
            return str(self._backend.id_to_piece(int(token_id)))
        piece = self._backend.id_to_token(int(token_id))
        if piece is None:
            raise IndexError(f"token id {token_id} is outside the vocabulary of {self.vocab_size}")
        return piece

    # -- encode / decode -------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for text; special-token strings in the text become their ids."""
        if self.kind == "tokenizers":
            return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = self._sp_encode(text)
        if add_special_tokens:
            add_bos = self.add_bos_token if self.add_bos_token is not None else True
            if add_bos and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self.add_eos_token and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def _sp_encode(self, text: str) -> list[int]:
        sp = self._backend
        if self._special_re is None:
            return list(sp.encode(text))
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                ids.extend(sp.encode(text[pos : m.start()]))
            ids.append(self._special_to_id[m.group()])
            pos = m.end()
        if pos < len(text):
            ids.extend(sp.encode(text[pos:]))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text for ids. An incomplete UTF-8 sequence at the end decodes to U+FFFD."""
        ids = [int(i) for i in ids]
        if self.kind == "tokenizers":
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._sp_decode(ids, skip_special_tokens)

    def _sp_decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        sp = self._backend
        special = self.special_ids
        if not any(i in special for i in ids):
            return sp.decode(ids)
        parts: list[str] = []
        run: list[int] = []
        seen_text = False  # SentencePiece drops the dummy-prefix space of the first text piece only

        def flush() -> None:
            nonlocal seen_text
            if not run:
                return
            parts.append(self._sp_decode_run(run, after_text=seen_text))
            seen_text = True
            run.clear()

        for i in ids:
            if i in special:
                flush()
                if not skip_special_tokens:
                    parts.append(sp.id_to_piece(i))
            else:
                run.append(i)
        flush()
        return "".join(parts)

    def _sp_decode_run(self, run: list[int], after_text: bool) -> str:
        sp = self._backend
        if not after_text:
            return sp.decode(run)
        if self._sentinel is not None:
            return sp.decode([self._sentinel, *run])[1:]
        # No sentinel piece: restore the one space SentencePiece drops from a leading '▁'.
        text = sp.decode(run)
        if sp.id_to_piece(run[0]).startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text

    # -- chat ------------------------------------------------------------------------------
    def template_variables(self) -> dict[str, str]:
        """The special-token strings transformers passes to every chat template."""
        names = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        return {k: v for k, v in names.items() if v is not None}

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for a conversation (the model's template, or ChatML if it has none)."""
        from lowbit.runtime.chat_template import (  # jinja2: only to render
            render_chat_template,
            select_template,
        )

        template = select_template(self.chat_template, tools)
        if template is None:
            logger.warning(
                "the model has no chat template; using ChatML, which it may not have been trained on"
            )
        return render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **{**self.template_variables(), **kwargs},
        )

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """Token ids of the rendered conversation, without adding BOS/EOS a second time."""
        text = self.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs
        )
        return self.encode(text, add_special_tokens=False)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"
