"""Starting and stopping a real ``fw serve``: a busy port, $FW_API_KEY, SIGTERM with requests in
flight and a grace period (--shutdown-timeout), a second signal, and the engine's death.

(The same shutdown cases run in process, with a fake engine, in test_shutdown.py.)
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest
import requests

pytestmark = pytest.mark.slow  # real fw serve processes

openai = pytest.importorskip("openai")
psutil = pytest.importorskip("psutil")


def test_a_busy_port_fails_at_once_in_one_line(run_fw, tiny_checkpoint, capsys) -> None:
    checkpoint = str(tiny_checkpoint())
    capsys.readouterr()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        result = run_fw("serve", checkpoint, "--host", "127.0.0.1", "--port", str(port))
    assert result.code == 1
    assert result.err == f"fw: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert "engine is ready" not in result.out  # it failed before loading the model
    assert time.monotonic() - start < 5


def test_sigterm_with_requests_in_flight_exits_0_within_seconds(start_server) -> None:
    server = start_server(env={"FW_API_KEY": "sk-from-env"})
    # Without --api-key, the key comes from $FW_API_KEY.
    assert requests.get(server.base_url + "/models", timeout=5).status_code == 401
    server.api_key = "sk-from-env"
    assert requests.get(server.base_url + "/models", headers=server.auth, timeout=5).status_code == 200
    process = psutil.Process(server.process.pid)
    children = process.children(recursive=True)
    client = server.client()
    streaming = threading.Barrier(9)
    outcomes: list[str] = []

    def stream(i: int) -> None:
        try:
            chunks = client.completions.create(model="tiny", prompt=f"the quick {i}", max_tokens=480, stream=True,
                                               extra_body={"ignore_eos": True})
            for n, _ in enumerate(chunks):
                if n == 0:
                    streaming.wait(10)
            outcomes.append("finished")
        except (openai.APIError, requests.RequestException, threading.BrokenBarrierError) as e:
            outcomes.append(type(e).__name__)  # aborted by the shutdown: acceptable, a hang is not

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    streaming.wait(30)  # every request has its first token
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(20)
    elapsed = time.monotonic() - start
    assert code == 0, server.output()
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    print(f"stopped {elapsed:.2f} s after SIGTERM; clients: {outcomes}")
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a client was left hanging"
    assert len(outcomes) == 8
    assert not psutil.pid_exists(process.pid)
    assert not [child for child in children if child.is_running()], "orphaned processes"
    output = server.output()
    assert "Application shutdown complete" in output and "Traceback" not in output


def stream_events(server, body: dict, events: list[str], first: threading.Event | None = None) -> None:
    """Read a completion stream's events into ``events`` (``"<closed>"`` if the connection broke)."""
    try:
        with requests.post(server.base_url + "/completions", json={"model": "tiny", "stream": True, **body},
                           headers=server.auth, stream=True, timeout=60) as response:
            for line in response.iter_lines(decode_unicode=True):
                if line:
                    events.append(line.removeprefix("data: "))
                    if first is not None:
                        first.set()
    except requests.RequestException:
        events.append("<closed>")


LONG = {"prompt": "the quick", "max_tokens": 480, "n": 64, "ignore_eos": True}  # seconds on the tiny model


def assert_ended_by_the_shutdown(events: list[str]) -> None:
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"]) == (503, "ServiceUnavailableError") and "shutting down" in error["message"]


def test_sigterm_lets_short_requests_finish_and_ends_long_streams_well_formed(start_server) -> None:
    server = start_server("--shutdown-timeout", "1")
    long_events: list[list[str]] = [[], []]
    short_events: list[str] = []
    started = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=stream_events, args=(server, LONG, long_events[i], started[i]))
               for i in range(2)]
    for thread in threads:
        thread.start()
    assert all(event.wait(30) for event in started)
    short = threading.Thread(target=stream_events, args=(server, {"prompt": "hi", "max_tokens": 5}, short_events))
    short.start()
    time.sleep(0.05)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = requests.post(server.base_url + "/completions", json={"model": "tiny", "prompt": "x"}, timeout=5)
    health = requests.get(server.url + "/health", timeout=5)
    code = server.process.wait(20)
    elapsed = time.monotonic() - start
    for thread in [*threads, short]:
        thread.join(10)
    assert code == 0, server.output()
    assert 1 <= elapsed < 8, f"took {elapsed:.1f} s to stop"
    assert (refused.status_code, health.status_code) == (503, 503)
    assert refused.json()["error"]["type"] == "ServiceUnavailableError"
    assert short_events[-1] == "[DONE]" and "error" not in short_events[-2]  # it finished in the grace period
    for events in long_events:
        assert_ended_by_the_shutdown(events)
    output = server.output()
    assert "Traceback" not in output and "CancelledError" not in output and "Application shutdown complete" in output


def test_a_second_sigterm_exits_at_once(start_server) -> None:
    server = start_server("--shutdown-timeout", "120")
    events: list[str] = []
    started = threading.Event()
    thread = threading.Thread(target=stream_events, args=(server, LONG, events, started))
    thread.start()
    assert started.wait(30)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(20)
    elapsed = time.monotonic() - start
    thread.join(10)
    assert code == 0 and elapsed < 5, f"exit {code} after {elapsed:.1f} s"
    assert_ended_by_the_shutdown(events)
    assert "Traceback" not in server.output()


def test_when_the_engine_dies_requests_fail_and_the_server_exits_nonzero(start_server, fault_plugin_env) -> None:
    server = start_server("--device", "faulty-cpu", env={**fault_plugin_env, "FW_PLUGINS": "fault"})
    events: list[str] = []
    started = threading.Event()
    thread = threading.Thread(target=stream_events, args=(server, LONG, events, started))
    thread.start()
    assert started.wait(30)
    # The fault plugin's "device lost" marker: this sampling op and every forward after it raise.
    lost = requests.post(server.base_url + "/completions", headers=server.auth, timeout=30,
                         json={"model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": 1.618})
    code = server.process.wait(20)
    thread.join(10)
    assert code != 0, server.output()
    assert lost.status_code in (500, 503) and set(lost.json()["error"]) == {"message", "type", "param", "code"}
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] in (500, 503)
    assert "the engine died" in server.output()
