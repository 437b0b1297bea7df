"""A real ``fw serve`` process for the client commands' tests, started once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVED_NAME = "tiny"
#: The options every engine in these tests runs with (server, run-batch, fw.LLM).
ENGINE_OPTIONS = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", "64MiB"]
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    base_url: str  # http://127.0.0.1:PORT
    model_path: Path
    log: Path

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.api_url, api_key="EMPTY", max_retries=0)


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory):
    """``python -m fw serve <tiny checkpoint>`` on a free loopback port, once /health answers 200."""
    model_path = Path(tiny_checkpoint())
    log = tmp_path_factory.mktemp("fw-serve") / "server.log"
    port = free_port()
    command = [sys.executable, "-m", "fw", "serve", str(model_path), *ENGINE_OPTIONS,
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "FW_PLUGINS": ""})
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(base_url):
            if process.poll() is not None:
                pytest.fail(f"fw serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"fw serve did not answer /health in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)  # polling /health, not waiting blindly
        yield Server(base_url, model_path, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
