"""``fw bench throughput`` and ``fw bench latency``: offline benchmarks shaped like vLLM's.

Throughput: random prompts as in nano-vllm's bench (random token ids that are not special
tokens, random prompt and output lengths, ``ignore_eos``) go through fw's engine and/or
Hugging Face transformers ``generate`` (:mod:`fw.entrypoints.bench_hf`) with the same
weights and dtype. Latency: the time to generate one batch, averaged over iterations.
Model loading is never timed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from tqdm import tqdm

from fw.core.config import ENGINE_CONFIG_CLASSES, ConfigError, EngineConfig
from fw.entrypoints.commands import config_values

if TYPE_CHECKING:
    import torch

    from fw import LLM
    from fw.core.plugins import Plugins

#: The percentiles ``fw bench latency`` reports, as vLLM's.
LATENCY_PERCENTILES = (10, 25, 50, 75, 90, 99)


@dataclass(frozen=True)
class BenchRequest:
    """One benchmark request: its prompt and exactly how many tokens it must generate."""

    prompt_token_ids: list[int]
    output_len: int


@dataclass(frozen=True)
class ModelInfo:
    """What both backends need to run the same model the same way."""

    path: Path
    load_format: str
    hf_config: Any
    tokenizer: Any
    dtype: torch.dtype
    device: torch.device
    max_model_len: int


@dataclass
class ThroughputResult:
    """Counts and time of one backend's run; the rates derive from them."""

    backend: str
    num_requests: int
    num_prompt_tokens: int
    num_output_tokens: int
    elapsed_seconds: float
    #: How the backend batched the requests, when that needs saying.
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def requests_per_second(self) -> float:
        return self.num_requests / self.elapsed_seconds

    @property
    def total_tokens_per_second(self) -> float:
        return (self.num_prompt_tokens + self.num_output_tokens) / self.elapsed_seconds

    @property
    def output_tokens_per_second(self) -> float:
        return self.num_output_tokens / self.elapsed_seconds

    def summary(self) -> str:
        """vLLM's lines, plus the elapsed time and the backend's note."""
        lines = [
            f"Throughput: {self.requests_per_second:.2f} requests/s, {self.total_tokens_per_second:.2f} total "
            f"tokens/s, {self.output_tokens_per_second:.2f} output tokens/s",
            f"Total num prompt tokens:  {self.num_prompt_tokens}",
            f"Total num output tokens:  {self.num_output_tokens}",
            f"Elapsed time:  {self.elapsed_seconds:.2f} s for {self.num_requests} requests",
        ]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """vLLM's keys (elapsed_time ... tokens_per_second) and fw's additions."""
        return {
            "backend": self.backend,
            "elapsed_time": self.elapsed_seconds,
            "num_requests": self.num_requests,
            "total_num_tokens": self.num_prompt_tokens + self.num_output_tokens,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_output_tokens": self.num_output_tokens,
            "requests_per_second": self.requests_per_second,
            "tokens_per_second": self.total_tokens_per_second,
            "output_tokens_per_second": self.output_tokens_per_second,
            **self.extra,
        }


# ---------------------------------------------------------------- requests


def length_range(length: int, range_ratio: float, explicit: Sequence[int] | None, what: str) -> tuple[int, int]:
    """Inclusive bounds of a uniform length: ``explicit`` (MIN MAX), else ``length * (1 ± ratio)``."""
    if explicit is not None:
        low, high = explicit
        if not 1 <= low <= high:
            raise ConfigError(f"--{what}-len-range needs 1 <= MIN <= MAX, got {low} {high}")
        return low, high
    if not 0 <= range_ratio < 1:
        raise ConfigError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    return max(1, int(length * (1 - range_ratio))), max(1, int(length * (1 + range_ratio)))


def sample_token_ids(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """The ids random prompts draw from: the model's vocabulary less the special tokens."""
    # A tokenizer may have added tokens past the model's embedding rows, and a model may
    # pad its vocabulary past the tokenizer's: only ids both know are safe.
    size = min(vocab_size, len(tokenizer))
    allowed = np.setdiff1d(np.arange(size), np.asarray(tokenizer.all_special_ids, dtype=np.int64))
    if allowed.size == 0:
        raise ConfigError("the tokenizer has no ordinary tokens to build random prompts from")
    return allowed


def random_requests(
    num_requests: int,
    input_range: tuple[int, int],
    output_range: tuple[int, int],
    allowed_ids: np.ndarray,
    seed: int,
) -> list[BenchRequest]:
    """Requests with lengths uniform in the inclusive ranges and uniformly random prompt tokens."""
    rng = np.random.default_rng(seed)
    input_lens = rng.integers(input_range[0], input_range[1] + 1, size=num_requests)
    output_lens = rng.integers(output_range[0], output_range[1] + 1, size=num_requests)
    return [
        BenchRequest(rng.choice(allowed_ids, size=int(n)).tolist(), int(m))
        for n, m in zip(input_lens, output_lens)
    ]


def check_fits(requests: Sequence[BenchRequest], max_model_len: int) -> None:
    longest = max(requests, key=lambda r: len(r.prompt_token_ids) + r.output_len)
    total = len(longest.prompt_token_ids) + longest.output_len
    if total > max_model_len:
        raise ConfigError(
            f"the longest request needs {total} tokens ({len(longest.prompt_token_ids)} prompt + "
            f"{longest.output_len} output), more than max_model_len {max_model_len}; shorten the lengths"
        )


# ---------------------------------------------------------------- models


def engine_values(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options of the command line, checked with the sampling options (a bad value
    fails before any loading)."""
    values = config_values(args, ENGINE_CONFIG_CLASSES)
    EngineConfig.from_values(values)
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    return values


def model_info_from_llm(llm: LLM) -> ModelInfo:
    """The model an fw engine loaded, so the HF backend loads the very same files."""
    info = llm.engine.info
    return ModelInfo(info.path, info.load_format, info.hf_config, info.tokenizer, info.dtype, info.device,
                     info.max_model_len)


def inspect_model(values: dict[str, Any], plugins: Plugins) -> ModelInfo:
    """Resolve the model, its config, tokenizer and dtype as the engine would, without its weights."""
    from fw.core.engine.loading import choose_dtype, derive_max_model_len, open_model_files

    config = EngineConfig.from_values(values)
    files = open_model_files(config, plugins)
    return ModelInfo(files.resolved.path, files.loader.name, files.hf_config, files.tokenizer,
                     choose_dtype(config, files.platform, files.hf_config), files.platform.torch_device(),
                     derive_max_model_len(config, files.hf_config))


def vocab_size(info: ModelInfo) -> int:
    config = getattr(info.hf_config, "text_config", None) or info.hf_config
    return int(config.vocab_size)


# ---------------------------------------------------------------- fw backend


def fw_params(request: BenchRequest, temperature: float, detokenize: bool) -> Any:
    from fw import SamplingParams

    return SamplingParams(temperature=temperature, top_p=1.0, ignore_eos=True, max_tokens=request.output_len,
                          detokenize=detokenize)


def run_fw_backend(
    llm: LLM, requests: Sequence[BenchRequest], temperature: float, detokenize: bool
) -> ThroughputResult:
    """All requests at once through ``LLM.generate``; counts what the engine actually returned."""
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [fw_params(r, temperature, detokenize) for r in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    return ThroughputResult(
        backend="fw",
        num_requests=len(outputs),
        num_prompt_tokens=sum(len(o.prompt_token_ids) for o in outputs),
        num_output_tokens=sum(len(c.token_ids) for o in outputs for c in o.outputs),
        elapsed_seconds=elapsed,
        note="fw: all requests submitted at once; the engine batches them continuously.",
    )


# ---------------------------------------------------------------- fw bench throughput


def run_throughput(args: argparse.Namespace, plugins: Plugins) -> int:
    """``fw bench throughput``: run the random requests through the chosen backend(s) and report."""
    from fw import LLM

    plugins.check()
    values = engine_values(args)
    input_range = length_range(args.input_len, args.random_range_ratio, args.input_len_range, "input")
    output_range = length_range(args.output_len, args.random_range_ratio, args.output_len_range, "output")
    backends = ["fw", "hf"] if args.backend == "both" else [args.backend]
    llm = LLM(plugins=plugins, **values) if "fw" in backends else None
    info = model_info_from_llm(llm) if llm is not None else inspect_model(values, plugins)
    requests = random_requests(args.num_prompts, input_range, output_range,
                               sample_token_ids(info.tokenizer, vocab_size(info)), values["seed"])
    check_fits(requests, info.max_model_len)
    print(f"fw bench throughput: {len(requests)} random requests, prompt lengths {input_range[0]}-{input_range[1]}, "
          f"output lengths {output_range[0]}-{output_range[1]} (ignore_eos), temperature {args.temperature}, "
          f"{str(info.dtype).removeprefix('torch.')} on {info.device.type}; model {info.path}", flush=True)

    results: dict[str, ThroughputResult] = {}
    detokenize = not args.disable_detokenize
    if llm is not None:
        results["fw"] = run_fw_backend(llm, requests, args.temperature, detokenize)
        print(f"\n[fw]\n{results['fw'].summary()}\n", flush=True)
    if "hf" in backends:
        from fw.entrypoints.bench_hf import load_hf_model, run_hf_backend

        model = load_hf_model(info)
        results["hf"] = run_hf_backend(model, info, requests, max_batch_size=args.hf_max_batch_size,
                                       temperature=args.temperature, detokenize=detokenize, seed=values["seed"])
        print(f"\n[hf]\n{results['hf'].summary()}\n", flush=True)

    report: dict[str, Any]
    if len(results) == 2:
        ratio = results["fw"].output_tokens_per_second / results["hf"].output_tokens_per_second
        print(f"Output tokens/s fw/hf: {ratio:.2f}x "
              f"({results['fw'].output_tokens_per_second:.2f} / {results['hf'].output_tokens_per_second:.2f})")
        report = {name: result.to_json() for name, result in results.items()}
        report["output_throughput_ratio"] = ratio
    else:
        report = next(iter(results.values())).to_json()
    report["settings"] = {
        "model": str(info.path), "dtype": str(info.dtype).removeprefix("torch."), "device": info.device.type,
        "num_prompts": len(requests), "input_len_range": list(input_range), "output_len_range": list(output_range),
        "temperature": args.temperature, "seed": values["seed"], "hf_max_batch_size": args.hf_max_batch_size,
    }
    write_json(args.output_json, report)
    return 0


def write_json(path: str | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write --output-json {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- fw bench latency


def run_latency(args: argparse.Namespace, plugins: Plugins) -> int:
    """``fw bench latency``: the time to generate one batch, after warm-up iterations."""
    from fw import LLM

    plugins.check()
    values = engine_values(args)
    if args.num_iters_warmup < 0:
        raise ConfigError(f"--num-iters-warmup must be 0 or more, got {args.num_iters_warmup}")
    llm = LLM(plugins=plugins, **values)
    info = model_info_from_llm(llm)
    allowed_ids = sample_token_ids(info.tokenizer, vocab_size(info))
    detokenize = not args.disable_detokenize

    def batch(iteration: int) -> list[BenchRequest]:
        # Fresh prompts every iteration: repeating one batch would time prefix-cache hits, not prefill.
        requests = random_requests(args.batch_size, (args.input_len, args.input_len),
                                   (args.output_len, args.output_len), allowed_ids, values["seed"] + iteration)
        check_fits(requests, info.max_model_len)
        return requests

    def run_once(iteration: int) -> float:
        requests = batch(iteration)
        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
        params = [fw_params(r, args.temperature, detokenize) for r in requests]
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    for i in tqdm(range(args.num_iters_warmup), desc="Warmup iterations"):
        run_once(i)
    latencies = [run_once(args.num_iters_warmup + i) for i in tqdm(range(args.num_iters), desc="Profiling iterations")]
    percentiles = dict(zip(LATENCY_PERCENTILES, np.percentile(latencies, LATENCY_PERCENTILES).tolist()))
    print(f"Avg latency: {np.mean(latencies)} seconds")
    for percentage, value in percentiles.items():
        print(f"{percentage}% percentile latency: {value} seconds")
    write_json(args.output_json, {
        "avg_latency": float(np.mean(latencies)),
        "latencies": latencies,
        "percentiles": {str(p): v for p, v in percentiles.items()},
        "settings": {"model": str(info.path), "dtype": str(info.dtype).removeprefix("torch."),
                     "batch_size": args.batch_size, "input_len": args.input_len, "output_len": args.output_len,
                     "num_iters_warmup": args.num_iters_warmup, "num_iters": args.num_iters,
                     "temperature": args.temperature},
    })
    return 0
