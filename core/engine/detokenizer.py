"""Incremental detokenization that is exact for byte-level BPE and multi-byte UTF-8, and the
one place where stop strings end the text.

Each new token is decoded together with a few tokens before it (``prefix_offset``) and
the text grows only once it no longer ends in an incomplete character (U+FFFD), so a
character split across tokens never shows up as a replacement character mid-stream.

Text is *released* (handed to outputs) only once no stop string can still cut it: the
tail of the text that could be the start of a stop string is held back until the next
tokens show it is not, or until the output finishes. So whatever was released is final:
the deltas of a stream concatenate to exactly the text of the finished output.
"""

from __future__ import annotations

from typing import Any, Sequence

# How many prompt tokens to decode with the first output token, so leading spaces and
# word pieces come out as the full decode would render them.
INITIAL_OFFSET = 5


class IncrementalDetokenizer:
    """One sequence's output text: decoded token by token, cut at a stop string, released when final."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool,
                 spaces_between_special_tokens: bool = True, stop: Sequence[str] = (),
                 include_stop_str_in_output: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.token_ids = list(prompt_token_ids[-INITIAL_OFFSET:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        # All text decoded so far; its first num_released characters have been released.
        self.text = ""
        self.num_released = 0
        # The stop string that ended the text, once one did.
        self.stop_string: str | None = None

    @property
    def output_text(self) -> str:
        """The text released so far (all of it once the output finished)."""
        return self.text[:self.num_released]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
        )

    def add_token(self, token_id: int, check_stop: bool = True) -> str:
        """Add one token; return the text it releases (possibly empty).

        With ``check_stop`` (off while ``min_tokens`` holds stops back), a stop string that
        ends in the new text ends the output: ``stop_string`` is set and the text is cut where
        the stop string starts (after it with ``include_stop_str_in_output``) and released.
        """
        self.token_ids.append(token_id)
        prefix_text = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset:])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""  # an incomplete character, or a token that renders as nothing
        delta = full_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self.text += delta
        if check_stop and self.stop:
            found = find_stop_string(self.text, len(delta), self.stop)
            if found is not None:
                stop, index = found
                self.text = self.text[:index + len(stop) if self.include_stop_str_in_output else index]
                self.stop_string = stop
                return self._release(len(self.text))
        return self._release(len(self.text) - self._num_held_back())

    def finish(self) -> str:
        """At the end of the output: release the rest, even an incomplete character."""
        if self.read_offset < len(self.token_ids):
            prefix_text = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
            self.text += self._decode(self.token_ids[self.prefix_offset:])[len(prefix_text):]
            self.prefix_offset = self.read_offset = len(self.token_ids)
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        delta = self.text[self.num_released:end]
        self.num_released = end
        return delta

    def _num_held_back(self) -> int:
        """Length of the longest tail of the text that a stop string starts with (and goes past).

        Only such a tail can be cut later: a stop string is found when it ends in new text, and
        is cut from where it starts. The held-back tail only moves forward as text is added (a
        shorter text's tail that begins a stop string would begin it too), so released text stays
        released. With ``include_stop_str_in_output`` the cut is after the stop string, in text
        not yet released, so nothing is held back.
        """
        if self.include_stop_str_in_output:
            return 0
        text = self.text
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest


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
