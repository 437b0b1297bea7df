"""The block manager: allocation, reference counts, prefix-cache hits and LRU eviction. No model."""

from __future__ import annotations

import pytest

from fw.core.engine.sampling_params import SamplingParams
from fw.core.engine.sequence import Sequence
from fw.core.kv_cache import BlockManager

BS = 4


def seq(tokens: list[int], request_id: str = "r", **params) -> Sequence:
    return Sequence(request_id, list(tokens), SamplingParams(**params))


def admit(bm: BlockManager, s: Sequence) -> list[int]:
    cached = bm.lookup_prefix(s)
    num_new = s.num_tokens - len(cached) * BS
    assert bm.can_allocate(s, cached, num_new)
    bm.allocate(s, cached, num_new)
    s.num_computed_tokens = s.num_tokens  # as if the step computed everything
    bm.cache_computed_blocks(s)
    return cached


def test_allocation_covers_the_tokens_and_free_returns_every_block():
    bm = BlockManager(num_blocks=8, block_size=BS)
    s = seq(range(10))
    admit(bm, s)
    assert len(s.block_ids) == 3 and len(set(s.block_ids)) == 3
    assert bm.num_free_blocks == 5
    assert bm.slot(s, 9) == s.block_ids[2] * BS + 1
    bm.free(s)
    assert bm.num_free_blocks == 8 and s.block_ids == []
    assert all(count == 0 for count in bm.ref_counts)


def test_a_shared_prefix_reuses_full_blocks_and_counts_the_hit():
    bm = BlockManager(num_blocks=16, block_size=BS)
    first = seq([1, 2, 3, 4, 5, 6, 7, 8, 9], request_id="a")
    admit(bm, first)
    second = seq([1, 2, 3, 4, 5, 6, 7, 8, 100, 101], request_id="b")
    cached = admit(bm, second)
    assert cached == first.block_ids[:2]
    assert second.num_cached_tokens == 8
    assert bm.ref_counts[first.block_ids[0]] == 2
    assert bm.num_prefix_hits == 8 and bm.num_prefix_queries == 9 + 10


def test_the_last_prompt_token_is_always_computed():
    bm = BlockManager(num_blocks=16, block_size=BS)
    admit(bm, seq(range(8), request_id="a"))
    again = seq(range(8), request_id="b")
    # Both blocks are cached, but the second holds the last token, which must be recomputed.
    assert len(bm.lookup_prefix(again)) == 1


def test_freed_cached_blocks_stay_reusable_until_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=BS)
    old = seq(range(9), request_id="old")  # 2 full blocks + 1 partial
    admit(bm, old)
    full_blocks = old.block_ids[:2]
    bm.free(old)
    # Reusable after free:
    assert bm.lookup_prefix(seq(range(9), request_id="x")) == full_blocks
    # The partial (unhashed) block and the never-used one are taken before cached ones.
    other = seq([50, 51, 52, 53, 54], request_id="other")
    admit(bm, other)
    assert not set(other.block_ids) & set(full_blocks)
    assert bm.lookup_prefix(seq(range(9), request_id="y")) == full_blocks
    bm.free(other)
    # Now a large request needs every block: cached ones are evicted, least recently freed first.
    big = seq(range(100, 116), request_id="big")
    admit(bm, big)
    assert bm.lookup_prefix(seq(range(9), request_id="z")) == []
    assert len(bm.cached) == 4  # big's own blocks


def test_can_allocate_counts_free_cached_blocks_it_would_take():
    bm = BlockManager(num_blocks=4, block_size=BS)
    first = seq(range(9), request_id="a")
    admit(bm, first)
    bm.free(first)
    s = seq(list(range(8)) + [99, 98, 97, 96, 95], request_id="b")
    cached = bm.lookup_prefix(s)
    assert len(cached) == 2
    # 8 cached tokens + 5 new = 4 blocks: the 2 cached ones (free, in the list) + 2 more = fits.
    assert bm.can_allocate(s, cached, 5)
    # 8 + 9 tokens = 5 blocks: 3 more, but only 2 are left once the cached two are taken.
    assert not bm.can_allocate(s, cached, 9)


def test_without_prefix_caching_only_samples_of_one_request_share():
    bm = BlockManager(num_blocks=16, block_size=BS, enable_prefix_caching=False)
    leader = seq(range(9), request_id="a")
    admit(bm, leader)
    sibling = Sequence("a", list(range(9)), leader.params, index=1, leader=leader)
    assert bm.lookup_prefix(sibling) == leader.block_ids[:2]
    stranger = seq(range(9), request_id="b")
    assert bm.lookup_prefix(stranger) == []
    bm.free(leader)
    assert bm.cached == {}  # nothing survives a free when caching is off


def test_prompt_logprobs_requests_bypass_the_cache():
    bm = BlockManager(num_blocks=16, block_size=BS)
    admit(bm, seq(range(9), request_id="a"))
    assert bm.lookup_prefix(seq(range(9), request_id="b", prompt_logprobs=1)) == []


def test_hashes_chain_over_the_parent_block():
    bm = BlockManager(num_blocks=16, block_size=BS)
    admit(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 0], request_id="a"))
    # Same second block, different first block: no hit for either.
    assert bm.lookup_prefix(seq([9, 9, 9, 9, 5, 6, 7, 8, 0], request_id="b")) == []


def test_append_without_room_is_a_bug_not_a_silent_overwrite():
    bm = BlockManager(num_blocks=1, block_size=BS)
    s = seq(range(4))
    admit(bm, s)
    assert not bm.can_append(s, 1)
    with pytest.raises(RuntimeError):
        bm.append_slots(s, 1)
