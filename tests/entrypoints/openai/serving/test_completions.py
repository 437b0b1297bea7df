"""/v1/completions in-process: outputs, indices, usage, logprobs, echo, stop strings, streaming."""

from __future__ import annotations

import math

import pytest

from fw.core.engine.sampling_params import SamplingParams

PROMPTS = ["the quick brown fox", "to be or not to be", "all that glitters"]


def greedy(api, **body):
    return api.complete(**{"temperature": 0, "max_tokens": 12, **body})


def test_greedy_text_equals_offline_llm(api, llm):
    expected = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    response = greedy(api, prompt=PROMPTS, model="tiny")
    assert response["object"] == "text_completion"
    assert response["id"].startswith("cmpl-")
    assert response["model"] == "tiny"
    assert [c["text"] for c in response["choices"]] == [out.outputs[0].text for out in expected]
    assert [c["index"] for c in response["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] in ("length", "stop") for c in response["choices"])
    num_prompt = sum(len(out.prompt_token_ids) for out in expected)
    num_completion = sum(len(out.outputs[0].token_ids) for out in expected)
    assert response["usage"] == {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
                                 "total_tokens": num_prompt + num_completion}


def test_token_id_prompts_equal_text_prompts(api):
    ids = [api.serving.tokenizer.encode(p) for p in PROMPTS[:2]]
    by_text = greedy(api, prompt=PROMPTS[:2])
    by_ids = greedy(api, prompt=ids)
    one = greedy(api, prompt=ids[1])
    assert [c["text"] for c in by_ids["choices"]] == [c["text"] for c in by_text["choices"]]
    assert one["choices"][0]["text"] == by_text["choices"][1]["text"]
    assert by_ids["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])


def test_n_samples_are_indexed_per_prompt(api):
    response = api.complete(prompt=PROMPTS[:2], n=3, max_tokens=6, temperature=1.0, ignore_eos=True)
    choices = response["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    assert response["usage"]["completion_tokens"] == 6 * 6
    assert all(c["finish_reason"] == "length" for c in choices)
    # The samples of one prompt come from that prompt: greedy n=3 gives the same text three times.
    same = greedy(api, prompt=PROMPTS[:2], n=3)["choices"]
    assert [c["text"] for c in same] == [same[0]["text"]] * 3 + [same[3]["text"]] * 3
    assert same[0]["text"] != same[3]["text"]


def test_logprobs_legacy_shape(api):
    response = greedy(api, prompt=PROMPTS[0], logprobs=3)
    choice = response["choices"][0]
    logprobs = choice["logprobs"]
    num_tokens = response["usage"]["completion_tokens"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == num_tokens
    offsets = [0]
    for token in logprobs["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs["text_offset"] == offsets
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        values = list(top.values())
        assert values == sorted(values, reverse=True)
        assert 1 <= len(top) <= 4  # the top 3 and the sampled token, fewer where texts coincide
        assert top[token] == pytest.approx(logprob)
        assert logprob == pytest.approx(values[0])  # greedy picks the most likely token
        assert logprob <= 0 and math.isfinite(logprob)


def test_echo_with_logprobs_includes_the_prompt(api):
    prompt = PROMPTS[1]
    plain = greedy(api, prompt=prompt)["choices"][0]
    echoed = greedy(api, prompt=prompt, echo=True, logprobs=1)
    choice = echoed["choices"][0]
    assert choice["text"] == prompt + plain["text"]
    logprobs = choice["logprobs"]
    num_prompt = echoed["usage"]["prompt_tokens"]
    assert len(logprobs["tokens"]) == num_prompt + echoed["usage"]["completion_tokens"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs["token_logprobs"][1:])
    assert "".join(logprobs["tokens"][:num_prompt]) == prompt


def test_stop_string_ends_the_text_where_it_starts(api):
    full = greedy(api, prompt=PROMPTS[0], max_tokens=20)["choices"][0]["text"]
    stop = next(full[i:i + 2] for i in range(3, len(full) - 2) if full[i:i + 2].isalpha())
    response = greedy(api, prompt=PROMPTS[0], max_tokens=20, stop=[stop, "zzzz"])
    choice = response["choices"][0]
    assert choice["text"] == full[:full.find(stop)]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)
    kept = greedy(api, prompt=PROMPTS[0], max_tokens=20, stop=stop, include_stop_str_in_output=True)
    assert kept["choices"][0]["text"] == full[:full.find(stop) + len(stop)]


def _stream_texts(api, sse_events, **body):
    chunks = sse_events(api.complete(stream=True, **body))
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        assert chunk["object"] == "text_completion" and chunk["id"].startswith("cmpl-")
        for choice in chunk["choices"]:
            assert choice["index"] not in finish, "nothing may follow a choice's finish_reason"
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"] is not None:
                finish[choice["index"]] = choice["finish_reason"]
    return chunks, texts, finish


def test_streamed_deltas_concatenate_to_the_full_text(api, sse_events):
    body = dict(prompt=PROMPTS, temperature=0, max_tokens=16)
    full = api.complete(**body)
    chunks, texts, finish = _stream_texts(api, sse_events, **body)
    assert texts == {c["index"]: c["text"] for c in full["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in full["choices"]}
    assert len(chunks) > len(PROMPTS)  # deltas, not one chunk per choice
    assert all(chunk["usage"] is None for chunk in chunks)


def test_streaming_with_a_stop_string_never_sends_text_it_cuts(api, sse_events):
    full = greedy(api, prompt=PROMPTS[2], max_tokens=24)["choices"][0]["text"]
    stop = next(full[i:i + 3] for i in range(6, len(full) - 3) if full[i:i + 3].isascii()
                and "\ufffd" not in full[i:i + 3])
    body = dict(prompt=PROMPTS[2], temperature=0, max_tokens=24, stop=stop)
    expected = api.complete(**body)["choices"][0]
    _, texts, finish = _stream_texts(api, sse_events, **body)
    assert texts[0] == expected["text"] == full[:full.find(stop)]
    assert finish[0] == "stop"


def test_streaming_echo_and_logprobs_match_the_response(api, sse_events):
    body = dict(prompt=PROMPTS[0], temperature=0, max_tokens=8, echo=True, logprobs=2)
    full = api.complete(**body)["choices"][0]
    chunks = sse_events(api.complete(stream=True, **body))
    assert chunks[0]["choices"][0]["text"].startswith(PROMPTS[0])
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        for key in merged:
            merged[key] += chunk["choices"][0]["logprobs"][key]
    assert merged["tokens"] == full["logprobs"]["tokens"]
    assert merged["text_offset"] == full["logprobs"]["text_offset"]
    assert merged["token_logprobs"][0] is None and merged["top_logprobs"][0] is None
    assert merged["token_logprobs"][1:] == pytest.approx(full["logprobs"]["token_logprobs"][1:], abs=1e-4)


def test_stream_usage_last_chunk_and_continuous_stats(api, sse_events):
    chunks = sse_events(api.complete(prompt=PROMPTS[:2], n=2, max_tokens=5, ignore_eos=True, stream=True,
                                     stream_options={"include_usage": True}))
    *deltas, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 2 * 2 * 5
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 20
    assert all(chunk["usage"] is None for chunk in deltas)

    chunks = sse_events(api.complete(prompt=PROMPTS[0], max_tokens=5, ignore_eos=True, stream=True,
                                     stream_options={"include_usage": False, "continuous_usage_stats": True}))
    counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert counts == sorted(counts) and counts[-1] == 5
    assert all(chunk["usage"]["total_tokens"] == chunk["usage"]["prompt_tokens"] + chunk["usage"]["completion_tokens"]
               for chunk in chunks)
