"""The paged KV cache's bookkeeping: a block pool, block tables, prefix-cache hashing, LRU eviction.

The cache itself is one pre-allocated tensor per layer (the model runner owns it); this
module decides which block ids each sequence uses.

Invariants:
- A block is *free* when no sequence references it (``ref_counts[b] == 0``); free blocks
  sit in ``free_blocks`` in eviction order (front is reused first).
- A full block whose tokens were computed gets a hash chained over its parent block's hash
  and its token ids. While the block's contents stay valid, ``cached[hash] == block``, even
  after its sequence freed it; such a block is reusable until it is reused for other tokens
  (evicted), least recently freed first.
- With prefix caching off, hashes are salted with the request id, so only the samples of
  one request (``n > 1``) share their prompt's blocks, and a freed block's hash is dropped.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from fw.core.engine.sequence import Sequence


def hash_block(parent: bytes | None, token_ids: list[int], salt: str | None) -> bytes:
    h = hashlib.sha256(parent or b"")
    if salt is not None:
        h.update(salt.encode())
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        # Prefix-cache statistics, in tokens, for /metrics and the stats log.
        self.num_prefix_queries = 0
        self.num_prefix_hits = 0

    # ---------------------------------------------------------------- queries

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by running sequences."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def _salt(self, seq: Sequence) -> str | None:
        return None if self.enable_prefix_caching else seq.request_id

    def _hash_full_blocks(self, seq: Sequence, num_tokens: int) -> int:
        """Extend ``seq.block_hashes`` (memoised) to the full blocks among the first ``num_tokens``
        tokens; returns how many blocks that is."""
        bs = self.block_size
        hashes = seq.block_hashes
        for i in range(len(hashes), num_tokens // bs):
            hashes.append(hash_block(hashes[i - 1] if i else None, seq.tokens_slice(i * bs, (i + 1) * bs), self._salt(seq)))
        return num_tokens // bs

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of ``seq``'s tokens; no side effects.

        The last token is never taken from the cache: the step must compute it to get logits.
        """
        if seq.params.prompt_logprobs is not None:
            return []  # cached positions have no logits to report
        blocks = []
        for h in seq.block_hashes[:self._hash_full_blocks(seq, seq.num_tokens - 1)]:
            block = self.cached.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def _num_blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def can_allocate(self, seq: Sequence, cached_blocks: list[int], num_new_tokens: int) -> bool:
        """Whether a waiting ``seq`` can get its cached prefix plus room for ``num_new_tokens``."""
        num_tokens = len(cached_blocks) * self.block_size + num_new_tokens
        needed = self._num_blocks_for(num_tokens) - len(cached_blocks)
        # Cached blocks nobody references are in the free list: taking them costs free blocks too.
        reclaimed = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        return needed <= self.num_free_blocks - reclaimed

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self._num_blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_ids)
        return needed <= self.num_free_blocks

    # ---------------------------------------------------------------- changes

    def allocate(self, seq: Sequence, cached_blocks: list[int], num_new_tokens: int) -> None:
        """Give a waiting ``seq`` its cached prefix and blocks for ``num_new_tokens`` more."""
        if seq.block_ids:
            raise RuntimeError(f"sequence {seq.seq_id} already holds blocks")
        for block in cached_blocks:
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
            self.ref_counts[block] += 1
        seq.block_ids = list(cached_blocks)
        seq.num_published_blocks = len(cached_blocks)
        seq.num_computed_tokens = seq.num_cached_tokens = len(cached_blocks) * self.block_size
        if seq.leader is None:  # siblings' shared prompt is not a cache hit the user asked for
            self.num_prefix_queries += seq.num_tokens
            self.num_prefix_hits += seq.num_cached_tokens
        self.append_slots(seq, num_new_tokens)

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make room for ``num_new_tokens`` after ``seq``'s computed tokens."""
        needed = self._num_blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_ids)
        if needed > self.num_free_blocks:
            raise RuntimeError("append_slots called without can_append")
        for _ in range(needed):
            seq.block_ids.append(self._take_free_block())

    def _take_free_block(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)
        old_hash = self.block_hash[block]
        if old_hash is not None:  # evict: its old contents are about to be overwritten
            if self.cached.get(old_hash) == block:
                del self.cached[old_hash]
            self.block_hash[block] = None
        self.ref_counts[block] = 1
        return block

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Publish the hashes of ``seq``'s blocks that became full and computed since the last call."""
        num_full = self._hash_full_blocks(seq, seq.num_computed_tokens)
        for i in range(seq.num_published_blocks, num_full):
            block, h = seq.block_ids[i], seq.block_hashes[i]
            if self.block_hash[block] is None and h not in self.cached:
                self.block_hash[block] = h
                self.cached[h] = block
        seq.num_published_blocks = max(seq.num_published_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        """Release every block of ``seq`` at once."""
        # Tail blocks first, so a shared prefix is the last to be evicted.
        for block in reversed(seq.block_ids):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if not self.enable_prefix_caching and self.block_hash[block] is not None:
                    self.cached.pop(self.block_hash[block], None)
                    self.block_hash[block] = None
                # Unhashed blocks go to the front: reuse them before evicting cached ones.
                self.free_blocks[block] = None
                if self.block_hash[block] is None:
                    self.free_blocks.move_to_end(block, last=False)
        seq.block_ids = []
        seq.num_computed_tokens = seq.num_published_blocks = 0

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_ids[position // self.block_size] * self.block_size + position % self.block_size
