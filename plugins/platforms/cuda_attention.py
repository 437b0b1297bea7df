"""Paged attention in Triton kernels: the CUDA platform's backend (``CudaPlatform.attention_backend``).

Two launches per layer and no host work that depends on the batch's contents: the cache
write, then one unified kernel over the whole mixed batch (decodes, prefills and prefill
chunks with a cached prefix alike). Nothing here loops over sequences or reads device
tensors back to the host; the grid comes from tensor shapes and ``metadata.max_query_len``.
"""

from __future__ import annotations

import torch

from fw.core.attention.kv_quant import KVScales, is_fp8
from fw.core.forward_context import AttentionMetadata
from fw.core.interfaces.attention import AttentionBackend
from fw.kernels.triton_attention import paged_attention
from fw.kernels.triton_cache import write_kv


class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        kv_scales: KVScales | None = None,
    ) -> torch.Tensor:
        # query: [num_tokens, num_heads, head_dim]; key, value: [num_tokens, num_kv_heads, head_dim]
        # kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]
        # Scales are host floats, fixed after the first batch: passing them costs no device sync.
        k_scale, v_scale = (kv_scales.k, kv_scales.v) if kv_scales and is_fp8(kv_cache.dtype) else (1.0, 1.0)
        write_kv(key, value, kv_cache, metadata.slot_mapping, k_scale, v_scale)
        return paged_attention(
            query,
            kv_cache,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_tables,
            scale,
            max_query_len=metadata.max_query_len,
            sliding_window=sliding_window,
            k_scale=k_scale,
            v_scale=v_scale,
        )
