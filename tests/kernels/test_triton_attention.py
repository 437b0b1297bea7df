"""Triton cache-write and paged-attention kernels against the torch references.

Without a GPU the kernels run under TRITON_INTERPRET=1 on CPU tensors (see conftest.py),
with small shapes; on a GPU the same tests run compiled, and the ``cuda`` tests add
larger ones. Every case draws fresh random data from its own seed. Cache slots no
sequence owns (and the tails of partial blocks) hold NaN, so a kernel that reads past a
sequence's context poisons its output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from dataclasses import dataclass

import pytest
import torch

from fw.core.attention.kv_quant import KVScales
from fw.core.forward_context import AttentionMetadata
from fw.kernels.reference import paged_attention_ref, quantize_fp8_ref, write_kv_ref

pytestmark = pytest.mark.slow  # sweeps in the Triton interpreter

TOLERANCES = {torch.float32: (2e-5, 1e-5), torch.float16: (3e-3, 1e-2), torch.bfloat16: (2e-2, 2e-2)}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass
class Batch:
    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, num_kv_heads, head_dim], prefix written
    metadata: AttentionMetadata


def make_batch(
    seed: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    lengths: list[tuple[int, int]],
    cache_dtype: torch.dtype | None = None,
    scales: KVScales | None = None,
) -> Batch:
    """A flat batch of sequences given as (query_len, seq_len); their blocks are scattered
    over the pool in random order and the cached prefix of each is already in the cache
    (an fp8 ``cache_dtype`` holds it divided by ``scales``, as a writer stores it)."""
    gen = torch.Generator().manual_seed(seed)
    cache_dtype = cache_dtype or dtype
    scales = scales or KVScales()
    blocks_per_seq = [-(-seq_len // block_size) for _, seq_len in lengths]
    num_blocks = sum(blocks_per_seq) + 3  # a few blocks nobody owns
    pool = torch.randperm(num_blocks, generator=gen).tolist()
    # fp8 NaN (e4m3's 0x7F reads as 480 in fw's kernels, see triton_cache): still poisons a read.
    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=cache_dtype)
    block_tables = torch.zeros(len(lengths), max(blocks_per_seq), dtype=torch.int32)
    query_start_loc, slots = [0], []
    for s, (query_len, seq_len) in enumerate(lengths):
        blocks = [pool.pop() for _ in range(blocks_per_seq[s])]
        block_tables[s, : len(blocks)] = torch.tensor(blocks)
        slot_of = [blocks[p // block_size] * block_size + p % block_size for p in range(seq_len)]
        cached = torch.tensor(slot_of[: seq_len - query_len], dtype=torch.long)
        prefix = torch.randn(2, len(cached), num_kv_heads, head_dim, generator=gen).to(dtype)
        if cache_dtype in FP8_DTYPES:
            prefix = torch.stack([quantize_fp8_ref(prefix[0], scales.k, cache_dtype),
                                  quantize_fp8_ref(prefix[1], scales.v, cache_dtype)])
        kv_cache[:, cached // block_size, cached % block_size] = prefix.to(cache_dtype)
        slots += slot_of[seq_len - query_len :]
        query_start_loc.append(query_start_loc[-1] + query_len)
    num_tokens = query_start_loc[-1]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype).to(device)

    metadata = AttentionMetadata(
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        seq_lens=torch.tensor([seq_len for _, seq_len in lengths], dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(query_len for query_len, _ in lengths),
        max_seq_len=max(seq_len for _, seq_len in lengths),
    )
    return Batch(
        query=rand(num_tokens, num_heads, head_dim),
        key=rand(num_tokens, num_kv_heads, head_dim),
        value=rand(num_tokens, num_kv_heads, head_dim),
        kv_cache=kv_cache.to(device),
        metadata=metadata,
    )


def random_lengths(seed: int, mix: str, max_len: int) -> list[tuple[int, int]]:
    """(query_len, seq_len) per sequence, shuffled: decodes, prefill chunks continuing a
    cached prefix, and fresh prefills, as ``mix`` asks."""
    gen = torch.Generator().manual_seed(seed + 1_000)

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    lengths = []
    if mix in ("mixed", "decode"):
        lengths += [(1, randint(1, max_len)) for _ in range(randint(2, 4))]
    if mix in ("mixed", "prefill"):
        for _ in range(randint(1, 2)):
            seq_len = randint(2, max_len)
            lengths.append((randint(1, seq_len - 1), seq_len))  # chunk with a cached prefix
        lengths += [(n, n) for n in (randint(1, max_len) for _ in range(randint(1, 2)))]  # fresh prefills
    order = torch.randperm(len(lengths), generator=gen).tolist()
    return [lengths[i] for i in order]


def check_attention(
    triton_ops, seed, num_heads, num_kv_heads, head_dim, block_size, dtype, window, mix, max_len, cache_dtype=None,
) -> None:
    if dtype == torch.bfloat16 and triton_ops.interpreted:
        pytest.skip("the Triton interpreter's tl.dot multiplies bfloat16's raw uint16 storage; bf16 runs on GPU only")
    lengths = random_lengths(seed, mix, max_len)
    # fp8: scales other than 1 (the kernels fold them into the softmax scale and the output).
    scales = KVScales(0.05, 0.2) if cache_dtype in FP8_DTYPES else KVScales()
    batch = make_batch(seed, num_heads, num_kv_heads, head_dim, block_size, dtype, triton_ops.device, lengths,
                       cache_dtype, scales)
    md = batch.metadata
    triton_ops.write_kv(batch.key, batch.value, batch.kv_cache, md.slot_mapping, scales.k, scales.v)
    out = triton_ops.paged_attention(
        batch.query, batch.kv_cache, md.query_start_loc, md.seq_lens, md.block_tables, head_dim**-0.5,
        max_query_len=md.max_query_len, sliding_window=window, k_scale=scales.k, v_scale=scales.v,
    )
    expected = paged_attention_ref(
        batch.query, batch.kv_cache, md.query_start_loc, md.seq_lens, md.block_tables, head_dim**-0.5, window,
        scales.k, scales.v,
    )
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{lengths}: {m}")


# (num_heads, num_kv_heads, head_dim, block_size, dtype, sliding_window, mix, max_len)
SMALL_CASES = [
    (4, 4, 64, 16, torch.float32, None, "mixed", 70),  # GQA 1
    (8, 4, 128, 32, torch.float32, None, "mixed", 70),  # GQA 2
    (8, 2, 64, 8, torch.float32, 16, "mixed", 60),  # GQA 4, window
    (8, 1, 32, 16, torch.float32, 5, "mixed", 50),  # GQA 8, small window
    (6, 2, 80, 16, torch.float32, None, "mixed", 50),  # GQA 3 (rows not a power of two), padded head_dim
    (12, 4, 96, 8, torch.float32, 33, "prefill", 60),
    (2, 2, 32, 16, torch.float32, 3, "prefill", 100),  # later rows' windows start past the first tile
    (2, 2, 64, 16, torch.float32, None, "prefill", 150),  # several query blocks per sequence, many tiles each
    (16, 2, 64, 16, torch.float32, None, "decode", 90),  # decode-only tile shape
    (32, 1, 16, 8, torch.float32, 7, "decode", 40),  # group wider than the minimum tile
    (4, 2, 64, 16, torch.float16, None, "mixed", 60),
    (8, 1, 128, 32, torch.float16, 20, "mixed", 60),
    (8, 2, 64, 16, torch.bfloat16, None, "mixed", 60),
]


@pytest.mark.parametrize("case_index", range(len(SMALL_CASES)))
def test_paged_attention_matches_reference(triton_ops, case_index):
    check_attention(triton_ops, case_index, *SMALL_CASES[case_index])


# fp8 caches: the query's dtype, then the cache's. Few and small (the interpreter is slow); the
# widening is exact, so the query dtype's tolerance holds against the dequantizing reference.
FP8_CASES = [
    (8, 2, 64, 16, torch.float32, None, "mixed", 60, torch.float8_e4m3fn),
    (4, 4, 32, 8, torch.float16, 9, "mixed", 40, torch.float8_e5m2),
    (6, 2, 80, 16, torch.float32, None, "decode", 50, torch.float8_e5m2),  # GQA 3, padded head_dim
    (4, 1, 16, 8, torch.float16, None, "prefill", 40, torch.float8_e4m3fn),
]


@pytest.mark.parametrize("case_index", range(len(FP8_CASES)))
def test_paged_attention_over_an_fp8_cache_matches_reference(triton_ops, case_index):
    check_attention(triton_ops, 200 + case_index, *FP8_CASES[case_index])


def fp8_probe_values(cache_dtype: torch.dtype) -> torch.Tensor:
    """Every finite fp8 value, the midpoints between neighbours (ties: round to even) and one
    float32 step either side of them, values past the largest (saturation), tiny values and
    random magnitudes over 18 decades."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(cache_dtype).float()
    values = values[values.isfinite()].unique()
    mids = (values[1:] + values[:-1]) / 2
    limit = torch.finfo(cache_dtype).max
    return torch.cat([values, mids, torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1),
                      torch.tensor([1.01, 1.04, 3.0, 1e9]) * limit, torch.tensor([1.01, 3.0]) * -limit,
                      torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("inf"), float("-inf")]),
                      torch.randn(1000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-12, 6, 1000)])


@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=["e4m3", "e5m2"])
def test_fp8_encoding_stores_torchs_bytes(triton_ops, cache_dtype):
    """The write kernel's integer encoding against torch's conversion, bit for bit (saturated
    first), with scales 1 and not 1; NaN stays NaN."""
    probes = fp8_probe_values(cache_dtype)
    head_dim = 128
    probes = torch.cat([probes, torch.zeros(-probes.numel() % head_dim)])
    num_tokens = probes.numel() // head_dim
    key = probes.view(num_tokens, 1, head_dim).to(triton_ops.device)
    for scale in (1.0, 0.37):
        cache = torch.zeros(2, num_tokens, 1, 1, head_dim, dtype=cache_dtype, device=triton_ops.device)
        triton_ops.write_kv(key, -key, cache, torch.arange(num_tokens, device=triton_ops.device), scale, scale)
        for stored, values in ((cache[0], key), (cache[1], -key)):
            expected = quantize_fp8_ref(values, scale, cache_dtype).view(torch.uint8)
            assert torch.equal(stored.reshape(expected.shape).view(torch.uint8), expected), scale
    nan = torch.full((1, 1, 16), float("nan"), device=triton_ops.device)
    cache = torch.zeros(2, 1, 1, 1, 16, dtype=cache_dtype, device=triton_ops.device)
    triton_ops.write_kv(nan, nan, cache, torch.zeros(1, dtype=torch.int64, device=triton_ops.device), 2.0, 2.0)
    assert cache.float().isnan().all()


@pytest.mark.parametrize(
    "dtype, cache_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                           (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16),
                           (torch.float32, torch.float8_e4m3fn), (torch.bfloat16, torch.float8_e5m2)]
)
@pytest.mark.parametrize("num_kv_heads, head_dim, block_size", [(2, 64, 16), (3, 80, 8), (1, 128, 32)])
def test_write_kv_equals_reference(triton_ops, dtype, cache_dtype, num_kv_heads, head_dim, block_size):
    seed = zlib.crc32(f"{dtype} {cache_dtype} {num_kv_heads} {head_dim} {block_size}".encode())
    gen = torch.Generator().manual_seed(seed)
    num_tokens, num_blocks = 37, 9
    # key as a strided view into a fused projection output, as a model produces it; value
    # contiguous, so the two have different strides.
    fused = torch.randn(num_tokens, num_kv_heads + 3, head_dim, generator=gen).to(dtype).to(triton_ops.device)
    key = fused[:, 1 : num_kv_heads + 1]
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(triton_ops.device)
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(cache_dtype)
    cache = cache.to(triton_ops.device)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens].to(triton_ops.device)
    k_scale, v_scale = (0.3, 1.7) if cache_dtype in FP8_DTYPES else (1.0, 1.0)
    expected = cache.clone()
    write_kv_ref(key, value, expected, slots, k_scale, v_scale)
    triton_ops.write_kv(key, value, cache, slots, k_scale, v_scale)
    assert torch.equal(cache.view(torch.uint8), expected.view(torch.uint8))


def test_write_kv_skips_negative_slots(triton_ops):
    key = torch.ones(3, 2, 16, device=triton_ops.device)
    cache = torch.zeros(2, 2, 4, 2, 16, device=triton_ops.device)
    triton_ops.write_kv(key, -key, cache, torch.tensor([5, -1, 0], device=triton_ops.device))
    assert cache[0, 1, 1].eq(1).all() and cache[1, 1, 1].eq(-1).all() and cache[0, 0, 0].eq(1).all()
    assert int(cache.ne(0).sum()) == 2 * 2 * 2 * 16  # tokens 0 and 2 only


@pytest.mark.parametrize("window, cache_dtype", [(None, None), (9, None), (9, torch.float8_e4m3fn)])
def test_backend_forward_matches_reference(triton_ops, window, cache_dtype):
    """The backend writes the cache then attends, reading only shapes and host ints from the metadata
    (and an fp8 cache's scales, host floats, from the layer's KVScales)."""
    num_heads, num_kv_heads, head_dim = 8, 2, 64
    scales = KVScales(0.03, 0.4)
    batch = make_batch(51, num_heads, num_kv_heads, head_dim, 16, torch.float32, triton_ops.device,
                       [(1, 40), (12, 30), (25, 25), (1, 17)], cache_dtype, scales)
    k_scale, v_scale = (scales.k, scales.v) if cache_dtype else (1.0, 1.0)
    md = batch.metadata
    # The model hands over q as a strided view of the fused qkv projection.
    qkv = torch.cat([batch.query, batch.key, batch.value], dim=1)
    query = qkv[:, :num_heads]
    expected_cache = batch.kv_cache.clone()
    write_kv_ref(batch.key, batch.value, expected_cache, md.slot_mapping, k_scale, v_scale)
    expected = paged_attention_ref(query, expected_cache, md.query_start_loc, md.seq_lens, md.block_tables,
                                   0.125, window, k_scale, v_scale)

    # A float cache ignores the scales the layer hands over.
    out = triton_ops.backend.forward(query, batch.key, batch.value, batch.kv_cache, md, 0.125, window, scales)
    assert triton_ops.backend.name == "triton"
    assert torch.equal(batch.kv_cache.view(torch.uint8), expected_cache.view(torch.uint8))
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_paged_attention_rejects_bad_inputs(triton_ops):
    batch = make_batch(3, 4, 2, 32, 8, torch.float32, triton_ops.device, [(3, 5)])
    md = batch.metadata
    args = (batch.query, batch.kv_cache, md.query_start_loc, md.seq_lens, md.block_tables, 1.0)
    cases = {
        "int32": (batch.query, batch.kv_cache, md.query_start_loc.long(), *args[3:]),
        "must match query dtype": (batch.query, batch.kv_cache.half(), *args[2:]),
        "multiple of num_kv_heads": (batch.query[:, :3], *args[1:]),
        "last (head_dim) dimension": (batch.query.transpose(1, 2).contiguous().transpose(1, 2), *args[1:]),
        "block_tables must be int32": (*args[:4], md.block_tables.long(), 1.0),
    }
    for message, bad_args in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            triton_ops.paged_attention(*bad_args, max_query_len=3)
    with pytest.raises(ValueError, match="slot_mapping must be int64"):
        triton_ops.write_kv(batch.key, batch.value, batch.kv_cache, md.slot_mapping.int())
    with pytest.raises(ValueError, match="kv_cache must be"):
        triton_ops.write_kv(batch.key, batch.value, batch.kv_cache[:, :, :, :1], md.slot_mapping)


def test_importing_the_backend_needs_no_gpu_or_interpreter():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    code = ("import torch, fw.plugins.platforms.cuda_attention as b; "
            "assert not torch.cuda.is_initialized(); print(b.TritonAttentionBackend.name)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "triton"


# Larger shapes, compiled on a real GPU (skipped, visibly, elsewhere).
GPU_CASES = [
    (32, 8, 128, 16, torch.bfloat16, None, "mixed", 3000),
    (32, 8, 128, 16, torch.float16, 1024, "mixed", 3000),
    (32, 8, 128, 16, torch.float32, None, "mixed", 1500),
    (16, 2, 64, 32, torch.bfloat16, None, "decode", 4000),
    (14, 2, 64, 16, torch.bfloat16, None, "prefill", 2000),  # GQA 7
    (24, 8, 96, 16, torch.float16, 257, "mixed", 2000),
    (40, 40, 128, 32, torch.bfloat16, None, "mixed", 1000),
    (64, 4, 256, 16, torch.bfloat16, None, "mixed", 1000),
    (32, 8, 128, 16, torch.bfloat16, None, "mixed", 3000, torch.float8_e4m3fn),
    (14, 2, 64, 16, torch.float16, 512, "mixed", 2000, torch.float8_e5m2),
]


@pytest.mark.cuda
@pytest.mark.parametrize("case_index", range(len(GPU_CASES)))
def test_paged_attention_matches_reference_on_gpu(triton_ops, case_index):
    if triton_ops.interpreted:
        pytest.skip("TRITON_INTERPRET=1 is set; these shapes are for compiled kernels")
    check_attention(triton_ops, 100 + case_index, *GPU_CASES[case_index])


AOT_COMPILE = """
import sys
import triton
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as error:
    print(error); sys.exit(3)
from fw.kernels.triton_attention import _paged_attention_kernel
from fw.kernels.triton_cache import _write_kv_kernel

FLOATS = ("qk_scale", "out_scale", "k_inv_scale", "v_inv_scale")

def compile_for_sm80(kernel, constexprs, pointer_types):
    signature = {name: "constexpr" if name in constexprs else pointer_types.get(name, "*bf16" if name.endswith("_ptr")
                 else "fp32" if name in FLOATS else "i32") for name in kernel.arg_names}
    # Strides and pointers 16-divisible, as Triton specializes them at launch.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if name.endswith("_ptr") or "stride" in name}
    triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 80, 32),
                   options={"num_warps": 8})

INTS = {name: "*i32" for name in ("query_start_loc_ptr", "seq_lens_ptr", "block_tables_ptr")}
BYTES = {name: "*u8" for name in ("key_cache_ptr", "value_cache_ptr")}  # an fp8 cache, as its bytes
for fp8 in (0, 3, 2):  # not fp8, e4m3, e5m2: sm_80 has no e4m3 conversions, fw's integer ones compile
    compile_for_sm80(_paged_attention_kernel, dict(GROUP=3, HEAD_DIM=80, HEAD_DIM_PADDED=128, BLOCK_SIZE=16,
                     BLOCK_Q=21, BLOCK_M=64, TILE_N=32, SLIDING_WINDOW=100, DOT_PRECISION=None, FP8_MANTISSA_BITS=fp8),
                     {**INTS, **(BYTES if fp8 else {})})
    compile_for_sm80(_write_kv_kernel, dict(BLOCK_SIZE=16, NUM_KV_HEADS=3, HEAD_DIM=80, NUM_KV_HEADS_PADDED=4,
                     HEAD_DIM_PADDED=128, FP8_MANTISSA_BITS=fp8, FP8_EXPONENT_BIAS={0: 0, 3: 7, 2: 15}[fp8],
                     FP8_MAX={0: 0.0, 3: 448.0, 2: 57344.0}[fp8]),
                     {"slot_mapping_ptr": "*i64", **(BYTES if fp8 else {})})
print("compiled")
"""


def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter skips Triton's compiler; compile ahead of time for sm_80 (no GPU needed)
    so type and shape errors in the kernels show up on CPU-only machines too."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", AOT_COMPILE], env=env, capture_output=True, text=True, timeout=300)
    if result.returncode == 3:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {result.stdout.strip()}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("compiled")


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_engine_with_triton_backend_generates_what_the_torch_backend_does(triton_ops, tiny_checkpoint, monkeypatch,
                                                                         kv_cache_dtype):
    """End to end through the model runner, with chunked prefill and small blocks; with an fp8
    cache both backends compute on the same stored values (the torch one on its fresh prefills'
    rounded keys), so the greedy tokens agree too."""
    if not triton_ops.interpreted:
        pytest.skip("this machine has a GPU; the cuda platform runs the triton backend already")
    from fw import LLM, SamplingParams
    from fw.plugins.platforms.cpu import CpuPlatform

    path = str(tiny_checkpoint("qwen3"))
    prompts = ["the quick brown", "to be or not to be that", "all", "a journey of a thousand miles begins with"]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    options = dict(
        dtype="float32", kv_cache_memory_bytes=2**24, max_num_batched_tokens=16, max_num_seqs=4, block_size=8,
        kv_cache_dtype=kv_cache_dtype, calculate_kv_scales=kv_cache_dtype != "auto",
    )
    expected = [out.outputs[0].token_ids for out in LLM(path, **options).generate(prompts, params, use_tqdm=False)]

    from fw.plugins.platforms.cuda_attention import TritonAttentionBackend

    monkeypatch.setattr(CpuPlatform, "attention_backend", lambda self: TritonAttentionBackend)
    llm = LLM(path, **options)
    assert llm.engine.runner.backend.name == "triton"
    assert [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)] == expected
