"""What generation returns, shaped like vLLM's ``RequestOutput`` / ``CompletionOutput``.

What an output holds depends on the request's ``SamplingParams.output_kind``: everything so
far (CUMULATIVE), what one step added (DELTA), or everything, once, at the end (FINAL_ONLY).
"""

from __future__ import annotations

from dataclasses import dataclass

from fw.core.engine.sequence import PositionLogprobs


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    # "stop", "length", "abort", "error" (the request failed in a step: see RequestOutput.error) or
    # None while running.
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    #: Why the request failed, for the user (no traceback), when processing its data raised in a
    #: step: the engine failed it alone, finished its samples with finish reason "error" and freed
    #: its blocks. Such an output is the request's last; it carries no new tokens or text.
    error: str | None = None

    def add(self, next_output: RequestOutput) -> None:
        """Merge the request's next DELTA output into this one (vLLM's ``add`` with ``aggregate``).

        Samples present in both get the new text, token ids and logprobs appended and take the
        new finish reason; a sample seen for the first time is taken as it is. Prompt logprobs
        come once, with the first sampled token, and are kept.
        """
        self.finished = self.finished or next_output.finished
        self.error = self.error or next_output.error
        self.metrics = next_output.metrics
        self.prompt_logprobs = self.prompt_logprobs or next_output.prompt_logprobs
        for new in next_output.outputs:
            old = next((o for o in self.outputs if o.index == new.index), None)
            if old is None:
                self.outputs.append(new)
                continue
            old.text += new.text
            old.token_ids.extend(new.token_ids)
            if new.logprobs:
                old.logprobs.extend(new.logprobs)
            old.cumulative_logprob = new.cumulative_logprob
            old.finish_reason, old.stop_reason = new.finish_reason, new.stop_reason
