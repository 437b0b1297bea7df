"""The C decode-attention kernel for the CPU against the plain reference."""

from __future__ import annotations

import random

import pytest
import torch

from fw.kernels import cpu_attention
from fw.kernels.reference import paged_attention_ref

pytestmark = pytest.mark.skipif(cpu_attention.load() is None, reason="no C compiler to build the CPU kernel")


@pytest.mark.parametrize("case", range(16))
def test_decode_matches_the_reference(case):
    rng = random.Random(case)
    heads, kv_heads = rng.choice([(9, 3), (8, 8), (16, 2), (12, 1), (32, 8)])
    head_dim = rng.choice([64, 128, 32, 80])
    block_size = rng.choice([8, 16, 32])
    dtype = torch.bfloat16 if case % 3 == 0 else torch.float32
    window = rng.choice([None, None, 7, 40])
    num_seqs = rng.randint(1, 20)
    gen = torch.Generator().manual_seed(case)
    seq_lens = torch.tensor([rng.randint(1, 150) for _ in range(num_seqs)], dtype=torch.int32)
    max_blocks = (int(seq_lens.max()) + block_size - 1) // block_size
    num_blocks = num_seqs * max_blocks + 3
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    tables = torch.randperm(num_blocks, generator=gen)[: num_seqs * max_blocks].view(num_seqs, max_blocks).int()
    # Query rows interleaved with other tokens (as in a mixed batch), from a strided view.
    qkv = torch.randn(3 * num_seqs, heads + 2 * kv_heads, head_dim, generator=gen).to(dtype)
    query = qkv[:, :heads]
    token_rows = torch.arange(num_seqs, dtype=torch.int64) * 3 + 1
    out = torch.full((3 * num_seqs, heads, head_dim), 5.0, dtype=dtype)

    cpu_attention.paged_decode_attention(query, cache, tables, seq_lens, token_rows, out, 0.2, window)

    expected = paged_attention_ref(query[token_rows], cache, torch.arange(num_seqs + 1, dtype=torch.int32), seq_lens,
                                   tables, 0.2, window)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out[token_rows].float(), expected.float(), atol=tolerance, rtol=tolerance)
    others = torch.ones(3 * num_seqs, dtype=torch.bool)
    others[token_rows] = False
    assert (out[others] == 5.0).all()  # rows that are not decodes are left alone


def test_bad_arguments_are_refused_with_a_reason():
    cache = torch.zeros(2, 4, 16, 2, 64)
    query = torch.zeros(1, 4, 64)
    tables = torch.zeros(1, 1, dtype=torch.int32)
    lens = torch.ones(1, dtype=torch.int32)
    rows = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        cpu_attention.paged_decode_attention(query.half(), cache.half(), tables, lens, rows, query.half(), 1.0)
    with pytest.raises(ValueError, match="int32"):
        cpu_attention.paged_decode_attention(query, cache, tables.long(), lens, rows, query, 1.0)
    with pytest.raises(ValueError, match="head_dim 512"):
        big = torch.zeros(2, 4, 16, 2, 512)
        cpu_attention.paged_decode_attention(torch.zeros(1, 4, 512), big, tables, lens, rows, torch.zeros(1, 4, 512),
                                             1.0)


def test_without_a_compiler_it_reports_none(monkeypatch):
    monkeypatch.setenv("FW_CPU_ATTENTION_KERNEL", "0")
    cpu_attention.load.cache_clear()
    try:
        assert cpu_attention.load() is None
    finally:
        monkeypatch.delenv("FW_CPU_ATTENTION_KERNEL")
        cpu_attention.load.cache_clear()
    assert cpu_attention.load() is not None


def test_a_missing_compiler_falls_back_instead_of_failing(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("FW_CACHE_DIR", str(tmp_path))  # nothing cached: it must try to build
    cpu_attention.load.cache_clear()
    try:
        assert cpu_attention.load() is None
    finally:
        monkeypatch.undo()
        cpu_attention.load.cache_clear()


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", range(1, 9))
def test_bfloat16_shapes_of_the_vectorised_path_match_the_reference(head_dim, group):
    # bfloat16 with head_dim 64/128 and up to 8 query heads per kv head take the AVX512-BF16
    # path where the CPU has it: 16-position chunks, partial chunks and blocks, windows.
    rng = random.Random(head_dim * 10 + group)
    kv_heads, block_size = rng.choice([1, 2, 3]), rng.choice([8, 16, 32])
    heads, window = kv_heads * group, rng.choice([None, 5, 33])
    gen = torch.Generator().manual_seed(group)
    seq_lens = torch.tensor([1, 15, 16, 17, 33, rng.randint(40, 130)], dtype=torch.int32)
    max_blocks = (int(seq_lens.max()) + block_size - 1) // block_size
    num_blocks = len(seq_lens) * max_blocks
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=gen).bfloat16()
    tables = torch.randperm(num_blocks, generator=gen).view(len(seq_lens), max_blocks).int()
    query = torch.randn(len(seq_lens), heads, head_dim, generator=gen).bfloat16()
    out = torch.empty_like(query)
    rows = torch.arange(len(seq_lens))
    cpu_attention.paged_decode_attention(query, cache, tables, seq_lens, rows, out, head_dim**-0.5, window)
    starts = torch.arange(len(seq_lens) + 1, dtype=torch.int32)
    expected = paged_attention_ref(query, cache, starts, seq_lens, tables, head_dim**-0.5, window)
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)
