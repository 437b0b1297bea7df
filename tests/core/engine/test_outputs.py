"""The engine's outputs in vLLM's three kinds, its public surface, and its limits, each checked once."""

from __future__ import annotations

import json
import shutil

import pytest

from fw import SamplingParams
from fw.core.engine.outputs import RequestOutput
from fw.core.engine.sampling_params import RequestOutputKind
from fw.core.errors import InvalidRequestError

PROMPT = [5, 6, 7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, make_llm):
    return make_llm(tiny_checkpoint("llama"))


def sampled(kind: RequestOutputKind, **kwargs) -> SamplingParams:
    return SamplingParams(**{"temperature": 1.0, "seed": 3, "max_tokens": 12, "ignore_eos": True, "n": 2,
                             "logprobs": 2, "prompt_logprobs": 1, "output_kind": kind, **kwargs})


def run(engine, params: SamplingParams, request_id: str) -> list[RequestOutput]:
    engine.add_request(request_id, PROMPT, params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    return outputs


def test_deltas_add_up_to_the_final_output_and_final_only_comes_once(llm):
    (final,) = run(llm.engine, sampled(RequestOutputKind.FINAL_ONLY), "final")
    deltas = run(llm.engine, sampled(RequestOutputKind.DELTA), "delta")
    assert final.finished and all(len(c.token_ids) == 12 for c in final.outputs)
    assert [o.finished for o in deltas] == [False] * (len(deltas) - 1) + [True]
    for delta in deltas:  # each step adds one token to each sample that ran
        assert all(len(c.token_ids) == 1 and len(c.logprobs) == 1 for c in delta.outputs)
    # Prompt logprobs come once, with the first token.
    assert deltas[0].prompt_logprobs == final.prompt_logprobs and len(final.prompt_logprobs) == len(PROMPT)
    assert all(o.prompt_logprobs is None for o in deltas[1:])
    merged = deltas[0]
    for delta in deltas[1:]:
        merged.add(delta)
    assert merged.finished
    for got, want in zip(sorted(merged.outputs, key=lambda c: c.index), final.outputs):
        assert (got.index, got.text, got.token_ids, got.finish_reason) == (want.index, want.text, want.token_ids,
                                                                           want.finish_reason)
        assert got.logprobs == want.logprobs and got.cumulative_logprob == want.cumulative_logprob
        assert want.cumulative_logprob == pytest.approx(sum(p[t].logprob for t, p in zip(want.token_ids,
                                                                                           want.logprobs)))


def test_cumulative_outputs_share_the_growing_lists_instead_of_copying_them(llm):
    outputs = run(llm.engine, sampled(RequestOutputKind.CUMULATIVE, n=1), "cumulative")
    assert len(outputs) == 12 and outputs[-1].finished
    first, last = outputs[0].outputs[0], outputs[-1].outputs[0]
    assert first.token_ids is last.token_ids and first.logprobs is last.logprobs  # nothing copied per step
    assert len(last.token_ids) == 12
    texts = [o.outputs[0].text for o in outputs]
    assert all(last.text.startswith(text) for text in texts)


def test_abort_hands_back_the_last_output(llm):
    engine = llm.engine
    engine.add_request("to-abort", PROMPT, sampled(RequestOutputKind.FINAL_ONLY, max_tokens=50))
    engine.step()
    engine.step()
    last = engine.abort_request("to-abort")
    assert last.finished and [c.finish_reason for c in last.outputs] == ["abort", "abort"]
    assert all(len(c.token_ids) >= 1 for c in last.outputs)
    assert engine.abort_request("to-abort") is None
    assert engine.stats().kv_cache_usage == 0 and not engine.has_unfinished_requests()


def test_info_and_stats_describe_the_engine(llm, tiny_checkpoint):
    info = llm.engine.info
    assert info.path == tiny_checkpoint("llama") and info.model == str(info.path)
    assert (info.max_model_len, info.vocab_size, info.platform, info.load_format) == (512, 400, "cpu", "safetensors")
    assert info.architectures == ("LlamaForCausalLM",) and info.implementation.startswith("fw.")
    assert info.tokenizer is llm.get_tokenizer()
    with pytest.raises(AttributeError):
        info.max_model_len = 1  # frozen: frontends read it, never change it
    engine = llm.engine
    engine.add_request("stats", PROMPT, SamplingParams(max_tokens=3, n=2))
    before = engine.stats()
    assert (before.num_running, before.num_waiting) == (0, 2)
    engine.step()
    during = engine.stats()
    assert during.num_running >= 1 and during.kv_cache_usage > 0
    assert during.prefix_cache_queries >= before.prefix_cache_queries
    engine.abort_request("stats")


@pytest.mark.parametrize(("params", "param", "words"), [
    (dict(n=300), "n", "256 (--max-num-seqs)"),
    (dict(logprobs=21), "logprobs", "logprobs is 21, more than the maximum of 20"),
    (dict(prompt_logprobs=21), "prompt_logprobs", "maximum of 20"),
    (dict(logit_bias={10**6: 1.0}), "logit_bias", "logit_bias contains token id 1000000"),
    (dict(allowed_token_ids=[3, -1]), "allowed_token_ids", "out of vocabulary"),
    (dict(stop_token_ids=[10**6], min_tokens=2), "stop_token_ids", "out of vocabulary"),
    (dict(top_p=0), "top_p", "top_p must be in"),
])
def test_the_engine_checks_every_limit_and_names_the_field(llm, params, param, words):
    with pytest.raises(InvalidRequestError, match=words.replace("(", r"\(").replace(")", r"\)")) as error:
        llm.engine.add_request("bad", PROMPT, SamplingParams(**params))
    assert error.value.param == param and isinstance(error.value, ValueError)
    assert not llm.engine.has_unfinished_requests()


def test_without_max_tokens_the_output_runs_to_the_context_or_the_generation_config(llm, tiny_checkpoint,
                                                                                      make_llm, tmp_path):
    open_ended = SamplingParams(max_tokens=None, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
    (output,) = run(llm.engine, open_ended, "open")
    assert len(output.outputs[0].token_ids) == 512 - len(PROMPT)
    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("llama"), path)
    (path / "generation_config.json").write_text(json.dumps({"max_new_tokens": 5}))
    (output,) = run(make_llm(path).engine, open_ended, "capped")
    assert len(output.outputs[0].token_ids) == 5
