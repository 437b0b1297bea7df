"""Starting and stopping a real ``fw serve``: a busy port, $FW_API_KEY, SIGTERM with requests in flight.

(The graceful-shutdown limit itself is tested in-process in test_api_server.py.)
"""

from __future__ import annotations

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
