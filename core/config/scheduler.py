"""SchedulerConfig: continuous batching limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fw.core.config.base import ConfigBase, ConfigError, option, require_positive

#: The max_num_batched_tokens an engine with chunked prefill uses when none is given.
DEFAULT_CHUNKED_PREFILL_TOKENS = 2048
#: Without --max-num-queued-reqs, a server holds this many sequences per one a step may run.
QUEUED_SEQS_PER_BATCH_SEQ = 4


@dataclass(frozen=True)
class SchedulerConfig(ConfigBase):
    """How many requests and tokens one engine step may batch, and in what order."""

    max_num_seqs: int = option(256, help="The most requests one engine step may process together.")
    max_num_batched_tokens: int | None = option(
        None,
        help="The most tokens one engine step may process (accepts 8k/8K). Defaults to "
        f"{DEFAULT_CHUNKED_PREFILL_TOKENS} with chunked prefill, else to the context length.",
    )
    enable_chunked_prefill: bool = option(
        True, help="Split long prompts into chunks that share steps with the decoding requests."
    )
    scheduling_policy: Literal["fcfs", "priority"] = option(
        "fcfs",
        help="'fcfs' serves requests first come, first served; 'priority' serves lower 'priority' "
        "values first (ties by arrival).",
    )
    max_num_queued_reqs: int | None = option(
        None,
        help="The most sequences a server holds at once, waiting and running (a request with n samples counts "
        f"n); more are refused with 503 and Retry-After. Defaults to {QUEUED_SEQS_PER_BATCH_SEQ} x --max-num-seqs "
        f"({QUEUED_SEQS_PER_BATCH_SEQ * 256} with its default): queue enough to keep every step full, and bound "
        "the memory and the wait a burst can cause. fw.LLM's offline batches are never refused.",
    )
    max_num_queued_tokens: int | None = option(
        None,
        help="The most prompt tokens a server holds in requests that have not finished their prefill (accepts "
        "8k/1m); more are refused with 503 and Retry-After. A request is admitted whatever its size when no "
        "prompt is queued. Unbounded by default: --max-num-queued-reqs already bounds the queue (times the "
        "context length), and a token cap sized for one deployment would refuse another's long prompts.",
    )

    @property
    def queued_seqs_limit(self) -> int:
        """``max_num_queued_reqs``, or its default when none is given."""
        return self.max_num_queued_reqs or QUEUED_SEQS_PER_BATCH_SEQ * self.max_num_seqs

    def validate(self) -> None:
        require_positive("max_num_seqs", self.max_num_seqs)
        require_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        require_positive("max_num_queued_reqs", self.max_num_queued_reqs)
        require_positive("max_num_queued_tokens", self.max_num_queued_tokens)
        if self.max_num_queued_reqs is not None and self.max_num_queued_reqs < self.max_num_seqs:
            raise ConfigError(f"max_num_queued_reqs ({self.max_num_queued_reqs}) must be at least max_num_seqs "
                              f"({self.max_num_seqs}): a smaller queue could never fill a step")
