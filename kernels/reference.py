"""Plain-torch references for the kernels: slow, obviously correct, the test oracle."""

from __future__ import annotations

import torch


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def quantize_fp8_ref(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``x / scale`` in fp8, saturated at the format's largest finite value, rounded to nearest even.

    Divides by multiplying with the float32 reciprocal, as every fw writer does, so that the
    stored bytes can be compared exactly.
    """
    limit = torch.finfo(dtype).max
    return (x.float() * (1.0 / scale)).clamp(-limit, limit).to(dtype)


def write_kv_ref(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                 k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Store each token's key/value at its slot; an fp8 cache stores them divided by their scale.

    key, value: [num_tokens, num_kv_heads, head_dim]
    kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: [num_tokens], slot = block_id * block_size + offset
    """
    if kv_cache.dtype in FP8_DTYPES:
        key, value = quantize_fp8_ref(key, k_scale, kv_cache.dtype), quantize_fp8_ref(value, v_scale, kv_cache.dtype)
    block_size = kv_cache.shape[2]
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    kv_cache[0, blocks, offsets] = key.to(kv_cache.dtype)
    kv_cache[1, blocks, offsets] = value.to(kv_cache.dtype)


def gather_kv_ref(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``seq_len`` keys and values of one sequence: two [seq_len, num_kv_heads, head_dim]."""
    block_size = kv_cache.shape[2]
    positions = torch.arange(seq_len, device=kv_cache.device)
    blocks = block_table[positions // block_size].long()
    offsets = positions % block_size
    return kv_cache[0, blocks, offsets], kv_cache[1, blocks, offsets]


def paged_attention_ref(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached context, in float32.

    query: [num_tokens, num_heads, head_dim] -> [num_tokens, num_heads, head_dim]
    The last ``query_len`` of a sequence's ``seq_len`` tokens are its queries. An fp8 cache is
    dequantized first: stored value times ``k_scale`` / ``v_scale``.
    """
    num_heads, num_kv_heads = query.shape[1], kv_cache.shape[3]
    out = torch.empty_like(query)
    for s in range(seq_lens.shape[0]):
        start, end = int(query_start_loc[s]), int(query_start_loc[s + 1])
        seq_len, query_len = int(seq_lens[s]), end - start
        k, v = gather_kv_ref(kv_cache, block_tables[s], seq_len)
        # GQA: every group of num_heads // num_kv_heads query heads shares one kv head.
        if kv_cache.dtype in FP8_DTYPES:
            k, v = k.float() * k_scale, v.float() * v_scale
        k = k.float().repeat_interleave(num_heads // num_kv_heads, dim=1)  # [seq_len, H, D]
        v = v.float().repeat_interleave(num_heads // num_kv_heads, dim=1)
        q = query[start:end].float()  # [query_len, H, D]
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(seq_len - query_len, seq_len).unsqueeze(1)
        k_pos = torch.arange(seq_len).unsqueeze(0)
        visible = k_pos <= q_pos
        if sliding_window is not None:
            visible &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v).to(query.dtype)
    return out
