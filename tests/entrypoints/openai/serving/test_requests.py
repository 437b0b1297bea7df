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
    # Strict types: nothing is coerced (#9).
    ("completions", {"prompt": "x", "max_tokens": "3"}, "max_tokens", "valid integer"),
    ("completions", {"prompt": "x", "stream": "yes"}, "stream", "valid boolean"),
    ("completions", {"prompt": "x", "n": 2.0}, "n", "valid integer"),
    ("completions", {"prompt": "x", "echo": 1}, "echo", "valid boolean"),
    ("completions", {"prompt": "x", "temperature": float("inf")}, "temperature", "finite"),
    ("completions", {"prompt": "x", "logit_bias": {"5": float("nan")}}, "logit_bias.5", "finite"),
    # What fw does not implement is refused, not ignored.
    ("completions", {"prompt": "x", "response_format": "garbage"}, "response_format", "text"),
    ("chat_completions", {**CHAT, "response_format": {"type": "json_object"}}, "response_format", "text"),
    ("completions", {"prompt": "x", "best_of": 3}, "best_of", "best_of"),
    ("completions", {"prompt": "x", "suffix": "!"}, "suffix", "suffix"),
    ("chat_completions", {**CHAT, "tool_choice": "banana"}, "tool_choice", "'none' or 'auto'"),
    ("chat_completions", {**CHAT, "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice",
     "not supported"),
    ("chat_completions", {**CHAT, "tools": [{"type": "function"}]}, "tools[0].function", "missing"),
    ("chat_completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "no spaces"}}]},
     "tools[0].function.name", "pattern"),
    ("chat_completions", {**CHAT, "tools": [{"type": "retrieval"}]}, "tools[0].type", "'function'"),
    ("chat_completions", {**CHAT, "functions": [{"name": "f"}]}, "functions", "use tools"),
    ("chat_completions", {**CHAT, "function_call": "auto"}, "function_call", "tool_choice"),
    ("chat_completions", {**CHAT, "modalities": ["text", "audio"]}, "modalities", "text"),
    ("chat_completions", {**CHAT, "reasoning_effort": "high"}, "reasoning_effort", "unknown field"),
    ("completions", {"prompt": "x", "echo": True, "frobnicate": 1}, "frobnicate", "unknown field"),
    # A message with no content: only an assistant's, with tool_calls.
    ("chat_completions", {"messages": [{"role": "user", "content": None}]}, "messages[0].content", "needs content"),
    ("chat_completions", {"messages": [{"role": "user"}]}, "messages[0].content", "needs content"),
    ("chat_completions", {"messages": [{"role": "assistant"}]}, "messages[0].content", "tool_calls"),
    # Sequences per request: prompts x n, capped by --max-num-seqs (256).
    ("completions", {"prompt": ["x"] * 100, "n": 3}, "n", "300 sequences"),
    ("completions", {"prompt": "x", "seed": 2**64}, "seed", "seed"),
    ("completions", {"prompt": "x", "top_k": 2**70}, "top_k", "top_k"),
    ("tokenize", {"prompt": 3}, "prompt", "valid string"),
    ("tokenize", {"prompt": "x", "add_special_tokens": "no"}, "add_special_tokens", "valid boolean"),
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


def test_unknown_fields_are_refused_naming_them(api):
    error = api.error("completions", {"prompt": "x", "max_tokens": 1, "frobnicate": 1})
    assert (error.status_code, error.param) == (400, "frobnicate")
    assert "unknown field 'frobnicate'" in error.message
    error = api.error("chat_completions", {**CHAT, "stream_options": {"include_usage": True, "x": 1}, "stream": True})
    assert error.param == "stream_options.x"


def test_null_means_not_given(api):
    response = api.complete(prompt="x", max_tokens=None, n=None, logprobs=None, echo=None, stream=None, stop=None,
                            temperature=None, seed=None, user=None, suffix=None, best_of=None)
    assert len(response["choices"]) == 1 and response["usage"]["completion_tokens"] <= 16  # the defaults
    chat = api.chat(**CHAT, logprobs=None, tools=None, tool_choice=None, response_format=None, max_tokens=None,
                    functions=None, stream_options=None)
    assert chat["choices"][0]["logprobs"] is None


def test_fields_that_change_nothing_are_accepted(api):
    # What clients send by habit: no effect on fw's answer, so not refused.
    response = api.complete(prompt="x", max_tokens=1, user="u-1", metadata={"k": "v"}, store=False,
                            service_tier="auto", best_of=1, suffix=None, response_format={"type": "text"})
    assert response["choices"][0]["finish_reason"] is not None
    chat = api.chat(**CHAT, max_tokens=1, parallel_tool_calls=False, modalities=["text"], tool_choice="none",
                    function_call="none", safety_identifier="s", prompt_cache_key="k")
    assert chat["choices"][0]["finish_reason"] is not None


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


def test_an_assistant_message_with_tool_calls_needs_no_content(api):
    call = {"id": "call-1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}
    messages = [{"role": "user", "content": "add"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call-1", "content": "1"}]
    tool = {"type": "function", "function": {"name": "add", "description": "adds", "parameters": {"type": "object"}}}
    response = api.chat(messages=messages, tools=[tool], tool_choice="auto", max_tokens=1)
    assert response["choices"][0]["finish_reason"] is not None
    assert api.tokenize(messages=messages)["count"] > 0
