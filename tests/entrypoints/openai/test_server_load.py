"""The server under load: concurrent streams equal offline generation, clients that leave free
their KV blocks, and /health stays fast while the engine is busy."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import pytest
import requests

openai = pytest.importorskip("openai")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.slow  # a real fw serve process under load

WORDS = "the quick brown fox jumps over lazy dog journey thousand miles begins single step".split()
METRIC_NAMES = ["fw:num_requests_running", "fw:num_requests_waiting", "fw:kv_cache_usage_perc",
                "fw:prefix_cache_queries", "fw:prefix_cache_hits", "fw:prompt_tokens", "fw:generation_tokens",
                "fw:num_preemptions", "fw:time_to_first_token_seconds", "fw:inter_token_latency_seconds",
                "fw:e2e_request_latency_seconds", "fw:request_queue_time_seconds", "fw:request_success"]


def metrics(server) -> dict[str, float]:
    """Every sample of /metrics, by name and then by name plus labels other than model_name."""
    text = requests.get(server.url + "/metrics", timeout=5).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.get("model_name") == "tiny", sample
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model_name")
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def prompts(count: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 5)) for i in range(count)]


async def stream_text(client, prompt: str, max_tokens: int) -> str:
    stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
    return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])


def poll_health(server, stop: threading.Event, latencies: list[float]) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            start = time.perf_counter()
            assert session.get(server.url + "/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - start)
            stop.wait(0.02)


def test_64_concurrent_greedy_streams_equal_offline_generation(server, tiny_checkpoint) -> None:
    from fw import LLM, SamplingParams

    texts = prompts(64)
    max_tokens = 32
    latencies: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_health, args=(server, stop, latencies))

    async def run_all() -> list[str]:
        async with server.async_client() as client:
            poller.start()
            try:
                return await asyncio.gather(*(stream_text(client, p, max_tokens) for p in texts))
            finally:
                stop.set()

    served = asyncio.run(run_all())
    poller.join()
    llm = LLM(str(tiny_checkpoint()), dtype="float32", max_model_len=512, kv_cache_memory_bytes="64MiB")
    offline = llm.generate(texts, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True),
                           use_tqdm=False)
    assert served == [output.outputs[0].text for output in offline]
    # /health answered while 64 streams kept the engine busy (measured from this busy process).
    assert len(latencies) >= 3
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 1.0, latencies


def test_streams_cancelled_after_their_first_token_free_every_block(server) -> None:
    num_requests, max_tokens = 50, 480
    before = metrics(server)["fw:generation_tokens_total"]

    async def start_and_leave() -> None:
        async with server.async_client() as client:
            streams = await asyncio.gather(*(client.completions.create(
                model="tiny", prompt=p, max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True})
                for p in prompts(num_requests)))
            for stream in streams:
                first = await stream.__anext__()
                assert first.choices[0].text is not None
            busy = metrics(server)
            assert busy["fw:kv_cache_usage_perc"] > 0
            assert busy["fw:num_requests_running"] + busy["fw:num_requests_waiting"] > 0
            await asyncio.gather(*(stream.close() for stream in streams))

    asyncio.run(start_and_leave())
    now = wait_until_no_blocks_in_use(server)
    # They were aborted, not run to the end: far fewer tokens than they asked for were generated.
    assert now["fw:generation_tokens_total"] - before < num_requests * max_tokens / 2
    assert now["fw:num_requests_waiting"] == 0


def wait_until_no_blocks_in_use(server, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while (now := metrics(server))["fw:kv_cache_usage_perc"] > 0 or now["fw:num_requests_running"] > 0:
        assert time.monotonic() < deadline, f"KV blocks still in use after the clients left: {now}"
        time.sleep(0.05)
    return now


def test_clients_that_time_out_abort_their_requests(server) -> None:
    # 8 requests of 8 sequences each: seconds of work, where the clients give up after 0.2 s.
    num_requests, n, max_tokens = 8, 8, 480
    before = metrics(server)["fw:generation_tokens_total"]
    num_cancelled = server.output().count("cancelled: the client disconnected")

    async def time_out() -> None:
        async with server.async_client(timeout=0.2) as client:
            results = await asyncio.gather(*(client.completions.create(
                model="tiny", prompt=p, n=n, max_tokens=max_tokens, extra_body={"ignore_eos": True})
                for p in prompts(num_requests)), return_exceptions=True)
        assert all(isinstance(r, openai.APITimeoutError) for r in results), results

    asyncio.run(time_out())
    now = wait_until_no_blocks_in_use(server)
    assert now["fw:generation_tokens_total"] - before < num_requests * n * max_tokens / 2
    deadline = time.monotonic() + 5
    while server.output().count("cancelled: the client disconnected") < num_cancelled + num_requests:
        assert time.monotonic() < deadline, "the server did not log every cancelled request"
        time.sleep(0.05)


def test_metrics_name_every_vllm_metric_with_the_model_name(server) -> None:
    client = server.client()
    client.completions.create(model="tiny", prompt="the quick", max_tokens=3, extra_body={"ignore_eos": True})
    found = metrics(server)
    for name in METRIC_NAMES:
        assert any(key == name or key.startswith((name + "_", name + "{")) for key in found), name
    assert found["fw:request_success_total{finished_reason=length}"] >= 1
    assert found["fw:prompt_tokens_total"] > 0 and found["fw:time_to_first_token_seconds_count"] > 0
