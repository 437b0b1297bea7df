"""A real ``fw serve`` process on a free loopback port, serving the tiny checkpoint.

``server`` is one process for the whole session (most tests share it); ``start_server`` starts
more when a test needs its own (SIGTERM, other options). Each waits for ``GET /health`` and,
if the process dies first, fails with the server's output.

The in-process HTTP tests' stand-ins live in fake_app.py, loaded here as the module
``fw_test_fake_app`` (see its docstring).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

def _load_fake_app() -> None:
    spec = importlib.util.spec_from_file_location("fw_test_fake_app", Path(__file__).with_name("fake_app.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # before running it: its dataclasses look their module up
    spec.loader.exec_module(module)


_load_fake_app()

API_KEY = "sk-fw-test-key"
SERVED_NAMES = ("tiny", "tiny-alias")
ENGINE_ARGS = ("--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", "64MiB")
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A running ``fw serve``: its address, its process and its combined output."""

    process: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None = None
    served_names: tuple[str, ...] = SERVED_NAMES

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header, when the server needs a key."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **options: Any):
        import openai

        return openai.OpenAI(**{"base_url": self.base_url, "api_key": self.api_key or "none", "max_retries": 0,
                                "timeout": 60, **options})

    def async_client(self, **options: Any):
        import openai

        return openai.AsyncOpenAI(**{"base_url": self.base_url, "api_key": self.api_key or "none", "max_retries": 0,
                                     "timeout": 60, **options})

    def wait_until_healthy(self, timeout: float = START_TIMEOUT) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"fw serve exited with {self.process.returncode} before it was healthy:\n{self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"fw serve was not healthy after {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, and SIGKILL if it does not go; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch(checkpoint: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``python -m fw serve`` (not yet healthy: call ``wait_until_healthy``)."""
    port = free_port()
    log_path = log_dir / f"fw-serve-{port}.log"
    command = [sys.executable, "-m", "fw", "serve", str(checkpoint), "--served-model-name", *SERVED_NAMES,
               *ENGINE_ARGS, "--host", "127.0.0.1", "--port", str(port), *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "FW_PLUGINS": "", **(env or {})})
    api_key = extra[extra.index("--api-key") + 1] if "--api-key" in extra else None
    return ServerProcess(process, port, log_path, api_key)


@pytest.fixture(scope="session")
def start_server(tiny_checkpoint, tmp_path_factory) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(*extra_args, env=None)`` -> a healthy server; all are stopped at the end."""
    started: list[ServerProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        server = launch(tiny_checkpoint(), tmp_path_factory.mktemp("serve"), *extra, env=env)
        started.append(server)
        if wait:
            server.wait_until_healthy()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> ServerProcess:
    """The shared server: key required, X-Request-Id headers on."""
    return start_server("--api-key", API_KEY, "--enable-request-id-headers")
