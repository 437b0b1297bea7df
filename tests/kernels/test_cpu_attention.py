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


# ---------------------------------------------------------------- fp8 caches

FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]
#: fp8_conversion_path() of each build in cpu_attention.FP8_PATH_FLAGS.
PATH_NUMBERS = {"avx512": 2, "avx2": 1, "table": 0}
# The native build (AVX-512 on the dev machine) always; the others compile the kernel again.
PATHS = ["avx512", pytest.param("avx2", marks=pytest.mark.slow), pytest.param("table", marks=pytest.mark.slow)]


@pytest.fixture
def fp8_path(request, monkeypatch):
    """The kernel built for conversion path ``request.param``, installed as ``cpu_attention.load()``."""
    library = cpu_attention.build_library(cpu_attention.FP8_PATH_FLAGS[request.param])
    if library.fp8_conversion_path() != PATH_NUMBERS[request.param]:
        pytest.skip(f"this CPU cannot run the {request.param} conversions")
    monkeypatch.setattr(cpu_attention, "load", lambda: library)
    return request.param


def finite_fp8_codes(cache_dtype: torch.dtype) -> torch.Tensor:
    """All 256 bytes as fp8, with NaN and inf replaced by zero (fw's writers saturate: a cache
    never holds them unless the model produced NaN)."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(cache_dtype)
    return torch.where(codes.float().isfinite(), codes.float(), 0.0).to(cache_dtype)


@pytest.mark.parametrize("fp8_path", PATHS, indirect=True)
@pytest.mark.parametrize("cache_dtype", FP8_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_fp8_value_is_read_exactly(fp8_path, cache_dtype, dtype):
    # One cached position: the softmax weight is exactly 1 and the output is the value times
    # v_scale, so each of the 256 codes (4 kv heads x 64 dims, subnormals included) shows as read.
    values = finite_fp8_codes(cache_dtype).view(1, 1, 4, 64)
    cache = torch.stack([values, values]).contiguous()  # [2, 1 block, 1 slot, 4 kv heads, 64]
    query = torch.randn(1, 8, 64).to(dtype)
    out = torch.empty_like(query)
    one = torch.ones(1, dtype=torch.int32)
    v_scale = 0.37 if dtype == torch.float32 else 1.0  # a bf16 output rounds a scaled value
    cpu_attention.paged_decode_attention(query, cache, torch.zeros(1, 1, dtype=torch.int32), one,
                                         torch.zeros(1, dtype=torch.int64), out, 0.125, None, 1.7, v_scale)
    expected = (values.float() * v_scale).repeat_interleave(2, dim=2)[0, 0]  # 2 query heads per kv head
    assert torch.equal(out[0].float(), expected.to(dtype).float())


@pytest.mark.parametrize("fp8_path", PATHS, indirect=True)
@pytest.mark.parametrize("cache_dtype", FP8_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_cache_matches_the_reference(fp8_path, cache_dtype, dtype):
    # Random bytes cover every exponent (subnormals, the largest values); head_dim 64/128 with up
    # to 8 query heads per kv head take the AVX512-BF16 path for a bf16 query, 80 and 36 the
    # generic one with a conversion tail. Scales are not 1: the kernel folds them in.
    k_scale, v_scale = (0.02, 0.05) if cache_dtype == torch.float8_e4m3fn else (2e-4, 5e-4)
    for case in range(4):
        rng = random.Random(case)
        heads, kv_heads = [(9, 3), (16, 2), (8, 8), (12, 1)][case]
        head_dim = [64, 128, 80, 36][case]
        block_size, window = rng.choice([8, 16]), [None, 30, None, 5][case]
        gen = torch.Generator().manual_seed(case)
        seq_lens = torch.tensor([1, 16, 17, rng.randint(40, 130)], dtype=torch.int32)
        max_blocks = (int(seq_lens.max()) + block_size - 1) // block_size
        num_blocks = len(seq_lens) * max_blocks
        codes = finite_fp8_codes(cache_dtype).view(torch.uint8)
        picks = torch.randint(0, 256, (2, num_blocks, block_size, kv_heads, head_dim), generator=gen)
        cache = codes[picks].view(cache_dtype)
        tables = torch.randperm(num_blocks, generator=gen).view(len(seq_lens), max_blocks).int()
        query = torch.randn(len(seq_lens), heads, head_dim, generator=gen).to(dtype)
        out = torch.empty_like(query)
        rows = torch.arange(len(seq_lens))
        cpu_attention.paged_decode_attention(query, cache, tables, seq_lens, rows, out, head_dim**-0.5, window,
                                             k_scale, v_scale)
        starts = torch.arange(len(seq_lens) + 1, dtype=torch.int32)
        expected = paged_attention_ref(query, cache, starts, seq_lens, tables, head_dim**-0.5, window, k_scale, v_scale)
        tolerance = 2e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_scales_are_refused_for_a_cache_that_is_not_fp8():
    cache, query = torch.zeros(2, 4, 16, 2, 64), torch.zeros(1, 4, 64)
    args = (torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="fp8 cache only"):
        cpu_attention.paged_decode_attention(query, cache, *args, query.clone(), 1.0, None, 0.5, 1.0)
    with pytest.raises(ValueError, match="dtype or fp8"):
        cpu_attention.paged_decode_attention(query, cache.to(torch.float16), *args, query.clone(), 1.0)
