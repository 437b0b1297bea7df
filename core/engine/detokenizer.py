"""Incremental detokenization that is exact for byte-level BPE and multi-byte UTF-8.

Each new token is decoded together with a few tokens before it (``prefix_offset``) and
the text is released only once it no longer ends in an incomplete character (U+FFFD),
so a character split across tokens never shows up as a replacement character
mid-stream. Stop strings end the text exactly where they start.
"""

from __future__ import annotations

from typing import Any

# How many prompt tokens to decode with the first output token, so leading spaces and
# word pieces come out as the full decode would render them.
INITIAL_OFFSET = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool,
                 spaces_between_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.token_ids = list(prompt_token_ids[-INITIAL_OFFSET:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
        )

    def add_token(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self.token_ids.append(token_id)
        prefix_text = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset:])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""  # an incomplete character, or a token that renders as nothing
        delta = full_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self.text += delta
        return delta


    def flush(self) -> str:
        """At the end of the output: release held-back text, even if it is an incomplete character."""
        if self.read_offset == len(self.token_ids):
            return ""
        prefix_text = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
        delta = self._decode(self.token_ids[self.prefix_offset:])[len(prefix_text):]
        self.prefix_offset = self.read_offset = len(self.token_ids)
        self.text += delta
        return delta


def find_stop_string(text: str, num_new_chars: int, stops: list[str]) -> tuple[str, int] | None:
    """The earliest stop string that ends within the last ``num_new_chars`` characters.

    Returns ``(stop, index where it starts)``; only the tail that could contain a stop
    overlapping the new text is searched.
    """
    best: tuple[str, int] | None = None
    for stop in stops:
        start = max(0, len(text) - num_new_chars - len(stop) + 1)
        index = text.find(stop, start)
        if index != -1 and (best is None or index < best[1]):
            best = (stop, index)
    return best
