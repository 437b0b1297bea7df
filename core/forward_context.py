"""The one forward context: attention metadata for the step being computed.

Set and reset only by the model runner (``with forward_context(...)``); attention layers
read it. Everything is flat over the batch: sequences are concatenated, no padding.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from fw.core.interfaces.attention import AttentionBackend


@dataclass
class AttentionMetadata:
    """Where each sequence's new tokens are and which cache blocks hold its context.

    For sequence ``s`` the step computes ``query_len = query_start_loc[s+1] - query_start_loc[s]``
    new tokens, the last ones of its ``seq_lens[s]`` tokens: query token ``i`` sits at
    position ``seq_lens[s] - query_len + i`` and attends to keys ``0..position`` (causal),
    all read from the paged cache after this step's keys were written into it.
    A decode is ``query_len == 1``; a prefill chunk with a cached prefix has
    ``query_len < seq_lens[s]``.
    """

    # [num_seqs + 1] int32: cumulative query lengths, starting at 0
    query_start_loc: torch.Tensor
    # [num_seqs] int32: tokens in context after this step (cached + new)
    seq_lens: torch.Tensor
    # [num_seqs, max_num_blocks] int32: physical block ids; unused entries are 0
    block_tables: torch.Tensor
    # [num_tokens] int64: cache slot (block_id * block_size + offset) of each new token
    slot_mapping: torch.Tensor
    max_query_len: int
    max_seq_len: int
    # CPU copies for backends that loop or branch in Python (not read by GPU kernels).
    query_start_loc_cpu: list[int] | None = None
    seq_lens_cpu: list[int] | None = None
    # What a backend derives from the metadata once per step and reuses in every layer.
    backend_cache: dict = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


@dataclass
class ForwardContext:
    metadata: AttentionMetadata
    # One tensor per layer: [2, num_blocks, block_size, num_kv_heads, head_dim]
    kv_caches: list[torch.Tensor]
    backend: AttentionBackend
    # --calculate-kv-scales: each attention layer sets its fp8 KV-cache scales from this step's
    # keys and values before writing them. True for the first real batch only.
    calculate_kv_scales: bool = False


_current: ForwardContext | None = None


@contextlib.contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    global _current
    previous, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = previous


def get_forward_context() -> ForwardContext:
    if _current is None:
        raise RuntimeError("attention was called outside a forward context; only the model runner runs models")
    return _current
