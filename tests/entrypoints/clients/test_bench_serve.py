"""``fw bench serve`` against a real ``fw serve``: consistent numbers, the JSON file, the plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fw.entrypoints.bench_serve import RequestResult, arrival_gaps
from fw.entrypoints.bench_serve_report import compute_metrics

pytestmark = pytest.mark.slow  # a real fw serve process

NUM_PROMPTS, INPUT_LEN, OUTPUT_LEN = 6, 16, 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def table_value(out: str, label: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s+(\S+)\s*$", out, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{out}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def bench_run(server, tmp_path_factory, plugins):
    """One benchmark run at a finite request rate with a concurrency limit, saving JSON and a plot."""
    import contextlib
    import io

    from fw.entrypoints.cli import main

    folder = tmp_path_factory.mktemp("bench-serve")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", "serve", "--base-url", server.base_url, "--num-prompts", str(NUM_PROMPTS),
                     "--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN),
                     "--request-rate", "200", "--max-concurrency", "4", "--metric-percentiles", "50,99",
                     "--save-result", "--result-dir", str(folder / "results"), "--result-filename", "run.json",
                     "--plot", str(folder / "latency.png")], plugins=plugins)
    assert code == 0, err.getvalue()
    return out.getvalue(), err.getvalue(), folder


def test_summary_table_is_consistent(bench_run) -> None:
    out, _, folder = bench_run
    assert "============ Serving Benchmark Result ============" in out
    assert table_value(out, "Successful requests:") == NUM_PROMPTS
    assert table_value(out, "Failed requests:") == 0
    assert table_value(out, "Maximum request concurrency:") == 4
    # Random token-id prompts have exactly their length; ignore_eos makes every output exactly its length.
    assert table_value(out, "Total input tokens:") == NUM_PROMPTS * INPUT_LEN
    assert table_value(out, "Total generated tokens:") == NUM_PROMPTS * OUTPUT_LEN
    # The table rounds the duration; the saved result has it exactly.
    duration = json.loads((folder / "results" / "run.json").read_text())["duration"]
    assert table_value(out, "Benchmark duration (s):") == round(duration, 2)
    assert table_value(out, "Request throughput (req/s):") == round(NUM_PROMPTS / duration, 2)
    assert table_value(out, "Output token throughput (tok/s):") == round(NUM_PROMPTS * OUTPUT_LEN / duration, 2)
    assert table_value(out, "Total Token throughput (tok/s):") == round(
        NUM_PROMPTS * (INPUT_LEN + OUTPUT_LEN) / duration, 2)
    for name in ("TTFT", "TPOT", "ITL", "E2EL"):
        mean, p50, p99 = (table_value(out, f"{kind} {name} (ms):") for kind in ("Mean", "P50", "P99"))
        assert 0 < p50 <= p99 and mean > 0
    assert table_value(out, "Median E2EL (ms):") >= table_value(out, "Median TTFT (ms):")


def test_saved_json_has_the_numbers_and_the_per_request_lists(bench_run) -> None:
    out, _, folder = bench_run
    path = folder / "results" / "run.json"
    assert f"Saved the results to {path}" in out
    result = json.loads(path.read_text())
    assert result["model_id"] == "tiny" and result["num_prompts"] == NUM_PROMPTS
    assert (result["completed"], result["failed"]) == (NUM_PROMPTS, 0)
    assert result["total_output_tokens"] == NUM_PROMPTS * OUTPUT_LEN
    assert result["input_lens"] == [INPUT_LEN] * NUM_PROMPTS
    assert result["output_lens"] == [OUTPUT_LEN] * NUM_PROMPTS
    # At most one gap between each two of a request's tokens (fewer when the server sent several in one chunk).
    assert all(1 <= len(itl) <= OUTPUT_LEN - 1 for itl in result["itls"])
    for key in ("request_throughput", "output_throughput", "mean_ttft_ms", "p99_tpot_ms", "median_itl_ms",
                "p50_e2el_ms", "ttfts", "e2els", "errors"):
        assert key in result
    assert result["mean_ttft_ms"] == pytest.approx(1000 * sum(result["ttfts"]) / NUM_PROMPTS)


def test_plot_is_a_png(bench_run) -> None:
    _, _, folder = bench_run
    assert (folder / "latency.png").read_bytes()[:8] == PNG_SIGNATURE


def test_default_result_filename_is_vllms(run_fw, server, tmp_path: Path) -> None:
    result = run_fw("bench", "serve", "--base-url", server.base_url, "--num-prompts", "2", "--random-input-len", "4",
                    "--random-output-len", "2", "--max-concurrency", "2", "--save-result", "--result-dir",
                    str(tmp_path))
    assert result.code == 0, result.err
    [saved] = tmp_path.iterdir()
    assert re.fullmatch(r"openai-infqps-concurrency2-tiny-\d{8}-\d{6}\.json", saved.name)


def test_a_request_the_server_rejects_stops_before_the_run(run_fw, server) -> None:
    # Prompt + output beyond the 512-token context: the server refuses the test request.
    result = run_fw("bench", "serve", "--base-url", server.base_url, "--num-prompts", "2",
                    "--random-input-len", "600", "--random-output-len", "4")
    assert result.code == 1
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("fw: error: the test request failed, so the benchmark did not start: ")
    assert "400" in error
    assert "Serving Benchmark Result" not in result.out


def test_failed_requests_are_counted_not_timed() -> None:
    ok = RequestResult(success=True, prompt_len=4, output_len=3, ttft=0.1, itl=[0.05, 0.05], latency=0.2)
    failed = RequestResult(success=False, prompt_len=4, error="boom")
    metrics = compute_metrics([ok, failed, ok], duration=2.0, percentiles=[99])
    assert (metrics["completed"], metrics["failed"]) == (2, 1)
    assert metrics["total_output_tokens"] == 6 and metrics["output_throughput"] == 3.0
    assert metrics["mean_tpot_ms"] == pytest.approx(50.0)
    assert metrics["median_itl_ms"] == pytest.approx(50.0)


def test_arrivals_are_poisson_at_the_rate() -> None:
    gaps = arrival_gaps(20_000, rate=4.0, burstiness=1.0, seed=0)
    assert sum(gaps) / len(gaps) == pytest.approx(0.25, rel=0.03)
    assert arrival_gaps(3, rate=float("inf"), burstiness=1.0, seed=0) == [0.0, 0.0, 0.0]


def test_unreachable_server_is_one_line(run_fw) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_fw("bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--num-prompts", "1")
    assert result.code == 1
    assert result.err.startswith(f"fw: error: cannot reach the server at http://127.0.0.1:{port}/v1")
    assert result.err.count("\n") == 1
