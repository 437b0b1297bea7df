"""Paged attention in plain torch: any platform's fallback, and the base of the CPU's backend.

Fast paths, all exact: a prefill with nothing cached attends over its own new keys with
one causal SDPA call; the decodes of a step go through batched SDPA calls over their
gathered blocks; prefill chunks that continue a cached prefix gather their context and
run one SDPA each. The CPU platform's subclass replaces ``_decode`` with its C kernel.

With an fp8 cache every path computes on the stored values (``kv_quant.quantize_kv``),
dequantized to the query's dtype (times the layer's scale) after the gather, the fresh
prefill's own keys included, so that an output does not depend on whether its prefix came
from the prefix cache, an earlier chunk or this step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fw.core.attention.kv_quant import KVScales, is_fp8, quantize_kv
from fw.core.forward_context import AttentionMetadata
from fw.core.interfaces.attention import AttentionBackend


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """write_kv_ref as one index_copy_ per tensor over the flattened slots (much faster on CPU).

    An fp8 cache takes keys and values already quantized (``quantize_kv``).
    """
    num_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
    key, value = key.to(kv_cache.dtype), value.to(kv_cache.dtype)
    if is_fp8(kv_cache.dtype):  # index_copy_ has no float8 kernel on the CPU: copy the bytes
        kv_cache, key, value = kv_cache.view(torch.uint8), key.view(torch.uint8), value.view(torch.uint8)
    kv_cache[0].view(-1, num_heads, head_dim).index_copy_(0, slot_mapping, key)
    kv_cache[1].view(-1, num_heads, head_dim).index_copy_(0, slot_mapping, value)


def gather_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``seq_len`` keys and values of one sequence: two ``[seq_len, num_kv_heads, head_dim]``.

    Whole blocks are gathered (one index_select) and the last one trimmed.
    """
    block_size = kv_cache.shape[2]
    blocks = block_table[:(seq_len + block_size - 1) // block_size].long()
    kv = kv_cache.index_select(1, blocks).flatten(1, 2)[:, :seq_len]  # [2, seq_len, Hkv, D]
    return kv[0], kv[1]


#: Decodes attended together in one SDPA call (see TorchAttentionBackend._decode).
DECODE_GROUP = 16


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float,
          gqa: bool = True) -> torch.Tensor:
    # q: [B, H, Lq, D]; k, v: [B, Hkv, Lk, D]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def forward(self, query, key, value, kv_cache, metadata: AttentionMetadata, scale, sliding_window=None,
                kv_scales: KVScales | None = None):
        k_scale = v_scale = 1.0
        if is_fp8(kv_cache.dtype):
            kv_scales = kv_scales or KVScales()
            k_scale, v_scale = kv_scales.k, kv_scales.v
            # From here on the stored values stand for the keys and values, in every path below.
            key, value = quantize_kv(key, k_scale, kv_cache.dtype), quantize_kv(value, v_scale, kv_cache.dtype)
        write_kv(key, value, kv_cache, metadata.slot_mapping)
        starts = metadata.query_start_loc_cpu or metadata.query_start_loc.tolist()
        seq_lens = metadata.seq_lens_cpu or metadata.seq_lens.tolist()
        out = torch.empty_like(query)
        decodes = metadata.backend_cache.get("decodes")
        if decodes is None:  # the same for every layer of the step
            decodes = metadata.backend_cache["decodes"] = [
                s for s in range(len(seq_lens)) if starts[s + 1] - starts[s] == 1]
        if decodes:
            self._decode(query, kv_cache, metadata, decodes, starts, seq_lens, scale, sliding_window, out, k_scale,
                         v_scale)
        if len(decodes) == len(seq_lens):
            return out
        for s in range(len(seq_lens)):
            start, end = starts[s], starts[s + 1]
            query_len, seq_len = end - start, seq_lens[s]
            if query_len == 1:
                continue
            q = query[start:end].transpose(0, 1).unsqueeze(0)  # [1, H, Lq, D]
            if query_len == seq_len and (sliding_window is None or seq_len <= sliding_window):
                # Nothing cached before this chunk: its own keys are the whole context.
                k, v = key[start:end], value[start:end]
                mask, causal = None, True
            else:
                k, v = gather_kv(kv_cache, metadata.block_tables[s], seq_len)
                q_pos = torch.arange(seq_len - query_len, seq_len).unsqueeze(1)
                k_pos = torch.arange(seq_len).unsqueeze(0)
                mask = k_pos <= q_pos
                if sliding_window is not None:
                    mask &= k_pos > q_pos - sliding_window
                mask, causal = mask.to(query.device), False
            k = _dequantize(k, query.dtype, k_scale).transpose(0, 1).unsqueeze(0)
            v = _dequantize(v, query.dtype, v_scale).transpose(0, 1).unsqueeze(0)
            out[start:end] = _sdpa(q, k, v, mask, causal, scale)[0].transpose(0, 1)
        return out

    def _decode(self, query, kv_cache, metadata, decodes, starts, seq_lens, scale, sliding_window, out,
                k_scale: float = 1.0, v_scale: float = 1.0) -> None:
        """Single-token queries, in groups of similar context length, over their gathered blocks.

        Grouping by length keeps the padding (and the gathered copies) small: on the 2-core
        dev machine, 128 decodes with contexts of 64-512 tokens took 32 ms per layer as one
        padded batch and 5.5 ms in length-sorted groups of 16 (bf16).
        """
        block_size, num_kv_heads, head_dim = kv_cache.shape[2], kv_cache.shape[3], kv_cache.shape[4]
        group = query.shape[1] // num_kv_heads
        decodes = sorted(decodes, key=lambda s: seq_lens[s])
        for i in range(0, len(decodes), DECODE_GROUP):
            rows_cpu = decodes[i:i + DECODE_GROUP]
            rows = torch.tensor(rows_cpu, device=query.device)
            lens = torch.tensor([seq_lens[s] for s in rows_cpu], device=query.device)
            num_blocks = (seq_lens[rows_cpu[-1]] + block_size - 1) // block_size
            blocks = metadata.block_tables[rows, :num_blocks].flatten()
            b, length = len(rows_cpu), num_blocks * block_size
            # [b * nb, bs, Hkv, D] -> [b, Hkv, nb * bs, D]
            k = kv_cache[0].index_select(0, blocks).view(b, length, num_kv_heads, head_dim).transpose(1, 2)
            v = kv_cache[1].index_select(0, blocks).view(b, length, num_kv_heads, head_dim).transpose(1, 2)
            k_pos = torch.arange(length, device=query.device).unsqueeze(0)
            mask = k_pos < lens.unsqueeze(1)
            if sliding_window is not None:
                mask &= k_pos > (lens - 1 - sliding_window).unsqueeze(1)
            token_rows = torch.tensor([starts[s] for s in rows_cpu], device=query.device)
            # The query heads sharing a kv head act as that head's query positions: one
            # plain SDPA call instead of enable_gqa, which is several times slower in bf16.
            q = query[token_rows].view(b, num_kv_heads, group, head_dim)
            k, v = _dequantize(k, query.dtype, k_scale), _dequantize(v, query.dtype, v_scale)
            attn = _sdpa(q, k, v, mask[:, None, None, :], False, scale, gqa=False)
            out[token_rows] = attn.reshape(b, num_kv_heads * group, head_dim)


def _dequantize(stored: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Cached keys or values in ``dtype``: an fp8 cache's stored values times their scale (1.0 for
    other caches). Scaling the values, not the softmax scale, keeps float16 products in range."""
    stored = stored.to(dtype)
    return stored if scale == 1.0 else stored * scale
