"""``fw bench serve``: load-test a running OpenAI-compatible server, as ``vllm bench serve`` does.

Prompts are random token ids (``--dataset random``) sent as token-id prompts to
``/v1/completions``, so no tokenizer is needed here and every prompt has exactly its length;
for ``/v1/chat/completions`` the server's ``/detokenize`` turns them into text first.
Ids are drawn below a bound learnt from the server: the largest id its ``/tokenize`` gives
for a varied sample text (every id below one the tokenizer produces is in its vocabulary),
unless ``--random-vocab-size`` says otherwise. Each request generates exactly its output
length (``max_tokens`` with ``ignore_eos``) and streams with ``include_usage``, so the time to
the first token and between tokens are measured chunk by chunk. Requests arrive as a Poisson
process at ``--request-rate`` (a gamma process with ``--burstiness``), at most
``--max-concurrency`` at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fw.core.config import ConfigError
from fw.entrypoints.bench_serve_report import compute_metrics, plot_latencies, print_summary
from fw.entrypoints.client import ClientError, api_key, api_errors, describe_api_error

if TYPE_CHECKING:
    import openai

    from fw.core.plugins import Plugins

#: Text tokenized to learn a safe bound for random token ids: words, digits, punctuation, non-ASCII.
VOCAB_SAMPLE = (
    "The quick brown fox jumps over the lazy dog while 12 zebras, 345 quails and 6789 yaks watch; "
    "Über naïve café façades, señor! ¿Qué tal? 東京 서울 Москва — emoji 🙂🚀 and code: def f(x): return x**2 "
    "{\"key\": [1, 2.5, null]} <html></html> #include <stdio.h> SELECT * FROM t WHERE id = 42;"
)
#: No request should be cut short by a client timeout while a long benchmark runs (vLLM: 6 hours).
REQUEST_TIMEOUT_S = 6 * 60 * 60


@dataclass(frozen=True)
class BenchPrompt:
    """One request to send: its prompt (token ids or text), prompt length and forced output length."""

    prompt: list[int] | str
    prompt_len: int
    output_len: int


@dataclass
class RequestResult:
    """What one request measured; times in seconds."""

    success: bool = False
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    error: str = ""


def random_lengths(length: int, range_ratio: float, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` lengths drawn uniformly from [length * (1 - ratio), length * (1 + ratio)], at least 1."""
    low, high = max(1, int(length * (1 - range_ratio))), max(1, int(length * (1 + range_ratio)))
    return rng.integers(low, high + 1, size=num)


def random_prompts(args: argparse.Namespace, vocab_size: int) -> list[BenchPrompt]:
    """``--num-prompts`` random token-id prompts and output lengths, reproducible from ``--seed``."""
    rng = np.random.default_rng(args.seed)
    input_lens = random_lengths(args.random_input_len, args.random_range_ratio, args.num_prompts, rng)
    output_lens = random_lengths(args.random_output_len, args.random_range_ratio, args.num_prompts, rng)
    return [
        BenchPrompt(rng.integers(0, vocab_size, size=int(n)).tolist(), int(n), int(m))
        for n, m in zip(input_lens, output_lens)
    ]


def post_json(url: str, body: dict, key: str | None) -> Any:
    """POST a JSON body to a server route outside the OpenAI client's reach (``/tokenize``)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key(key)}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def vocab_bound(base_url: str, model: str, key: str | None) -> int:
    """One more than the largest token id the server's tokenizer gives for :data:`VOCAB_SAMPLE`."""
    url = f"{base_url}/tokenize"
    try:
        tokens = post_json(url, {"model": model, "prompt": VOCAB_SAMPLE}, key)["tokens"]
        return max(int(t) for t in tokens) + 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"cannot learn the vocabulary size from {url} ({exc}); "
                          "pass --random-vocab-size") from None


def as_text(prompts: list[BenchPrompt], base_url: str, model: str, key: str | None) -> list[BenchPrompt]:
    """The prompts as text, through the server's ``/detokenize`` (chat messages cannot be token ids)."""
    url = f"{base_url}/detokenize"
    try:
        return [BenchPrompt(post_json(url, {"model": model, "tokens": p.prompt}, key)["prompt"], p.prompt_len,
                            p.output_len) for p in prompts]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"cannot turn the random prompts into text through {url} ({exc})") from None


class Sender:
    """Sends benchmark requests to one endpoint of one model and times their streamed chunks."""

    def __init__(self, client: openai.AsyncOpenAI, args: argparse.Namespace, model: str) -> None:
        self.client, self.model, self.args = client, model, args
        self.chat = args.endpoint == "/v1/chat/completions"

    async def _create(self, prompt: BenchPrompt) -> Any:
        common = dict(
            model=self.model, stream=True, stream_options={"include_usage": True}, max_tokens=prompt.output_len,
            temperature=self.args.temperature, extra_body={"ignore_eos": self.args.ignore_eos},
            timeout=REQUEST_TIMEOUT_S,
        )
        if self.chat:
            messages = [{"role": "user", "content": prompt.prompt}]
            return await self.client.chat.completions.create(messages=messages, **common)
        return await self.client.completions.create(prompt=prompt.prompt, **common)

    async def send(self, prompt: BenchPrompt) -> RequestResult:
        import openai

        result = RequestResult(prompt_len=prompt.prompt_len)
        num_chunks, start = 0, time.perf_counter()
        last = start
        try:
            stream = await self._create(prompt)
            async for chunk in stream:
                # As vLLM's bench: every chunk with a choice is a step of generation (its text may
                # be empty, e.g. half of a UTF-8 character); the usage chunk at the end has none.
                if chunk.choices:
                    now = time.perf_counter()
                    if num_chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last, num_chunks = now, num_chunks + 1
                if chunk.usage is not None:
                    result.output_len = chunk.usage.completion_tokens
                    result.prompt_len = chunk.usage.prompt_tokens or prompt.prompt_len
            result.latency = time.perf_counter() - start
            result.output_len = result.output_len or num_chunks
            result.success = num_chunks > 0
            result.error = "" if result.success else "the server streamed no tokens"
        except openai.APIError as exc:
            result.error = describe_api_error(exc, str(self.client.base_url))
        except Exception as exc:  # noqa: BLE001 - one odd response must not end the whole benchmark
            result.error = f"{type(exc).__name__}: {exc}"
        return result


def arrival_gaps(num: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds to wait before each request: gamma-distributed with mean 1/rate (Poisson at burstiness 1)."""
    if rate == float("inf"):
        return [0.0] * num
    rng = np.random.default_rng(seed)
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=num).tolist()


async def benchmark(sender: Sender, prompts: list[BenchPrompt], args: argparse.Namespace) -> tuple[list[RequestResult], float]:
    """Send every prompt on its arrival schedule; return the results in prompt order and the duration."""
    from tqdm import tqdm

    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    bar = tqdm(total=len(prompts), desc="Requests", unit=" req", file=sys.stderr, dynamic_ncols=True)

    async def limited(prompt: BenchPrompt) -> RequestResult:
        if limit is None:
            result = await sender.send(prompt)
        else:
            async with limit:
                result = await sender.send(prompt)
        bar.update(1)
        return result

    tasks = []
    start = time.perf_counter()
    with bar:
        for prompt, gap in zip(prompts, arrival_gaps(len(prompts), args.request_rate, args.burstiness, args.seed)):
            tasks.append(asyncio.create_task(limited(prompt)))
            if gap:
                await asyncio.sleep(gap)
        results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start


async def _first_model(client: openai.AsyncOpenAI, url: str) -> str:
    with api_errors(url):
        page = await client.models.list()
    if not page.data:
        raise ClientError(f"the server at {url} lists no models; pass --model")
    return page.data[0].id


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import openai

    base_url = args.base_url.rstrip("/")
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key(args.api_key), max_retries=0)
    async with client:
        model = args.model or await _first_model(client, f"{base_url}/v1")
        vocab_size = args.random_vocab_size or vocab_bound(base_url, model, args.api_key)
        prompts = random_prompts(args, vocab_size)
        if args.endpoint == "/v1/chat/completions":
            prompts = as_text(prompts, base_url, model, args.api_key)
        sender = Sender(client, args, model)
        print("Starting an initial single-prompt test run...", file=sys.stderr)
        test = await sender.send(prompts[0])
        if not test.success:
            raise ClientError(f"the test request failed, so the benchmark did not start: {test.error}")
        print(f"Traffic request rate: {args.request_rate}\nBurstiness factor: {args.burstiness}\n"
              f"Maximum request concurrency: {args.max_concurrency}")
        results, duration = await benchmark(sender, prompts, args)
    return {"model": model, "results": results, "duration": duration}


def default_result_filename(args: argparse.Namespace, model: str) -> str:
    """vLLM's name: ``<backend>-<rate>qps[-concurrency<n>]-<model>-<date>.json``."""
    backend = "openai-chat" if args.endpoint == "/v1/chat/completions" else "openai"
    concurrency = f"-concurrency{args.max_concurrency}" if args.max_concurrency else ""
    date = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{backend}-{args.request_rate}qps{concurrency}-{Path(model).name}-{date}.json"


def save_result(args: argparse.Namespace, model: str, metrics: dict[str, Any], results: list[RequestResult]) -> Path:
    """Write the settings, every metric and the per-request lists as JSON."""
    rate = args.request_rate if args.request_rate != float("inf") else "inf"  # JSON has no infinity
    document = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"), "base_url": args.base_url, "endpoint": args.endpoint,
        "model_id": model, "num_prompts": args.num_prompts, "request_rate": rate, "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency, **metrics,
        "input_lens": [r.prompt_len for r in results], "output_lens": [r.output_len for r in results],
        "ttfts": [r.ttft for r in results], "itls": [r.itl for r in results],
        "e2els": [r.latency for r in results], "errors": [r.error for r in results],
    }
    path = Path(args.result_dir or ".") / (args.result_filename or default_result_filename(args, model))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _check_plotting(path: str | None) -> None:
    if path is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ClientError("--plot needs matplotlib: pip install 'fw[bench]'") from None
    if not Path(path).resolve().parent.is_dir():
        raise ClientError(f"cannot write the plot {path}: its directory does not exist")


def run_bench_serve(args: argparse.Namespace, plugins: Plugins | None = None) -> int:
    """``fw bench serve``: run the benchmark, print the summary, save and plot as asked."""
    if not 0 <= args.random_range_ratio < 1:
        raise ConfigError(f"--random-range-ratio must be in [0, 1), got {args.random_range_ratio}")
    if not (args.request_rate > 0 and args.burstiness > 0):
        raise ConfigError(f"--request-rate and --burstiness must be positive, got {args.request_rate} and "
                          f"{args.burstiness}")
    _check_plotting(args.plot)  # before the run, not after minutes of it
    run = asyncio.run(_run(args))
    results, model = run["results"], run["model"]
    metrics = compute_metrics(results, run["duration"], args.metric_percentiles)
    print_summary(metrics, args)
    failures = [r.error for r in results if not r.success]
    if failures:
        print(f"fw bench serve: {len(failures)} of {len(results)} requests failed; the first: {failures[0]}",
              file=sys.stderr)
    if args.save_result:
        print(f"Saved the results to {save_result(args, model, metrics, results)}")
    if args.plot:
        plot_latencies(results, args.plot, title=f"{model}: {len(results)} requests at {args.request_rate} req/s")
        print(f"Saved the latency plot to {args.plot}")
    return 0 if len(failures) < len(results) else 1
