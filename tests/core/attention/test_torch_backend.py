"""The torch attention backend, and the CPU platform's (its C decode kernel), against the plain
reference on random mixed batches."""

from __future__ import annotations

import random

import pytest
import torch

from fw.core.attention.kv_quant import KVScales
from fw.core.attention.torch_backend import DECODE_GROUP, TorchAttentionBackend
from fw.core.forward_context import AttentionMetadata
from fw.kernels.reference import paged_attention_ref, quantize_fp8_ref, write_kv_ref
from fw.plugins.platforms.cpu_attention import CpuAttentionBackend


def random_batch(rng: random.Random, heads: int, kv_heads: int, head_dim: int, block_size: int, num_seqs: int,
                 dtype: torch.dtype):
    """Decodes, prefill chunks with a cached prefix and fresh prefills over scattered blocks."""
    query_lens, seq_lens = [], []
    for _ in range(num_seqs):
        seq_len = rng.randint(1, 70)
        seq_lens.append(seq_len)
        query_lens.append(rng.choice([1, 1, seq_len, rng.randint(1, seq_len)]))
    num_blocks = sum((s + block_size - 1) // block_size for s in seq_lens) + 8
    # Huge values in every slot: attending to a slot outside a sequence's context shows.
    # (Unlike the Triton kernels this backend may read, with zero weight, the unused end of
    # a sequence's last block, so the cache must hold finite values: it is zeroed at start.)
    cache = torch.full((2, num_blocks, block_size, kv_heads, head_dim), 1e4, dtype=dtype)
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
    max_blocks = max((s + block_size - 1) // block_size for s in seq_lens)
    tables = torch.zeros(num_seqs, max_blocks, dtype=torch.int32)
    used, slots = 0, []
    for i, (seq_len, query_len) in enumerate(zip(seq_lens, query_lens)):
        n = (seq_len + block_size - 1) // block_size
        tables[i, :n] = order[used:used + n]
        used += n
        # The cached prefix holds real values; the new tokens' slots are written by the step.
        for p in range(seq_len):
            slot = int(tables[i, p // block_size]) * block_size + p % block_size
            if p < seq_len - query_len:
                cache.view(2, -1, kv_heads, head_dim)[:, slot] = torch.randn(2, kv_heads, head_dim, dtype=dtype)
            else:
                slots.append(slot)
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, heads, head_dim, dtype=dtype)
    k = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype)
    v = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype)
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    metadata = AttentionMetadata(starts, torch.tensor(seq_lens, dtype=torch.int32), tables, torch.tensor(slots),
                                 max(query_lens), max(seq_lens))
    return q, k, v, cache, metadata


@pytest.mark.parametrize("backend_class", [CpuAttentionBackend, TorchAttentionBackend], ids=["c-kernel", "sdpa"])
@pytest.mark.parametrize("case", range(24))
def test_matches_the_reference(case, backend_class):
    rng = random.Random(case)
    heads, kv_heads, head_dim = rng.choice([(4, 2, 16), (8, 8, 32), (6, 2, 8), (9, 3, 64), (8, 1, 16)])
    block_size = rng.choice([4, 8, 16])
    num_seqs = rng.choice([1, 5, DECODE_GROUP + 7, 40])
    dtype = torch.float32 if case % 4 else torch.bfloat16
    window = rng.choice([None, None, 5, 17])
    q, k, v, cache, metadata = random_batch(rng, heads, kv_heads, head_dim, block_size, num_seqs, dtype)

    backend = backend_class()
    if backend_class is CpuAttentionBackend and not backend.decode_kernel:
        pytest.skip("no C compiler to build the CPU decode kernel")
    ours = cache.clone()
    out = backend.forward(q, k, v, ours, metadata, 0.3, window)
    expected_cache = cache.clone()
    write_kv_ref(k, v, expected_cache, metadata.slot_mapping)
    expected = paged_attention_ref(q, expected_cache, metadata.query_start_loc, metadata.seq_lens,
                                   metadata.block_tables, 0.3, window)
    assert torch.equal(ours, expected_cache)
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("backend_class", [CpuAttentionBackend, TorchAttentionBackend], ids=["c-kernel", "sdpa"])
@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("case", range(6))
def test_fp8_cache_matches_the_reference(case, cache_dtype, backend_class):
    """Writes store the reference's bytes (quantized with the layer's scales); every path (decodes,
    chunks over a cached prefix, fresh prefills) reads what was stored, times the scales."""
    rng = random.Random(100 + case)
    heads, kv_heads, head_dim = rng.choice([(4, 2, 16), (9, 3, 64), (8, 1, 16), (16, 2, 128)])
    dtype = torch.float32 if case % 2 else torch.bfloat16
    q, k, v, cache, metadata = random_batch(rng, heads, kv_heads, head_dim, rng.choice([4, 16]),
                                            rng.choice([5, DECODE_GROUP + 7]), torch.float32)
    scales = KVScales(k=rng.choice([0.01, 0.3]), v=rng.choice([0.02, 0.7]))
    # The cached prefix as a writer stored it; the 1e4 filler saturates, still visible if attended.
    cache = torch.stack([quantize_fp8_ref(cache[0], scales.k, cache_dtype),
                         quantize_fp8_ref(cache[1], scales.v, cache_dtype)])
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    backend = backend_class()
    if backend_class is CpuAttentionBackend and not backend.decode_kernel:
        pytest.skip("no C compiler to build the CPU decode kernel")
    window = rng.choice([None, 9])
    ours = cache.clone()
    out = backend.forward(q, k, v, ours, metadata, 0.3, window, kv_scales=scales)
    expected_cache = cache.clone()
    write_kv_ref(k, v, expected_cache, metadata.slot_mapping, scales.k, scales.v)
    expected = paged_attention_ref(q, expected_cache, metadata.query_start_loc, metadata.seq_lens,
                                   metadata.block_tables, 0.3, window, scales.k, scales.v)
    assert torch.equal(ours.view(torch.uint8), expected_cache.view(torch.uint8))
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)
