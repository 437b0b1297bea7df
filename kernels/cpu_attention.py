"""Paged decode attention for the CPU in C (cpu_attention.c, built by ``cpu_build``).

The kernel reads keys and values in place from the paged cache; the torch path must
gather them into padded copies first. ``FW_CPU_ATTENTION_KERNEL=0`` turns it off.
An fp8 cache (e4m3 or e5m2) is read in place too, each row widened to float32 inside the
kernel (AVX-512 or AVX2 + F16C conversions, else a table).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from fw.kernels.cpu_build import build

SOURCE = Path(__file__).with_name("cpu_attention.c")
#: Query / output dtypes (a cache in the same dtype has the same code).
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
#: fp8 cache dtypes -> (code, the power of two the kernel's float16 view of a value leaves out).
FP8_DTYPES = {torch.float8_e4m3fn: (2, 2.0**8), torch.float8_e5m2: (3, 1.0)}
#: Extra compiler flags that force each fp8 conversion path (tests build all three on one CPU).
FP8_PATH_FLAGS = {"avx512": (), "avx2": ("-mno-avx512f",), "table": ("-mno-avx512f", "-mno-avx2", "-mno-f16c")}
_i64, _ptr, _f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


def build_library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """Compile (or reuse) the kernel with ``extra_flags`` and declare its C signature."""
    library = build(SOURCE, ("-ffast-math", *extra_flags))
    if library is None:
        return None
    library.paged_decode_attention.restype = ctypes.c_int
    library.paged_decode_attention.argtypes = [
        _ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _i64, _ptr, _i64, _ptr, _ptr, _i64, _ptr, _i64, _i64,
        _i64, _i64, _i64, _i64, _f32, _f32, _i64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ]
    library.fp8_conversion_path.restype = ctypes.c_int
    return library


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here."""
    if os.environ.get("FW_CPU_ATTENTION_KERNEL", "1") == "0":
        return None
    return build_library()


def paged_decode_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    token_rows: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Write into ``out[token_rows[s]]`` the attention of query row ``token_rows[s]`` over
    sequence ``s``'s first ``seq_lens[s]`` cached keys.

    query, out: [num_tokens, num_heads, head_dim]; kv_cache: [2, num_blocks, block_size,
    num_kv_heads, head_dim]; block_tables: [num_seqs, max_blocks] int32; seq_lens: [num_seqs]
    int32; token_rows: [num_seqs] int64. All on the CPU, in float32 or bfloat16; the cache in
    the query's dtype, or fp8 (float8_e4m3fn, float8_e5m2) holding values / ``k_scale`` (keys)
    and / ``v_scale`` (values).
    """
    library = load()
    if library is None:
        raise RuntimeError("the CPU attention kernel is not available")
    dtype = DTYPES.get(query.dtype)
    if dtype is None or out.dtype != query.dtype or kv_cache.dtype not in (query.dtype, *FP8_DTYPES):
        raise ValueError(f"query and out must share float32 or bfloat16 and the cache be in their dtype or fp8, "
                         f"got {query.dtype}, {kv_cache.dtype}, {out.dtype}")
    cache_dtype, view_factor = FP8_DTYPES.get(kv_cache.dtype, (dtype, 1.0))
    if cache_dtype == dtype and (k_scale, v_scale) != (1.0, 1.0):
        raise ValueError("k_scale and v_scale apply to an fp8 cache only")
    if query.stride(-1) != 1 or out.stride(-1) != 1 or not kv_cache.is_contiguous():
        raise ValueError("query and out need a contiguous last dimension and the cache must be contiguous")
    if block_tables.dtype != torch.int32 or seq_lens.dtype != torch.int32 or token_rows.dtype != torch.int64:
        raise ValueError("block_tables and seq_lens must be int32 and token_rows int64")
    block_tables, seq_lens, token_rows = block_tables.contiguous(), seq_lens.contiguous(), token_rows.contiguous()
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    keys, values = kv_cache[0], kv_cache[1]
    status = library.paged_decode_attention(
        query.data_ptr(), query.stride(0), query.stride(1),
        keys.data_ptr(), values.data_ptr(), keys.stride(0), keys.stride(1), keys.stride(2),
        block_tables.data_ptr(), block_tables.stride(0), seq_lens.data_ptr(), token_rows.data_ptr(),
        seq_lens.shape[0], out.data_ptr(), out.stride(0), out.stride(1),
        query.shape[1], num_kv_heads, head_dim, block_size, scale * k_scale * view_factor, v_scale * view_factor,
        sliding_window or 0, dtype, cache_dtype, torch.get_num_threads(),
    )
    if status != 0:
        raise ValueError(f"the CPU attention kernel refused its arguments (head_dim {head_dim} > 256, "
                         f"{query.shape[1]} heads > 128 or not a multiple of {num_kv_heads} kv heads)")
