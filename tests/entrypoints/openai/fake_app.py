"""Stand-ins for the in-process HTTP tests: build_app with a fake engine and serving layer,
served by uvicorn in a thread (``serve``), and helpers to call it.

tests/entrypoints/openai/conftest.py loads this file as the module ``fw_test_fake_app`` (with
``--import-mode=importlib`` nothing under tests/ is importable by name), so test files do
``from fw_test_fake_app import FakeEngine, serve, ...``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import requests
import uvicorn
from prometheus_client import CollectorRegistry

from fw.core.config import FrontendConfig
from fw.core.errors import EngineDeadError, EngineOverloadedError, RequestFailedError
from fw.entrypoints.openai.api_server import bind_socket, build_app, uvicorn_config
from fw.entrypoints.openai.errors import APIError
from fw.entrypoints.openai.metrics import LoggingStatLogger

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


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
        if action == "overloaded":
            raise EngineOverloadedError("the queue is full", retry_after=2.4)
        if action == "request_failed":
            raise RequestFailedError("sampling failed for this request", request_id)
        if action == "engine_dead":
            raise EngineDeadError("the engine is not running: device lost")
        if action == "sleep":
            await asyncio.sleep(body["seconds"])
        if action == "stream":  # "n" events, one per 10 ms (endless without "n")
            return self._events(num_events=body.get("n", 1_000_000))
        if action == "stream_then_fail":
            return self._events(fail_after=3)
        if action == "unserializable":
            return {"x": object()}
        if action == "large":
            return {"tokens": list(range(body["n"])), "count": body["n"]}
        return {"received": body, "request_id": request_id}

    def _events(self, num_events: int = 1_000_000, fail_after: int | None = None) -> AsyncIterator[str]:
        # The serving layer's own SSE framing (sse_stream: [DONE], failures in-band).
        from fw.entrypoints.openai.serving import OpenAIServing

        async def chunks() -> AsyncIterator[dict]:
            try:
                self.stream_started.set()
                for i in range(num_events):
                    if i == fail_after:
                        raise RequestFailedError("sampling failed midway", "r")
                    yield {"i": i}
                    await asyncio.sleep(0.01)
            finally:
                self.stream_closed.set()

        return OpenAIServing.sse_stream(None, chunks())  # type: ignore[arg-type]

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


def raw_request(server: Served, body: dict) -> socket.socket:
    """Send a request on a socket the test then closes: a client that goes away."""
    data = json.dumps(body).encode()
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock
