"""The server's tokenizer calls, kept off the event loop.

Tokenizing a 10 MB prompt takes seconds; on the event loop it would stall ``/health`` and every
stream for that long. Texts and token lists past a small size therefore go to a bounded thread
pool. A thread alone is not enough, because only the event loop's turn for the GIL matters:

- transformers' ``encode`` releases the GIL while Rust tokenizes, but then copies the ids
  (and the attention mask...) into Python lists and frees the ``Encoding`` with its per-token
  strings and offsets under the GIL: about 0.2 s in one C call for 10 MB, a stall whatever
  thread makes it. ``Tokenizer.encode_batch_fast`` tokenizes the same ids without offsets, so
  the only long call left is the copy of the ids (about 60 ms for 2.2M tokens);
- transformers' ``decode`` calls the Rust ``decode``, which keeps the GIL; ``decode_batch``
  releases it.

These fast paths are taken only where they give exactly what transformers gives (a Rust-backed
tokenizer in its default state: no truncation or padding set, no clean-up of spaces), else the
transformers call runs in the pool as it is. tests/entrypoints/openai/test_tokenization.py
checks the equality and the event loop's latency.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

#: Texts up to this many characters are tokenized on the event loop (about a millisecond).
INLINE_TEXT_CHARS = 4096
#: Token lists up to this length are decoded on the event loop.
INLINE_TOKEN_IDS = 4096


class AsyncTokenizer:
    """``tokenizer``'s encode/decode for a server: small inputs at once, large ones in ``executor``."""

    def __init__(self, tokenizer: Any, executor: Executor) -> None:
        self.tokenizer = tokenizer
        self.executor = executor
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # Only a real tokenizers.Tokenizer has the GIL-releasing calls.
        self._backend = backend if type(backend).__module__.startswith("tokenizers") and \
            hasattr(backend, "encode_batch_fast") else None

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if len(text) <= INLINE_TEXT_CHARS:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return await self._run(self.encode_large, text, add_special_tokens)

    async def decode(self, token_ids: Sequence[int]) -> str:
        if len(token_ids) <= INLINE_TOKEN_IDS:
            return self.tokenizer.decode(token_ids)
        return await self._run(self.decode_large, list(token_ids))

    async def convert_ids_to_tokens(self, token_ids: Sequence[int]) -> list[str]:
        if len(token_ids) <= INLINE_TOKEN_IDS:
            return self.tokenizer.convert_ids_to_tokens(token_ids)
        # A Python loop in transformers: it yields the GIL as it goes.
        return await self._run(self.tokenizer.convert_ids_to_tokens, list(token_ids))

    # ---------------------------------------------------------------- in the pool

    def encode_large(self, text: str, add_special_tokens: bool) -> list[int]:
        """What ``tokenizer.encode`` returns, computed with the GIL released where possible."""
        backend = self._backend
        if backend is not None and self._in_default_state(backend):
            return backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode_large(self, token_ids: list[int]) -> str:
        """What ``tokenizer.decode`` returns, computed with the GIL released where possible."""
        backend = self._backend
        if backend is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
            return backend.decode_batch([token_ids], skip_special_tokens=False)[0]
        return self.tokenizer.decode(token_ids)

    def _in_default_state(self, backend: Any) -> bool:
        # transformers' encode switches truncation and padding off and sets encode_special_tokens
        # to split_special_tokens before it calls the backend; the same call is only equal here
        # when the backend is in that state already (it is after transformers' first encode).
        return (backend.truncation is None and backend.padding is None
                and backend.encode_special_tokens == bool(getattr(self.tokenizer, "split_special_tokens", False)))
