"""Every error a client can cause, through a real server: OpenAI's shape, the right status, and
the server answering normally right after."""

from __future__ import annotations

from typing import Any

import pytest
import requests

pytestmark = pytest.mark.slow  # a real fw serve process

openai = pytest.importorskip("openai")


def assert_still_serving(server) -> None:
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    response = requests.post(server.base_url + "/completions", headers=server.auth, timeout=10,
                             json={"model": "tiny", "prompt": "ok", "max_tokens": 2})
    assert response.status_code == 200, response.text


def post(server, path: str, body: Any, headers: dict | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else None
    return requests.post(server.url + path, data=data, json=None if data is not None else body, timeout=10,
                         headers={**server.auth, **(headers or {})})


def assert_error(response: requests.Response, status: int, type: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type, status)
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]

BAD_REQUESTS = {
    "bad json": (COMPLETIONS, b'{"prompt": "x",', "not valid JSON"),
    "non-object body": (CHAT, [1, 2, 3], "JSON object"),
    "wrong type": (COMPLETIONS, {"model": "tiny", "prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    "wrong message type": (CHAT, {"model": "tiny", "messages": "hi"}, "messages"),
    "empty prompt": (COMPLETIONS, {"model": "tiny", "prompt": ""}, "empty"),
    "empty messages": (CHAT, {"model": "tiny", "messages": []}, "at least one message"),
    "out-of-vocabulary ids": (COMPLETIONS, {"model": "tiny", "prompt": [5, 400000]}, "400000"),
    "context overflow": (COMPLETIONS, {"model": "tiny", "prompt": "the quick", "max_tokens": 600}, "512"),
    "chat context overflow": (CHAT, {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 900}, "512"),
    "stream_options without stream": (CHAT, {"model": "tiny", "messages": MESSAGES,
                                             "stream_options": {"include_usage": True}}, "stream_options"),
    "n over the limit": (COMPLETIONS, {"model": "tiny", "prompt": "x", "n": 100000}, "n is 100000"),
    "logprobs over the limit": (COMPLETIONS, {"model": "tiny", "prompt": "x", "logprobs": 50}, "logprobs"),
    "top_logprobs over the limit": (CHAT, {"model": "tiny", "messages": MESSAGES, "logprobs": True,
                                           "top_logprobs": 50}, "top_logprobs"),
    "out-of-range value": (COMPLETIONS, {"model": "tiny", "prompt": "x", "temperature": -1}, "temperature"),
    "bad tokenize body": ("/tokenize", {"prompt": 5}, "prompt"),
    "oov detokenize": ("/detokenize", {"tokens": [-1]}, "-1"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_are_400_and_the_server_goes_on(server, case: str) -> None:
    path, body, fragment = BAD_REQUESTS[case]
    assert_error(post(server, path, body), 400, "BadRequestError", fragment)
    assert_still_serving(server)


def test_context_overflow_gives_the_numbers(server) -> None:
    body = {"model": "tiny", "prompt": [5] * 100, "max_tokens": 500}
    error = assert_error(post(server, COMPLETIONS, body), 400, "BadRequestError")
    assert all(number in error["message"] for number in ("512", "600", "100", "500")), error["message"]


def test_unknown_model_is_404_naming_the_served_ones(server) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert caught.value.status_code == 404
    message = caught.value.body["message"]
    assert "gpt-4o" in message and "tiny" in message and "tiny-alias" in message
    assert_still_serving(server)


def test_the_client_sees_openai_exceptions(server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=50)
    assert caught.value.body["param"] == "logprobs"


def test_unknown_fields_are_refused_and_no_effect_fields_accepted(server) -> None:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2, "frobnicate": 1}
    error = assert_error(post(server, COMPLETIONS, body), 400, "BadRequestError", "unknown field 'frobnicate'")
    assert error["param"] == "frobnicate"
    # What the official client sends for its usual options goes through.
    response = server.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, user="u",
                                                       metadata={"k": "v"}, store=False, n=1, temperature=1,
                                                       stream=False, parallel_tool_calls=False)
    assert response.choices[0].finish_reason is not None


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_a_missing_or_wrong_key_is_401_and_health_stays_open(server, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for method, path in [("get", "/v1/models"), ("post", COMPLETIONS), ("post", CHAT)]:
        response = requests.request(method, server.url + path, headers=headers, timeout=5,
                                    json={"model": "tiny", "prompt": "x"})
        assert_error(response, 401, "AuthenticationError", "API key")
    if key:  # without a key the client refuses to send at all
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0).models.list()
    for path in ("/health", "/version", "/metrics"):
        assert requests.get(server.url + path, timeout=5).status_code == 200, path
    assert_still_serving(server)


def test_unknown_routes_and_methods_have_openais_shape(server) -> None:
    assert_error(requests.get(server.url + "/v1/engines", headers=server.auth, timeout=5), 404, "NotFoundError")
    assert_error(requests.delete(server.url + "/health", timeout=5), 405, "MethodNotAllowedError")
    assert_still_serving(server)
