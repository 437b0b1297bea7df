"""Every request is checked completely before it takes memory, and added whole or not at all."""

from __future__ import annotations

import re

import pytest

from fw import SamplingParams
from fw.core.errors import InvalidRequestError

PROMPT = [5, 6, 7, 8, 9, 10, 11]
INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, make_llm):
    return make_llm(tiny_checkpoint("llama"))


def serves_normally(engine) -> None:
    """The engine holds nothing, then runs a request to its end, then holds nothing again."""
    assert not engine.has_unfinished_requests() and engine.stats().kv_cache_usage == 0
    engine.add_request("next", PROMPT, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 4
    assert engine.stats().kv_cache_usage == 0


@pytest.mark.parametrize(("fields", "param"), [
    (dict(temperature=INF), "temperature"),
    (dict(temperature=NAN), "temperature"),
    (dict(temperature="1"), "temperature"),
    (dict(temperature=10**400), "temperature"),
    (dict(temperature=True), "temperature"),
    (dict(top_p=NAN), "top_p"),
    (dict(min_p=INF), "min_p"),
    (dict(presence_penalty=NAN), "presence_penalty"),
    (dict(frequency_penalty=-INF), "frequency_penalty"),
    (dict(repetition_penalty=INF), "repetition_penalty"),
    (dict(repetition_penalty=NAN), "repetition_penalty"),
    (dict(logit_bias={5: INF}), "logit_bias"),
    (dict(logit_bias={5: NAN}), "logit_bias"),
    (dict(logit_bias={5: 101.0}), "logit_bias"),
    (dict(logit_bias={"five": 1.0}), "logit_bias"),
    (dict(logit_bias={5: 10**400}), "logit_bias"),
    (dict(logit_bias=[1, 2]), "logit_bias"),
    (dict(top_k=2**70), "top_k"),
    (dict(top_k=-2), "top_k"),
    (dict(n=2**70), "n"),
    (dict(n=0), "n"),
    (dict(n=1.5), "n"),
    (dict(max_tokens=2**70), "max_tokens"),
    (dict(max_tokens="3"), "max_tokens"),
    (dict(min_tokens=2**70), "min_tokens"),
    (dict(logprobs=2**70), "logprobs"),
    (dict(prompt_logprobs=2**70), "prompt_logprobs"),
    (dict(seed=2**64), "seed"),
    (dict(seed=-(2**63) - 1), "seed"),
    (dict(seed=2**63 - 1, n=2), "seed"),  # sample 1 would use seed 2**63
    (dict(stop_token_ids=[2**70, -1]), "stop_token_ids"),
    (dict(stop_token_ids=5), "stop_token_ids"),
    (dict(allowed_token_ids=[1.5]), "allowed_token_ids"),
    (dict(stop=[1]), "stop"),
])
def test_sampling_params_refuse_values_out_of_range_naming_the_field(fields, param):
    with pytest.raises(InvalidRequestError) as error:
        SamplingParams(**fields)
    assert error.value.param == param and str(error.value).startswith(param)


def test_seeds_use_the_whole_int64_range_for_every_sample():
    SamplingParams(seed=-(2**63))
    SamplingParams(seed=2**63 - 2, n=2)  # samples use 2**63 - 2 and 2**63 - 1
    assert SamplingParams(logit_bias={"7": 100}).logit_bias == {7: 100.0}  # JSON's string keys


@pytest.mark.parametrize(("prompt", "fields", "priority", "param", "words"), [
    # The two requests of issue 9 that stopped the engine:
    (PROMPT, dict(max_tokens=4, min_tokens=1, stop_token_ids=[400]), 0, "stop_token_ids", "token id 400"),
    (PROMPT, dict(max_tokens=4, n=2, seed=2**64 - 1), 0, "seed", "sample i uses seed + i; n is 2"),
    (PROMPT, dict(stop_token_ids=[2**70]), 0, "stop_token_ids", "out of vocabulary"),
    (PROMPT, dict(logit_bias={400: 1.0}), 0, "logit_bias", "out of vocabulary"),
    (PROMPT, dict(allowed_token_ids=[2**70]), 0, "allowed_token_ids", "out of vocabulary"),
    (PROMPT, dict(top_k=2**62, logprobs=21), 0, "logprobs", "maximum of 20"),
    (PROMPT, dict(n=257), 0, "n", "256 (--max-num-seqs)"),
    (PROMPT, dict(max_tokens=600), 0, "max_tokens", "maximum context length is 512"),
    (PROMPT, dict(), 2**70, "priority", "priority must be an integer"),
    (PROMPT, dict(), "high", "priority", "priority must be an integer"),
    ([5, 400], dict(), 0, "prompt", "out of vocabulary"),
    ([5, -1], dict(), 0, "prompt", "out of vocabulary"),
    ([5, "6"], dict(), 0, "prompt", "integer token ids"),
    ([], dict(), 0, "prompt", "empty"),
    ({"prompt_token_ids": [5]}, dict(), 0, "prompt", "text or a list of token ids"),
    ([5] * 512, dict(), 0, "prompt", "context length is 512"),
])
def test_a_refused_request_takes_nothing_and_the_engine_serves_the_next(llm, prompt, fields, priority, param, words):
    engine = llm.engine
    with pytest.raises(InvalidRequestError, match=re.escape(words)) as error:
        engine.add_request("bad", prompt, SamplingParams(**fields), priority=priority)
    assert error.value.param == param
    assert "bad" not in engine.requests  # nothing of it was queued: the id is free again
    serves_normally(engine)


def test_a_request_is_added_whole_or_not_at_all(llm, monkeypatch):
    # Whatever fails while the samples are built (here the detokenizer of the second sample),
    # no sample is queued: the first is not left behind to run as an orphan.
    from fw.core.engine import llm_engine

    built = []

    class FailingSecond(llm_engine.IncrementalDetokenizer):
        def __init__(self, *args, **kwargs):
            built.append(1)
            if len(built) == 2:
                raise RuntimeError("second sample")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(llm_engine, "IncrementalDetokenizer", FailingSecond)
    with pytest.raises(RuntimeError, match="second sample"):
        llm.engine.add_request("half", PROMPT, SamplingParams(n=2, max_tokens=4))
    monkeypatch.undo()
    assert "half" not in llm.engine.requests
    serves_normally(llm.engine)
