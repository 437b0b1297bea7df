"""SchedulerConfig: continuous batching limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fw.core.config.base import ConfigBase, option, require_positive

#: The max_num_batched_tokens an engine with chunked prefill uses when none is given.
DEFAULT_CHUNKED_PREFILL_TOKENS = 2048


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

    def validate(self) -> None:
        require_positive("max_num_seqs", self.max_num_seqs)
        require_positive("max_num_batched_tokens", self.max_num_batched_tokens)
