"""A soak test: a mixed, hostile load against one real ``fw serve`` for a fixed time.

Workers draw request kinds at random until the deadline: normal streams and responses (greedy,
so each has one right answer: the output it has alone, measured first), streams cancelled at a
random point, malformed and oversized bodies, slow clients, requests that trigger an injected
fault inside an engine step (the ``faulty-cpu`` platform of tests/fault_plugin.py), and bursts
past the queue limit. Afterwards every normal request must have completed with its solo output,
the engine must be alive and serving, the KV cache empty, and the server's RSS growth bounded.

``FW_SOAK_SECONDS`` sets the duration (default 40, CI's); the figures of a run are printed
(``pytest -s``) and recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import collections
import json
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import requests

pytestmark = pytest.mark.slow  # a real fw serve process under load for FW_SOAK_SECONDS

DURATION = float(os.environ.get("FW_SOAK_SECONDS", "40"))
WORKERS = 8
KEY = "sk-soak"
BODY_LIMIT = 256 * 1024
QUEUE_LIMIT = 24
HEADER_TIMEOUT = 2
PROMPTS = [f"the quick brown fox {i} jumps over" for i in range(6)]
FAULT_TEMPERATURE = 1.2345  # tests/fault_plugin.py: this request's sampling raises

MALFORMED = [
    b"{not json",
    b"[" * 10_000 + b"]" * 10_000,
    json.dumps({"model": "tiny", "prompt": "\ud800 lone surrogate"}).encode(),
    json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": "3"}).encode(),
    json.dumps({"model": "tiny", "prompt": "hi", "temperature": float("inf")}, allow_nan=True).encode(),
    json.dumps({"model": "tiny", "prompt": "hi", "stop_token_ids": [2**70]}).encode(),
    json.dumps({"model": "tiny", "prompt": "hi", "n": 2, "seed": 2**64 - 1}).encode(),
    json.dumps({"model": "tiny", "prompt": "hi", "response_format": "garbage"}).encode(),
    json.dumps({"model": "tiny", "prompt": ["hi"] * 100, "n": 256}).encode(),
    json.dumps({"model": "\ud800", "prompt": "hi"}).encode(),
]


class Soak:
    """The load generator's counters and the server it talks to."""

    def __init__(self, url: str, solo: dict[str, str]) -> None:
        self.url = url
        self.solo = solo
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    def post(self, path: str, body: dict | bytes, stream: bool = False) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(self.url + path, data=data, stream=stream, timeout=120,
                             headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})

    # ---------------------------------------------------------------- kinds

    def normal(self, rng: random.Random) -> None:
        prompt = rng.choice(PROMPTS)
        stream = rng.random() < 0.5
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": stream}
        for _ in range(50):  # a full queue answers 503: come back after Retry-After, as a client would
            response = self.post("/v1/completions", body, stream=stream)
            if response.status_code != 503:
                break
            self.count("normal refused with 503, retried")
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 1.0))
        if response.status_code != 200:
            return self.fail(f"normal request: {response.status_code} {response.text[:200]}")
        text = "".join(event["choices"][0]["text"] for event in sse_events(response)) if stream \
            else response.json()["choices"][0]["text"]
        if text != self.solo[prompt]:
            return self.fail(f"normal request for {prompt!r} gave {text!r}, alone {self.solo[prompt]!r}")
        self.count("normal completed (stream)" if stream else "normal completed")

    def cancelled(self, rng: random.Random) -> None:
        body = {"model": "tiny", "prompt": rng.choice(PROMPTS), "max_tokens": 200, "temperature": 0.7,
                "stream": True, "ignore_eos": True}
        response = self.post("/v1/completions", body, stream=True)
        if response.status_code == 503:
            return self.count("cancelled-kind refused with 503")
        lines = response.iter_lines()
        for _ in range(rng.randint(0, 20)):
            if next(lines, None) is None:
                break
        response.close()
        self.count("stream cancelled")

    def malformed(self, rng: random.Random) -> None:
        response = self.post("/v1/completions", rng.choice(MALFORMED))
        if not 400 <= response.status_code < 500 or "error" not in response.json():
            return self.fail(f"malformed body: {response.status_code} {response.text[:200]}")
        self.count(f"malformed refused with {response.status_code}")

    def oversized(self, rng: random.Random) -> None:
        response = self.post("/v1/completions", {"model": "tiny", "prompt": "x" * (BODY_LIMIT + rng.randint(1, 10**5))})
        if response.status_code != 413:
            return self.fail(f"oversized body: {response.status_code} {response.text[:200]}")
        self.count("oversized refused with 413")

    def slow_client(self, rng: random.Random) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        start = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=HEADER_TIMEOUT * 4) as sock:
            try:
                for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(0.5)
                    if time.monotonic() - start > HEADER_TIMEOUT * 3:
                        break
                sock.recv(1024)
            except OSError:
                pass  # the server closed the connection on us
        elapsed = time.monotonic() - start
        if elapsed > HEADER_TIMEOUT * 3:
            return self.fail(f"a slow client was still connected after {elapsed:.1f} s")
        self.count("slow client dropped")

    def fault(self, rng: random.Random) -> None:
        stream = rng.random() < 0.5
        body = {"model": "tiny", "prompt": rng.choice(PROMPTS), "max_tokens": 8, "temperature": FAULT_TEMPERATURE,
                "stream": stream}
        response = self.post("/v1/completions", body, stream=stream)
        if response.status_code == 503:
            return self.count("fault-kind refused with 503")
        # Before its first token a failure is a plain 500 (a stream too); after it, an SSE error event.
        failed = response.status_code == 500 or (
            stream and response.status_code == 200 and any("error" in event for event in sse_events(response)))
        if not failed:
            return self.fail(f"fault-injected request did not fail (status {response.status_code})")
        self.count("fault-injected request failed alone")

    def burst(self, rng: random.Random) -> None:
        body = {"model": "tiny", "prompt": "burst", "max_tokens": 4, "temperature": 0}
        with ThreadPoolExecutor(QUEUE_LIMIT + 16) as pool:
            statuses = list(pool.map(lambda _: self.post("/v1/completions", body), range(QUEUE_LIMIT + 16)))
        for response in statuses:
            if response.status_code == 503 and response.headers.get("Retry-After", "").isdigit():
                self.count("burst request refused with 503 + Retry-After")
            elif response.status_code == 200:
                self.count("burst request completed")
            else:
                self.fail(f"burst request: {response.status_code} {response.text[:200]}")


def sse_events(response: requests.Response) -> list[dict]:
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: "):]))
    return events


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def kv_cache_usage(url: str) -> float:
    metrics = requests.get(url + "/metrics", timeout=10).text
    line = next(line for line in metrics.splitlines() if line.startswith("fw:kv_cache_usage_perc"))
    return float(line.split()[-1])


def test_a_mixed_hostile_load_leaves_the_server_serving_and_nothing_leaked(start_server, fault_plugin_env):
    server = start_server("--device", "faulty-cpu", "--api-key", KEY, "--max-request-body-bytes", str(BODY_LIMIT),
                          "--max-num-queued-reqs", str(QUEUE_LIMIT), "--max-num-seqs", "16",
                          "--header-read-timeout", str(HEADER_TIMEOUT),
                          env={**fault_plugin_env, "FW_PLUGINS": "fault"})
    soak = Soak(server.url, {})
    for prompt in PROMPTS:  # each prompt's output alone, on the idle server (twice: it is deterministic)
        outputs = {soak.post("/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 16,
                                                 "temperature": 0}).json()["choices"][0]["text"] for _ in range(2)}
        assert len(outputs) == 1
        soak.solo[prompt] = outputs.pop()
    rss_before = rss_bytes(server.process.pid)

    kinds: list[tuple[Callable[[random.Random], None], float]] = [
        (soak.normal, 10), (soak.cancelled, 3), (soak.malformed, 3), (soak.oversized, 1), (soak.slow_client, 0.5),
        (soak.fault, 1), (soak.burst, 0.2)]
    deadline = time.monotonic() + DURATION

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
            try:
                kind(rng)
            except Exception as error:  # noqa: BLE001 - every failure is reported at the end
                soak.fail(f"{kind.__name__}: {type(error).__name__}: {error}")

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(worker, range(WORKERS)))

    # Cancelled streams are aborted as the server notices the closed connection: give it a moment.
    usage_deadline = time.monotonic() + 10
    while kv_cache_usage(server.url) != 0.0 and time.monotonic() < usage_deadline:
        time.sleep(0.2)
    usage = kv_cache_usage(server.url)
    soak.normal(random.Random(0))  # still serving, still right
    rss_after = rss_bytes(server.process.pid)
    figures = {**soak.counts, "failures": len(soak.failures), "kv cache usage after": usage,
               "rss before MiB": round(rss_before / 2**20, 1), "rss after MiB": round(rss_after / 2**20, 1)}
    print(f"\nsoak, {DURATION:.0f} s, {WORKERS} workers: {json.dumps(figures, indent=1, sort_keys=True)}")

    assert not soak.failures, soak.failures[:10]
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    assert usage == 0.0
    assert soak.counts["normal completed"] + soak.counts["normal completed (stream)"] > 20
    assert soak.counts["fault-injected request failed alone"] > 0
    assert rss_after - rss_before < 256 * 2**20
    assert server.process.poll() is None
