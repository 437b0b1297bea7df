"""The shutdown in process: run_server in this (main) thread with a fake engine and serving layer,
signals sent to this process, clients in threads. (test_serve_lifecycle.py does the same with real
``fw serve`` processes.)"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import requests
from fw_test_fake_app import FakeEngine, FakeServing, assert_error, frontend
from prometheus_client import CollectorRegistry

from fw.entrypoints.openai import api_server
from fw.entrypoints.openai.api_server import bind_socket, build_app
from fw.entrypoints.openai.shutdown import Lifecycle


@dataclass
class Run:
    """What happened while run_server ran: its exit code and time, what the clients saw."""

    code: int
    elapsed: float
    serving: FakeServing
    engine: FakeEngine
    seen: dict[str, Any] = field(default_factory=dict)


def run(client: Callable[[str, FakeServing, dict], None], caplog, lifecycle: Lifecycle | None = None,
        **options: Any) -> Run:
    """Serve until the server stops; ``client(url, serving, seen)`` runs in a thread meanwhile."""
    engine, serving, config = FakeEngine(), FakeServing(), frontend(**options)
    app = build_app(engine, serving, config, ["tiny"], CollectorRegistry(), lifecycle=lifecycle)
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    seen: dict[str, Any] = {}

    def wait_then_run() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(url + "/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.02)
        client(url, serving, seen)

    handler_before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=wait_then_run, daemon=True)
    thread.start()
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        code = api_server.run_server(app, config, sock)  # returns: the signal neither kills nor raises
    elapsed = time.monotonic() - start
    thread.join(10)
    assert not thread.is_alive(), "a client was left hanging"
    assert signal.getsignal(signal.SIGTERM) == handler_before
    assert "Traceback" not in caplog.text and "CancelledError" not in caplog.text
    assert engine.stopped == 1
    return Run(code, elapsed, serving, engine, seen)


def stream_lines(url: str, body: dict, on_first: Callable[[], None]) -> list[str]:
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=20) as response:
        lines = []
        for line in response.iter_lines(decode_unicode=True):
            if line and not lines:
                on_first()
            if line:
                lines.append(line.removeprefix("data: "))
        return lines


def assert_ended_by_shutdown(lines: list[str]) -> None:
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert (error["code"], error["type"]) == (503, "ServiceUnavailableError") and "shutting down" in error["message"]


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_by_default_a_signal_ends_streams_and_requests_at_once_well_formed(caplog) -> None:
    def client(url: str, serving: FakeServing, seen: dict) -> None:
        hanging = threading.Thread(target=lambda: seen.update(
            hang=requests.post(url + "/v1/completions", json={"do": "hang"}, timeout=20)))
        hanging.start()
        assert serving.hanging.wait(5)
        seen["lines"] = stream_lines(url, {"do": "stream"}, sigterm)
        hanging.join(10)

    result = run(client, caplog)  # --shutdown-timeout 0, vLLM's default
    assert result.code == 0 and result.elapsed < 5
    assert_ended_by_shutdown(result.seen["lines"])
    assert "shutting down" in assert_error(result.seen["hang"], 503, "ServiceUnavailableError")
    assert result.serving.cancelled.is_set() and result.serving.stream_closed.is_set()


def test_a_grace_period_lets_short_requests_finish_and_ends_the_rest(caplog) -> None:
    def client(url: str, serving: FakeServing, seen: dict) -> None:
        short = threading.Thread(target=lambda: seen.update(
            short=stream_lines(url, {"do": "stream", "n": 30}, lambda: None)))
        short.start()
        assert serving.stream_started.wait(5)
        signalled = []

        def on_first() -> None:
            sigterm()
            signalled.append(time.monotonic())

        def during_grace() -> None:
            while not signalled:
                time.sleep(0.01)
            time.sleep(0.3)
            # The listener stays open: a new request and /health get 503 with Connection: close.
            seen["health"] = requests.get(url + "/health", timeout=5)
            seen["new"] = requests.post(url + "/v1/completions", json={}, timeout=5)

        probe = threading.Thread(target=during_grace)
        probe.start()
        seen["endless"] = stream_lines(url, {"do": "stream"}, on_first)
        seen["ended_after"] = time.monotonic() - signalled[0]
        short.join(10)
        probe.join(10)

    result = run(client, caplog, shutdown_timeout=1.0)
    assert result.code == 0 and result.elapsed < 6
    short = result.seen["short"]
    assert len(short) == 31 and short[-1] == "[DONE]" and "error" not in short[-2]  # finished in the grace period
    assert_ended_by_shutdown(result.seen["endless"])
    assert 0.9 < result.seen["ended_after"] < 3
    assert_error(result.seen["health"], 503, "ServiceUnavailableError")
    new = result.seen["new"]
    assert "takes no new requests" in assert_error(new, 503, "ServiceUnavailableError")
    assert new.headers["connection"] == "close"
    assert "1 requests in flight get 1 s to finish" in caplog.text or "2 requests in flight" in caplog.text


def test_a_second_signal_ends_the_grace_period_at_once(caplog) -> None:
    def client(url: str, serving: FakeServing, seen: dict) -> None:
        def twice() -> None:
            sigterm()
            threading.Timer(0.3, sigterm).start()

        seen["lines"] = stream_lines(url, {"do": "stream"}, twice)

    result = run(client, caplog, shutdown_timeout=60.0)
    assert result.code == 0 and result.elapsed < 5
    assert_ended_by_shutdown(result.seen["lines"])


def test_sigint_drains_as_sigterm_does(caplog) -> None:
    def client(url: str, serving: FakeServing, seen: dict) -> None:
        seen["lines"] = stream_lines(url, {"do": "stream"}, lambda: os.kill(os.getpid(), signal.SIGINT))

    result = run(client, caplog)
    assert result.code == 0
    assert_ended_by_shutdown(result.seen["lines"])
    assert "SIGINT received" in caplog.text


def test_when_the_engine_dies_the_server_stops_and_exits_1(caplog) -> None:
    lifecycle = Lifecycle(shutdown_timeout=30.0)  # not waited for: the engine failed its requests already

    def client(url: str, serving: FakeServing, seen: dict) -> None:
        # What AsyncEngine does on its thread once it failed every request in flight.
        threading.Thread(target=lifecycle.engine_died, args=(RuntimeError("CUDA error: device lost"),)).start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                seen["health"] = requests.get(url + "/health", timeout=1)
            except requests.ConnectionError:
                break
            time.sleep(0.02)

    result = run(client, caplog, lifecycle=lifecycle)
    assert result.code == 1 and result.elapsed < 5
    assert "the engine died (RuntimeError: CUDA error: device lost)" in caplog.text
    if "health" in result.seen:  # asked while the server drained
        assert result.seen["health"].status_code in (200, 503)
