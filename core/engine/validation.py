"""The limits a request must meet before it takes any memory, checked in one place.

``SamplingParams`` checks what it can alone (types, finite numbers, ranges); this module adds
what depends on the engine: the vocabulary, the context length, ``--max-num-seqs`` and
``--max-logprobs``. ``LLMEngine.add_request`` calls :func:`check_request` before it builds a
sequence, and the server relies on it: a request that passes cannot make a step raise on
its values. Every refusal is an ``InvalidRequestError`` naming the field.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Iterable

from fw.core.engine.sampling_params import SamplingParams
from fw.core.errors import InvalidRequestError

#: Priorities sort as Python ints, but a frontend stores them in int64 (as vLLM's protocol).
_INT64 = 2**63


@dataclass(frozen=True)
class RequestLimits:
    """The engine's limits that a request is checked against."""

    vocab_size: int
    max_model_len: int
    max_num_seqs: int
    max_logprobs: int


def prompt_token_ids(prompt: Any) -> list[Any]:
    """A token-id prompt as a new list (checked by ``check_request``)."""
    if isinstance(prompt, (str, bytes, dict)) or not isinstance(prompt, Iterable):
        raise InvalidRequestError(f"the prompt must be text or a list of token ids, got {type(prompt).__name__}",
                                  "prompt")
    return list(prompt)


def check_prompt(token_ids: list[Any], limits: RequestLimits) -> None:
    if not token_ids:
        raise InvalidRequestError("the prompt is empty", "prompt")
    check_token_ids("prompt", token_ids, limits.vocab_size)
    if len(token_ids) >= limits.max_model_len:
        raise InvalidRequestError(f"the prompt has {len(token_ids)} tokens, but the model's context length is "
                                  f"{limits.max_model_len}; shorten the prompt", "prompt")


def check_request(token_ids: list[int], params: SamplingParams, priority: Any, limits: RequestLimits) -> None:
    """Raise ``InvalidRequestError`` unless the prompt ``token_ids`` and ``params`` fit the engine."""
    check_prompt(token_ids, limits)
    max_model_len = limits.max_model_len
    if params.max_tokens is not None and len(token_ids) + params.max_tokens > max_model_len:
        raise InvalidRequestError(
            f"this model's maximum context length is {max_model_len} tokens; the request asks for "
            f"{len(token_ids) + params.max_tokens} ({len(token_ids)} in the prompt, {params.max_tokens} "
            "to generate); reduce the prompt or max_tokens", "max_tokens")
    # Each of the n samples is a sequence: more than one step runs could never run together.
    if params.n > limits.max_num_seqs:
        raise InvalidRequestError(
            f"n is {params.n}, more than the maximum of {limits.max_num_seqs} (--max-num-seqs)", "n")
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(params, name)
        if value is not None and value > limits.max_logprobs:
            raise InvalidRequestError(
                f"{name} is {value}, more than the maximum of {limits.max_logprobs} (--max-logprobs)", name)
    if not _is_int(priority) or not -_INT64 <= priority < _INT64:
        raise InvalidRequestError(f"priority must be an integer between {-_INT64} and {_INT64 - 1}, got {priority!r}",
                                  "priority")
    vocab_size = limits.vocab_size
    check_token_ids("logit_bias", params.logit_bias or {}, vocab_size)
    check_token_ids("allowed_token_ids", params.allowed_token_ids or [], vocab_size)
    # min_tokens bans the stop tokens in the logits: an id past the vocabulary would index past them.
    check_token_ids("stop_token_ids", params.stop_token_ids, vocab_size)


def check_token_ids(field: str, token_ids: Iterable[Any], vocab_size: int) -> None:
    for token_id in token_ids:
        if not _is_int(token_id):
            raise InvalidRequestError(f"{field} must hold integer token ids, got {token_id!r}", field)
        if not 0 <= token_id < vocab_size:
            raise InvalidRequestError(f"{field} contains token id {token_id}, which is out of vocabulary "
                                      f"(0 to {vocab_size - 1})", field)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
