"""The HTTP layer alone: build_app with a fake engine and serving layer, served by uvicorn in a thread.

No model is loaded, so every case the real server cannot easily produce (an internal error,
a dead engine, a handler that never finishes) is exercised exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import pytest
import requests

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import uvicorn  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from fw.core.config import FrontendConfig  # noqa: E402
from fw.entrypoints.openai.api_server import bind_socket, build_app, uvicorn_config  # noqa: E402
from fw.entrypoints.openai.errors import APIError  # noqa: E402
from fw.entrypoints.openai.metrics import LoggingStatLogger  # noqa: E402

KEY = "sk-test-key"


@dataclass
class FakeEngine:
    dead_error: BaseException | None = None
    started: int = 0
    stopped: int = 0

    @property
    def is_dead(self) -> bool:
        return self.dead_error is not None

    def start(self) -> None:
        self.started += 1

    def shutdown(self, timeout: float = 5.0) -> None:
        self.stopped += 1


@dataclass
class FakeServing:
    """Behaves as the body's "do" says; records what reached it, thread-safely enough for tests."""

    request_ids: list[str] = field(default_factory=list)
    hanging: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stream_closed: threading.Event = field(default_factory=threading.Event)
    stream_started: threading.Event = field(default_factory=threading.Event)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": "tiny", "object": "model"}]}

    async def completions(self, body: Any, request_id: str) -> dict | AsyncIterator[str]:
        self.request_ids.append(request_id)
        action = body.get("do") if isinstance(body, dict) else None
        if action == "api_error":
            raise APIError("the prompt is empty", param="prompt")
        if action == "not_found":
            raise APIError("the model 'x' does not exist; this server serves: tiny", 404, "NotFoundError")
        if action == "crash":
            raise RuntimeError("a bug")
        if action == "hang":
            self.hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if action == "stream":
            return self._events()
        return {"received": body, "request_id": request_id}

    async def _events(self) -> AsyncIterator[str]:
        try:
            self.stream_started.set()
            for i in range(1_000_000):
                yield f"data: {json.dumps({'i': i})}\n\n"
                await asyncio.sleep(0.01)
        finally:
            self.stream_closed.set()

    chat_completions = completions

    async def tokenize(self, body: Any) -> dict:
        return {"tokens": [1, 2]}

    async def detokenize(self, body: Any) -> dict:
        return {"prompt": "hi"}


@dataclass
class Served:
    url: str
    engine: FakeEngine
    serving: FakeServing
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def frontend(**options: Any) -> FrontendConfig:
    return FrontendConfig(**{"uvicorn_log_level": "warning", **options})


def serve(frontend: FrontendConfig, stat_logger: LoggingStatLogger | None = None,
          engine: FakeEngine | None = None) -> Served:
    engine, serving = engine or FakeEngine(), FakeServing()
    app = build_app(engine, serving, frontend, ["tiny"], CollectorRegistry(), stat_logger)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, frontend, sock))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    scheme = "https" if frontend.ssl_certfile else "http"
    return Served(f"{scheme}://127.0.0.1:{sock.getsockname()[1]}", engine, serving, server, thread)


@pytest.fixture(scope="module")
def server():
    served = serve(frontend(api_key=KEY, enable_request_id_headers=True, allowed_origins=("https://chat.example",)))
    yield served
    served.stop()


AUTH = {"Authorization": f"Bearer {KEY}"}


def post(server: Served, body: Any, path: str = "/v1/completions", **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.url + path, data=data, headers={**AUTH, **kwargs.pop("headers", {})},
                         timeout=10, **kwargs)


def assert_error(response: requests.Response, status: int, type: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type, status)
    return error["message"]


def test_the_decoded_body_and_a_fresh_request_id_reach_the_serving_layer(server: Served) -> None:
    first, second = post(server, {"prompt": "hi", "n": 2}), post(server, [1, 2])
    assert first.json()["received"] == {"prompt": "hi", "n": 2}
    assert second.json()["received"] == [1, 2]  # any JSON value: refusing non-objects is serving's job
    assert first.json()["request_id"] != second.json()["request_id"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00garbage"])
def test_a_body_that_is_not_json_is_a_400(server: Served, raw: bytes) -> None:
    message = assert_error(post(server, raw), 400, "BadRequestError")
    assert "not valid JSON" in message
    assert post(server, {"ok": 1}).status_code == 200


def test_api_errors_keep_their_status_and_body(server: Served) -> None:
    response = post(server, {"do": "api_error"})
    assert_error(response, 400, "BadRequestError")
    assert response.json()["error"]["param"] == "prompt"
    assert_error(post(server, {"do": "not_found"}, "/v1/chat/completions"), 404, "NotFoundError")


def test_an_internal_error_is_a_500_logged_with_its_traceback(server: Served, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="fw"):
        message = assert_error(post(server, {"do": "crash"}), 500, "InternalServerError")
    assert "RuntimeError: a bug" in message
    record = next(r for r in caplog.records if r.name.startswith("fw.entrypoints.openai"))
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    assert post(server, {"after": "crash"}).status_code == 200


def test_fastapis_own_errors_have_openais_shape(server: Served) -> None:
    assert "GET / lists them" in assert_error(requests.get(server.url + "/v2/nothing", timeout=5), 404, "NotFoundError")
    response = requests.get(server.url + "/v1/completions", headers=AUTH, timeout=5)
    assert_error(response, 405, "MethodNotAllowedError")
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
def test_the_v1_routes_need_the_key(server: Served, headers: dict) -> None:
    for path, method in [("/v1/models", "get"), ("/v1/completions", "post"), ("/v1/chat/completions", "post")]:
        response = requests.request(method, server.url + path, headers=headers, json={}, timeout=5)
        assert_error(response, 401, "AuthenticationError")
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_key_opens_v1_and_the_rest_is_open(server: Served) -> None:
    assert requests.get(server.url + "/v1/models", headers=AUTH, timeout=5).json()["data"][0]["id"] == "tiny"
    lower = requests.get(server.url + "/v1/models", headers={"authorization": f"bearer {KEY}"}, timeout=5)
    assert lower.status_code == 200
    for path in ("/health", "/version", "/metrics", "/"):
        assert requests.get(server.url + path, timeout=5).status_code == 200, path
    for path in ("/tokenize", "/detokenize"):
        assert requests.post(server.url + path, json={}, timeout=5).status_code == 200, path


def test_request_id_header_echoes_the_clients_or_is_fresh(server: Served) -> None:
    mine = post(server, {}, headers={"X-Request-Id": "client-id-7"})
    assert mine.headers["x-request-id"] == "client-id-7"
    fresh = [post(server, {}).headers["x-request-id"] for _ in range(2)]
    assert fresh[0] != fresh[1] and len(fresh[0]) == 32
    # Errors carry it too, even a 401 that never reached a route.
    assert requests.get(server.url + "/v1/models", timeout=5).headers["x-request-id"]
    again = post(server, {}, headers={"X-Request-Id": "client-id-7"})
    assert again.json()["request_id"] != mine.json()["request_id"]  # engine ids stay unique


def test_behind_a_proxy_with_a_root_path() -> None:
    # A proxy that strips the /api prefix: routes and the key check work on the path it forwards.
    served = serve(frontend(root_path="/api", api_key=KEY))
    try:
        assert requests.get(served.url + "/v1/models", timeout=5).status_code == 401
        response = requests.post(served.url + "/v1/completions", json={"a": 1}, headers=AUTH, timeout=5)
        assert response.status_code == 200
        assert "x-request-id" not in response.headers  # not enabled here
        assert requests.get(served.url + "/health", timeout=5).status_code == 200
    finally:
        served.stop()


def test_https_with_the_given_key_and_certificate(tmp_path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    served = serve(frontend(ssl_keyfile=str(key), ssl_certfile=str(cert)))
    try:
        assert served.url.startswith("https://")
        assert requests.get(served.url + "/health", verify=str(cert), timeout=5).status_code == 200
    finally:
        served.stop()


def test_cors_preflight_and_headers(server: Served) -> None:
    preflight = requests.options(server.url + "/v1/chat/completions", timeout=5, headers={
        "Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://chat.example"
    refused = requests.options(server.url + "/v1/models", timeout=5, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert refused.status_code == 400
    denied = requests.get(server.url + "/v1/models", headers={"Origin": "https://chat.example"}, timeout=5)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://chat.example"


def test_index_version_and_metrics(server: Served) -> None:
    from fw import __version__

    index = requests.get(server.url + "/", timeout=5).json()
    assert index["name"] == "fw" and index["version"] == __version__ and index["models"] == ["tiny"]
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health",
            "GET /metrics", "POST /tokenize", "POST /detokenize", "GET /version"} <= set(index["endpoints"])
    assert requests.get(server.url + "/version", timeout=5).json() == {"version": __version__}
    metrics = requests.get(server.url + "/metrics", timeout=5)
    assert metrics.headers["content-type"].startswith("text/plain")


def raw_request(server: Served, body: dict) -> socket.socket:
    """Send a request on a socket the test then closes: a client that goes away."""
    data = json.dumps(body).encode()
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_disconnects_cancels_its_request(server: Served) -> None:
    server.serving.cancelled.clear()
    sock = raw_request(server, {"do": "hang"})
    assert server.serving.hanging.wait(5)
    assert not server.serving.cancelled.is_set()
    sock.close()
    assert server.serving.cancelled.wait(5), "the handler was not cancelled when its client left"
    assert post(server, {}).status_code == 200


def test_a_streaming_client_that_disconnects_closes_the_stream(server: Served) -> None:
    server.serving.stream_closed.clear()
    sock = raw_request(server, {"do": "stream"})
    head = sock.recv(4096)
    assert b"200 OK" in head and b"text/event-stream" in head
    assert not server.serving.stream_closed.is_set()
    sock.close()
    assert server.serving.stream_closed.wait(5), "the event stream was not closed when its client left"


def test_health_is_503_when_the_engine_is_dead() -> None:
    engine = FakeEngine()
    served = serve(frontend(), engine=engine)
    try:
        assert requests.get(served.url + "/health", timeout=5).status_code == 200
        engine.dead_error = RuntimeError("CUDA error: out of memory")
        response = requests.get(served.url + "/health", timeout=5)
        assert "CUDA error" in assert_error(response, 503, "ServiceUnavailableError")
    finally:
        served.stop()


def test_the_lifespan_starts_and_stops_the_engine_and_logs_stats(caplog) -> None:
    stat_logger = LoggingStatLogger(interval=0.05)
    with caplog.at_level(logging.DEBUG, logger="fw.entrypoints.openai.metrics"):
        served = serve(frontend(), stat_logger)
        assert served.engine.started == 1
        deadline = time.monotonic() + 5
        while not any("Avg prompt throughput" in r.message for r in caplog.records):
            assert time.monotonic() < deadline, "no stats line was logged"
            time.sleep(0.02)
        served.stop()
    assert served.engine.stopped == 1


def test_sigterm_cancels_a_stream_that_outlives_the_grace_period(monkeypatch) -> None:
    """run_server in this process: SIGTERM, a stream that never ends, a short grace period."""
    from fw.entrypoints.openai import api_server

    monkeypatch.setattr(api_server, "GRACEFUL_SHUTDOWN_SECONDS", 0.5)
    engine, serving, config = FakeEngine(), FakeServing(), frontend()
    app = build_app(engine, serving, config, ["tiny"], CollectorRegistry())
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def client() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(url + "/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.02)
        with requests.post(url + "/v1/completions", json={"do": "stream"}, stream=True, timeout=10) as response:
            assert serving.stream_started.wait(5)
            os.kill(os.getpid(), signal.SIGTERM)
            with contextlib.suppress(requests.RequestException):
                for _ in response.iter_lines():
                    pass

    handler_before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    start = time.monotonic()
    api_server.run_server(app, config, sock)  # returns: the signal neither kills nor raises
    assert time.monotonic() - start < 5
    assert serving.stream_closed.is_set(), "the endless stream was not closed"
    assert engine.stopped == 1
    assert signal.getsignal(signal.SIGTERM) == handler_before
    thread.join(5)


@pytest.mark.parametrize("level", ["error", "debug"])
def test_uvicorn_log_level_sets_the_http_servers_loggers(level):
    app = build_app(FakeEngine(), FakeServing(), frontend(uvicorn_log_level=level), ["tiny"], CollectorRegistry())
    with bind_socket("127.0.0.1", 0) as sock:
        uvicorn_config(app, frontend(uvicorn_log_level=level), sock)  # uvicorn configures logging here
    expected = getattr(logging, level.upper())
    assert logging.getLogger("uvicorn.error").level == expected
    assert logging.getLogger("uvicorn.access").level == expected
