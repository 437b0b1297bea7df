"""Continuous batching: each step mixes decodes and prefill chunks under a token budget.

``schedule()`` first keeps the running sequences going (decodes and unfinished prefill
chunks), preempting the lowest-priority running sequence when blocks run out, then admits
waiting sequences while budget, sequence slots and blocks last. Preemption frees a
sequence's blocks; it goes back to the front of the queue and recomputes its prompt and
outputs later (its tokens and sampling state are kept, so its output does not change).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fw.core.engine.sequence import Sequence, SequenceStatus
from fw.core.kv_cache import BlockManager


@dataclass
class ScheduledBatch:
    """One step's work: each sequence computes ``num_new_tokens`` tokens from ``num_computed_tokens``."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
        policy: str = "fcfs",
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.policy = policy
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ---------------------------------------------------------------- queue

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free all its blocks at once."""
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)

    # ---------------------------------------------------------------- schedule

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        # After a preemption this step, admit nobody: the preempted go first next time.
        if not batch.num_preempted:
            self._schedule_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        bm = self.block_manager
        queue = sorted(self.running, key=lambda s: s.sort_key) if self.policy == "priority" else list(self.running)
        while queue and budget > 0:
            seq = queue.pop(0)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not bm.can_append(seq, num_new):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
            else:
                bm.append_slots(seq, num_new)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
                budget -= num_new
        return budget

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        bm = self.block_manager
        if self.policy == "priority":
            self.waiting = deque(sorted(self.waiting, key=lambda s: s.sort_key))
        skipped: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.leader is not None and seq.leader.is_prefill and not seq.leader.is_finished:
                # A sibling of n > 1 waits until the first sample has cached the prompt.
                skipped.append(self.waiting.popleft())
                continue
            cached = bm.lookup_prefix(seq)
            remaining = seq.num_tokens - len(cached) * bm.block_size
            if remaining > budget and not self.enable_chunked_prefill:
                break
            num_new = min(remaining, budget)
            if not bm.can_allocate(seq, cached, num_new):
                break
            self.waiting.popleft()
            bm.allocate(seq, cached, num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # ---------------------------------------------------------------- after the step

    def postprocess(self, batch: ScheduledBatch) -> None:
        """Advance computed counts and publish newly full blocks to the prefix cache."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            if seq.is_finished or seq.status != SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens += num_new
            self.block_manager.cache_computed_blocks(seq)
