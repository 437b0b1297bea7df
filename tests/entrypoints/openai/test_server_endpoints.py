"""Every endpoint and request field through a real ``fw serve`` and the official ``openai`` client.

The serving layer's own tests check each field's details in-process; here each field goes
through HTTP once, with an assertion that shows it took effect.
"""

from __future__ import annotations

import json

import pytest
import requests

from fw import __version__

pytestmark = pytest.mark.slow  # a real fw serve process

openai = pytest.importorskip("openai")

SERVED_NAMES = ["tiny", "tiny-alias"]
EOS = 1  # the tiny checkpoint's </s>
PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def complete(client, prompt=PROMPT, **options):
    options = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0.0, **options}
    return client.completions.create(**options)


def chat(client, content="hi there", **options):
    options = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 12,
               "temperature": 0.0, **options}
    return client.chat.completions.create(**options)


def sse_events(response: requests.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines(decode_unicode=True) if line]


# ---------------------------------------------------------------- plain endpoints

def test_models_lists_every_served_name(client) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == SERVED_NAMES
    assert all(m.object == "model" and m.owned_by == "fw" for m in models)


def test_health_version_index_and_metrics(server) -> None:
    health = requests.get(server.url + "/health", timeout=5)
    assert (health.status_code, health.content) == (200, b"")
    assert requests.get(server.url + "/version", timeout=5).json() == {"version": __version__}
    index = requests.get(server.url + "/", timeout=5).json()
    assert index["models"] == SERVED_NAMES and "POST /v1/chat/completions" in index["endpoints"]
    assert "fw:num_requests_running" in requests.get(server.url + "/metrics", timeout=5).text


def tokenize(server, **body) -> dict:
    response = requests.post(server.url + "/tokenize", json=body, headers=server.auth, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_tokenize_and_detokenize_round_trip(server) -> None:
    tokens = tokenize(server, model="tiny", prompt=PROMPT, return_token_strs=True)
    assert tokens["count"] == len(tokens["tokens"]) == len(tokens["token_strs"]) > 1
    assert tokens["max_model_len"] == 512
    text = requests.post(server.url + "/detokenize", json={"tokens": tokens["tokens"]}, headers=server.auth,
                         timeout=5).json()
    assert text == {"prompt": PROMPT}


def test_request_id_headers(server) -> None:
    response = requests.post(server.url + "/tokenize", json={"prompt": "a"}, timeout=5,
                             headers={"X-Request-Id": "trace-42", **server.auth})
    assert response.headers["x-request-id"] == "trace-42"
    generated = {requests.get(server.url + "/health", timeout=5).headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3


# ---------------------------------------------------------------- completions

def test_completion_answers_as_openai_does(client, server) -> None:
    response = complete(client, model="tiny-alias", user="user-7")
    assert response.model == "tiny"  # responses name the first served name
    assert response.object == "text_completion" and response.id.startswith("cmpl-")
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.index == 0
    assert response.usage.prompt_tokens == tokenize(server, prompt=PROMPT)["count"]
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_greedy_is_reproducible_and_equals_the_narrowest_filters(client) -> None:
    greedy = complete(client, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text
    assert complete(client, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text == greedy
    # Each filter alone, at temperature 1, leaves only the most likely token.
    for extra in ({"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}):
        sampled = complete(client, max_tokens=16, temperature=1.0, seed=5, extra_body={"ignore_eos": True, **extra})
        assert sampled.choices[0].text == greedy, extra


def test_a_seed_makes_sampling_reproducible_and_n_gives_several(client) -> None:
    options = dict(temperature=1.0, max_tokens=16, n=3, seed=1234, extra_body={"ignore_eos": True})
    first, second = complete(client, **options), complete(client, **options)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert len({c.text for c in first.choices}) > 1  # the n samples differ from each other
    assert first.usage.completion_tokens == 48
    other = complete(client, **{**options, "seed": 4321})
    assert [c.text for c in other.choices] != [c.text for c in first.choices]


def test_penalties_change_a_repetitive_greedy_output(client) -> None:
    def repeats(**extra) -> int:
        response = complete(client, max_tokens=48, logprobs=0, extra_body={"ignore_eos": True, **extra})
        tokens = response.choices[0].logprobs.tokens
        return len(tokens) - len(set(tokens))

    plain = repeats()
    assert plain > 0
    assert repeats(frequency_penalty=2.0) < plain
    assert repeats(presence_penalty=2.0) < plain
    assert repeats(repetition_penalty=2.0) < plain


def test_stop_string_ends_the_text_before_it(client) -> None:
    text = complete(client, max_tokens=24, extra_body={"ignore_eos": True}).choices[0].text
    # A 3-character stop string whose first occurrence is past the start of the text.
    start = next(i for i in range(3, len(text) - 3) if text.find(text[i:i + 3]) == i and text[i:i + 3].strip())
    stop = text[start:start + 3]
    choice = complete(client, max_tokens=24, stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert (choice.text, choice.finish_reason, choice.model_extra.get("stop_reason")) == (text[:start], "stop", stop)


def test_logit_bias_stop_token_ids_and_min_tokens(client) -> None:
    token = 42
    forced = complete(client, max_tokens=4, logit_bias={str(token): 100}, logprobs=0)
    assert len(set(forced.choices[0].logprobs.tokens)) == 1  # every token is the biased one
    stopped = complete(client, max_tokens=10, logit_bias={str(token): 100},
                       extra_body={"stop_token_ids": [token], "min_tokens": 3})
    choice = stopped.choices[0]
    # min_tokens: the stop token cannot come for three tokens (as vLLM, it is masked), then ends the request.
    assert (choice.finish_reason, choice.model_extra.get("stop_reason")) == ("stop", token)
    assert stopped.usage.completion_tokens == 4
    assert choice.text and forced.choices[0].logprobs.tokens[0] not in choice.text


def test_ignore_eos_runs_to_max_tokens(client) -> None:
    at_eos = complete(client, max_tokens=10, logit_bias={str(EOS): 100})
    assert (at_eos.choices[0].finish_reason, at_eos.usage.completion_tokens) == ("stop", 1)
    ignored = complete(client, max_tokens=10, logit_bias={str(EOS): 100}, extra_body={"ignore_eos": True})
    assert (ignored.choices[0].finish_reason, ignored.usage.completion_tokens) == ("length", 10)


def test_completion_logprobs_have_openais_shape(client) -> None:
    response = complete(client, max_tokens=5, logprobs=2, extra_body={"ignore_eos": True})
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert all(2 <= len(top) <= 3 and all(v <= 0 for v in top.values()) for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0


def test_echo_prepends_the_prompt(client) -> None:
    plain = complete(client, max_tokens=6).choices[0].text
    assert complete(client, max_tokens=6, echo=True).choices[0].text == PROMPT + plain


def test_prompts_as_lists_of_strings_and_token_ids(client, server) -> None:
    ids = requests.post(server.url + "/tokenize", json={"prompt": PROMPT}, headers=server.auth, timeout=5).json()["tokens"]
    response = complete(client, prompt=[PROMPT, ids], max_tokens=6)
    assert len(response.choices) == 2 and response.choices[0].text == response.choices[1].text


def test_completion_stream_matches_the_response_and_ends_with_done(server, client) -> None:
    whole = complete(client, max_tokens=10, extra_body={"ignore_eos": True}).choices[0].text
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": True,
            "stream": True, "priority": 1, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with requests.post(server.base_url + "/completions", json=body, headers=server.auth, stream=True, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 10
    # continuous_usage_stats: every chunk carries the usage so far.
    assert all(c["usage"] is not None for c in chunks)


# ---------------------------------------------------------------- chat

def chat_prompt_tokens(server, content="hi there", **options) -> int:
    return tokenize(server, messages=[{"role": "user", "content": content}], **options)["count"]


def test_chat_answers_as_openai_does(client, server) -> None:
    response = chat(client, user="user-7")
    assert response.object == "chat.completion" and response.model == "tiny"
    message = response.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert response.usage.prompt_tokens == chat_prompt_tokens(server)


def test_max_completion_tokens_and_max_tokens(client) -> None:
    new = chat(client, max_tokens=None, max_completion_tokens=7, logit_bias={"42": 100})
    old = chat(client, max_tokens=5, logit_bias={"42": 100})
    assert (new.usage.completion_tokens, old.usage.completion_tokens) == (7, 5)


def test_chat_seed_and_n(client) -> None:
    options = dict(temperature=1.0, seed=99, n=2, extra_body={"ignore_eos": True})
    first, second = chat(client, **options), chat(client, **options)
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1]


def test_chat_logprobs_have_openais_shape(client) -> None:
    response = chat(client, max_tokens=4, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = response.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(entry.token for entry in content) == response.choices[0].message.content
    for entry in content:
        # bytes are the token's own bytes; a token that is part of a character shows as U+FFFD.
        assert entry.logprob <= 0 and bytes(entry.bytes).decode(errors="replace") == entry.token
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob


def test_content_parts_equal_a_string(client, server) -> None:
    as_part = chat(client, content=[{"type": "text", "text": "hi there"}])
    as_text = chat(client, content="hi there")
    assert as_part.usage.prompt_tokens == as_text.usage.prompt_tokens
    assert as_part.choices[0].message.content == as_text.choices[0].message.content
    # Several parts are joined with newlines (vLLM's rule for string templates).
    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]
    assert chat(client, content=parts).usage.prompt_tokens == chat_prompt_tokens(server, "hi\nthere")


def test_generation_prompt_options_and_template_kwargs(client, server) -> None:
    with_prompt = chat(client, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    without = chat(client, extra_body={"add_generation_prompt": False})
    assert with_prompt.usage.prompt_tokens == without.usage.prompt_tokens + 1  # <|assistant|>
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the quick"}]
    rendered = requests.post(server.url + "/tokenize", headers=server.auth, timeout=5, json={
        "messages": messages, "continue_final_message": True, "add_generation_prompt": False}).json()
    expected = requests.post(server.url + "/tokenize", headers=server.auth, timeout=5, json={
        "prompt": "<|user|>hi</s><|assistant|>the quick", "add_special_tokens": False}).json()
    assert rendered["tokens"] == expected["tokens"]  # ends inside the assistant's message
    continued = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0,
                                               extra_body={"continue_final_message": True,
                                                           "add_generation_prompt": False})
    assert continued.usage.prompt_tokens == rendered["count"]


def test_chat_stream_equals_the_whole_answer(client) -> None:
    whole = chat(client, max_tokens=10, extra_body={"ignore_eos": True}).choices[0].message.content
    stream = chat(client, max_tokens=10, stream=True, stream_options={"include_usage": True},
                  extra_body={"ignore_eos": True, "priority": -1})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].choices == []
