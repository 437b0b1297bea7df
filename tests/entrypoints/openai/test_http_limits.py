"""HTTP hygiene in process (fake engine, real uvicorn with fw's protocol): read deadlines, head
and body limits, JSON the server cannot take, engine errors on the wire, and every error in
OpenAI's JSON shape, those raised before routing included."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests
from fw_test_fake_app import AUTH, Served, assert_error, frontend, post, serve

TIMEOUT = 0.5  # the read deadlines and keep-alive timeout of this module's server
BODY_LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def server():
    served = serve(frontend(api_key="sk-test-key", header_read_timeout=TIMEOUT, body_read_timeout=TIMEOUT,
                            timeout_keep_alive=TIMEOUT, max_request_body_bytes=BODY_LIMIT,
                            h11_max_incomplete_event_size=4096, h11_max_header_count=20))
    yield served
    served.stop()


def connect(server: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - start


def json_error(raw: bytes, status: int) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), raw[:200]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    return error


# ---------------------------------------------------------------- read deadlines

def test_a_client_that_sends_nothing_gets_408_and_is_dropped(server: Served) -> None:
    data, elapsed = read_until_closed(connect(server))
    assert "--header-read-timeout" in json_error(data, 408)["message"]
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 2


def test_a_head_sent_one_byte_at_a_time_is_dropped_at_its_deadline(server: Served) -> None:
    sock = connect(server)
    start = time.monotonic()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    sent = 0
    try:
        for byte in head:
            sock.sendall(bytes([byte]))
            sent += 1
            time.sleep(TIMEOUT / 5)  # each byte well within the deadline, the whole head not
    except (BrokenPipeError, ConnectionResetError):
        pass
    data, _ = read_until_closed(sock)
    assert sent < len(head) and time.monotonic() - start < TIMEOUT + 2
    json_error(data, 408)


def test_a_body_that_stops_arriving_gets_408(server: Served) -> None:
    sock = connect(server)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test-key\r\n"
                 b"Content-Length: 100\r\n\r\n{\"prompt\":")  # the Content-Length promises more
    data, elapsed = read_until_closed(sock)
    assert "--body-read-timeout" in json_error(data, 408)["message"]
    assert elapsed < TIMEOUT + 2


def test_an_idle_keep_alive_connection_is_closed_and_a_slow_next_head_too(server: Served) -> None:
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    data, elapsed = read_until_closed(sock)  # --timeout-keep-alive
    assert data == b"" and elapsed < TIMEOUT + 2
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.sendall(b"G")  # the next request starts, and stalls
    data, elapsed = read_until_closed(sock)
    json_error(data, 408)


def test_a_body_still_arriving_after_the_response_does_not_hold_the_connection(server: Served) -> None:
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
    data, elapsed = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") and elapsed < TIMEOUT + 2


# ---------------------------------------------------------------- heads

def test_a_head_over_the_size_limit_is_431_whole_or_in_pieces(server: Served) -> None:
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    sock = connect(server)
    sock.sendall(big)  # one read: h11 parses it whole, the app refuses it
    assert "--h11-max-incomplete-event-size" in json_error(read_until_closed(sock)[0], 431)["message"]
    sock = connect(server)
    sock.sendall(big[:6000])  # incomplete and already too big: h11 refuses it
    assert "--h11-max-incomplete-event-size" in json_error(read_until_closed(sock)[0], 431)["message"]


def test_too_many_headers_is_431(server: Served) -> None:
    headers = {f"X-H{i}": "1" for i in range(25)}
    response = requests.get(server.url + "/health", headers=headers, timeout=5)
    assert "--h11-max-header-count" in assert_error(response, 431, "RequestHeaderFieldsTooLargeError")


def test_a_malformed_request_is_a_json_400(server: Served) -> None:
    sock = connect(server)
    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    assert json_error(read_until_closed(sock)[0], 400)["type"] == "BadRequestError"


# ---------------------------------------------------------------- bodies

def test_a_declared_body_over_the_limit_is_413_before_it_is_read(server: Served) -> None:
    sock = connect(server)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test-key\r\n"
                 b"Content-Length: 99999999999\r\n\r\n")
    data, elapsed = read_until_closed(sock)  # answered at once, connection closed
    assert "--max-request-body-bytes" in json_error(data, 413)["message"] and elapsed < TIMEOUT
    assert b"connection: close" in data.lower()


def test_a_chunked_body_over_the_limit_is_413_once_it_passes_it(server: Served) -> None:
    def chunks():
        for _ in range(100):
            yield b"x" * 400

    response = requests.post(server.url + "/v1/completions", data=chunks(), headers=AUTH, timeout=5)
    assert_error(response, 413, "RequestEntityTooLargeError")
    exact = json.dumps({"prompt": "x" * (BODY_LIMIT - 14)})
    assert len(exact) == BODY_LIMIT and post(server, exact).status_code == 200


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(("raw", "words", "param"), [
    (b"[" * 5000 + b"]" * 5000, "levels deep", None),  # past Python's recursion limit: json.loads refuses it
    (json.dumps({"a": nested(70)}).encode(), "levels deep", "a" + "[0]" * 63),
    (b'{"model": "\\ud800"}', "surrogate", "model"),
    (b'{"messages": [{"role": "user", "content": "a\\udfffb"}]}', "surrogate", "messages[0].content"),
    (b'{"chat_template_kwargs": {"\\ud800": 1}}', "surrogate", "chat_template_kwargs.\\ud800"),
    (b'{"prompt": "\\ud83d\\ude42 a pair is fine", "do": "api_error"}', "the prompt is empty", "prompt"),
])
def test_json_the_server_cannot_take_is_a_400_naming_the_field(server: Served, raw: bytes, words: str,
                                                               param: str | None) -> None:
    response = post(server, raw)
    assert words in assert_error(response, 400, "BadRequestError")
    assert response.json()["error"]["param"] == param


# ---------------------------------------------------------------- errors on the wire

def test_engine_errors_become_openai_errors(server: Served) -> None:
    overloaded = post(server, {"do": "overloaded"})
    assert "queue is full" in assert_error(overloaded, 503, "ServiceUnavailableError")
    assert overloaded.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert "sampling failed" in assert_error(post(server, {"do": "request_failed"}), 500, "InternalServerError")
    assert "device lost" in assert_error(post(server, {"do": "engine_dead"}), 503, "ServiceUnavailableError")


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done(server: Served) -> None:
    with requests.post(server.url + "/v1/completions", json={"do": "stream_then_fail"}, headers=AUTH, stream=True,
                       timeout=10) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines(decode_unicode=True) if line]
    assert [json.loads(e) for e in events[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    error = json.loads(events[3])["error"]
    assert (error["code"], error["type"], error["message"]) == (500, "InternalServerError", "sampling failed midway")
    assert events[4:] == ["[DONE]"]


def test_an_unexpected_error_outside_the_handler_is_a_json_500(server: Served) -> None:
    response = post(server, {"do": "unserializable"})
    assert "internal server error" in assert_error(response, 500, "InternalServerError")


def test_a_large_response_renders_as_json_does(server: Served) -> None:
    response = post(server, {"do": "large", "n": 50_000})
    assert response.json() == {"tokens": list(range(50_000)), "count": 50_000}
