"""Validation (every 400 and the 404), models, tokenize/detokenize, token bytes and request logs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fw.entrypoints.openai.errors import APIError

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("method", "body", "param", "words"), [
    ("completions", [1, 2], None, "JSON object"),
    ("completions", "the fox", None, "JSON object"),
    ("completions", {"max_tokens": 3}, "prompt", "missing"),
    ("completions", {"prompt": "x", "max_tokens": "many"}, "max_tokens", "valid integer"),
    ("completions", {"prompt": "x", "temperature": [1]}, "temperature", "valid number"),
    ("completions", {"prompt": 5}, "prompt", "token-id lists"),
    ("completions", {"prompt": [1, "a"]}, "prompt", "token-id lists"),
    ("completions", {"prompt": ""}, "prompt", "empty"),
    ("completions", {"prompt": []}, "prompt", "empty"),
    ("completions", {"prompt": ["ok", [[]]]}, "prompt", "token-id lists"),
    ("completions", {"prompt": "x", "stop": 3}, "stop", "valid"),
    ("completions", {"prompt": "x", "logit_bias": {"the": 5}}, "logit_bias", "token ids"),
    ("completions", {"prompt": "x", "logit_bias": {"100000": 5}}, "logit_bias", "out of vocabulary"),
    ("completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ("completions", {"prompt": "x", "n": 257}, "n", "256"),
    ("completions", {"prompt": "x", "logprobs": 21}, "logprobs", "20"),
    ("completions", {"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs", "20"),
    ("completions", {"prompt": "x", "temperature": -1}, "temperature", "non-negative"),
    ("completions", {"prompt": "x", "top_p": 0}, "top_p", "top_p"),
    ("chat_completions", {"messages": "hi"}, "messages", "valid list"),
    ("chat_completions", {"messages": []}, "messages", "at least one"),
    ("chat_completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'user'"),
    ("chat_completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
    ("chat_completions", {**CHAT, "top_logprobs": 2}, "top_logprobs", "logprobs"),
    ("chat_completions", {**CHAT, "stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ("chat_completions", {**CHAT, "tool_choice": "required"}, "tool_choice", "not supported"),
    ("tokenize", {"prompt": 3}, "prompt", "valid string"),
    ("detokenize", {"tokens": [1, 400]}, "tokens", "out of vocabulary"),
    ("detokenize", {"tokens": [-1]}, "tokens", "out of vocabulary"),
])
def test_bad_requests_are_400_naming_the_field(api, method, body, param, words):
    error = api.error(method, body)
    assert error.status_code == 400 and error.type == "BadRequestError"
    assert error.param == param
    assert words in error.message
    assert error.body() == {"error": {"message": error.message, "type": "BadRequestError", "param": param,
                                      "code": 400}}


def test_engine_refusals_are_400_with_the_numbers(api):
    error = api.error("completions", {"prompt": [5, 6, 100000]})
    assert error.status_code == 400 and "100000" in error.message and "vocabulary" in error.message
    num_prompt = len(api.serving.tokenizer.encode("the quick brown fox"))
    error = api.error("completions", {"prompt": "the quick brown fox", "max_tokens": 510})
    assert error.status_code == 400
    assert all(str(n) in error.message for n in (512, num_prompt + 510, num_prompt, 510))
    error = api.error("chat_completions", {**CHAT, "max_completion_tokens": 600})
    assert error.status_code == 400 and "512" in error.message
    error = api.error("completions", {"prompt": [5] * 600, "stream": True})  # before any stream starts
    assert error.status_code == 400 and "600" in error.message and "512" in error.message


def test_one_bad_prompt_fails_the_request_and_aborts_the_others(api):
    serving = api.serving

    async def scenario() -> int:
        # All in one event loop, holding the error (its traceback holds the frames): either
        # would otherwise finalize forgotten generators and hide a leak.
        with pytest.raises(APIError, match="vocabulary") as error:
            await serving.completions({"prompt": ["the fox", [100000]], "max_tokens": 400, "ignore_eos": True}, "bad")
        # The engine applies commands in order: once a later request is done, the abort has
        # happened (had it not, the good prompt would still have hundreds of tokens to go).
        await serving.completions({"prompt": "the fox", "max_tokens": 1}, "after")
        num_unfinished = serving.engine.num_unfinished()
        del error
        return num_unfinished

    assert asyncio.run(scenario()) == 0


def test_unknown_model_is_404_naming_the_served_ones(api):
    error = api.error("completions", {"model": "gpt-4", "prompt": "x"})
    assert (error.status_code, error.type, error.param) == (404, "NotFoundError", "model")
    assert error.message == "The model `gpt-4` does not exist. Served models: tiny, tiny-alias"
    assert api.error("detokenize", {"model": "gpt-4", "tokens": [1]}).status_code == 404
    # Any served name is accepted; responses report the first.
    assert api.complete(model="tiny-alias", prompt="x", max_tokens=1)["model"] == "tiny"
    assert api.chat(**CHAT, max_tokens=1)["model"] == "tiny"


def test_models_lists_every_served_name(api, checkpoint):
    models = api.serving.models()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny", "tiny-alias"]
    for model in models["data"]:
        assert model["object"] == "model" and model["owned_by"] == "fw"
        assert model["root"] == str(checkpoint) and model["max_model_len"] == 512
        assert isinstance(model["created"], int)


def test_tokenize_and_detokenize(api):
    tokenizer = api.serving.tokenizer
    result = api.tokenize(prompt="the quick brown fox", return_token_strs=True)
    assert result["tokens"] == tokenizer.encode("the quick brown fox")
    assert result["count"] == len(result["tokens"]) and result["max_model_len"] == 512
    assert result["token_strs"] == tokenizer.convert_ids_to_tokens(result["tokens"])
    assert api.detokenize(tokens=result["tokens"]) == {"prompt": "the quick brown fox"}
    chat = api.tokenize(**CHAT)
    assert chat["tokens"] == tokenizer.encode("<|user|>hi</s><|assistant|>", add_special_tokens=False)
    assert chat["token_strs"] is None


def test_token_bytes_rebuild_a_character_split_over_tokens(api):
    serving = api.serving
    ids = serving.tokenizer.encode("€")  # not in the tokenizer's corpus: one token per byte
    assert len(ids) == 3 and all(serving.token_text(i) == "\ufffd" for i in ids)
    assert b"".join(bytes(serving.token_bytes(i)) for i in ids) == "€".encode()
    (word,) = serving.tokenizer.encode(" quick")
    assert serving.token_bytes(word) == list(b" quick")


def test_unknown_fields_are_ignored_with_a_warning(api, caplog):
    with caplog.at_level(logging.WARNING, logger="fw.server"):
        response = api.complete(prompt="x", max_tokens=1, suffix="!", best_of=3)
    assert response["choices"][0]["finish_reason"] is not None
    assert "ignored fields: best_of, suffix" in caplog.text


def test_each_request_is_logged_once_with_a_cut_prompt(make_api, caplog):
    api = make_api(max_log_len=7)
    with caplog.at_level(logging.INFO, logger="fw.server"):
        api.complete(prompt="the quick brown fox", max_tokens=2, temperature=0)
    (record,) = [r for r in caplog.records if r.name == "fw.server"]
    line = record.getMessage()
    assert "request t0:" in line and "'the qui'" in line and "quick" not in line
    assert "temperature=0" in line and "max_tokens=2" in line
    caplog.clear()
    quiet = make_api(disable_log_requests=True)
    with caplog.at_level(logging.INFO, logger="fw.server"):
        quiet.chat(**CHAT, max_tokens=1)
    assert not [r for r in caplog.records if r.name == "fw.server"]


def test_closing_a_stream_or_cancelling_a_request_aborts_it(api):
    serving = api.serving
    long = {"max_tokens": 400, "ignore_eos": True}

    async def scenario() -> list[int]:
        counts = []
        stream = await serving.completions({"prompt": ["the fox", "a journey"], "stream": True, **long}, "s1")
        assert (await anext(stream)).startswith("data: ")
        await stream.aclose()  # what the server does when the client goes away
        chat = await serving.chat_completions({**CHAT, "stream": True, **long}, "s2")
        await anext(chat)
        await chat.aclose()
        await serving.completions({"prompt": "x", "max_tokens": 1}, "probe1")
        counts.append(serving.engine.num_unfinished())
        task = asyncio.ensure_future(serving.chat_completions({**CHAT, "n": 2, **long}, "s3"))
        while serving.engine.num_unfinished() == 0:  # until the engine has the request
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await serving.completions({"prompt": "x", "max_tokens": 1}, "probe2")
        counts.append(serving.engine.num_unfinished())
        return counts

    assert asyncio.run(scenario()) == [0, 0]


def test_an_error_midway_through_a_stream_is_an_event_then_done(api):
    async def chunks(error: Exception):
        yield {"n": 1}
        raise error

    async def read(error: Exception) -> list[str]:
        return [event async for event in api.serving.sse_stream(chunks(error))]

    first, failed, done = asyncio.run(read(APIError("the prompt is bad", param="prompt")))
    assert first == 'data: {"n": 1}\n\n' and done == "data: [DONE]\n\n"
    assert failed == 'data: {"error": {"message": "the prompt is bad", "type": "BadRequestError", ' \
                     '"param": "prompt", "code": 400}}\n\n'
    _, failed, done = asyncio.run(read(RuntimeError("boom")))
    assert '"code": 500' in failed and "boom" in failed and done == "data: [DONE]\n\n"
