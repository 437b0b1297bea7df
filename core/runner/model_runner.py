"""The model runner: turns a scheduled batch into one flat forward pass and samples from it.

It owns the model, the KV-cache tensors (one per layer) and the attention backend, and
is the only code that sets the forward context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import torch

from fw.core.engine.sampling_params import SamplingParams
from fw.core.engine.sequence import Logprob, Sequence
from fw.core.forward_context import AttentionMetadata, ForwardContext, forward_context
from fw.core.interfaces import CausalLM, Platform
from fw.core.kv_cache import BlockManager
from fw.core.runner.sampler import Sampler, SamplerOutput, SamplingBatch, compute_prompt_logprobs
from fw.core.scheduler import ScheduledBatch

logger = logging.getLogger("fw")


@dataclass
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    # The cache's storage dtype: the model's, or float8 for --kv-cache-dtype fp8 (half of bf16's
    # bytes, so twice the blocks in the same memory).
    dtype: torch.dtype
    # --calculate-kv-scales: the fp8 scales come from the first batch's keys and values.
    calculate_scales: bool = False

    @property
    def block_bytes(self) -> int:
        """Bytes one block takes over all layers (keys and values)."""
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize


@dataclass
class StepResult:
    """What one forward produced for the sequences that reached their last token."""

    seqs: list[Sequence]
    sampled: SamplerOutput | None
    # For prompt_logprobs: (sequence, first position computed, logprobs of the prompt tokens
    # after each position computed this step).
    prompt_logprobs: list[tuple[Sequence, int, list[dict[int, Logprob]]]]


class ModelRunner:
    def __init__(self, model: CausalLM, platform: Platform, device: torch.device, vocab_size: int,
                 kv_spec: KVCacheSpec) -> None:
        self.model = model
        self.platform = platform
        self.device = device
        self.vocab_size = vocab_size
        self.kv_spec = kv_spec
        self.backend = platform.attention_backend()()
        # The sampler computes in float32; the op reads the model's own logits only in the
        # dtypes it lists (sample_rows_dtypes).
        self.sampler = Sampler(platform.ops(torch.float32))
        self.kv_caches: list[torch.Tensor] = []
        # Until the first real batch has run (dummy_run does not count): see KVCacheSpec.calculate_scales.
        self.kv_scales_pending = kv_spec.calculate_scales
        # Steps of single-token decodes in one native call, where the platform has a path for
        # this model (its output is the forward's, bit for bit); None: always the forward.
        self.fused_decoder = platform.fused_decoder(model)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        spec = self.kv_spec
        shape = (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        # Zeroed, not empty: padded reads of unused slots must stay finite.
        self.kv_caches = [torch.zeros(shape, dtype=spec.dtype, device=self.device) for _ in range(spec.num_layers)]

    # ---------------------------------------------------------------- inputs

    def _prepare(self, batch: ScheduledBatch, block_manager: BlockManager):
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        prompt_rows: list[tuple[Sequence, int, int]] = []  # (seq, first token row, num positions)
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            input_ids += seq.tokens_slice(start, end)
            positions += range(start, end)
            slots += [block_manager.slot(seq, p) for p in range(start, end)]
            row0 = starts[-1]
            starts.append(row0 + num_new)
            seq_lens.append(end)
            if end == seq.num_tokens:
                sample_rows.append(starts[-1] - 1)
                sample_seqs.append(seq)
            if seq.params.prompt_logprobs is not None:
                # Positions p < num_prompt - 1 predict prompt token p + 1.
                last = min(end, seq.num_prompt_tokens - 1)
                if last > start and len(seq.prompt_logprobs) < last + 1:
                    prompt_rows.append((seq, row0, last - start))
        max_blocks = max(len(s.block_ids) for s in batch.seqs)
        tables = [s.block_ids + [0] * (max_blocks - len(s.block_ids)) for s in batch.seqs]

        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, device=self.device)

        metadata = AttentionMetadata(
            query_start_loc=tensor(starts, torch.int32),
            seq_lens=tensor(seq_lens, torch.int32),
            block_tables=tensor(tables, torch.int32),
            slot_mapping=tensor(slots, torch.int64),
            max_query_len=max(batch.num_new_tokens),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=starts,
            seq_lens_cpu=seq_lens,
        )
        return tensor(input_ids, torch.long), tensor(positions, torch.long), metadata, sample_rows, sample_seqs, prompt_rows

    # ---------------------------------------------------------------- step

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, block_manager: BlockManager) -> StepResult:
        input_ids, positions, metadata, sample_rows, sample_seqs, prompt_rows = self._prepare(batch, block_manager)
        hidden = None
        if self.fused_decoder is not None and not self.kv_scales_pending:
            hidden = self.fused_decoder(input_ids, positions, metadata, self.kv_caches)
        if hidden is None:
            with forward_context(ForwardContext(metadata, self.kv_caches, self.backend, self.kv_scales_pending)):
                hidden = self.model(input_ids, positions)
        if self.kv_scales_pending:
            self.kv_scales_pending = False
            logger.info("KV-cache scales calculated from the first batch (%d tokens); fixed from now on",
                        input_ids.shape[0])
        sampled = None
        if sample_seqs:
            logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=self.device)])
            sampling = SamplingBatch.build(sample_seqs, self.vocab_size, self.device)
            sampled = self.sampler(logits, sampling)
        prompt_logprobs = []
        for seq, row0, count in prompt_rows:
            logits = self.model.compute_logits(hidden[row0:row0 + count])
            start = seq.num_computed_tokens
            next_ids = torch.tensor(seq.tokens_slice(start + 1, start + 1 + count), device=self.device)
            positions = to_position_logprobs(
                *compute_prompt_logprobs(logits, next_ids, seq.params.prompt_logprobs), next_ids.tolist()
            )
            prompt_logprobs.append((seq, start, positions))
        return StepResult(sample_seqs, sampled, prompt_logprobs)

    def dummy_run(self, num_tokens: int, block_manager: BlockManager) -> None:
        """A forward over ``num_tokens`` fresh tokens, for memory profiling and warm-up."""
        seq = Sequence(request_id="profile", prompt_token_ids=[0] * num_tokens, params=SamplingParams(max_tokens=1, temperature=0.0))
        cached: list[int] = []
        block_manager.allocate(seq, cached, num_tokens)
        try:
            self.execute_dummy(ScheduledBatch([seq], [num_tokens]), block_manager)
        finally:
            block_manager.free(seq)

    def execute_dummy(self, batch: ScheduledBatch, block_manager: BlockManager) -> StepResult:
        """``execute`` for the engine's own dummy work (profiling, a health probe): its made-up
        tokens never set the fp8 KV-cache scales (--calculate-kv-scales waits for a real batch)."""
        pending, self.kv_scales_pending = self.kv_scales_pending, False
        try:
            return self.execute(batch, block_manager)
        finally:
            self.kv_scales_pending = pending


def to_position_logprobs(chosen, ranks, top, token_ids: Iterable[int]) -> list[dict[int, Logprob]]:
    """Per position ``{token id: Logprob}``: the actual token first, then the top-k."""
    positions = []
    chosen, ranks = chosen.tolist(), ranks.tolist()
    top_values, top_ids = (top.values.tolist(), top.indices.tolist()) if top is not None else (None, None)
    for i, token_id in enumerate(token_ids):
        entry = {token_id: Logprob(chosen[i], ranks[i])}
        if top_ids is not None:
            for rank, (tid, value) in enumerate(zip(top_ids[i], top_values[i]), start=1):
                entry.setdefault(tid, Logprob(value, rank))
        positions.append(entry)
    return positions
