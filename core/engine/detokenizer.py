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
        # The text is kept in two parts so that a step costs the same however long the output:
        # the released chunks (never touched again) and the pending text decoded after them,
        # which a stop string could still cut. ``_recent`` is the end of the released text, as
        # much of it as a stop string could overlap (with include_stop_str_in_output).
        self._released: list[str] = []
        self._pending = ""
        self._recent = ""
        self._recent_size = max((len(stop) for stop in self.stop), default=0)
        # The stop string that ended the text, once one did.
        self.stop_string: str | None = None

    @property
    def output_text(self) -> str:
        """The text released so far (all of it once the output finished)."""
        if len(self._released) > 1:
            self._released[:] = ["".join(self._released)]
        return self._released[0] if self._released else ""

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
        self._pending += delta
        if check_stop and self.stop:
            # Every occurrence that ends in the new text starts after the released text, or
            # (with include_stop_str_in_output) overlaps only its last _recent characters.
            window = self._recent + self._pending
            found = find_stop_string(window, len(delta), self.stop)
            if found is not None:
                stop, index = found
                end = index + len(stop) if self.include_stop_str_in_output else index
                self._pending = window[len(self._recent):end]
                self.stop_string = stop
                return self._release(len(self._pending))
        return self._release(len(self._pending) - self._num_held_back())

    def finish(self) -> str:
        """At the end of the output: release the rest, even an incomplete character."""
        if self.read_offset < len(self.token_ids):
            prefix_text = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
            self._pending += self._decode(self.token_ids[self.prefix_offset:])[len(prefix_text):]
            self.prefix_offset = self.read_offset = len(self.token_ids)
        return self._release(len(self._pending))

    def _release(self, num_chars: int) -> str:
        """Release the first ``num_chars`` characters of the pending text."""
        delta, self._pending = self._pending[:num_chars], self._pending[num_chars:]
        if delta:
            self._released.append(delta)
            if self._recent_size:
                self._recent = (self._recent + delta)[-self._recent_size:]
        return delta

    def _num_held_back(self) -> int:
        """Length of the longest tail of the text that a stop string starts with (and goes past).

        Only such a tail can be cut later: a stop string is found when it ends in new text, and
        is cut from where it starts. The held-back tail only moves forward as text is added (a
        shorter text's tail that begins a stop string would begin it too), so released text stays
        released, and it lies within the pending text. With ``include_stop_str_in_output`` the
        cut is after the stop string, in text not yet released, so nothing is held back.
        """
        if self.include_stop_str_in_output:
            return 0
        text = self._pending
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
