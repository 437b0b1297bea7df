"""Paged decode attention for the CPU in C (cpu_attention.c, built by ``cpu_build``).

The kernel reads keys and values in place from the paged cache; the torch path must
gather them into padded copies first. ``FW_CPU_ATTENTION_KERNEL=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from fw.kernels.cpu_build import build

SOURCE = Path(__file__).with_name("cpu_attention.c")
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here."""
    if os.environ.get("FW_CPU_ATTENTION_KERNEL", "1") == "0":
        return None
    library = build(SOURCE, ("-ffast-math",))
    if library is None:
        return None
    library.paged_decode_attention.restype = ctypes.c_int
    library.paged_decode_attention.argtypes = [
        _ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _i64, _ptr, _i64, _ptr, _ptr, _i64, _ptr, _i64, _i64,
        _i64, _i64, _i64, _i64, ctypes.c_float, _i64, ctypes.c_int, ctypes.c_int,
    ]
    return library


def paged_decode_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    token_rows: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> None:
    """Write into ``out[token_rows[s]]`` the attention of query row ``token_rows[s]`` over
    sequence ``s``'s first ``seq_lens[s]`` cached keys.

    query, out: [num_tokens, num_heads, head_dim]; kv_cache: [2, num_blocks, block_size,
    num_kv_heads, head_dim]; block_tables: [num_seqs, max_blocks] int32; seq_lens: [num_seqs]
    int32; token_rows: [num_seqs] int64. All on the CPU, in float32 or bfloat16.
    """
    library = load()
    if library is None:
        raise RuntimeError("the CPU attention kernel is not available")
    dtype = DTYPES.get(query.dtype)
    if dtype is None or kv_cache.dtype != query.dtype or out.dtype != query.dtype:
        raise ValueError(f"query, cache and out must share float32 or bfloat16, got {query.dtype}, "
                         f"{kv_cache.dtype}, {out.dtype}")
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
        query.shape[1], num_kv_heads, head_dim, block_size, scale, sliding_window or 0, dtype,
        torch.get_num_threads(),
    )
    if status != 0:
        raise ValueError(f"the CPU attention kernel refused its arguments (head_dim {head_dim} > 256, "
                         f"{query.shape[1]} heads > 128 or not a multiple of {num_kv_heads} kv heads)")
