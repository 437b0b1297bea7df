"""A sequence: one sample of a request, with its tokens, cache blocks and progress."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from fw.core.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from fw.core.engine.detokenizer import IncrementalDetokenizer


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# {token_id: Logprob} for one position
PositionLogprobs = dict[int, Logprob]

_seq_counter = itertools.count()


@dataclass
class Sequence:
    """One output stream. ``n > 1`` requests have ``n`` sequences sharing a ``group``."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    index: int = 0  # which of the request's n samples
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    # The first sequence of the group; siblings share its prompt's cache blocks.
    leader: Sequence | None = None

    seq_id: int = field(default_factory=lambda: next(_seq_counter))
    status: SequenceStatus = SequenceStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    # Tokens whose keys/values are in the cache (a cached prefix counts).
    num_computed_tokens: int = 0
    # Tokens of the prompt that were found in the prefix cache when last allocated.
    num_cached_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    # Hash of each full block of token_ids, in order (filled as blocks fill).
    block_hashes: list[bytes] = field(default_factory=list)
    # How many of block_ids the prefix cache knows (published or taken from it); a step
    # publishes only the blocks after these, so its cost does not grow with the output.
    num_published_blocks: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    # The sum of the sampled tokens' logprobs, kept as they come so that no step re-sums the
    # list; None without logprobs, as vLLM's.
    cumulative_logprob: float | None = None
    prompt_logprobs: list[PositionLogprobs | None] = field(default_factory=list)
    generator: torch.Generator | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    detokenizer: IncrementalDetokenizer | None = None  # set by the engine unless params.detokenize is off

    def __post_init__(self) -> None:
        if self.params.logprobs is not None:
            self.cumulative_logprob = 0.0
        if self.params.seed is not None:
            self.generator = torch.Generator()
            # Each of the n samples gets its own stream, reproducible in any batch.
            self.generator.manual_seed(self.params.seed + self.index)

    def rewind_generator(self) -> None:
        """Put the generator back where this sequence's outputs left it, undoing the draws of a
        step that raised (the engine then runs the step's sequences again, in parts).

        A sampling (non-greedy) seeded sequence draws one uniform per output token, so that is
        where its generator stands between steps; a greedy one never reads its draws.
        """
        if self.generator is not None:
            self.generator.manual_seed(self.params.seed + self.index)
            if self.output_token_ids:
                torch.rand(len(self.output_token_ids), generator=self.generator)  # = that many draws of one

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def is_prefill(self) -> bool:
        """Still computing its prompt (or, after preemption, its prompt plus outputs)."""
        return self.num_computed_tokens < self.num_tokens - 1

    @property
    def sort_key(self) -> tuple[int, float, int]:
        """Lower is served first (priority, then arrival); the highest key is preempted first."""
        return (self.priority, self.arrival_time, self.seq_id)

    def tokens_slice(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n:end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - n]
