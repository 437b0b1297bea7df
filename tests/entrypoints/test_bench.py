"""``fw bench throughput`` and ``fw bench latency`` run for real on tiny checkpoints.

Token counts are asserted exactly (they prove lengths and ignore_eos are honoured by
both backends); rates only for being positive and consistent with counts / elapsed.
Speed itself is never asserted.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from fw.entrypoints.bench import length_range, random_requests, sample_token_ids

SMALL_ENGINE = ("--dtype", "float32", "--kv-cache-memory-bytes", "16M")


@pytest.fixture(scope="module")
def eos_heavy_model(tiny_checkpoint):
    """A tiny Llama where almost half the vocabulary ends generation: without ignore_eos, a
    request would stop after a token or two, so exact output counts prove it is honoured."""
    return tiny_checkpoint("llama", eos_token_id=list(range(5, 200)))


def read_json(path):
    return json.loads(path.read_text())


def assert_consistent(result: dict, num_requests: int, num_prompt: int, num_output: int) -> None:
    assert result["num_requests"] == num_requests
    assert result["num_prompt_tokens"] == num_prompt
    assert result["num_output_tokens"] == num_output
    assert result["total_num_tokens"] == num_prompt + num_output
    elapsed = result["elapsed_time"]
    assert elapsed > 0
    assert result["requests_per_second"] == pytest.approx(num_requests / elapsed)
    assert result["tokens_per_second"] == pytest.approx((num_prompt + num_output) / elapsed)
    assert result["output_tokens_per_second"] == pytest.approx(num_output / elapsed)


def test_throughput_fw_generates_exactly_the_requested_tokens(run_fw, eos_heavy_model, tmp_path):
    report = tmp_path / "fw.json"
    result = run_fw("bench", "throughput", "--model", str(eos_heavy_model), *SMALL_ENGINE, "--num-prompts", "8",
                    "--input-len", "12", "--output-len", "9", "--output-json", str(report))
    assert result.code == 0, result.err
    data = read_json(report)
    assert data["backend"] == "fw"
    assert_consistent(data, 8, 8 * 12, 8 * 9)
    # vLLM's summary line, with the same numbers as the JSON.
    line = re.search(r"Throughput: ([\d.]+) requests/s, ([\d.]+) total tokens/s, ([\d.]+) output tokens/s", result.out)
    assert line is not None, result.out
    assert float(line.group(3)) == pytest.approx(data["output_tokens_per_second"], abs=0.006)
    assert "Total num output tokens:  72" in result.out


def test_throughput_both_backends_run_the_same_requests(run_fw, eos_heavy_model, tmp_path):
    report = tmp_path / "both.json"
    result = run_fw("bench", "throughput", "--model", str(eos_heavy_model), *SMALL_ENGINE, "--num-prompts", "8",
                    "--input-len-range", "4", "16", "--output-len-range", "4", "16", "--seed", "3",
                    "--backend", "both", "--hf-max-batch-size", "3", "--output-json", str(report))
    assert result.code == 0, result.err
    data = read_json(report)
    # The same seed draws the same requests: recompute the totals they ask for.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(eos_heavy_model))
    requests = random_requests(8, (4, 16), (4, 16), sample_token_ids(tokenizer, len(tokenizer)), seed=3)
    num_prompt = sum(len(r.prompt_token_ids) for r in requests)
    num_output = sum(r.output_len for r in requests)
    assert_consistent(data["fw"], 8, num_prompt, num_output)
    assert_consistent(data["hf"], 8, num_prompt, num_output)
    # HF generates each batch to its longest output; the surplus is reported, not counted.
    assert data["hf"]["num_generated_tokens"] >= num_output
    ratio = data["fw"]["output_tokens_per_second"] / data["hf"]["output_tokens_per_second"]
    assert data["output_throughput_ratio"] == pytest.approx(ratio)
    assert f"Output tokens/s fw/hf: {ratio:.2f}x" in result.out
    assert "[fw]" in result.out and "[hf]" in result.out and "only each request's own output tokens" in result.out
    assert data["settings"]["input_len_range"] == [4, 16] and data["settings"]["dtype"] == "float32"


def test_throughput_hf_backend_alone_greedy(run_fw, tiny_checkpoint, tmp_path):
    report = tmp_path / "hf.json"
    result = run_fw("bench", "throughput", "--model", str(tiny_checkpoint("qwen3")), *SMALL_ENGINE,
                    "--backend", "hf", "--num-prompts", "5", "--random-input-len", "10", "--random-output-len", "6",
                    "--temperature", "0", "--disable-detokenize", "--output-json", str(report))
    assert result.code == 0, result.err
    data = read_json(report)
    assert data["backend"] == "hf"
    assert_consistent(data, 5, 50, 30)
    assert data["num_generated_tokens"] == 30  # equal output lengths: nothing wasted
    assert "[fw]" not in result.out


def test_random_lengths_follow_the_range_ratio_and_skip_special_tokens(tiny_checkpoint):
    from transformers import AutoTokenizer

    assert length_range(100, 0.5, None, "input") == (50, 150)
    assert length_range(100, 0.0, None, "input") == (100, 100)
    assert length_range(100, 0.5, (7, 9), "input") == (7, 9)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint("llama")))
    allowed = sample_token_ids(tokenizer, vocab_size=len(tokenizer) + 50)  # a padded embedding
    assert not set(tokenizer.all_special_ids) & set(allowed.tolist())
    assert allowed.max() < len(tokenizer)
    requests = random_requests(200, (50, 150), (3, 5), allowed, seed=1)
    assert requests == random_requests(200, (50, 150), (3, 5), allowed, seed=1)
    prompt_lens = np.array([len(r.prompt_token_ids) for r in requests])
    assert prompt_lens.min() >= 50 and prompt_lens.max() <= 150 and len(set(prompt_lens)) > 20
    assert {r.output_len for r in requests} == {3, 4, 5}
    assert all(set(r.prompt_token_ids) <= set(allowed.tolist()) for r in requests)


@pytest.mark.parametrize("argv, message", [
    (["--input-len-range", "9", "3"], "--input-len-range needs 1 <= MIN <= MAX, got 9 3"),
    (["--random-range-ratio", "1.5"], "--random-range-ratio must be in [0, 1), got 1.5"),
    (["--input-len", "400", "--output-len", "200"],
     "the longest request needs 600 tokens (400 prompt + 200 output), more than max_model_len 512; "
     "shorten the lengths"),
    (["--temperature", "-1"], "--temperature must be 0 (greedy) or more, got -1.0"),
], ids=["range-order", "range-ratio", "too-long", "temperature"])
def test_throughput_rejects_impossible_requests_in_one_line(run_fw, tiny_checkpoint, argv, message):
    result = run_fw("bench", "throughput", "--model", str(tiny_checkpoint("llama")), *SMALL_ENGINE,
                    "--backend", "hf", "--num-prompts", "2", *argv)
    assert result.code == 2
    assert result.err.endswith(f"fw: error: {message}\n")


def test_latency_reports_every_iteration(run_fw, eos_heavy_model, tmp_path):
    report = tmp_path / "latency.json"
    result = run_fw("bench", "latency", "--model", str(eos_heavy_model), *SMALL_ENGINE, "--batch-size", "3",
                    "--input-len", "8", "--output-len", "5", "--num-iters-warmup", "1", "--num-iters", "3",
                    "--output-json", str(report))
    assert result.code == 0, result.err
    data = read_json(report)
    assert len(data["latencies"]) == 3 and all(t > 0 for t in data["latencies"])
    assert data["avg_latency"] == pytest.approx(np.mean(data["latencies"]))
    assert list(data["percentiles"]) == ["10", "25", "50", "75", "90", "99"]
    assert min(data["latencies"]) <= data["percentiles"]["50"] <= max(data["latencies"])
    assert f"Avg latency: {data['avg_latency']} seconds" in result.out
    assert "99% percentile latency:" in result.out
