"""Per-request sampling parameters, as vLLM's ``SamplingParams``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from fw.core.errors import InvalidRequestError

_GREEDY_EPS = 1e-5


class RequestOutputKind(enum.Enum):
    """What each ``RequestOutput`` of a request holds (vLLM's names and meaning).

    CUMULATIVE outputs share the request's own token and logprob lists, which keep growing
    until it finishes (as vLLM's do): nothing is copied per step. Copy them to keep a snapshot.
    """

    #: Everything generated so far, in every output.
    CUMULATIVE = 0
    #: Only what the step added: new token ids, new text, new logprobs, the finish reason.
    DELTA = 1
    #: One output, when the request finishes, holding everything.
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    """How to sample a request's output.

    Invalid values raise ``InvalidRequestError`` (a ``ValueError``) whose message starts with
    the field's name and whose ``param`` is that name.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    detokenize: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # Set by the engine: the stop token of the model (eos) unless ignore_eos.
    _eos_token_ids: tuple[int, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        if self.logit_bias:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        self._validate()

    def _validate(self) -> None:
        def check(ok: bool, param: str, message: str) -> None:
            if not ok:
                raise InvalidRequestError(message, param)

        check(self.n >= 1, "n", f"n must be at least 1, got {self.n}")
        check(self.temperature >= 0, "temperature", f"temperature must be non-negative, got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"top_p must be in (0, 1], got {self.top_p}")
        check(self.top_k >= 0, "top_k", f"top_k must be 0 or -1 (disabled) or at least 1, got {self.top_k}")
        check(0 <= self.min_p <= 1, "min_p", f"min_p must be in [0, 1], got {self.min_p}")
        check(-2 <= self.presence_penalty <= 2, "presence_penalty",
              f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        check(-2 <= self.frequency_penalty <= 2, "frequency_penalty",
              f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        check(self.repetition_penalty > 0, "repetition_penalty",
              f"repetition_penalty must be positive, got {self.repetition_penalty}")
        check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens",
              f"max_tokens must be at least 1, got {self.max_tokens}")
        check(self.min_tokens >= 0, "min_tokens", f"min_tokens must be non-negative, got {self.min_tokens}")
        check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
              f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        check(self.logprobs is None or self.logprobs >= 0, "logprobs",
              f"logprobs must be non-negative, got {self.logprobs}")
        check(self.prompt_logprobs is None or self.prompt_logprobs >= 0, "prompt_logprobs",
              f"prompt_logprobs must be non-negative, got {self.prompt_logprobs}")
        check(self.allowed_token_ids is None or len(self.allowed_token_ids) > 0, "allowed_token_ids",
              "allowed_token_ids must not be empty")
        check(all(t >= 0 for t in self.stop_token_ids), "stop_token_ids",
              "stop_token_ids must be non-negative token ids")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def clone(self, **changes: Any) -> SamplingParams:
        return replace(self, **changes)
