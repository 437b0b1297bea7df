"""Sampling parameters, stop conditions, detokenization and the offline API's contract."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fw import SamplingParams
from fw.core.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, make_llm):
    return make_llm(tiny_checkpoint("llama"))


def greedy(**kwargs) -> SamplingParams:
    return SamplingParams(**{"temperature": 0, "max_tokens": 16, "ignore_eos": True, **kwargs})


def run(llm, prompt, params):
    (output,) = llm.generate([prompt], params, use_tqdm=False)
    return output.outputs[0]


def test_outputs_come_back_in_input_order_for_text_and_token_prompts(llm):
    tokenizer = llm.get_tokenizer()
    texts = ["the quick brown", "all", "to be or not to be"]
    mixed = [texts[0], {"prompt_token_ids": tokenizer.encode(texts[1])}, {"prompt": texts[2]}]
    outputs = llm.generate(mixed, greedy(), use_tqdm=False)
    assert [o.prompt for o in outputs] == [texts[0], None, texts[2]]
    singles = [run(llm, p, greedy()).token_ids for p in texts]
    assert [o.outputs[0].token_ids for o in outputs] == singles
    assert outputs[1].prompt_token_ids == tokenizer.encode(texts[1])


def test_max_tokens_and_finish_reasons(llm):
    out = run(llm, "the quick brown", greedy(max_tokens=5))
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    first = out.token_ids[2]
    stopped = run(llm, "the quick brown", greedy(stop_token_ids=[first]))
    assert stopped.finish_reason == "stop" and stopped.stop_reason == first
    assert stopped.token_ids[-1] == first and len(stopped.token_ids) == out.token_ids.index(first) + 1


def test_stop_string_ends_the_text_exactly(llm):
    full = run(llm, "a journey of", greedy(max_tokens=16))
    text = full.text
    stop = text[5:8]
    cut = run(llm, "a journey of", greedy(stop=[stop]))
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[: text.index(stop)]
    kept = run(llm, "a journey of", greedy(stop=[stop], include_stop_str_in_output=True))
    assert kept.text == text[: text.index(stop) + len(stop)]


def test_min_tokens_holds_back_stop_tokens(llm):
    out = run(llm, "the quick brown", greedy(max_tokens=8))
    first = out.token_ids[0]
    assert run(llm, "the quick brown", greedy(stop_token_ids=[first])).token_ids == [first]
    held = run(llm, "the quick brown", greedy(stop_token_ids=[first], min_tokens=3, max_tokens=8))
    assert len(held.token_ids) >= 3 and first not in held.token_ids[:3]


def test_eos_stops_unless_ignored(llm):
    eos = llm.get_tokenizer().eos_token_id
    forced = run(llm, "all", SamplingParams(temperature=0, max_tokens=5, logit_bias={eos: 100.0}))
    assert forced.token_ids == [eos] and forced.finish_reason == "stop" and forced.stop_reason is None
    assert forced.text == ""  # the EOS token is not part of the text
    ignored = run(llm, "all", SamplingParams(temperature=0, max_tokens=5, logit_bias={eos: 100.0}, ignore_eos=True))
    assert ignored.token_ids == [eos] * 5 and ignored.finish_reason == "length"


def test_logit_bias_and_allowed_token_ids(llm):
    biased = run(llm, "all", greedy(max_tokens=4, logit_bias={42: 100.0}))
    assert biased.token_ids == [42] * 4
    allowed = run(llm, "all", SamplingParams(temperature=1.0, max_tokens=12, allowed_token_ids=[7, 9], seed=0,
                                             ignore_eos=True))
    assert set(allowed.token_ids) <= {7, 9}


def test_penalties_discourage_repeats(llm):
    plain = run(llm, "the", greedy(max_tokens=24))
    penalized = run(llm, "the", greedy(max_tokens=24, frequency_penalty=2.0, presence_penalty=2.0,
                                       repetition_penalty=1.5))
    assert len(set(penalized.token_ids)) > len(set(plain.token_ids))


def test_top_k_1_is_greedy_and_temperature_sampling_varies(llm):
    greedy_ids = run(llm, "the quick", greedy()).token_ids
    assert run(llm, "the quick", SamplingParams(temperature=1.5, top_k=1, max_tokens=16, ignore_eos=True)).token_ids \
        == greedy_ids
    samples = {tuple(run(llm, "the quick", SamplingParams(temperature=1.5, max_tokens=16, ignore_eos=True)).token_ids)
               for _ in range(3)}
    assert len(samples) > 1


def test_logprobs_have_the_sampled_token_and_the_top_k(llm):
    out = run(llm, "the quick", greedy(max_tokens=4, logprobs=3))
    assert len(out.logprobs) == 4
    for token, position in zip(out.token_ids, out.logprobs):
        assert token in position
        assert position[token].rank == 1  # greedy picks the most likely token
        assert {entry.rank for entry in position.values()} == {1, 2, 3}
        values = sorted((entry.logprob for entry in position.values()), reverse=True)
        assert values[0] <= 0 and values == sorted(values, reverse=True)
    assert out.cumulative_logprob == pytest.approx(sum(p[t].logprob for t, p in zip(out.token_ids, out.logprobs)))


def test_incremental_text_equals_the_full_decode(llm):
    tokenizer = llm.get_tokenizer()
    rng = random.Random(0)
    for _ in range(5):
        out = run(llm, "ünïcödé wörds", SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True,
                                                      seed=rng.randrange(1000)))
        assert out.text == tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_detokenizer_never_emits_half_a_character(llm):
    tokenizer = llm.get_tokenizer()
    text = "emoji 🙂 ünïcödé"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
    deltas = [detok.add_token(t) for t in ids]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_invalid_requests_are_refused_before_they_take_memory(llm):
    engine = llm.engine
    free = engine.block_manager.num_free_blocks
    with pytest.raises(ValueError, match="maximum context length is 512 tokens"):
        llm.generate(["the"], SamplingParams(max_tokens=600), use_tqdm=False)
    with pytest.raises(ValueError, match="out of vocabulary"):
        llm.generate([{"prompt_token_ids": [1, 10**6]}], use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([{"prompt_token_ids": []}], use_tqdm=False)
    with pytest.raises(ValueError, match="logprobs is 50"):
        llm.generate(["the"], SamplingParams(logprobs=50), use_tqdm=False)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    assert engine.block_manager.num_free_blocks == free and not engine.has_unfinished_requests()
    # The engine still works afterwards.
    assert run(llm, "the", greedy(max_tokens=2)).finish_reason == "length"


def test_abort_frees_every_block(llm):
    engine = llm.engine
    engine.add_request("to-abort", list(range(5, 60)), greedy(max_tokens=50))
    engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    engine.abort_request("to-abort")
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.has_unfinished_requests()


def test_chat_uses_the_chat_template(llm):
    messages = [{"role": "user", "content": "the quick brown"}]
    (output,) = llm.chat(messages, greedy(max_tokens=4), use_tqdm=False)
    tokenizer = llm.get_tokenizer()
    assert tokenizer.decode(output.prompt_token_ids) == "<|user|>the quick brown</s><|assistant|>"
    (batch_first, _) = llm.chat([messages, messages], greedy(max_tokens=4), use_tqdm=False)
    assert batch_first.outputs[0].token_ids == output.outputs[0].token_ids


def test_generation_config_gives_the_default_sampling_params(tiny_checkpoint, make_llm, tmp_path):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("llama"), path)
    (path / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.3, "top_p": 0.7, "top_k": 20, "repetition_penalty": 1.1, "eos_token_id": [1, 4]}))
    llm = make_llm(path)
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.repetition_penalty) == (0.3, 0.7, 20, 1.1)
    assert set(llm.engine.loaded.eos_token_ids) == {1, 4}
    ignored = make_llm(path, generation_config="vllm").get_default_sampling_params()
    assert ignored.temperature == 1.0 and ignored.top_p == 1.0


def test_sampler_is_vectorised_over_rows():
    from fw.core.engine.sequence import Sequence
    from fw.core.runner.sampler import Sampler, SamplingBatch

    seqs = [Sequence(str(i), [1, 2], SamplingParams(temperature=t, top_k=k, seed=s))
            for i, (t, k, s) in enumerate([(0, 0, None), (1.0, 1, None), (1.0, 0, 3), (0.5, 5, None)])]
    logits = torch.randn(4, 50)
    out = Sampler()(logits, SamplingBatch.build(seqs, 50, torch.device("cpu")))
    assert out.token_ids[0] == logits[0].argmax() and out.token_ids[1] == logits[1].argmax()
    assert out.token_ids[3] in logits[3].topk(5).indices
