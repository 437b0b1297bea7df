"""The attention-backend interface: paged attention over a flat mixed batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from fw.core.attention.kv_quant import KVScales
    from fw.core.forward_context import AttentionMetadata


class AttentionBackend(ABC):
    """Writes a step's keys and values into the paged cache and computes attention.

    The platform returns its backend class (``Platform.attention_backend()``); the model
    runner builds it once and puts it in the forward context. One instance serves every layer.
    """

    name: ClassVar[str]

    @abstractmethod
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
        """Store ``key``/``value`` at ``metadata.slot_mapping``, then attend.

        ``query: [num_tokens, num_heads, head_dim]``, ``key, value: [num_tokens,
        num_kv_heads, head_dim]``, ``kv_cache: [2, num_blocks, block_size, num_kv_heads,
        head_dim]``. Returns ``[num_tokens, num_heads, head_dim]``. Causal within each
        sequence; with ``sliding_window`` a query at position p sees keys in
        ``(p - sliding_window, p]``.

        An fp8 ``kv_cache`` (the platform lists the dtypes in ``Platform.kv_cache_dtypes``) stores
        ``fp8(key / kv_scales.k)`` and ``fp8(value / kv_scales.v)``, saturated, and reads them back
        times the scales (see ``fw.core.attention.kv_quant``); ``None`` means scales of 1.0. Other
        caches ignore ``kv_scales``.
        """
