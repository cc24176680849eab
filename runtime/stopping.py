"""StopChecker: end generation at an end-of-sequence id or a stop string, without ever streaming
part of a stop string.

While the generated text ends with the beginning of a stop string ("\\nUs" of "\\nUser:"), that
tail may still become the stop string, so the streamer holds it back; once a stop string appears,
the text is cut where it begins and the stop string itself is never shown.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopChecker:
    """Fed the running generated text (which only grows), says where to cut and what to hold back."""

    def __init__(self, stop_strings: Iterable[str] = (), eos_ids: Iterable[int] = ()) -> None:
        self.stop_strings: list[str] = [s for s in stop_strings if s]
        self.eos_ids: frozenset[int] = frozenset(int(i) for i in eos_ids)
        self._longest = max((len(s) for s in self.stop_strings), default=0)
        self._searched = 0  # no stop string starts before this offset of the text seen so far
        self._seen = 0

    def reset(self) -> None:
        self._searched = 0
        self._seen = 0

    def is_eos(self, token: int) -> bool:
        return int(token) in self.eos_ids

    def find(self, text: str) -> int | None:
        """Offset where the earliest stop string begins in text, or None."""
        if not self.stop_strings:
            return None
        if len(text) < self._seen:  # a different stream: search from the start
            self.reset()
        # Text only grows, so a stop string can only start in the last (longest - 1) old characters or later.
        start = max(0, self._searched)
        hits = [at for s in self.stop_strings if (at := text.find(s, start)) >= 0]
        self._seen = len(text)
        if hits:
            return min(hits)
        self._searched = max(0, len(text) - self._longest + 1)
        return None

    def holdback(self, text: str) -> int:
        """How many trailing characters of text could be the start of a stop string."""
        hold = 0
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def check(self, text: str) -> tuple[int | None, int]:
        """(cut, hold): cut is where to truncate the text (a stop string begins there) or None;
        hold is how many trailing characters to keep back from a stream until more text arrives."""
        cut = self.find(text)
        if cut is not None:
            return cut, 0
        return None, self.holdback(text)
