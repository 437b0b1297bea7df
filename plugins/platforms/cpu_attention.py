"""The CPU platform's attention backend: torch's, with decodes in fw's C kernel.

The kernel (fw.kernels.cpu_attention) reads keys and values in place from the paged
cache, fp8 caches included; the torch path gathers them into padded copies first.
"""

from __future__ import annotations

import torch

from fw.core.attention.torch_backend import TorchAttentionBackend
from fw.core.forward_context import AttentionMetadata
from fw.kernels import cpu_attention


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"

    def __init__(self) -> None:
        # Without a C compiler (or with FW_CPU_ATTENTION_KERNEL=0), and for dtypes the kernel
        # lacks, decodes go through torch's gathered copies and SDPA instead.
        self.decode_kernel = cpu_attention.load() is not None

    def _decode(self, query: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata, decodes: list[int],
                starts: list[int], seq_lens: list[int], scale: float, sliding_window: int | None,
                out: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
        if not (self.decode_kernel and query.dtype in cpu_attention.DTYPES
                and (kv_cache.dtype == query.dtype or kv_cache.dtype in cpu_attention.FP8_DTYPES)):
            super()._decode(query, kv_cache, metadata, decodes, starts, seq_lens, scale, sliding_window, out,
                            k_scale, v_scale)
            return
        cached = metadata.backend_cache.get("decode_kernel_args")
        if cached is None:  # the same for every layer of the step
            rows = torch.tensor(decodes)
            cached = metadata.backend_cache["decode_kernel_args"] = (
                metadata.block_tables[rows].contiguous(), metadata.seq_lens[rows].contiguous(),
                torch.tensor([starts[s] for s in decodes]))
        block_tables, lens, token_rows = cached
        cpu_attention.paged_decode_attention(query, kv_cache, block_tables, lens, token_rows, out, scale,
                                             sliding_window, k_scale, v_scale)
