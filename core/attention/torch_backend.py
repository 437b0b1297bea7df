"""Paged attention in plain torch (the CPU platform's backend).

Fast paths, all exact: a prefill with nothing cached attends over its own new keys with
one causal SDPA call; all decodes of a step go through one batched SDPA over their
gathered blocks; prefill chunks that continue a cached prefix gather their context and
run one SDPA each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fw.core.forward_context import AttentionMetadata
from fw.core.interfaces.attention import AttentionBackend
from fw.kernels.reference import gather_kv_ref


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """write_kv_ref as one index_copy_ per tensor over the flattened slots (much faster on CPU)."""
    num_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
    kv_cache[0].view(-1, num_heads, head_dim).index_copy_(0, slot_mapping, key.to(kv_cache.dtype))
    kv_cache[1].view(-1, num_heads, head_dim).index_copy_(0, slot_mapping, value.to(kv_cache.dtype))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float) -> torch.Tensor:
    # q: [B, H, Lq, D]; k, v: [B, Hkv, Lk, D]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def forward(self, query, key, value, kv_cache, metadata: AttentionMetadata, scale, sliding_window=None):
        write_kv(key, value, kv_cache, metadata.slot_mapping)
        starts = metadata.query_start_loc_cpu or metadata.query_start_loc.tolist()
        seq_lens = metadata.seq_lens_cpu or metadata.seq_lens.tolist()
        out = torch.empty_like(query)
        decodes = [s for s in range(len(seq_lens)) if starts[s + 1] - starts[s] == 1]
        if decodes:
            self._decode(query, kv_cache, metadata, decodes, starts, seq_lens, scale, sliding_window, out)
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
                k, v = gather_kv_ref(kv_cache, metadata.block_tables[s], seq_len)
                q_pos = torch.arange(seq_len - query_len, seq_len).unsqueeze(1)
                k_pos = torch.arange(seq_len).unsqueeze(0)
                mask = k_pos <= q_pos
                if sliding_window is not None:
                    mask &= k_pos > q_pos - sliding_window
                mask, causal = mask.to(query.device), False
            k = k.to(query.dtype).transpose(0, 1).unsqueeze(0)
            v = v.to(query.dtype).transpose(0, 1).unsqueeze(0)
            out[start:end] = _sdpa(q, k, v, mask, causal, scale)[0].transpose(0, 1)
        return out

    def _decode(self, query, kv_cache, metadata, decodes, starts, seq_lens, scale, sliding_window, out) -> None:
        """All single-token queries at once, over their gathered (padded) contexts."""
        block_size = kv_cache.shape[2]
        rows = torch.tensor(decodes, device=query.device)
        lens = torch.tensor([seq_lens[s] for s in decodes], device=query.device)
        max_len = int(lens.max())
        num_blocks = (max_len + block_size - 1) // block_size
        tables = metadata.block_tables[rows, :num_blocks].long()  # [B, nb]
        # [B, nb, bs, Hkv, D] -> [B, Hkv, nb * bs, D]
        k = kv_cache[0][tables].flatten(1, 2).transpose(1, 2).to(query.dtype)
        v = kv_cache[1][tables].flatten(1, 2).transpose(1, 2).to(query.dtype)
        k_pos = torch.arange(num_blocks * block_size, device=query.device).unsqueeze(0)
        mask = k_pos < lens.unsqueeze(1)
        if sliding_window is not None:
            mask &= k_pos > (lens - 1 - sliding_window).unsqueeze(1)
        token_rows = torch.tensor([starts[s] for s in decodes], device=query.device)
        q = query[token_rows].unsqueeze(2)  # [B, H, 1, D]
        out[token_rows] = _sdpa(q, k, v, mask[:, None, None, :], False, scale)[:, :, 0]
