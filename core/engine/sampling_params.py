"""Per-request sampling parameters, as vLLM's ``SamplingParams``."""

from __future__ import annotations

import enum
import math
import numbers
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
        self.stop = [s for s in _as_list("stop", self.stop) if s]
        self.stop_token_ids = _as_list("stop_token_ids", self.stop_token_ids)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _as_list("allowed_token_ids", self.allowed_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        if self.logit_bias:
            self.logit_bias = _logit_bias(self.logit_bias)
        self._validate()

    def _validate(self) -> None:
        """Every value in range, finite and of the right type, so that nothing downstream (the
        sampler's tensors, its generators) can raise on it. Limits that depend on the model
        (vocabulary, context length, --max-num-seqs, --max-logprobs) are checked by the engine."""

        def check(ok: bool, param: str, message: str) -> None:
            if not ok:
                raise InvalidRequestError(message, param)

        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            check(_is_finite(value), name, f"{name} must be a finite number, got {value!r}")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            check((value is None and name in _OPTIONAL_FIELDS) or (_is_int(value) and -_INT64 <= value < _INT64),
                  name, f"{name} must be an integer between {-_INT64} and {_INT64 - 1}, got {value!r}")
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
        # torch.Generator takes 64 bits and sample i uses seed + i: within int64 (OpenAI's and vLLM's
        # type for seed) no two seeds alias, and every sample's seed fits.
        check(self.seed is None or (_is_int(self.seed) and -_INT64 <= self.seed <= _INT64 - self.n), "seed",
              f"seed must be an integer between {-_INT64} and {_INT64 - self.n} (sample i uses seed + i; n is "
              f"{self.n}), got {self.seed!r}")
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
        check(all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
              "stop_token_ids must be non-negative token ids")
        check(all(_is_int(t) for t in self.allowed_token_ids or []), "allowed_token_ids",
              "allowed_token_ids must be token ids (integers)")
        check(all(isinstance(s, str) for s in self.stop), "stop", "stop must be a string or a list of strings")
        check(all(-_MAX_LOGIT_BIAS <= v <= _MAX_LOGIT_BIAS for v in (self.logit_bias or {}).values()), "logit_bias",
              f"logit_bias values must be in [-{_MAX_LOGIT_BIAS:.0f}, {_MAX_LOGIT_BIAS:.0f}], as OpenAI's")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def clone(self, **changes: Any) -> SamplingParams:
        return replace(self, **changes)


#: Bounds for integer fields: what a torch int64 tensor holds (2**70 is refused here, with the
#: field's name, not an OverflowError in a step).
_INT64 = 2**63
#: OpenAI's range for logit_bias values: -100 bans a token, 100 all but forces it.
_MAX_LOGIT_BIAS = 100.0
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
_INT_FIELDS = ("n", "top_k", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs")  # and seed
_OPTIONAL_FIELDS = frozenset({"max_tokens", "logprobs", "prompt_logprobs"})


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


def _as_list(name: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidRequestError(f"{name} must be a list, got {type(value).__name__}", name)
    return list(value)


def _logit_bias(bias: Any) -> dict[int, float]:
    """``{token id: bias}`` with int keys (JSON gives strings) and float values, finite."""
    try:
        items = {int(k): float(v) for k, v in dict(bias).items()}
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequestError("logit_bias must map token ids to numbers", "logit_bias") from None
    if not all(math.isfinite(v) for v in items.values()):
        raise InvalidRequestError("logit_bias values must be finite numbers", "logit_bias")
    return items
